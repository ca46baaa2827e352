"""The Django email backend, with Django configured as a test would (the
locmem backend is not used: mail goes to a real loopback SMTP server)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import smtplib
import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage as StdMessage
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

from resilient_smtp import Event, PoolLimits, Reason, RetryPolicy, SendFailed, State, sync
from resilient_smtp.testing import ScriptedSMTPServer

if not settings.configured:
    settings.configure(
        EMAIL_BACKEND="resilient_smtp.contrib.django.EmailBackend",
        DEFAULT_FROM_EMAIL="Shop <shop@example.org>",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=2525,
        RESILIENT_SMTP={},
        INSTALLED_APPS=["resilient_smtp.contrib.django"],
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


def test_messages_count_as_django_counts_them(server: ScriptedSMTPServer) -> None:
    """A message the server took for at least one recipient is sent (as
    smtplib's sendmail() returns the refused ones and Django counts it);
    each message says per recipient what happened, fail_silently or not."""
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    one = mail.EmailMessage("One", "1", "a@example.org", ["x@example.com"])
    two = mail.EmailMessage("Two", "2", "a@example.org", ["y@example.com", "gone@example.com"])
    three = mail.EmailMessage("Three", "3", "a@example.org", ["gone@example.com"])
    for fail_silently in (True, False):
        server.messages.clear()
        backend = EmailBackend(fail_silently=fail_silently)
        if fail_silently:
            assert backend.send_messages([one, two, three]) == 2
        else:
            with pytest.raises(SendFailed):  # three reached nobody
                backend.send_messages([one, two, three])
        assert sorted(server.delivered_to) == ["x@example.com", "y@example.com"]
        status = two.resilient_status
        assert status.status == {"delivered", "rejected"}
        assert status.recipients["y@example.com"].state is State.DELIVERED
        gone = status.recipients["gone@example.com"]
        assert gone.state is State.REJECTED
        assert gone.classification.reason is Reason.RECIPIENT_UNKNOWN
        assert three.resilient_status.status == {"rejected"}


def test_failure_raises_unless_fail_silently(server: ScriptedSMTPServer) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", times=None)
    with pytest.raises(smtplib.SMTPException) as info:  # what Django documents
        mail.send_mail("S", "B", "a@example.org", ["gone@example.com"])
    assert isinstance(info.value, SendFailed)
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
        # open() checks at once, as Django's does: ConnectionRefusedError.
        with pytest.raises(ConnectionError):
            EmailBackend().open()


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",  # a bare local part: refused, unlike Django (docs/sync.md)
        "to@other.com <to@example.com>",
        '"evil@example.com\r\nto"@example.com',
        "to\nevil@example.com",
    ],
)
def test_invalid_address_raises_before_any_io(server: ScriptedSMTPServer, address: str) -> None:
    for fail_silently in (False, True):  # as Django: ValueError even when silent
        with pytest.raises(ValueError, match="Invalid address"):
            mail.send_mail("S", "B", "a@example.org", [address], fail_silently=fail_silently)
    assert server.connections == 0


def test_a_display_name_is_not_mistaken_for_the_address(server: ScriptedSMTPServer) -> None:
    sent = mail.send_mail("S", "B", "a@example.org", ['"to@other.com" <to@example.com>'])
    assert sent == 1
    assert server.delivered_to == ["to@example.com"]


def test_without_resilient_smtp_every_send_mail_shares_one_mailer(
    server: ScriptedSMTPServer,
) -> None:
    """No RESILIENT_SMTP setting at all (the plainest configuration): 30
    send_mail() calls use one Mailer and at most the pool's connections."""
    with override_settings():
        del settings.RESILIENT_SMTP
        assert not hasattr(settings, "RESILIENT_SMTP")
        mailers = set()
        for i in range(30):
            assert mail.send_mail(f"n{i}", "B", "a@example.org", ["b@example.com"]) == 1
            mailers.add(id(EmailBackend().mailer))
    assert len(mailers) == 1
    assert len(server.messages) == 30
    assert 1 <= server.connections <= PoolLimits().max_connections


def test_open_connects_so_settings_checks_work(server: ScriptedSMTPServer) -> None:
    backend = EmailBackend()
    assert backend.connection is None
    assert backend.open() is True
    assert backend.connection is not None
    assert backend.open() is False
    assert server.connections == 1  # connect, EHLO, QUIT: the check
    assert server.commands == ["EHLO"]
    backend.close()
    assert backend.connection is None
    # STARTTLS required, the server has none: the same error as Django's backend.
    with pytest.raises(smtplib.SMTPNotSupportedError, match="STARTTLS extension not supported"):
        EmailBackend(use_tls=True).open()
    with pytest.raises(smtplib.SMTPNotSupportedError, match="SMTP AUTH extension not supported"):
        EmailBackend(username="u", password="p").open()


def test_open_against_nothing_listening() -> None:
    backend = EmailBackend(port=_closed_port())
    with pytest.raises(ConnectionError):
        backend.open()
    assert backend.connection is None
    backend.fail_silently = True
    assert backend.open() is None
    assert backend.connection is None
    backend.close()  # never raises


def test_credentials_are_public_attributes_as_in_django() -> None:
    with override_settings(EMAIL_HOST_USER="app", EMAIL_HOST_PASSWORD="pw"):
        backend = EmailBackend()
        assert (backend.username, backend.password) == ("app", "pw")
        assert EmailBackend(password="").password == ""
        assert "pw" not in repr(backend)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never a greeting


def test_email_timeout_bounds_the_whole_send() -> None:
    """Against a server that never greets, EMAIL_TIMEOUT bounds the send as
    it does Django's: one connect attempt, not one timeout per retry."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(_silent, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with override_settings(EMAIL_PORT=port, EMAIL_TIMEOUT=0.2, RESILIENT_SMTP={}):
            backend = EmailBackend()
            assert backend.mailer.async_mailer.retry.deadline == 0.2
            message = mail.EmailMessage("S", "B", "a@example.org", ["b@example.com"])
            with pytest.raises(SendFailed) as info:
                message.send()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
    (r,) = info.value.result
    assert r.state is State.DEFERRED
    assert r.attempts == 1
    assert info.value.result.attempts == 1


def test_the_worker_command_sends_the_outbox_with_the_email_settings(
    server: ScriptedSMTPServer, tmp_path: Path
) -> None:
    from django.core.management import call_command

    path = tmp_path / "outbox.db"
    with override_settings(RESILIENT_SMTP={**QUICK, "outbox": str(path)}):
        assert mail.send_mail("Queued", "B", "a@example.org", ["b@example.com"]) == 1
        assert server.messages == []
        sync.shutdown()  # the backend's outbox connection goes with the loop
        out = io.StringIO()
        call_command("resilient_smtp_worker", "--once", stdout=out)
    assert "handled 1 message(s)" in out.getvalue()
    assert server.delivered_to == ["b@example.com"]


def test_the_worker_command_needs_an_outbox() -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="outbox"):
        call_command("resilient_smtp_worker", "--once")


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
        shared = backend.mailer  # built without connecting
        inner = shared.async_mailer
        assert inner.relays == (("smtp.example.com", 465),)
        assert inner.retry.max_attempts == 2
        assert inner.pool.limits.max_connections == 2
        transport: Any = inner.transport
        assert transport.tls == "implicit"
        assert inner.retry.deadline == 3.0  # EMAIL_TIMEOUT=7 caps only longer ones
        assert "s3cret-pw" not in repr(backend) + repr(shared) + repr(transport)
        # Another backend with the same settings shares the Mailer (and so
        # its limiter, health and connections), even with a copy of the dict.
        assert EmailBackend().mailer is shared
        assert EmailBackend(resilient=dict(resilient)).mailer is shared
        assert EmailBackend(port=2525).mailer is not shared


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
