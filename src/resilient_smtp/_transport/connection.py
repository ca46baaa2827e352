"""The wire: one SMTP connection, its commands and the reading of its replies.

The Mailer needs every reply of a transaction, each with its stage, so it
never calls aiosmtplib's ``sendmail()`` (which loses a 421 at RCPT and the
recipients already accepted, and cannot tell a failure at DATA from one after
the final dot, which RFC 5321 §4.1.1.4 tells apart).  aiosmtplib opens the
session (connect, EHLO, STARTTLS, AUTH: what it does well, through its public
API); then the connection takes the socket over (``SMTP.transport`` and the
asyncio ``set_protocol()``) and reads replies with its own parser
(:mod:`.replies`), so it knows which bytes answer which command.  That is what
pipelining needs (RFC 2920: a flight of commands, replies read back in order)
and what keeps a reply sent before the message from passing for the verdict
on it.

A :class:`Connection` writes flights (:meth:`Connection.send`) and reads the
replies one by one (:meth:`Connection.read_reply`), which raises only when
there was no reply: ``aiosmtplib.SMTPServerDisconnected``,
``aiosmtplib.SMTPReadTimeoutError`` or :class:`UnreadableReply`.  The
transaction (:mod:`.transaction`) decides what to send and what each reply
means.

:class:`Transport` opens connections; tests swap in
``resilient_smtp.testing.ScriptedTransport``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar, cast

import aiosmtplib

from .._checks import positive_number
from .._classify.reply import Reply
from .._errors import BodyNotSent
from .replies import ReplyParser, UnreadableReply

__all__ = [
    "AiosmtplibTransport",
    "BodyNotSent",
    "Connection",
    "TLSMode",
    "TokenProvider",
    "Transport",
    "UnreadableReply",
    "dot_stuff",
    "dot_unstuff",
]

TLSMode = Literal["starttls", "implicit", "none"]

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns a fresh OAuth2 access token (sync or async); called at every login."""

StepHook = Callable[[str, "aiosmtplib.SMTPResponse | None"], None]
"""Told ``(stage, None)`` as each connect step starts and ``(stage, reply)``
when it succeeded: how :meth:`Mailer.verify` reports the steps of the very
path the Mailer connects by."""

_R = TypeVar("_R")

_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_STUFFED_DOT = re.compile(rb"^\.\.", re.MULTILINE)


def dot_stuff(body: bytes) -> bytes:
    """CRLF line endings, a dot doubled at the start of a line, and the
    terminating ``CRLF.CRLF`` (RFC 5321 §4.5.2)."""
    crlf = body.count(b"\r\n")
    if crlf != body.count(b"\n") or crlf != body.count(b"\r"):
        body = _LINE_ENDINGS.sub(b"\r\n", body)
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def dot_unstuff(stuffed: bytes) -> bytes:
    """The message as :func:`dot_stuff` got it, with CRLF line endings: what
    ``BDAT`` sends (RFC 3030 §2: chunks are not dot-stuffed)."""
    if stuffed.endswith(b"\r\n.\r\n"):
        stuffed = stuffed[:-3]
    if stuffed.startswith(b"..") or b"\n.." in stuffed:
        stuffed = _STUFFED_DOT.sub(b".", stuffed)
    return stuffed


class Connection(Protocol):
    """One open SMTP session, past EHLO, STARTTLS and AUTH.

    Commands go out in flights and replies come back in order: a caller
    that sends ``n`` commands reads ``n`` replies (fewer if the session ends
    half-way).  Without PIPELINING a flight is one command.
    """

    host: str
    created_at: float
    """When it was opened; the pool stamps it on the Mailer's clock."""
    messages: int
    """Messages the server accepted on this connection."""

    def supports(self, extension: str) -> bool:
        """Whether EHLO advertised ``extension`` (case-insensitive)."""
        ...

    def is_open(self) -> bool:
        """False once the server closed the connection (an idle 421)."""
        ...

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        """Write ``commands`` (each without its CRLF) and then ``payload``
        (a dot-stuffed message after a 354, a ``BDAT`` chunk) in one write:
        one flight.  Raises :class:`BodyNotSent` if the connection was
        already closed, so nothing of the flight left."""
        ...

    async def read_reply(self) -> Reply:
        """The next reply, in the order the server sent them.  Raises when
        there is none: the connection dropped, timed out, or sent something
        that is not a reply (:class:`UnreadableReply`); the connection is
        closed then, as after a 421."""
        ...

    def reply_waiting(self) -> bool:
        """A reply (or the close) has arrived that nobody read yet: after
        the last reply a flight asked for, that is the server speaking out
        of turn."""
        ...

    async def reset(self) -> Reply: ...

    async def noop(self) -> Reply: ...

    async def close(self) -> None:
        """QUIT if the session is between transactions, then close; never
        raises."""
        ...


class Transport(Protocol):
    """Opens connections to a destination.

    :meth:`aclose` has a default: subclass ``Transport`` to inherit it.
    """

    __slots__ = ()

    async def connect(self, host: str, port: int) -> Connection:
        """Connect, EHLO, STARTTLS and AUTH as configured.  A failure raises
        the aiosmtplib exception, whose type tells the stage."""
        ...

    async def aclose(self) -> None:
        """Release what the transport holds beyond its connections (which
        the pool closes).  The Mailer calls it on close.  Default: nothing."""
        return


class _Wire(asyncio.Protocol):
    """The asyncio protocol of a taken-over connection: bytes in, replies
    queued in order; write flow control for large messages."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parser = ReplyParser()
        self.replies: deque[Reply | UnreadableReply] = deque()
        self.lost: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        items = self.parser.feed(data)
        if items:
            self.replies.extend(items)
            if isinstance(items[-1], UnreadableReply):
                self.transport.close()
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = f"Connection lost: {exc}" if exc else "Unexpected EOF received"
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def closed(self) -> bool:
        return self.lost is not None or self.transport.is_closing()

    async def next(self, timeout: float) -> Reply:
        if not self.replies:
            if self.closed():
                raise aiosmtplib.SMTPServerDisconnected(self.lost or "Connection closed")
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self.replies:
                self.transport.close()
                if self.lost is not None:
                    raise aiosmtplib.SMTPServerDisconnected(self.lost)
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        item = self.replies.popleft()
        if isinstance(item, UnreadableReply):
            raise UnreadableReply(*item.args)
        if item.code == 421:
            self.transport.close()  # RFC 5321 §3.8: the server closes after 421
        return item

    async def write(self, data: bytes) -> None:
        if self.closed():
            raise BodyNotSent(self.lost or "the connection is closed")
        self.transport.write(data)
        if self._drain is not None and not self._drain.done():
            await self._drain
            if self.lost is not None:
                raise aiosmtplib.SMTPServerDisconnected(self.lost)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _WireConnection:
    """A :class:`Connection` over a socket taken over from aiosmtplib."""

    __slots__ = ("_extensions", "_owed", "_timeout", "_wire", "created_at", "host", "messages")

    def __init__(
        self, transport: asyncio.BaseTransport, extensions: set[str], host: str, timeout: float
    ) -> None:
        self._wire = _Wire(cast(asyncio.Transport, transport))
        transport.set_protocol(self._wire)
        self._extensions = extensions
        self._timeout = timeout
        self._owed = 0  # replies the commands sent so far still wait for
        self.host = host
        self.created_at = 0.0  # the pool stamps it on its own clock
        self.messages = 0

    def supports(self, extension: str) -> bool:
        return extension.lower() in self._extensions

    def is_open(self) -> bool:
        return not self._wire.closed()

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        data = b"".join([b"%s\r\n" % c for c in commands]) + payload if commands else payload
        await self._wire.write(data)
        self._owed += len(commands)

    async def read_reply(self) -> Reply:
        reply = await self._wire.next(self._timeout)
        # Counted once read: a read cancelled before its reply came leaves
        # it owed, so close() sends no QUIT that would be read in its place.
        self._owed -= 1
        if reply.code == 354:
            self._owed += 1  # the server now reads a message, then answers it
        return reply

    def reply_waiting(self) -> bool:
        return bool(self._wire.replies) or self._wire.parser.pending or self._wire.closed()

    async def _command(self, command: bytes) -> Reply:
        await self.send([command])
        return await self.read_reply()

    async def reset(self) -> Reply:
        return await self._command(b"RSET")

    async def noop(self) -> Reply:
        return await self._command(b"NOOP")

    async def close(self) -> None:
        try:
            if self._owed <= 0 and not self._wire.closed():
                # QUIT is a courtesy, and only between transactions (mid-flight
                # the server would read it as part of the message); the socket
                # goes anyway, also when the caller is cancelled meanwhile.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._command(b"QUIT"), min(self._timeout, 5.0))
        finally:
            self._wire.transport.close()

    def __repr__(self) -> str:
        return f"<Connection {self.host} messages={self.messages}>"


class AiosmtplibTransport(Transport):
    """Connections over aiosmtplib.

    ``tls="starttls"`` (the default) requires STARTTLS and verifies the
    certificate: a server that does not offer it gets no mail (aiosmtplib
    raises ``SMTPNotSupported``, classified ``tls_required``), never a silent
    plaintext fallback.  ``"implicit"`` is TLS from the first byte (port
    465); ``"none"`` is plaintext, for loopback test servers.
    ``oauth_token`` (with ``username``, instead of ``password``) logs in with
    XOAUTH2, as Gmail and Microsoft 365 ask: it is called for a fresh token
    at each new connection.  The password and tokens are kept out of ``repr()``.
    """

    def __init__(
        self,
        *,
        tls: TLSMode = "starttls",
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        local_hostname: str | None = None,
        oauth_token: TokenProvider | None = None,
    ) -> None:
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"tls must be 'starttls', 'implicit' or 'none', not {tls!r}")
        if oauth_token is not None:
            if username is None or password is not None:
                raise ValueError("oauth_token needs username and no password")
            if not callable(oauth_token):
                raise TypeError("oauth_token is a callable that returns a fresh access token")
        elif (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        timeout = positive_number("timeout", timeout)
        self.tls: TLSMode = tls
        self.username = username
        self._password = password
        self.tls_context = tls_context
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._oauth_token = oauth_token

    def __repr__(self) -> str:
        secret = "oauth_token=<callable>" if self._oauth_token else "password='***'"
        auth = f", username={self.username!r}, {secret}" if self.username else ""
        return f"AiosmtplibTransport(tls={self.tls!r}{auth}, timeout={self.timeout})"

    async def connect(
        self, host: str, port: int, *, on_step: StepHook | None = None
    ) -> Connection:
        def begin(stage: str) -> None:
            if on_step is not None:
                on_step(stage, None)

        async def step(stage: str, call: Awaitable[_R]) -> _R:
            begin(stage)
            reply = await call
            if on_step is not None:
                on_step(stage, reply if isinstance(reply, aiosmtplib.SMTPResponse) else None)
            return reply

        smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            use_tls=self.tls == "implicit",
            start_tls=False,
            validate_certs=True,
            tls_context=self.tls_context,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )
        try:
            await step("connect", smtp.connect())
            try:
                await step("ehlo", smtp.ehlo())
            except aiosmtplib.SMTPHeloError as exc:
                # RFC 5321 §4.1.1.1: a server that refuses EHLO with a 5xx
                # (other than a closing 421) may still speak plain HELO.
                if exc.code == 421 or exc.code < 500:
                    raise
                await step("helo", smtp.helo())
            if self.tls == "starttls":
                begin("starttls")
                if not smtp.supports_extension("starttls"):
                    raise aiosmtplib.SMTPNotSupported(
                        f"{host} does not offer STARTTLS and tls='starttls' requires it"
                    )
                await step("starttls", smtp.starttls(tls_context=self.tls_context))
                await step("ehlo", smtp.ehlo())
            if self.username is not None and (
                self._oauth_token is not None or self._password is not None
            ):
                begin("auth")
                if not smtp.supports_extension("auth"):
                    raise aiosmtplib.SMTPNotSupported(f"{host} does not offer AUTH")
                if self._oauth_token is not None:
                    await step(
                        "auth", _xoauth2(smtp, self.username, self._oauth_token, self.timeout)
                    )
                else:
                    assert self._password is not None
                    await step("auth", smtp.login(self.username, self._password))
        except BaseException:
            smtp.close()
            raise
        return _take_over(smtp, host, self.timeout)


def _take_over(smtp: aiosmtplib.SMTP, host: str, timeout: float) -> Connection:
    """From here on the connection reads its own replies: aiosmtplib's
    protocol is detached from the socket (public ``SMTP.transport`` and
    asyncio's ``BaseTransport.set_protocol``)."""
    transport = smtp.transport
    if transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("the server closed the connection")
    extensions = {e.lower() for e in smtp.esmtp_extensions}
    return _WireConnection(transport, extensions, host, timeout)


async def _xoauth2(
    smtp: aiosmtplib.SMTP, username: str, token: TokenProvider, timeout: float
) -> None:
    """AUTH XOAUTH2 with a fresh token (Google's "OAuth 2.0 Mechanism",
    developers.google.com/gmail/imap/xoauth2-protocol, which Microsoft 365
    also speaks): the initial response is base64 of
    ``user={user}^Aauth=Bearer {token}^A^A``.  A refused token gets a 334
    challenge carrying a base64 JSON error; the client answers with an empty
    line and the server sends the final 5xx.  Written here rather than with
    aiosmtplib's ``auth_xoauth2``, which older supported versions lack."""
    value = token()
    access = await value if inspect.isawaitable(value) else value
    if not isinstance(access, str) or not access:
        raise TypeError("oauth_token() must return the access token, a non-empty str")
    blob = base64.b64encode(f"user={username}\x01auth=Bearer {access}\x01\x01".encode())
    reply = await smtp.execute_command(b"AUTH", b"XOAUTH2", blob, timeout=timeout)
    if reply.code == 334:
        # The error challenge (base64 JSON: status, schemes, scope); the
        # final reply after our empty line is the one to classify.
        reply = await smtp.execute_command(b"", timeout=timeout)
    if reply.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)
