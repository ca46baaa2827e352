"""A Transport with no sockets, answering from a :class:`Script`.

For unit tests of code that uses the Mailer: every stage's reply comes from
the script (250/354 where nothing is scripted), and what was sent is
recorded, so a test runs in microseconds with a FakeClock.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosmtplib

from .._classify.reply import Reply
from .._transport.connection import Connection, Transport
from ._script import DROP, ReceivedMessage, Script

__all__ = ["ScriptedTransport"]

_ENDING = b"\r\n.\r\n"


def _unstuff(body: bytes) -> bytes:
    body = body[: -len(b".\r\n")] if body.endswith(_ENDING) else body
    return b"\r\n".join(
        line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")
    )


class _ScriptedConnection:
    def __init__(self, transport: ScriptedTransport, host: str) -> None:
        self._t = transport
        self.host = host
        self.created_at = 0.0  # the pool stamps it on its own clock
        self.messages = 0
        self._open = True
        self._sender = ""
        self._rcpts: list[str] = []
        self._rcpt_n = 0

    def supports(self, extension: str) -> bool:
        return extension.lower() in self._t.extensions

    def is_open(self) -> bool:
        return self._open

    def _answer(
        self, command: str, stage: str, normal: str, recipient: str | None = None
    ) -> Reply:
        if not self._open:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        self._t.commands.append(command)
        scripted = self._t.scripted(stage, recipient, self._rcpt_n)
        if scripted == DROP:
            self._open = False
            raise aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        reply = Reply.parse(scripted or normal)
        if reply.code == 421:
            self._open = False
        return reply

    async def mail(self, sender: str, options: Sequence[str] = ()) -> Reply:
        self._rcpts, self._rcpt_n = [], 0
        reply = self._answer("MAIL", "mail", "250 2.1.0 Ok")
        self._sender = sender if reply.code == 250 else ""
        return reply

    async def rcpt(self, recipient: str) -> Reply:
        self._rcpt_n += 1
        reply = self._answer("RCPT", "rcpt", "250 2.1.5 Ok", recipient)
        if reply.code in (250, 251):
            self._rcpts.append(recipient)
        return reply

    async def data(self) -> Reply:
        return self._answer("DATA", "data", "354 End data with <CR><LF>.<CR><LF>")

    async def send_body(self, body: bytes) -> Reply:
        msg = ReceivedMessage(self._sender, tuple(self._rcpts), _unstuff(body))
        self._rcpts, self._rcpt_n = [], 0
        try:
            reply = self._answer(".", "end_of_data", "250 2.0.0 Ok: queued")
        except aiosmtplib.SMTPServerDisconnected:
            self._t.dropped_after_data.append(msg)
            raise
        if reply.code == 250:
            self._t.messages.append(msg)
        return reply

    async def reset(self) -> Reply:
        if not self._open:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        self._t.commands.append("RSET")
        self._rcpts, self._rcpt_n = [], 0
        return Reply(250, "2.0.0", "Ok")

    async def noop(self) -> Reply:
        if not self._open:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        return Reply(250, "2.0.0", "Ok")

    async def close(self) -> None:
        self._open = False


class ScriptedTransport(Script, Transport):
    """A :class:`~resilient_smtp.Transport` that needs no network.

    ::

        transport = ScriptedTransport().on("rcpt", "450 4.2.0 Greylisted", times=1)
        mailer = Mailer("mx.test", transport=transport, clock=FakeClock())
        result = await mailer.send(msg)
        transport.messages  # what was accepted

    The ``connect`` and ``ehlo`` stages raise the aiosmtplib exception a
    real connection would (``SMTPConnectResponseError``, ``SMTPHeloError``,
    ``SMTPServerDisconnected`` for DROP).  ``extensions`` is what EHLO
    advertises.
    """

    def __init__(self, *, extensions: Sequence[str] = ("size", "8bitmime", "smtputf8")) -> None:
        super().__init__()
        self.extensions = {e.lower() for e in extensions}

    async def connect(self, host: str, port: int) -> Connection:
        self.connections += 1
        for stage, error in (
            ("connect", aiosmtplib.SMTPConnectResponseError),
            ("ehlo", aiosmtplib.SMTPHeloError),
        ):
            scripted = self.scripted(stage)
            if scripted == DROP:
                raise aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
            if scripted is not None:
                reply = Reply.parse(scripted)
                raise error(reply.code or 421, f"{reply.enhanced or ''} {reply.text}".strip())
            if stage == "connect":
                self.commands.append("EHLO")
        return _ScriptedConnection(self, host)
