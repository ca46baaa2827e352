"""The Mailer against a real aiosmtpd server on 127.0.0.1, scripted per stage.

Waits go through a FakeClock, so retries take no real time; the network is
real (loopback).  Every test checks each recipient's final state and what
the server actually accepted: nothing lost, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest

from resilient_smtp import (
    ConcurrencyLimiter,
    Event,
    InvalidMessageError,
    Mailer,
    PoolLimits,
    Reason,
    RetryPolicy,
    SendFailed,
    State,
)
from resilient_smtp.testing import DROP, FakeClock, ScriptedSMTPServer

SENDER = "app@example.org"


def make_message(*to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("Hi there.\n.a line starting with a dot\n")
    return msg


@pytest.fixture
async def server() -> AsyncIterator[ScriptedSMTPServer]:
    async with ScriptedSMTPServer() as s:
        yield s


def fast_policy(**kw: object) -> RetryPolicy:
    # Greylisting's 5-minute floor is lowered so the fake clock's deadline
    # leaves room for a retry.
    defaults: dict[str, object] = {
        "max_attempts": 4,
        "deadline": 3600.0,
        "min_waits": {Reason.GREYLISTED: 60.0},
    }
    defaults.update(kw)
    return RetryPolicy(**defaults)  # type: ignore[arg-type]


class Recorder:
    """Collects the events of a Mailer; ``retries`` are the policy's waits."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def retries(self) -> list[float]:
        return [e.data["delay"] for e in self.events if e.kind == "retry"]


def mailer_for(
    server: ScriptedSMTPServer, clock: FakeClock, rec: Recorder | None = None, **kw: Any
) -> Mailer:
    kw.setdefault("retry", fast_policy())
    return Mailer(
        "127.0.0.1",
        server.port,
        tls="none",
        clock=clock,
        hooks=[rec] if rec is not None else [],
        **kw,
    )


async def test_delivers_to_every_recipient(server: ScriptedSMTPServer) -> None:
    rec = Recorder()
    async with mailer_for(server, FakeClock(), rec) as mailer:
        result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.ok
    assert result.delivered == ("a@example.com", "b@example.com")
    assert result["a@example.com"].attempts == 1
    assert len(server.messages) == 1
    assert server.messages[0].recipients == ("a@example.com", "b@example.com")
    assert b"\r\n..a line starting with a dot" not in server.messages[0].data  # un-stuffed
    assert rec.retries == []


async def test_connection_is_reused_across_sends(server: ScriptedSMTPServer) -> None:
    async with mailer_for(server, FakeClock()) as mailer:
        for i in range(5):
            assert (await mailer.send(make_message(f"u{i}@example.com"))).ok
        assert mailer.pool.opened == 1
    assert server.connections == 1
    assert len(server.messages) == 5


async def test_421_at_third_rcpt_keeps_replies_and_never_resends(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    server.on("rcpt", "421 4.7.0 Try again later, closing connection", nth=3)
    clock, rec = FakeClock(), Recorder()
    rcpts = ["a@example.com", "gone@example.com", "c@example.com", "d@example.com"]
    async with mailer_for(server, clock, rec) as mailer:
        result = await mailer.send(make_message(*rcpts))
    assert result["gone@example.com"].state is State.REJECTED
    assert result["gone@example.com"].classification is not None
    assert result["gone@example.com"].classification.reason is Reason.RECIPIENT_UNKNOWN
    assert set(result.delivered) == {"a@example.com", "c@example.com", "d@example.com"}
    # Exactly one copy per deliverable recipient reached the server.
    assert Counter(server.delivered_to) == Counter(
        ["a@example.com", "c@example.com", "d@example.com"]
    )
    assert server.connections == 2  # the 421 closed the first session
    assert result.attempts == 2
    assert len(rec.retries) == 1


async def test_partial_refusal_retries_only_the_refused_transient(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "450 4.7.1 Greylisted, try again later", recipient="b@example.com")
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec) as mailer:
        result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.ok
    assert result["a@example.com"].attempts == 1
    assert result["b@example.com"].attempts == 2
    assert result["b@example.com"].classification is not None
    assert result["b@example.com"].classification.reason is Reason.GREYLISTED
    assert [m.recipients for m in server.messages] == [("a@example.com",), ("b@example.com",)]
    assert rec.retries and rec.retries[0] >= 60.0  # the greylisting floor


async def test_greylisting_past_the_deadline_is_deferred_with_a_retry_time(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "450 4.2.0 Greylisted, see http://postgrey.example/", times=None)
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec, retry=RetryPolicy(deadline=30.0)) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    outcome = result["a@example.com"]
    assert outcome.state is State.DEFERRED
    assert outcome.retry_in is not None and outcome.retry_in >= 30.0
    assert server.messages == []
    with pytest.raises(SendFailed, match="deferred"):
        result.raise_for_failures()


async def test_drop_after_end_of_data_is_ambiguous_and_not_resent(
    server: ScriptedSMTPServer,
) -> None:
    server.on("end_of_data", DROP)
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec) as mailer:
        result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.ambiguous == ("a@example.com", "b@example.com")
    assert len(server.dropped_after_data) == 1
    assert server.messages == []  # no second copy was sent
    assert server.commands.count("DATA") == 1


async def test_resend_ambiguous_opt_in(server: ScriptedSMTPServer) -> None:
    server.on("end_of_data", DROP)
    async with mailer_for(server, FakeClock(), resend_ambiguous=True) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    assert result.delivered == ("a@example.com",)
    assert len(server.dropped_after_data) == 1
    assert len(server.messages) == 1


async def test_too_many_recipients_splits_the_transaction(server: ScriptedSMTPServer) -> None:
    server.on("rcpt", "452 4.5.3 Error: too many recipients", nth=3, times=None)
    clock, rec = FakeClock(), Recorder()
    rcpts = [f"r{i}@example.com" for i in range(7)]
    async with mailer_for(server, clock, rec) as mailer:
        result = await mailer.send(make_message(*rcpts))
    assert result.ok
    assert [len(m.recipients) for m in server.messages] == [2, 2, 2, 1]
    assert Counter(server.delivered_to) == Counter(rcpts)
    assert rec.retries == []  # a split is not a failure


async def test_permanent_failure_at_mail_rejects_everyone(server: ScriptedSMTPServer) -> None:
    server.on("mail", "553 5.1.8 Sender address rejected: Domain not found", times=None)
    async with mailer_for(server, FakeClock()) as mailer:
        result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.rejected == ("a@example.com", "b@example.com")
    c = result["a@example.com"].classification
    assert c is not None and c.reason is Reason.SENDER_REJECTED
    assert result.attempts == 1


async def test_421_greeting_then_success_on_reconnect(server: ScriptedSMTPServer) -> None:
    server.on("connect", "421 4.3.2 All server ports are busy")
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    assert result.ok
    assert server.connections == 2
    assert result["a@example.com"].classification is not None
    assert result["a@example.com"].classification.reason is Reason.SERVER_BUSY


async def test_idle_connection_closed_by_server_is_replaced_without_a_failure(
    server: ScriptedSMTPServer,
) -> None:
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec) as mailer:
        assert (await mailer.send(make_message("a@example.com"))).ok
        # The server drops the idle session with a 421 at the next command.
        server.on("mail", "421 4.4.2 scripted.test Error: timeout exceeded")
        result = await mailer.send(make_message("b@example.com"))
    assert result.ok
    assert result["b@example.com"].attempts == 1
    assert rec.retries == []
    assert len(server.messages) == 2


async def test_policy_gives_up_after_max_attempts(server: ScriptedSMTPServer) -> None:
    server.on("mail", "451 4.3.0 Temporary local problem - please try later", times=None)
    clock, rec = FakeClock(), Recorder()
    async with mailer_for(server, clock, rec, retry=fast_policy(max_attempts=3)) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    outcome = result["a@example.com"]
    assert outcome.state is State.DEFERRED
    assert outcome.attempts == 3
    assert server.commands.count("MAIL") == 3
    assert len(rec.retries) == 2


async def test_bad_input_fails_before_any_traffic(server: ScriptedSMTPServer) -> None:
    async with mailer_for(server, FakeClock()) as mailer:
        with pytest.raises(InvalidMessageError, match="no recipients"):
            await mailer.send(make_message(), recipients=[])
        with pytest.raises(InvalidMessageError, match="CR, LF"):
            await mailer.send(make_message("a@example.com"), recipients=["a@x.com\r\nDATA"])
        with pytest.raises(InvalidMessageError, match="not a valid address"):
            await mailer.send(make_message("not-an-address"))
        no_from = EmailMessage()
        no_from["To"] = "a@example.com"
        with pytest.raises(InvalidMessageError, match="no From"):
            await mailer.send(no_from)
    assert server.connections == 0


async def test_bcc_is_delivered_but_not_shown(server: ScriptedSMTPServer) -> None:
    msg = make_message("a@example.com")
    msg["Bcc"] = "secret@example.com"
    async with mailer_for(server, FakeClock()) as mailer:
        result = await mailer.send(msg)
    assert result.delivered == ("a@example.com", "secret@example.com")
    assert b"secret@example.com" not in server.messages[0].data
    assert msg["Bcc"] == "secret@example.com"  # the caller's message is untouched


async def test_events_carry_no_credentials(
    server: ScriptedSMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.on("mail", "451 4.3.0 Temporary local problem")
    seen: list[Event] = []
    mailer = Mailer(
        "127.0.0.1",
        server.port,
        tls="none",
        clock=FakeClock(),
        retry=fast_policy(),
        hooks=[seen.append],
    )
    assert "hunter2" not in repr(mailer)
    with caplog.at_level(logging.DEBUG, logger="resilient_smtp"):
        async with mailer:
            assert (await mailer.send(make_message("a@example.com"))).ok
    kinds = [e.kind for e in seen]
    assert "retry" in kinds and "final" in kinds
    assert all("Hi there" not in str(e) for e in seen)


async def test_starttls_required_by_default_refuses_plaintext_server(
    server: ScriptedSMTPServer,
) -> None:
    async with Mailer("127.0.0.1", server.port, clock=FakeClock()) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    rec = result["a@example.com"]
    # A configuration problem of the destination, not a verdict on the
    # recipient: deferred, and loud in the result.
    assert rec.state is State.DEFERRED
    assert rec.classification is not None
    assert rec.classification.reason is Reason.TLS_REQUIRED
    assert len(result.configuration_errors) == 1
    assert "STARTTLS" in result.configuration_errors[0]
    assert server.commands.count("MAIL") == 0


async def test_credentials_never_in_repr() -> None:
    m = Mailer("smtp.example.com", username="u", password="hunter2")
    assert "hunter2" not in repr(m)
    assert "hunter2" not in repr(m.transport)


async def test_failover_to_the_second_relay_while_the_first_is_suspended() -> None:
    async with ScriptedSMTPServer() as first, ScriptedSMTPServer() as second:
        first.on(
            "connect", "554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"
        )
        clock = FakeClock()
        relays = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
        async with Mailer(relays, tls="none", clock=clock, retry=fast_policy()) as mailer:
            # A refused session is not a refused recipient: the second
            # relay takes it at once (Postfix's smtp_skip_5xx_greeting).
            moved = await mailer.send(make_message("a@example.com"))
            assert moved.delivered == ("a@example.com",)
            assert moved["a@example.com"].destination == f"127.0.0.1:{second.port}"
            status = mailer.health.status(f"127.0.0.1:{first.port}")
            assert status.state == "suspended"
            result = await mailer.send(make_message("b@example.com"))
        assert result.delivered == ("b@example.com",)
        assert result["b@example.com"].destination == f"127.0.0.1:{second.port}"
        assert first.connections == 1
        assert [m.recipients for m in second.messages] == [("a@example.com",), ("b@example.com",)]


async def test_messages_per_connection_are_capped(server: ScriptedSMTPServer) -> None:
    async with mailer_for(server, FakeClock(), pool=PoolLimits(max_messages=2)) as mailer:
        for i in range(5):
            assert (await mailer.send(make_message(f"u{i}@example.com"))).ok
    assert server.connections == 3
    assert len(server.messages) == 5


async def test_cancelled_send_releases_its_connection_and_permit(
    server: ScriptedSMTPServer,
) -> None:
    server.on("mail", "451 4.3.0 Temporary local problem", times=None)
    limiter = ConcurrencyLimiter(limit=1)
    # The real clock and a long first wait: the send is cancelled while it
    # sleeps between attempts (no test time is spent: it is cancelled).
    policy = RetryPolicy(max_attempts=5, deadline=600.0, base=30.0, cap=60.0, jitter="none")
    async with Mailer(
        "127.0.0.1", server.port, tls="none", limiter=limiter, retry=policy
    ) as mailer:
        task = asyncio.create_task(mailer.send(make_message("a@example.com")))
        for _ in range(2000):
            if server.commands.count("MAIL") >= 1 and limiter.held == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limiter.held == 0
        assert limiter.waiting == 0
        server._rules.clear()
        # The permit and the pool are usable again.
        assert (await mailer.send(make_message("b@example.com"))).ok


async def test_cancelled_while_waiting_for_a_permit_uses_no_capacity(
    server: ScriptedSMTPServer,
) -> None:
    limiter = ConcurrencyLimiter(limit=1)
    async with Mailer("127.0.0.1", server.port, tls="none", limiter=limiter) as mailer:
        async with limiter.acquire("127.0.0.1"):  # someone else holds the only permit
            task = asyncio.create_task(mailer.send(make_message("a@example.com")))
            for _ in range(100):
                if limiter.waiting:
                    break
                await asyncio.sleep(0.001)
            assert limiter.waiting == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert limiter.held == 0
        assert limiter.waiting == 0
        assert server.connections == 0


async def test_non_ascii_address_needs_smtputf8(server: ScriptedSMTPServer) -> None:
    async with mailer_for(server, FakeClock()) as mailer:
        result = await mailer.send(make_message("jürgen@example.com"))
    assert result.ok  # aiosmtpd offers SMTPUTF8
    assert server.messages[0].recipients == ("jürgen@example.com",)


async def test_refused_connections_leak_no_permit() -> None:
    # Nothing listens on this port: every attempt fails to connect.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limiter = ConcurrencyLimiter(limit=1)
    async with Mailer(
        "127.0.0.1",
        port,
        tls="none",
        clock=FakeClock(),
        limiter=limiter,
        retry=fast_policy(max_attempts=3),
    ) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    r = result["a@example.com"]
    assert r.state is State.DEFERRED
    assert r.attempts == 3
    assert r.classification is not None
    assert r.classification.reason is Reason.CONNECTION_ERROR
    assert limiter.held == 0


async def test_before_end_of_data_sees_exactly_the_recipients_of_each_final_dot(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    server.on("rcpt", "452 4.5.3 Error: too many recipients", nth=3)
    seen: list[list[str]] = []

    async def hook(accepted: list[str]) -> None:
        seen.append(accepted)
        assert server.commands[-1] == "DATA"  # after the 354, before the dot

    rcpts = ["a@example.com", "gone@example.com", "c@example.com", "d@example.com"]
    async with mailer_for(server, FakeClock()) as mailer:
        result = await mailer.send(make_message(*rcpts), before_end_of_data=hook)
    assert seen == [["a@example.com"], ["c@example.com", "d@example.com"]]
    assert set(result.delivered) == {"a@example.com", "c@example.com", "d@example.com"}


async def test_a_failing_before_end_of_data_sends_nothing(server: ScriptedSMTPServer) -> None:
    async def hook(accepted: list[str]) -> None:
        raise OSError("the queue's disk is full")

    async with mailer_for(server, FakeClock()) as mailer:
        with pytest.raises(OSError, match="disk is full"):
            await mailer.send(make_message("a@example.com"), before_end_of_data=hook)
        assert mailer.pool.idle_count() == 0  # the half-open DATA session was dropped
    assert server.messages == []
    assert server.dropped_after_data == []
