"""Retry your own send function with a resilient_smtp RetryPolicy.

``policy.on_exception()`` turns a policy into a ``backoff`` decorator: the
function is retried while its failures classify as transient (a 421, a
dropped connection), and a permanent one (550 no such user) is raised at once.

Run it with ``python examples/on_exception.py``.  It starts a throwaway SMTP
server on 127.0.0.1 that answers "421 4.7.0 Try again later" twice and then
accepts, so it needs no network and finishes in well under a second.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP

from resilient_smtp import Reason, RetryPolicy


class GrumpyServer:
    """An aiosmtpd handler that refuses MAIL FROM ``refusals`` times and
    knows no ``nobody@`` mailbox."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.delivered: list[str] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.refusals > 0:
            self.refusals -= 1
            return "421 4.7.0 Try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 <nobody@example.com>: no such user"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.extend(envelope.rcpt_tos)
        return "250 OK: queued"


# The defaults suit a send in a request path (5 attempts within 60 s, and at
# least 10 s after a "slow down" reply).  This demo shrinks the waits so it
# runs in a blink: a 0.1 s floor after a rate limit, back-off from 50 ms.
policy = RetryPolicy(
    max_attempts=4,
    deadline=5.0,
    base=0.05,
    cap=0.2,
    min_waits={Reason.RATE_LIMITED: 0.1},
    hooks=[lambda event: print(f"  event: {event}")],
)


async def main() -> None:
    handler = GrumpyServer(refusals=2)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    # Your own code, unchanged but for the decorator.
    @policy.on_exception()
    async def send_welcome(to: str) -> None:
        message = EmailMessage()
        message["From"] = "app@example.com"
        message["To"] = to
        message["Subject"] = "Welcome"
        message.set_content("Hello!")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=5)

    try:
        print("sending, the server will refuse twice:")
        await send_welcome("alice@example.com")
        print(f"delivered to {handler.delivered}")
        print("sending to a mailbox that does not exist:")
        try:
            await send_welcome("nobody@example.com")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            print(f"given up at once: {exc.recipients[0].message}")
    finally:
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
