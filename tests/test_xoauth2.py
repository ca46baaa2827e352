"""XOAUTH2 logins against a real aiosmtpd server on 127.0.0.1.

The server offers ``AUTH XOAUTH2`` (an ``auth_XOAUTH2`` method on its
handler, aiosmtpd's hook for extra mechanisms) and records the exact
initial response, so the test checks the bytes Google's protocol
description gives: base64 of ``user=...^Aauth=Bearer ...^A^A``.  A refused
token gets the 334 error challenge (base64 JSON) and, after the client's
empty line, a 535.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from resilient_smtp import AiosmtplibTransport, Mailer, Reason, RetryPolicy, State
from resilient_smtp.testing import FakeClock

GOOD = "ya29.good-token"
ERROR_JSON = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}


class Handler:
    def __init__(self) -> None:
        self.initial: list[str] = []  # each AUTH XOAUTH2 initial response, as sent
        self.after_challenge: list[bytes] = []
        self.accepted: list[list[str]] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        self.initial.append(args[1])
        decoded = base64.b64decode(args[1]).decode()
        if decoded.endswith(f"auth=Bearer {GOOD}\x01\x01"):
            return AuthResult(success=True, auth_data=decoded)
        # Google's answer to a bad token: a 334 with a base64 JSON error,
        # then 535 once the client sends its empty line.
        answer = await server.challenge_auth(json.dumps(ERROR_JSON))
        self.after_challenge.append(answer if isinstance(answer, bytes) else b"<missing>")
        return AuthResult(
            success=False,
            handled=False,  # aiosmtpd sends the message
            message="535 5.7.8 Username and Password not accepted",
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(list(envelope.rcpt_tos))
        return "250 2.0.0 OK"


@pytest.fixture
async def server() -> AsyncIterator[tuple[Handler, int]]:
    handler = Handler()
    loop = asyncio.get_running_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = await loop.create_server(
        lambda: SMTP(handler, auth_require_tls=False, hostname="oauth.test"), "127.0.0.1", port
    )
    try:
        yield handler, port
    finally:
        srv.close()
        await srv.wait_closed()


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "me@example.org"
    msg["To"] = "you@example.org"
    msg["Subject"] = "oauth"
    msg.set_content("hi\n")
    return msg


def expected(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def test_a_sync_token_callback_logs_in_and_the_message_goes(
    server: tuple[Handler, int],
) -> None:
    handler, port = server
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return GOOD

    async with Mailer(
        "127.0.0.1", port, tls="none", username="me@example.org", oauth_token=token
    ) as mailer:
        result = await mailer.send(message())
    assert result.ok
    assert handler.initial == [expected("me@example.org", GOOD)]
    assert handler.accepted == [["you@example.org"]]
    assert calls == [1]


async def test_an_async_token_callback_is_awaited_at_each_new_connection(
    server: tuple[Handler, int],
) -> None:
    handler, port = server
    tokens = iter([GOOD, GOOD])

    async def token() -> str:
        await asyncio.sleep(0)
        return next(tokens)

    transport = AiosmtplibTransport(
        tls="none", username="me@example.org", oauth_token=token, timeout=5
    )
    for _ in range(2):
        conn = await transport.connect("127.0.0.1", port)
        await conn.close()
    assert handler.initial == [expected("me@example.org", GOOD)] * 2


async def test_a_refused_token_answers_the_error_challenge_and_fails_as_auth(
    server: tuple[Handler, int],
) -> None:
    handler, port = server
    transport = AiosmtplibTransport(
        tls="none", username="me@example.org", oauth_token=lambda: "expired", timeout=5
    )
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await transport.connect("127.0.0.1", port)
    assert info.value.code == 535
    assert "Username and Password not accepted" in info.value.message
    assert handler.initial == [expected("me@example.org", "expired")]
    assert handler.after_challenge == [b""]  # our empty line after the 334

    # Through the Mailer: a permanent authentication failure, nothing sent.
    mailer = Mailer(
        "127.0.0.1",
        port,
        tls="none",
        username="me@example.org",
        oauth_token=lambda: "expired",
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=2),
    )
    async with mailer:
        result = await mailer.send(message())
    r = result["you@example.org"]
    assert r.state in (State.REJECTED, State.DEFERRED)
    assert r.classification is not None
    assert r.classification.reason is Reason.AUTH_CREDENTIALS
    assert handler.accepted == []


def test_oauth_token_arguments_are_checked_and_kept_out_of_repr() -> None:
    with pytest.raises(ValueError, match="needs username and no password"):
        AiosmtplibTransport(oauth_token=lambda: "t")
    with pytest.raises(ValueError, match="needs username and no password"):
        AiosmtplibTransport(username="u", password="p", oauth_token=lambda: "t")
    with pytest.raises(TypeError, match="callable"):
        AiosmtplibTransport(username="u", oauth_token="ya29.not-a-callable")  # type: ignore[arg-type]
    t = AiosmtplibTransport(username="u", oauth_token=lambda: GOOD)
    assert GOOD not in repr(t)
    assert "oauth_token=<callable>" in repr(t)


async def test_a_token_callback_returning_nothing_is_a_clear_error(
    server: tuple[Handler, int],
) -> None:
    _, port = server
    transport = AiosmtplibTransport(
        tls="none",
        username="u",
        oauth_token=lambda: None,  # type: ignore[arg-type,return-value]
        timeout=5,
    )
    with pytest.raises(TypeError, match="must return the access token"):
        await transport.connect("127.0.0.1", port)
