"""The Django email backend, with Django configured as a test would (the
locmem backend is not used: mail goes to a real loopback SMTP server)."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage as StdMessage
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

from resilient_smtp import Event, RetryPolicy, SendFailed, sync
from resilient_smtp.testing import ScriptedSMTPServer

if not settings.configured:
    settings.configure(
        EMAIL_BACKEND="resilient_smtp.contrib.django.EmailBackend",
        DEFAULT_FROM_EMAIL="Shop <shop@example.org>",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=2525,
        RESILIENT_SMTP={},
    )
    django.setup()

from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.test.utils import override_settings

from _sync_server import server_in_thread
from resilient_smtp.contrib.django import EmailBackend

QUICK = {"retry": RetryPolicy(max_attempts=3, deadline=5.0, base=0.01, cap=0.05)}


@pytest.fixture
def server() -> Iterator[ScriptedSMTPServer]:
    with (
        server_in_thread() as s,
        override_settings(EMAIL_HOST="127.0.0.1", EMAIL_PORT=s.port, RESILIENT_SMTP=QUICK),
    ):
        yield s


def parsed(data: bytes) -> StdMessage:
    m = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(m, StdMessage)
    return m


def test_send_mail_goes_through_the_backend(server: ScriptedSMTPServer) -> None:
    assert mail.get_connection().__class__ is EmailBackend
    sent = mail.send_mail("Receipt", "Thank you.\n", None, ["Alice <alice@example.com>"])
    assert sent == 1
    (got,) = server.messages
    assert got.sender == "shop@example.org"
    assert got.recipients == ("alice@example.com",)
    m = parsed(got.data)
    assert m["Subject"] == "Receipt"
    assert m["From"] == "Shop <shop@example.org>"
    assert m.get_content().splitlines() == ["Thank you."]
    assert b"\r\n" in got.data


def test_bcc_is_in_the_envelope_not_the_headers(server: ScriptedSMTPServer) -> None:
    message = mail.EmailMessage(
        "Hi", "Body", "a@example.org", ["to@example.com"], bcc=["hidden@example.com"]
    )
    assert message.send() == 1
    (got,) = server.messages
    assert got.recipients == ("to@example.com", "hidden@example.com")
    assert b"hidden@example.com" not in got.data


def test_send_mass_mail_counts_messages_delivered_to_everyone(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    datatuple = [
        ("One", "1", "a@example.org", ["x@example.com"]),
        ("Two", "2", "a@example.org", ["y@example.com", "gone@example.com"]),
        ("Three", "3", "a@example.org", ["z@example.com"]),
    ]
    assert mail.send_mass_mail(datatuple, fail_silently=True) == 2
    # The partly refused message still went to y (a partial success).
    assert sorted(server.delivered_to) == ["x@example.com", "y@example.com", "z@example.com"]


def test_failure_raises_unless_fail_silently(server: ScriptedSMTPServer) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", times=None)
    with pytest.raises(SendFailed) as info:
        mail.send_mail("S", "B", "a@example.org", ["gone@example.com"])
    assert info.value.result.rejected == ("gone@example.com",)
    assert mail.send_mail("S", "B", "a@example.org", ["gone@example.com"], fail_silently=True) == 0


def test_transient_failures_are_retried(server: ScriptedSMTPServer) -> None:
    server.on("rcpt", "451 4.3.0 Temporary local problem", times=2)
    assert mail.send_mail("S", "B", "a@example.org", ["b@example.com"]) == 1
    assert server.delivered_to == ["b@example.com"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_fails_silently_when_asked() -> None:
    with override_settings(EMAIL_PORT=_closed_port(), RESILIENT_SMTP=QUICK):
        assert mail.send_mail("S", "B", "a@example.org", ["b@example.com"], True) == 0
        with pytest.raises(SendFailed, match="deferred"):
            mail.send_mail("S", "B", "a@example.org", ["b@example.com"])


def test_invalid_address_raises_before_any_io(server: ScriptedSMTPServer) -> None:
    with pytest.raises(Exception, match="not a valid address"):
        mail.send_mail("S", "B", "a@example.org", ["no-at-sign"])
    assert server.connections == 0


def test_settings_map_to_the_mailer() -> None:
    events: list[Event] = []
    resilient = {
        "retry": {"max_attempts": 2, "deadline": 3.0},
        "pool": {"max_connections": 2},
        "hooks": [events.append],
    }
    with override_settings(
        EMAIL_HOST="smtp.example.com",
        EMAIL_PORT=465,
        EMAIL_USE_SSL=True,
        EMAIL_HOST_USER="app",
        EMAIL_HOST_PASSWORD="s3cret-pw",
        EMAIL_TIMEOUT=7,
        RESILIENT_SMTP=resilient,
    ):
        backend = EmailBackend()
        assert backend.open() is True
        assert backend.open() is False
        shared = backend._shared
        assert shared is not None
        inner = shared.mailer.async_mailer
        assert inner.relays == (("smtp.example.com", 465),)
        assert inner.retry.max_attempts == 2
        assert inner.pool.limits.max_connections == 2
        transport: Any = inner.transport
        assert transport.tls == "implicit"
        assert "s3cret-pw" not in repr(backend) + repr(shared.mailer) + repr(transport)
        # Another backend with the same settings shares the Mailer (and so
        # its limiter, health and connections).
        other = EmailBackend()
        other.open()
        assert other._shared is shared
        backend.close()
        other.close()
        assert EmailBackend(port=2525).open() and True


def test_tls_modes() -> None:
    assert EmailBackend(use_tls=True, use_ssl=False)._tls() == "starttls"
    assert EmailBackend(use_tls=False, use_ssl=True)._tls() == "implicit"
    assert EmailBackend(use_tls=False, use_ssl=False)._tls() == "none"
    with pytest.raises(ValueError, match="mutually exclusive"):
        EmailBackend(use_tls=True, use_ssl=True)


def test_bad_resilient_settings_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown key.*'retries'"):
        EmailBackend(resilient={"retries": 3})
    with pytest.raises(ImproperlyConfigured, match=r"RESILIENT_SMTP\['retry'\]"):
        EmailBackend(resilient={"retry": {"max_attempts": "many", "bogus": 1}})
    with pytest.raises(ImproperlyConfigured, match="must be a PoolLimits"):
        EmailBackend(resilient={"pool": 4})
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        EmailBackend(resilient=[("retry", None)])  # type: ignore[arg-type]


def test_empty_and_recipientless_messages() -> None:
    backend = EmailBackend()
    assert backend.send_messages([]) == 0
    assert backend.send_messages([mail.EmailMessage("S", "B", "a@example.org", [])]) == 0


def test_from_inside_an_event_loop_is_a_clear_error(server: ScriptedSMTPServer) -> None:
    import asyncio

    async def view() -> None:
        mail.send_mail("S", "B", "a@example.org", ["b@example.com"])

    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(view())
    assert server.messages == []


class MemoryQueue:
    """An outbox stand-in: anything with an async put() is accepted."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, str, list[str]]] = []

    async def put(self, message: bytes, *, sender: str, recipients: list[str]) -> str:
        self.items.append((message, sender, recipients))
        return str(len(self.items))


def test_with_an_outbox_messages_are_queued_not_sent(server: ScriptedSMTPServer) -> None:
    queue = MemoryQueue()
    with override_settings(RESILIENT_SMTP={**QUICK, "outbox": queue}):
        sent = mail.send_mail("Later", "B", "Shop <a@example.org>", ["b@example.com"])
    assert sent == 1
    assert server.messages == []
    ((body, sender, recipients),) = queue.items
    assert (sender, recipients) == ("a@example.org", ["b@example.com"])
    assert parsed(body)["Subject"] == "Later"


def test_with_a_sqlite_outbox_a_worker_sends_later(
    server: ScriptedSMTPServer, tmp_path: Path
) -> None:
    from resilient_smtp import Mailer
    from resilient_smtp.outbox import Outbox

    path = tmp_path / "outbox.db"
    with override_settings(RESILIENT_SMTP={**QUICK, "outbox": str(path)}):
        assert mail.send_mail("Queued", "B", "a@example.org", ["b@example.com"]) == 1
    assert server.messages == []

    async def work() -> int:
        async with (
            Outbox(path) as outbox,
            Mailer("127.0.0.1", server.port, tls="none") as mailer,
        ):
            return await outbox.run_once(mailer)

    sync.shutdown()  # the backend's outbox is closed with the loop
    import asyncio

    assert asyncio.run(work()) >= 1
    assert server.delivered_to == ["b@example.com"]
