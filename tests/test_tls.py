"""STARTTLS for real: an aiosmtpd server on 127.0.0.1 with a self-signed
certificate made by openssl for this test run.

The Mailer and ``python -m resilient_smtp check`` must verify the
certificate by default (and refuse this one), and succeed when the caller's
SSL context trusts it.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from resilient_smtp import Mailer, Reason, State
from resilient_smtp._cli.check import check_server, render
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer


@dataclass
class Cert:
    cert: Path
    key: Path

    def trusting_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed to make a test certificate"
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return Cert(cert, key)


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, ...]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(tuple(envelope.rcpt_tos))
        return "250 2.0.0 OK"


@dataclass
class TLSServer:
    port: int
    sink: _Sink


@pytest.fixture
async def tls_server(cert: Cert) -> AsyncIterator[TLSServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    sink = _Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="tls.test", tls_context=ctx, require_starttls=True),
        "127.0.0.1",
        0,
    )
    yield TLSServer(server.sockets[0].getsockname()[1], sink)
    server.close()
    await server.wait_closed()


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = "a@example.com"
    msg["Subject"] = "tls"
    msg.set_content("over TLS")
    return msg


async def test_mailer_verifies_the_certificate_by_default(tls_server: TLSServer) -> None:
    async with Mailer("127.0.0.1", tls_server.port, clock=FakeClock()) as mailer:
        result = await mailer.send(message())
    r = result["a@example.com"]
    # A certificate that does not verify is a setting to fix, not a verdict
    # on the recipient: deferred, and named in the result.
    assert r.state is State.DEFERRED
    assert r.classification is not None
    assert r.classification.reason is Reason.TLS_REQUIRED
    assert "certificate" in r.classification.explanation
    assert result.configuration_errors and "certificate" in result.configuration_errors[0]
    assert tls_server.sink.received == []


async def test_mailer_sends_over_starttls_with_a_trusted_certificate(
    tls_server: TLSServer, cert: Cert
) -> None:
    async with Mailer(
        "127.0.0.1", tls_server.port, tls_context=cert.trusting_context(), clock=FakeClock()
    ) as mailer:
        result = await mailer.send(message())
    assert result.ok
    assert tls_server.sink.received == [("a@example.com",)]


async def test_check_reports_a_certificate_that_does_not_verify(tls_server: TLSServer) -> None:
    report = await check_server("127.0.0.1", tls_server.port, timeout=5)
    assert not report.ok
    (relay,) = report.relays
    assert "STARTTLS" in {k.upper() for k in relay.extensions}
    assert [(s.stage, s.ok) for s in relay.steps][-1] == ("starttls", False)
    assert report.classification is not None
    assert report.classification.reason is Reason.TLS_REQUIRED
    assert "certificate" in render(report)


async def test_mailer_verify_reports_the_certificate_like_a_send(tls_server: TLSServer) -> None:
    async with Mailer("127.0.0.1", tls_server.port, timeout=5) as mailer:
        report = await mailer.verify()
    assert report.classification is not None
    assert report.classification.reason is Reason.TLS_REQUIRED
    assert isinstance(report.error, ssl.SSLError) or isinstance(
        report.error.__cause__ if report.error else None, ssl.SSLError
    )


async def test_check_passes_with_a_trusted_certificate(tls_server: TLSServer, cert: Cert) -> None:
    report = await check_server(
        "127.0.0.1", tls_server.port, timeout=5, tls_context=cert.trusting_context()
    )
    assert report.ok, render(report)
    (relay,) = report.relays
    assert [(s.stage, s.ok) for s in relay.steps] == [
        ("connect", True),
        ("ehlo", True),
        ("starttls", True),
        ("ehlo", True),
    ]
    assert "the certificate verified" in render(report)


async def test_check_refuses_a_server_without_starttls() -> None:
    async with ScriptedSMTPServer() as server:
        report = await check_server("127.0.0.1", server.port, timeout=5)
    assert report.classification is not None
    assert report.classification.reason is Reason.TLS_REQUIRED
    assert "STARTTLS" in render(report)


async def test_check_explains_a_busy_greeting() -> None:
    async with ScriptedSMTPServer() as server:
        server.on("connect", "421 4.3.2 All server ports are busy")
        report = await check_server("127.0.0.1", server.port, tls="none", timeout=5)
    assert report.classification is not None
    assert report.classification.reason is Reason.SERVER_BUSY
    assert report.classification.session_over


async def test_check_with_tls_none_lists_the_extensions() -> None:
    async with ScriptedSMTPServer() as server:
        report = await check_server("127.0.0.1", server.port, tls="none", timeout=5)
    assert report.ok
    assert "size" in report.relays[0].extensions


async def test_check_command_line(tls_server: TLSServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "resilient_smtp",
        "check",
        f"127.0.0.1:{tls_server.port}",
        "--timeout",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 1, err.decode()
    assert "[ok] connect: 220" in text
    assert "tls_required" in text
    assert "certificate" in text
