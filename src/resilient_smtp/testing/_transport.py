"""A Transport with no sockets, answering from a :class:`Script`.

For unit tests of code that uses the Mailer: every stage's reply comes from
the script (250/354 where nothing is scripted), and what was sent is
recorded, so a test runs in microseconds with a FakeClock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import aiosmtplib

from .._classify.reply import Reply
from .._errors import BodyNotSent
from .._transport.connection import Connection, Transport, dot_unstuff
from .._transport.replies import ReplyParser, UnreadableReply
from ._script import DROP, ReceivedMessage, Script

__all__ = ["ScriptedTransport"]

_NO_RCPT = "554 5.5.1 Error: no valid recipients"
_BAD_SEQUENCE = "503 5.5.1 Error: need MAIL command"


class _ScriptedConnection:
    """The server side of a :class:`ScriptedTransport` connection: commands
    are answered as they are written (a pipelined flight queues its replies)
    and the replies are read back in order, as on a real connection."""

    def __init__(self, transport: ScriptedTransport, host: str) -> None:
        self._t = transport
        self.host = host
        self.created_at = 0.0  # the pool stamps it on its own clock
        self.messages = 0
        self._gone = False  # the server closed (DROP, or after a 421)
        self._replies: deque[Reply | UnreadableReply] = deque()
        self._sender: str | None = None
        self._rcpts: list[str] = []
        self._rcpt_n = 0
        self._data = False  # after a 354: the next payload is the message
        self._bdat: int | None = None  # after BDAT n LAST: the payload is the chunk

    def supports(self, extension: str) -> bool:
        return extension.lower() in self._t.extensions

    def is_open(self) -> bool:
        return not self._gone

    # -- the server side ----------------------------------------------------

    def _answer(
        self, command: str, stage: str | None, normal: str, rcpt: str | None = None
    ) -> str:
        """Record ``command`` and queue its reply (the script's, if a rule
        fires); "" if the server dropped the connection instead."""
        self._t.commands.append(command)
        scripted = self._t.scripted(stage, rcpt, self._rcpt_n) if stage else None
        if scripted == DROP:
            self._gone = True
            return ""
        text = scripted or normal
        # Parsed as the wire parses it: strict codes, and a scripted
        # "354 Go ahead\r\n250 Ok" is two replies in one write.
        lines = text.replace("\r\n", "\n").split("\n")
        self._replies.extend(ReplyParser().feed("".join(f"{ln}\r\n" for ln in lines).encode()))
        if text.startswith("421"):
            self._gone = True
        return text

    def _command(self, line: str) -> None:
        verb = line.split(" ", 1)[0].upper()
        if verb == "MAIL":
            self._rcpts, self._rcpt_n, self._sender = [], 0, None
            if self._answer("MAIL", "mail", "250 2.1.0 Ok").startswith("2"):
                self._sender = line.partition(":<")[2].partition(">")[0]
        elif verb == "RCPT":
            if self._sender is None:
                self._answer("RCPT", None, _BAD_SEQUENCE)
                return
            self._rcpt_n += 1
            rcpt = line.partition(":<")[2].partition(">")[0]
            if self._answer("RCPT", "rcpt", "250 2.1.5 Ok", rcpt).startswith("2"):
                self._rcpts.append(rcpt)
        elif verb == "DATA":
            if not self._rcpts:
                self._answer("DATA", None, _NO_RCPT if self._sender else _BAD_SEQUENCE)
                return
            self._data = (
                self._answer("DATA", "data", "354 End data with <CR><LF>.<CR><LF>")[:3] == "354"
            )
        elif verb == "BDAT":
            self._bdat = int(line.split()[1])
        elif verb == "RSET":
            self._rcpts, self._rcpt_n, self._sender = [], 0, None
            self._answer("RSET", None, "250 2.0.0 Ok")
        elif verb == "NOOP":
            self._answer("NOOP", None, "250 2.0.0 Ok")
        elif verb == "QUIT":
            self._answer("QUIT", None, "221 2.0.0 Bye")
            self._gone = True
        else:
            self._answer(verb, None, "502 5.5.2 Error: command not recognized")

    def _message(self, payload: bytes) -> None:
        if self._bdat is not None:
            command, data = "BDAT", payload[: self._bdat]
            self._bdat = None
        elif self._data:
            command, data = ".", dot_unstuff(payload)
            self._data = False
        else:
            raise RuntimeError("a message was sent with no DATA or BDAT before it")
        msg = ReceivedMessage(self._sender or "", tuple(self._rcpts), data)
        accepted = bool(self._rcpts)
        self._rcpts, self._rcpt_n, self._sender = [], 0, None
        if not accepted:  # BDAT with no valid recipient
            self._answer(command, None, _NO_RCPT)
            return
        reply = self._answer(command, "end_of_data", "250 2.0.0 Ok: queued")
        if not reply:
            self._t.dropped_after_data.append(msg)
        elif reply.startswith("2"):
            self._t.messages.append(msg)

    # -- the Connection protocol -------------------------------------------

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        if self._gone:
            raise BodyNotSent("Server not connected")
        for command in commands:
            if not self._gone:
                self._command(command.decode())
        if payload and not self._gone:
            self._message(payload)

    async def read_reply(self) -> Reply:
        if not self._replies:
            if self._gone:
                raise aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
            raise aiosmtplib.SMTPReadTimeoutError("no reply is coming (nothing was asked)")
        reply = self._replies.popleft()
        if isinstance(reply, UnreadableReply):
            self._gone = True
            raise UnreadableReply(*reply.args)
        if reply.code == 421:
            self._gone = True
        return reply

    def reply_waiting(self) -> bool:
        return bool(self._replies) or self._gone

    async def reset(self) -> Reply:
        await self.send([b"RSET"])
        return await self.read_reply()

    async def noop(self) -> Reply:
        await self.send([b"NOOP"])
        return await self.read_reply()

    async def close(self) -> None:
        self._gone = True


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
    advertises (PIPELINING by default, as most servers do; add
    ``"chunking"`` to exercise ``Mailer(chunking=True)``: the reply to
    ``BDAT ... LAST`` is scripted as ``end_of_data``).
    """

    def __init__(
        self, *, extensions: Sequence[str] = ("size", "8bitmime", "smtputf8", "pipelining")
    ) -> None:
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
