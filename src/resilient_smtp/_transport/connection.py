"""The wire: one SMTP connection driven step by step, over aiosmtplib.

The Mailer needs every reply of a transaction, each with its stage, so it
never calls aiosmtplib's ``sendmail()`` (which loses a 421 at RCPT and the
recipients already accepted, and cannot tell a failure at DATA from one after
the final dot, which RFC 5321 §4.1.1.4 tells apart).  A :class:`Connection`
returns the server's :class:`Reply` for MAIL, RCPT, DATA and the end of the
data, and raises (aiosmtplib's ``SMTPServerDisconnected``,
``SMTPTimeoutError``, ``OSError``) only when there was no reply at all.

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
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar

import aiosmtplib

from .._classify.reply import Reply
from .._errors import BodyNotSent

__all__ = [
    "AiosmtplibTransport",
    "BodyNotSent",
    "Connection",
    "TLSMode",
    "TokenProvider",
    "Transport",
    "dot_stuff",
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


class Connection(Protocol):
    """One open SMTP session, past EHLO, STARTTLS and AUTH."""

    host: str
    created_at: float
    """When it was opened; the pool stamps it on the Mailer's clock."""
    messages: int

    def supports(self, extension: str) -> bool:
        """Whether EHLO advertised ``extension`` (case-insensitive)."""
        ...

    def is_open(self) -> bool:
        """False once the server closed the connection (an idle 421)."""
        ...

    async def mail(self, sender: str, options: Sequence[str] = ()) -> Reply: ...

    async def rcpt(self, recipient: str) -> Reply: ...

    async def data(self) -> Reply:
        """The DATA command: 354 means go ahead."""
        ...

    async def send_body(self, body: bytes) -> Reply:
        """The message and its final dot; the reply is the end-of-data one.
        ``body`` is already dot-stuffed (see :func:`dot_stuff`).  Raises
        :class:`BodyNotSent` if the connection was gone before writing."""
        ...

    async def reset(self) -> Reply: ...

    async def noop(self) -> Reply: ...

    async def close(self) -> None:
        """QUIT if possible, then close; never raises."""
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


def _reply(response: aiosmtplib.SMTPResponse) -> Reply:
    if 200 <= response.code < 400:
        # Success and "go ahead" replies are never classified: skip parsing
        # them (four of them a message).
        return Reply(response.code, None, response.message)
    return Reply.parse(response.message, code=response.code)


class _AiosmtplibConnection:
    __slots__ = ("_smtp", "_timeout", "created_at", "host", "messages")

    def __init__(self, smtp: aiosmtplib.SMTP, host: str, timeout: float):
        self._smtp = smtp
        self._timeout = timeout
        self.host = host
        self.created_at = 0.0  # the pool stamps it on its own clock
        self.messages = 0

    def supports(self, extension: str) -> bool:
        return self._smtp.supports_extension(extension)

    def is_open(self) -> bool:
        return self._smtp.is_connected

    async def _command(self, *args: bytes) -> Reply:
        # execute_command returns any reply; it raises only when there was
        # none, and closes the client itself on a 421 or a timeout.
        return _reply(await self._smtp.execute_command(*args, timeout=self._timeout))

    async def mail(self, sender: str, options: Sequence[str] = ()) -> Reply:
        return await self._command(
            b"MAIL", f"FROM:<{sender}>".encode(), *(o.encode() for o in options)
        )

    async def rcpt(self, recipient: str) -> Reply:
        return await self._command(b"RCPT", f"TO:<{recipient}>".encode())

    async def data(self) -> Reply:
        reply = await self._command(b"DATA")
        protocol = self._smtp.protocol
        if reply.code == 354 and protocol is not None:
            # Keep listening: a server may answer before it has the message
            # (smtp-sink -A sends "550" right behind the "354" and closes).
            # aiosmtplib drops a reply that comes with no command pending;
            # marked pending, it lands in the waiter send_body looks at.
            protocol._response_pending = True
        return reply

    async def send_body(self, body: bytes) -> Reply:
        # One turn of the loop lets a reply or a close that the server sent
        # right behind its 354 arrive before any of the message is written;
        # once the message is out, a close makes the recipients ambiguous.
        protocol = self._smtp.protocol
        early = bytes(getattr(protocol, "_buffer", b""))
        if not early.strip():
            await asyncio.sleep(0)
            early = bytes(getattr(protocol, "_buffer", b""))
        if early.strip():
            # A reply that came in the same read as the 354, before any of
            # the message was sent: that is the server's verdict.
            self._smtp.close()
            return Reply.parse(early.decode("utf-8", "replace"))
        waiter = getattr(protocol, "_response_waiter", None)
        if waiter is not None and waiter.done():
            # The server answered, or closed, before we sent anything.
            self._smtp.close()
            if waiter.cancelled() or waiter.exception() is not None:
                raise BodyNotSent("the server closed the connection after 354")
            return _reply(waiter.result())
        if protocol is None or not self._smtp.is_connected:
            raise BodyNotSent("the server closed the connection after 354")
        try:
            protocol.write(body)
            response = await protocol.read_response(timeout=self._timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self._smtp.close()
            raise
        if response.code == 421:
            self._smtp.close()
        return _reply(response)

    async def reset(self) -> Reply:
        return await self._command(b"RSET")

    async def noop(self) -> Reply:
        return await self._command(b"NOOP")

    async def close(self) -> None:
        try:
            if self._smtp.is_connected:
                # QUIT is a courtesy; the socket goes anyway, also when the
                # caller is cancelled while waiting for the reply.
                with contextlib.suppress(Exception):
                    await self._smtp.quit(timeout=min(self._timeout, 5.0))
        finally:
            self._smtp.close()

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
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
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
        return _AiosmtplibConnection(smtp, host, self.timeout)


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
