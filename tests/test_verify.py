"""Mailer.verify(): each connect step against real servers on 127.0.0.1
(aiosmtpd scripted to fail each step, aiosmtpd with AUTH, Postfix's
smtp-sink), through the Mailer's own transport.  The STARTTLS certificate
cases are in test_tls.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from _sync_server import server_in_thread
from conftest import Sink
from resilient_smtp import Mailer, Reason, VerifyReport, sync
from resilient_smtp.testing import DROP, ScriptedSMTPServer


def stages(report: VerifyReport) -> list[tuple[str, bool]]:
    (relay,) = report.relays
    return [(s.stage, s.ok) for s in relay.steps]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_healthy_server_passes_every_step() -> None:
    async with ScriptedSMTPServer() as server, Mailer("127.0.0.1", server.port, tls="none") as m:
        report = await m.verify()
        assert m.pool.opened == 0  # a check is not traffic: the pool is untouched
    assert report.ok
    assert report.error is None
    assert stages(report) == [("connect", True), ("ehlo", True)]
    (relay,) = report.relays
    assert relay.steps[0].detail.startswith("220 ")
    assert "size" in relay.extensions
    assert server.commands == ["EHLO"]  # connected, EHLO, QUIT: nothing else
    assert server.messages == []


async def test_nothing_listening_fails_at_connect() -> None:
    async with Mailer("127.0.0.1", free_port(), tls="none", timeout=2) as m:
        report = await m.verify()
    assert not report.ok
    assert stages(report) == [("connect", False)]
    assert isinstance(report.error, OSError)
    assert report.classification is not None
    assert report.classification.reason is Reason.CONNECTION_ERROR


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("421 4.3.2 All server ports are busy", Reason.SERVER_BUSY),
        ("554 5.7.1 Your IP is on a blocklist", Reason.BLOCKLISTED),
    ],
)
async def test_a_refused_greeting_fails_at_connect(reply: str, reason: Reason) -> None:
    async with ScriptedSMTPServer() as server, Mailer("127.0.0.1", server.port, tls="none") as m:
        server.on("connect", reply)
        report = await m.verify()
    assert stages(report) == [("connect", False)]
    assert report.relays[0].steps[0].detail == reply  # the server's own words
    assert report.classification is not None
    assert report.classification.reason is reason


async def test_ehlo_refused_falls_back_to_helo_as_the_mailer_does() -> None:
    async with ScriptedSMTPServer() as server, Mailer("127.0.0.1", server.port, tls="none") as m:
        server.on("ehlo", "502 5.5.1 EHLO not implemented")
        report = await m.verify()
    assert report.ok
    assert stages(report) == [("connect", True), ("helo", True)]


async def test_a_dropped_ehlo_fails_at_ehlo() -> None:
    async with ScriptedSMTPServer() as server, Mailer("127.0.0.1", server.port, tls="none") as m:
        server.on("ehlo", DROP)
        report = await m.verify()
    assert stages(report) == [("connect", True), ("ehlo", False)]
    assert report.classification is not None
    assert report.classification.reason is Reason.CONNECTION_ERROR


async def test_no_starttls_fails_at_starttls() -> None:
    async with ScriptedSMTPServer() as server, Mailer("127.0.0.1", server.port) as m:
        report = await m.verify()
    assert stages(report) == [("connect", True), ("ehlo", True), ("starttls", False)]
    assert report.classification is not None
    assert report.classification.reason is Reason.TLS_REQUIRED


async def test_no_auth_offered_fails_at_auth() -> None:
    async with (
        ScriptedSMTPServer() as server,
        Mailer("127.0.0.1", server.port, tls="none", username="u", password="p") as m,
    ):
        report = await m.verify()
    assert stages(report) == [("connect", True), ("ehlo", True), ("auth", False)]
    assert "AUTH" in str(report.error)


class _Auth:
    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and data.password == b"right"
        return AuthResult(success=ok, handled=False)


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@pytest.fixture
async def auth_server() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Sink(), authenticator=_Auth(), auth_require_tls=False),
        "127.0.0.1",
        0,
    )
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(("password", "ok"), [("right", True), ("wrong", False)])
async def test_auth_with_real_credentials_checking(
    auth_server: int, password: str, ok: bool
) -> None:
    async with Mailer(
        "127.0.0.1", auth_server, tls="none", username="app", password=password
    ) as m:
        report = await m.verify()
    assert report.ok is ok
    assert stages(report) == [("connect", True), ("ehlo", True), ("auth", ok)]
    if not ok:
        assert report.classification is not None
        assert report.classification.reason is Reason.AUTH_CREDENTIALS
        assert "wrong" not in repr(report)  # the password never shows


async def test_each_relay_is_checked() -> None:
    dead = free_port()
    async with ScriptedSMTPServer() as server:
        relays = [("127.0.0.1", dead), ("127.0.0.1", server.port)]
        async with Mailer(relays, tls="none", timeout=2) as m:
            report = await m.verify()
    assert [r.ok for r in report.relays] == [False, True]
    assert not report.ok
    assert isinstance(report.error, OSError)


async def test_mx_verify_checks_each_domains_hosts() -> None:
    async def resolve(domain: str) -> list[tuple[int, str]]:
        if domain == "gone.test":
            raise LookupError("NXDOMAIN")
        return [(10, "127.0.0.1")]

    async with (
        ScriptedSMTPServer() as server,
        Mailer(mx=resolve, port=server.port, tls="none") as m,
    ):
        assert (await m.verify()).relays == ()
        report = await m.verify(domains=["ok.test", "gone.test"])
    assert [(r.host, r.ok) for r in report.relays] == [("gone.test", False), ("127.0.0.1", True)]


def test_the_sync_mailer_mirrors_verify() -> None:
    with server_in_thread() as server:
        server.on("connect", "421 4.3.2 Busy")
        with sync.Mailer("127.0.0.1", server.port, tls="none") as m:
            busy = m.verify()
            fine = m.verify()
    assert not busy.ok
    assert busy.classification is not None
    assert busy.classification.reason is Reason.SERVER_BUSY
    assert fine.ok


@pytest.mark.smtp_sink
@pytest.mark.parametrize(
    ("options", "tls", "expected"),
    [
        ((), "none", [("connect", True), ("ehlo", True)]),
        (("-e",), "none", [("connect", True), ("helo", True)]),
        ((), "starttls", [("connect", True), ("ehlo", True), ("starttls", False)]),
        (("-q", "EHLO"), "none", [("connect", True), ("ehlo", False)]),
    ],
)
async def test_against_smtp_sink(
    smtp_sink: Callable[..., Sink], options: tuple[str, ...], tls: Any, expected: Any
) -> None:
    sink = smtp_sink(*options)
    async with Mailer("127.0.0.1", sink.port, tls=tls, timeout=5) as m:
        report = await m.verify()
    assert stages(report) == expected
    assert report.ok is all(ok for _, ok in expected)
