"""The outbox: durable put(), the worker's pass, rescheduling, expiry,
retention, recovery after a dead worker, operator commands, events.

Most tests drive a Mailer over a ScriptedTransport (no sockets) with a
FakeClock whose reading is also the outbox's wall clock, so hours of
back-off take no time.  The store fixture runs every test against each
store (SQLite always; PostgreSQL when a server is available).  One test
uses a real aiosmtpd server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from _pg_server import pg_store_factory
from resilient_smtp import Event, InvalidMessageError, Limiter, Mailer, RetryPolicy
from resilient_smtp.outbox import (
    Outbox,
    OutboxPolicy,
    SQLiteStore,
    Store,
)
from resilient_smtp.testing import DROP, FakeClock, ScriptedSMTPServer, ScriptedTransport

SENDER = "app@example.org"
START = 1_700_000_000.0  # the fake clock reads like Unix time


def make_message(*to: str, subject: str = "hello", message_id: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    if message_id is not None:
        msg["Message-ID"] = message_id
    msg.set_content("Hi there.\n.a line starting with a dot\n")
    return msg


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes stores that share one database (as workers on it would)."""
    made: list[Store] = []
    if request.param == "sqlite":

        def factory() -> Store:
            s = SQLiteStore(tmp_path / "outbox.db")
            made.append(s)
            return s

        yield factory
    else:
        async with pg_store_factory() as pg:

            def pg_factory() -> Store:
                s = pg()
                made.append(s)
                return s

            yield pg_factory
            for s in made:
                await s.close()
            made.clear()
    for s in made:
        await s.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self, prefix: str = "outbox_") -> list[str]:
        return [e.kind for e in self.events if e.kind.startswith(prefix)]


class Rig:
    """An outbox on a store, a Mailer over a scripted transport, one clock."""

    def __init__(self, store: Store, *, policy: OutboxPolicy | None = None) -> None:
        self.clock = FakeClock(START)
        self.transport = ScriptedTransport()
        self.rec = Recorder()
        self.outbox = Outbox(
            store,
            policy=policy,
            clock=self.clock,
            wall=self.clock.monotonic,
            hooks=[self.rec],
        )
        self.mailer = Mailer(
            "mx.test",
            25,
            transport=self.transport,
            clock=self.clock,
            retry=RetryPolicy(max_attempts=1),
            hooks=[self.rec],
        )

    async def states(self) -> dict[str, int]:
        counts = (await self.outbox.status()).counts
        return {k: v for k, v in counts.items() if v}

    def sent_to(self) -> list[str]:
        return [r for m in self.transport.messages for r in m.recipients]


@pytest.fixture
async def rig(new_store: StoreFactory) -> AsyncIterator[Rig]:
    r = Rig(new_store())
    yield r
    await r.mailer.close()


# -- put ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        ({}, make_message(), "no recipients"),
        ({"recipients": ["not-an-address"]}, make_message(), "recipient 'not-an-address'"),
        ({"recipients": ["a@example.com\r\nRCPT TO:<x@y.z>"]}, make_message(), "CR, LF"),
        ({}, b"raw bytes", "explicit sender= and recipients="),
    ],
)
async def test_put_refuses_bad_input_and_stores_nothing(
    rig: Rig, kwargs: dict[str, Any], message: Any, error: str
) -> None:
    with pytest.raises(InvalidMessageError, match=error):
        await rig.outbox.put(message, **kwargs)
    assert await rig.states() == {}
    assert rig.rec.kinds() == []


async def test_put_refuses_a_message_over_max_size(new_store: StoreFactory) -> None:
    rig = Rig(new_store(), policy=OutboxPolicy(max_size=1000))
    big = make_message("a@example.com")
    big.set_content("x" * 2000)
    with pytest.raises(
        InvalidMessageError, match=r"bytes, more than the outbox's max_size of 1000"
    ):
        await rig.outbox.put(big)
    assert await rig.states() == {}


async def test_put_is_durable_before_it_returns(new_store: StoreFactory) -> None:
    rig = Rig(new_store())
    qid = await rig.outbox.put(make_message("a@example.com", "b@example.com"))
    assert len(qid) == 32
    # Another store on the same database (another process would do the same).
    other = new_store()
    status = await other.status()
    assert status.counts["queued"] == 2
    assert status.messages == 1
    assert rig.rec.kinds() == ["outbox_queued"]


async def test_put_adds_a_message_id_when_missing_and_keeps_one_given(rig: Rig) -> None:
    await rig.outbox.put(make_message("a@example.com"))
    await rig.outbox.put(make_message("b@example.com", message_id="<given@example.org>"))
    await rig.outbox.run_once(rig.mailer)
    bodies = {m.recipients[0]: m.data for m in rig.transport.messages}
    assert bodies["a@example.com"].count(b"Message-ID: <") == 1
    assert b"@example.org>" in bodies["a@example.com"]
    assert bodies["b@example.com"].count(b"Message-ID:") == 1
    assert b"Message-ID: <given@example.org>" in bodies["b@example.com"]


async def test_put_drops_bcc_from_the_stored_body(rig: Rig) -> None:
    msg = make_message("a@example.com")
    msg["Bcc"] = "hidden@example.com"
    await rig.outbox.put(msg)
    await rig.outbox.run_once(rig.mailer)
    assert rig.transport.messages[0].recipients == ("a@example.com", "hidden@example.com")
    assert b"hidden@" not in rig.transport.messages[0].data


# -- the worker's pass -------------------------------------------------------------


async def test_run_once_delivers_and_records_each_recipient(rig: Rig) -> None:
    await rig.outbox.put(make_message("a@example.com", "b@example.com"))
    assert await rig.outbox.run_once(rig.mailer) == 1
    assert await rig.states() == {"delivered": 2}
    assert await rig.outbox.run_once(rig.mailer) == 0  # nothing sent twice
    assert rig.sent_to() == ["a@example.com", "b@example.com"]
    assert rig.rec.kinds() == [
        "outbox_queued",
        "outbox_sending",
        "outbox_sending",
        "outbox_delivered",
        "outbox_delivered",
    ]


async def test_a_deferred_recipient_is_tried_again_at_its_retry_time(rig: Rig) -> None:
    rig.transport.on("rcpt", "450 4.2.0 Greylisted, try again later", recipient="b@example.com")
    await rig.outbox.put(make_message("a@example.com", "b@example.com"))
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"delivered": 1, "deferred": 1}
    deferred = next(e for e in rig.rec.events if e.kind == "outbox_deferred")
    assert deferred.data["recipient"] == "b@example.com"
    assert deferred.data["reason"] == "greylisted"
    due = deferred.data["due"]
    assert due >= START + 300  # Postfix's minimal_backoff_time at least

    rig.clock.advance(due - rig.clock.monotonic() - 1)
    assert await rig.outbox.run_once(rig.mailer) == 0  # not due yet
    rig.clock.advance(1)
    assert await rig.outbox.run_once(rig.mailer) == 1
    assert await rig.states() == {"delivered": 2}
    assert rig.sent_to() == ["a@example.com", "b@example.com"]  # a only once


async def test_deferred_recipients_expire_after_the_lifetime(new_store: StoreFactory) -> None:
    policy = OutboxPolicy(lifetime=86400.0, min_backoff=300.0, max_backoff=4000.0)
    rig = Rig(new_store(), policy=policy)
    rig.transport.on("rcpt", "451 4.3.0 Temporary failure", times=None)
    await rig.outbox.put(make_message("a@example.com"))
    waits = []
    for _ in range(100):  # bounded: a day at <= 4000 s is about 25 tries
        tried_at = rig.clock.monotonic()
        seen = len(rig.rec.events)
        if await rig.outbox.run_once(rig.mailer):
            waits += [
                e.data["due"] - tried_at
                for e in rig.rec.events[seen:]
                if e.kind == "outbox_deferred"
            ]
        due = await rig.outbox.store.next_due()
        if due is None:
            break
        rig.clock.advance(max(0.0, due - rig.clock.monotonic()))
    assert await rig.states() == {"expired": 1}
    # The back-off doubles from 300 s and stops at 4000 s; the last wait is
    # cut short by the expiry.
    assert waits[:5] == pytest.approx([300.0, 600.0, 1200.0, 2400.0, 4000.0])
    assert max(waits) == pytest.approx(4000.0)
    assert sum(waits) == pytest.approx(86400.0)
    assert rig.transport.commands.count("RCPT") == len(waits)
    expired = [e for e in rig.rec.events if e.kind == "outbox_expired"]
    assert len(expired) == 1
    assert expired[0].data["reason"] == "expired"


async def test_delivered_records_are_kept_for_keep_then_deleted(new_store: StoreFactory) -> None:
    rig = Rig(new_store(), policy=OutboxPolicy(keep=3600.0))
    rig.transport.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com")
    await rig.outbox.put(make_message("a@example.com", "gone@example.com"))
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"delivered": 1, "rejected": 1}
    rig.clock.advance(3599)
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"delivered": 1, "rejected": 1}
    rig.clock.advance(61)  # a worker prunes once a minute
    await rig.outbox.run_once(rig.mailer)
    status = await rig.outbox.status()
    assert sum(status.counts.values()) == 0
    assert status.messages == 0
    assert "outbox_purged" in rig.rec.kinds()


async def test_a_recipient_being_sent_when_the_worker_died_becomes_ambiguous(
    new_store: StoreFactory,
) -> None:
    policy = OutboxPolicy(lease=60.0)
    dead = Rig(new_store(), policy=policy)
    await dead.outbox.put(make_message("a@example.com", "b@example.com"))
    # The dead worker got as far as marking the recipients "sending".
    [claimed] = await dead.outbox.store.claim(
        worker="dead", token="t-dead", now=START, until=START + 60.0, limit=10
    )
    assert await dead.outbox.store.mark_sending(
        claimed.id, ["a@example.com"], token="t-dead", now=START
    )

    alive = Rig(new_store(), policy=policy)
    assert await alive.outbox.run_once(alive.mailer) == 0  # its claim still holds
    assert await alive.states() == {"sending": 1, "queued": 1}
    alive.clock.advance(61)
    assert await alive.outbox.run_once(alive.mailer) == 1
    # b had not been handed to the Mailer: it is sent; a may have been: it is not.
    assert await alive.states() == {"ambiguous": 1, "delivered": 1}
    assert alive.sent_to() == ["b@example.com"]
    ambiguous = [e for e in alive.rec.events if e.kind == "outbox_ambiguous"]
    assert [e.data["recipient"] for e in ambiguous] == ["a@example.com"]
    assert ambiguous[0].data["reason"] == "worker_lost"


async def test_a_drop_after_the_final_dot_is_ambiguous_and_not_resent(rig: Rig) -> None:
    rig.transport.on("end_of_data", DROP)
    await rig.outbox.put(make_message("a@example.com"))
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"ambiguous": 1}
    rig.clock.advance(10 * 86400)
    await rig.outbox.run_once(rig.mailer)
    assert len(rig.transport.dropped_after_data) == 1
    assert rig.transport.messages == []


async def test_two_workers_never_claim_the_same_recipient(new_store: StoreFactory) -> None:
    first, second = Rig(new_store()), Rig(new_store())
    for i in range(6):
        await first.outbox.put(make_message(f"r{i}@example.com"))
    one = await first.outbox.store.claim(
        worker="w1", token="t1", now=START, until=START + 60, limit=4
    )
    two = await second.outbox.store.claim(
        worker="w2", token="t2", now=START, until=START + 60, limit=4
    )
    assert len(one) == 4
    assert len(two) == 2
    assert not {c.id for c in one} & {c.id for c in two}
    # A released claim is free again at once.
    await first.outbox.store.release(token="t1")
    again = await second.outbox.store.claim(
        worker="w2", token="t3", now=START, until=START + 60, limit=10
    )
    assert len(again) == 4


async def test_concurrent_claims_split_the_queue(new_store: StoreFactory) -> None:
    putter = Rig(new_store())
    for i in range(40):
        await putter.outbox.put(make_message(f"r{i}@example.com", f"s{i}@example.com"))
    stores = [new_store() for _ in range(5)]

    async def claim_all(n: int) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        for _ in range(20):  # bounded
            claimed = await stores[n].claim(
                worker=f"w{n}", token=f"t{n}", now=START, until=START + 60, limit=3
            )
            if not claimed:
                break
            got += [(c.id, a) for c in claimed for a in c.recipients]
        return got

    results = await asyncio.gather(*(claim_all(n) for n in range(5)))
    every = [pair for got in results for pair in got]
    assert len(every) == 80
    assert len(set(every)) == 80  # no recipient claimed twice


async def test_operator_retry_and_purge(rig: Rig) -> None:
    rig.transport.on("rcpt", "451 4.3.0 Temporary failure", recipient="slow@example.com")
    rig.transport.on("end_of_data", DROP)
    await rig.outbox.put(make_message("slow@example.com"))
    await rig.outbox.run_once(rig.mailer)
    amb = await rig.outbox.put(make_message("maybe@example.com"))
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"deferred": 1, "ambiguous": 1}

    assert await rig.outbox.retry() == 1  # the deferred one, due now
    assert await rig.outbox.run_once(rig.mailer) == 1
    assert await rig.states() == {"delivered": 1, "ambiguous": 1}

    with pytest.raises(ValueError, match="states: 'lost' is not a state"):
        await rig.outbox.retry(states=["lost"])
    with pytest.raises(ValueError, match="only deferred, quarantined or final"):
        await rig.outbox.retry(states=["sending"])
    assert await rig.outbox.retry(message=amb, states=["ambiguous"]) == 1
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"delivered": 2}
    assert sorted(rig.sent_to()) == ["maybe@example.com", "slow@example.com"]

    assert await rig.outbox.purge(states=["delivered"]) == 2
    status = await rig.outbox.status()
    assert status.messages == 0
    assert "outbox_retry" in rig.rec.kinds()
    assert "outbox_purged" in rig.rec.kinds()


async def test_status_shows_the_oldest_deferred_and_each_destination(rig: Rig) -> None:
    rig.transport.on("rcpt", "450 4.7.1 Try again later", times=None)
    first = await rig.outbox.put(make_message("a@example.com"))
    rig.clock.advance(5)
    await rig.outbox.put(make_message("b@example.com", "c@example.com"))
    await rig.outbox.run_once(rig.mailer)
    status = await rig.outbox.status()
    assert status.counts["deferred"] == 3
    assert status.messages == 2
    assert status.oldest_deferred_id == first
    assert status.oldest_deferred_created == START
    [dest] = status.destinations
    assert dest.destination == "mx.test:25"
    assert dest.deferred == 3
    assert dest.last_reason is not None


async def test_a_suspended_destination_shows_in_status(rig: Rig) -> None:
    # A reputation deferral suspends the destination at once (health).
    rig.transport.on("mail", "421 4.7.0 [TSS04] Messages temporarily deferred", times=1)
    await rig.outbox.put(make_message("a@example.com"))
    await rig.outbox.run_once(rig.mailer)
    await rig.outbox.put(make_message("b@example.com"))
    await rig.outbox.run_once(rig.mailer)
    status = await rig.outbox.status()
    [dest] = status.destinations
    assert dest.deferred == 2
    assert dest.suspended == 2
    assert dest.last_reason == "reputation_deferral"
    # The suspension still running, with its end in wall-clock time.
    [suspension] = status.suspensions
    assert suspension.destination == "mx.test:25"
    assert suspension.deferred == 2
    assert suspension.reason == "reputation_deferral"
    health = rig.mailer.health.status("mx.test:25")
    assert health.until is not None
    assert suspension.until == pytest.approx(health.until)  # one clock in this rig
    rig.clock.advance(suspension.until - rig.clock.monotonic() + 1)
    assert (await rig.outbox.status()).suspensions == ()


async def test_status_counts_per_state_destination_and_reason(rig: Rig) -> None:
    rig.transport.on("rcpt", "250 OK", recipient="ok@example.com", times=None)
    rig.transport.on("rcpt", "550 5.1.1 Recipient address rejected: User unknown", times=None)
    first = await rig.outbox.put(make_message("x@example.com", "ok@example.com"))
    rig.clock.advance(60)
    await rig.outbox.put(make_message("y@example.com", "z@example.com"))
    rig.clock.advance(60)
    await rig.outbox.put(make_message("later@example.com"))
    await rig.outbox.run_once(rig.mailer)
    status = await rig.outbox.status()
    rejected = [r for r in status.reasons if r.state == "rejected"]
    assert len(rejected) == 1
    [why] = rejected
    assert why.destination == "mx.test:25"
    assert why.count == 4
    assert why.reason is not None
    assert why.last_detail  # the classification's explanation, not only a code
    assert why.last_updated is not None
    assert START + 120 <= why.last_updated <= rig.clock.monotonic()
    delivered = [r for r in status.reasons if r.state == "delivered"]
    assert sum(r.count for r in delivered) == 1
    # The oldest message per state.
    assert status.oldest["rejected"].id == first
    assert status.oldest["delivered"].id == first
    assert status.oldest["rejected"].created == START
    assert "deferred" not in status.oldest


# -- the run loop, against a real server ----------------------------------------------


async def test_run_sends_through_a_real_server_until_stopped(
    new_store: StoreFactory,
) -> None:
    rec = Recorder()
    stop = asyncio.Event()
    delivered: list[str] = []

    def watch(event: Event) -> None:
        rec(event)
        if event.kind == "outbox_delivered":
            delivered.append(event.data["recipient"])
            if len(delivered) == 6:
                stop.set()

    policy = OutboxPolicy(poll=0.05)
    async with ScriptedSMTPServer() as server:
        server.on("rcpt", "450 4.2.0 Greylisted", recipient="grey@example.com")
        outbox = Outbox(new_store(), policy=policy, hooks=[watch])
        for i in range(5):
            await outbox.put(make_message(f"r{i}@example.com"))
        await outbox.put(make_message("grey@example.com"))
        # The greylisted recipient is made due again by the operator, as
        # its 5-minute back-off is too long for a test on the real clock.
        async with Mailer(
            "127.0.0.1", server.port, tls="none", retry=RetryPolicy(max_attempts=1)
        ) as mailer:
            worker = asyncio.create_task(outbox.run(mailer, stop=stop))
            for _ in range(200):  # bounded: 200 x 10 ms
                if (await outbox.status()).counts["deferred"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert await outbox.retry() == 1
            await asyncio.wait_for(worker, timeout=10)
        status = await outbox.status()
    assert status.counts["delivered"] == 6
    assert sorted(delivered) == sorted(
        [f"r{i}@example.com" for i in range(5)] + ["grey@example.com"]
    )
    received = sorted(r for m in server.messages for r in m.recipients)
    assert received == sorted(delivered)  # each exactly once


async def test_a_mailer_bug_before_the_final_dot_defers_instead_of_ambiguous(rig: Rig) -> None:
    class Broken(Mailer):
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

    broken = Broken("mx.test", 25, transport=rig.transport, clock=rig.clock)
    await rig.outbox.put(make_message("a@example.com"))
    assert await rig.outbox.run_once(broken) == 1
    assert await rig.states() == {"deferred": 1}
    [event] = [e for e in rig.rec.events if e.kind == "outbox_deferred"]
    assert event.data["reason"] == "error"
    assert event.data["due"] >= START + 300  # the back-off: a bug must not spin
    # Its next try, with a working Mailer, delivers it.
    rig.clock.advance(event.data["due"] - rig.clock.monotonic())
    await rig.outbox.run_once(rig.mailer)
    assert await rig.states() == {"delivered": 1}
    await broken.close()


class _TimeWarp(Limiter):
    """A limiter that lets the fake clock jump while a send waits for its
    permit: the claim's lease lapses in the middle of the send."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    @contextlib.asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[None]:
        self.clock.advance(self.seconds)
        yield

    def feedback(self, key: str, classification: Any) -> None:
        return None


async def test_no_final_dot_goes_out_under_a_lapsed_lease(new_store: StoreFactory) -> None:
    policy = OutboxPolicy(lease=60.0)
    late = Rig(new_store(), policy=policy)
    warped = Mailer(
        "mx.test",
        25,
        transport=late.transport,
        clock=late.clock,
        retry=RetryPolicy(max_attempts=1),
        limiter=_TimeWarp(late.clock, 61.0),
    )
    await late.outbox.put(make_message("a@example.com", "b@example.com"))
    assert await late.outbox.run_once(warped) == 1
    # The transaction got as far as DATA, then stopped before the dot.
    assert late.transport.messages == []
    assert "DATA" in late.transport.commands
    assert "outbox_lease_lost" in late.rec.kinds()
    assert "outbox_sending" not in late.rec.kinds()
    assert await late.states() == {"queued": 2}
    # Another worker sends it, once.
    other = Rig(new_store(), policy=policy)
    other.clock.advance(late.clock.monotonic() - START)
    assert await other.outbox.run_once(other.mailer) == 1
    assert await other.states() == {"delivered": 2}
    assert other.sent_to() == ["a@example.com", "b@example.com"]
    await warped.close()
