"""Teach the classifier a reply your relay sends, and give it to a Mailer.

Run it with ``python examples/custom_rule.py``.  The relay in this story caps
each account per hour and says so with a 5xx:
``550 5.7.1 Hourly cap reached for account 4711``.  No built-in rule knows
that text, so the code class decides: 5xx, permanent, and every recipient of
the hour would be dropped.  One ``Rule`` makes it a ``sending_quota``
reply (transient): the Mailer then defers the recipients with a time to try
again, and destination health pauses the relay instead of hammering it.

A scripted SMTP server on 127.0.0.1 plays the relay.  It finishes in well
under a second.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from resilient_smtp import (
    Classifier,
    Mailer,
    Reason,
    Rule,
    SendResult,
    State,
    default_classifier,
)
from resilient_smtp.testing import ScriptedSMTPServer

CAP_REPLY = "550 5.7.1 Hourly cap reached for account 4711"

# Rules are data: a reason, a name (shown in explanations) and conditions
# that must all hold.  `contains` is matched on the lower-cased reply text.
hourly_cap = Rule(
    Reason.SENDING_QUOTA,
    "acme relay: hourly cap",
    contains=("hourly cap reached",),
    codes=(550,),
    transient=True,
)
# A new classifier: our rule first, then every built-in rule.  The default
# classifier itself is left as it was.
classifier = default_classifier.with_rules(hourly_cap)


def welcome(to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@example.org"
    message["To"] = to
    message["Subject"] = "Welcome"
    message.set_content("Hello!\n")
    return message


async def send(port: int, classifier: Classifier) -> SendResult:
    async with Mailer("127.0.0.1", port, tls="none", classifier=classifier) as mailer:
        return await mailer.send(welcome("carol@example.com"))


async def main() -> int:
    for name, c in (("built-in rules", default_classifier), ("with our rule", classifier)):
        verdict = c(CAP_REPLY)
        kind = "transient" if verdict.transient else "permanent"
        print(f"{name:<15} {verdict.reason.value}, {kind} ({verdict.explanation})")

    async with ScriptedSMTPServer() as server:
        server.on("mail", CAP_REPLY, times=None)
        before = await send(server.port, default_classifier)
        after = await send(server.port, classifier)

    print("sending to carol@example.com while the relay's cap is reached:")
    r = before["carol@example.com"]
    print(f"  built-in rules  {r.state.value} ({r.reason})")
    r = after["carol@example.com"]
    print(f"  with our rule   {r.state.value} ({r.reason}), retry in {r.retry_in:.0f} s")
    return 0 if r.state is State.DEFERRED else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
