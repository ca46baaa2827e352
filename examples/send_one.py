"""Send one message through the Mailer, with retries.

Run it with ``python examples/send_one.py``.  It starts a scripted SMTP
server on 127.0.0.1 that pushes back the way real servers do, three times:

1. the first connection is refused at the greeting with
   ``421 4.3.2 All server ports are busy`` (Postfix's postscreen text);
2. the next one is throttled at MAIL FROM with
   ``421 4.7.0 Try again later, closing connection``;
3. the next one is dropped without a word in the middle of RCPT.

The Mailer classifies each of these, reconnects, waits as its RetryPolicy
says, and delivers on the fourth attempt.  Every decision is printed through
a hook.  No network beyond loopback; it finishes in about a second.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from resilient_smtp import Event, Mailer, Reason, RetryPolicy
from resilient_smtp.testing import DROP, ScriptedSMTPServer

# The default policy waits at least 10 s after a rate limit ("slow down"
# means it) and gives a send 60 s in all.  This example shortens the waits so
# it runs in a blink; in your application, start from RetryPolicy() as it is.
POLICY = RetryPolicy(
    max_attempts=5,
    deadline=10.0,
    base=0.05,
    cap=0.5,
    min_waits={Reason.RATE_LIMITED: 0.2},
)


def show(event: Event) -> None:
    """A hook: the Mailer, its policy, limiter and health report here."""
    if event.kind in ("retry", "give_up", "final", "suspended"):
        print(f"  {event}")


def receipt(to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@example.org"
    message["To"] = to
    message["Subject"] = "Your receipt"
    message.set_content("Thank you for your order.\n")
    return message


async def main() -> int:
    async with ScriptedSMTPServer() as server:
        server.on("connect", "421 4.3.2 All server ports are busy")
        server.on("mail", "421 4.7.0 Try again later, closing connection")
        server.on("rcpt", DROP)
        print(f"scripted SMTP server on 127.0.0.1:{server.port}")

        # tls="none" only because the server is a plaintext loopback one; the
        # default, "starttls", refuses to send without TLS.
        async with Mailer(
            "127.0.0.1", server.port, tls="none", retry=POLICY, hooks=[show]
        ) as mailer:
            result = await mailer.send(receipt("alice@example.com"))

        alice = result["alice@example.com"]
        print(f"alice@example.com: {alice.state.value} after {alice.attempts} attempts")
        print(f"the server accepted {len(server.messages)} message(s)")
        return 0 if result.ok and len(server.messages) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
