"""README.md's first example, word for word after the marker line, so that
mypy --strict checks it with the rest of tests/ (tests/test_docs_code.py
makes sure the README still shows exactly this)."""

# ruff: noqa: B018
# --- the README's example ---
from email.message import EmailMessage

from resilient_smtp import Mailer, RetryPolicy, SendResult


async def send(message: EmailMessage) -> SendResult:
    retry = RetryPolicy(max_attempts=5, deadline=120)
    async with Mailer("smtp.example.com", username="app", password="...", retry=retry) as m:
        result = await m.send(message)

    result.delivered, result.rejected, result.deferred, result.ambiguous  # addresses
    bob = result["bob@example.com"]
    bob.state  # State.DEFERRED
    bob.reason  # "greylisted"
    bob.retry_in  # 300.0: requeue it then
    return result
