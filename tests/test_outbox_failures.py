"""The outbox survives its own failures, on both stores (a real SQLite file
and the real PostgreSQL test server), sending to Postfix's smtp-sink whose
dump is the truth:

- the database goes away mid-lease (SQLite locked past the busy timeout;
  PostgreSQL's connections cut and refused, as in a restart): a short
  outage is ridden out by the heartbeat's retries; a long one loses the
  lease, and the worker sends nothing under it while another worker takes
  the messages over;
- one send of a batch fails and ``run()`` is started again;
- rows edited into garbage are quarantined while the good mail goes out.

In each, no message reaches the server twice and every good message is
delivered.  These tests run on the real clock with leases of a fraction of
a second (a lease is real time for the other workers); each takes about
two seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from _outbox_db import Db, deliveries, open_db
from conftest import Sink
from resilient_smtp import Event, Mailer, RetryPolicy
from resilient_smtp.outbox import (
    Outbox,
    OutboxPolicy,
    OutboxState,
    RecipientUpdate,
    SQLiteStore,
    Store,
    run_worker,
)


def _message(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = f"a{i}@example.com, b{i}@example.com"
    msg["Subject"] = f"message {i}"
    msg["Message-ID"] = f"<m{i}@example.org>"
    msg.set_content(f"Message {i}.\n")
    return msg


def _pairs(*numbers: int) -> set[tuple[str, str]]:
    return {(f"<m{i}@example.org>", f"{p}{i}@example.com") for i in numbers for p in "ab"}


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def _mailer(sink: Sink) -> Mailer:
    return Mailer("127.0.0.1", sink.port, tls="none", retry=RetryPolicy(max_attempts=1))


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    async with open_db(request.param, tmp_path) as d:
        yield d


async def _fill(db: Db, numbers: Sequence[int]) -> list[str]:
    outbox = Outbox(db.store())
    return [await outbox.put(_message(i)) for i in numbers]


async def _drain(outbox: Outbox, mailer: Mailer, *, passes: int = 100) -> None:
    """Run passes until nothing is due (bounded)."""
    for _ in range(passes):
        if await outbox.run_once(mailer):
            continue
        due = await outbox.store.next_due()
        status = await outbox.status()
        if status.counts["sending"] == 0 and (due is None or due > time.time()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the queue did not drain")


# -- the database goes away mid-lease ----------------------------------------------


@pytest.mark.parametrize("outage", [0.4, 1.3])
async def test_the_database_going_away_mid_lease_never_sends_twice(
    db: Db,
    smtp_sink: Callable[..., Sink],
    caplog: pytest.LogCaptureFixture,
    outage: float,
) -> None:
    # The sink answers DATA after 2 s: the sends are in flight, waiting for
    # their 354, while the database is away (from the claim, for ``outage``
    # seconds, against a lease of 1 s renewed every third of it).
    sink = smtp_sink("-w", "2")
    await _fill(db, range(3))
    lease = 1.0
    rec = Recorder()
    first = Outbox(db.store(fragile=True), policy=OutboxPolicy(lease=lease), hooks=[rec])
    caplog.set_level(logging.WARNING, logger="resilient_smtp")
    async with _mailer(sink) as mailer:
        sending = asyncio.create_task(first.run_once(mailer))
        for _ in range(500):  # bounded: 500 x 2 ms
            if await db.claimed() == 6:
                break
            await asyncio.sleep(0.002)
        # Claimed, and waiting for the 354s: the database goes away.
        await db.outage()
        await asyncio.sleep(outage)
        await db.restore()
        # A second worker, as a supervisor or another machine would start.
        second = Outbox(db.store(), policy=OutboxPolicy(lease=5.0))
        async with _mailer(sink) as other:
            await _drain(second, other)
            assert await asyncio.wait_for(sending, timeout=10) == 3
            await _drain(second, other)
        status = await second.status()
    sent = deliveries(sink)
    assert set(sent) == _pairs(0, 1, 2)
    assert max(sent.values()) == 1  # nobody got a message twice
    assert {k: v for k, v in status.counts.items() if v} == {"delivered": 6}
    assert "the heartbeat failed" in caplog.text
    if outage < lease:
        # Ridden out: the heartbeat's retries renewed the lease in time.
        assert "outbox_lease_lost" not in rec.kinds()
        assert rec.kinds().count("outbox_delivered") == 6
    else:
        # The lease lapsed: the first worker sent nothing under it (no
        # final dot), the second sent everything.
        assert "outbox_lease_lost" in rec.kinds()
        assert "outbox_sending" not in rec.kinds()
        assert "outbox_delivered" not in rec.kinds()


async def test_a_stale_claim_is_refused_by_the_store(db: Db) -> None:
    [qid] = await _fill(db, [0])
    store = db.store()
    t = time.time() + 10  # the message is due
    [mine] = await store.claim(worker="w1", token="t1", now=t, until=t + 1, limit=5)
    # The lease lapses; another worker claims the recipients.
    [theirs] = await store.claim(worker="w2", token="t2", now=t + 2, until=t + 100, limit=5)
    assert mine.recipients == theirs.recipients == ("a0@example.com", "b0@example.com")
    assert not await store.mark_sending(qid, ["a0@example.com"], token="t1", now=t + 2)
    assert await store.extend(token="t1", now=t + 2, until=t + 200) == 0
    update = RecipientUpdate(address="a0@example.com", state=OutboxState.DELIVERED, attempts=1)
    assert await store.record(qid, [update], token="t1", now=t + 2) == 0
    # All or none, and only under a live claim.
    assert not await store.mark_sending(
        qid, ["a0@example.com", "b0@example.com"], token="t2", now=t + 150
    )
    assert await store.mark_sending(
        qid, ["a0@example.com", "b0@example.com"], token="t2", now=t + 50
    )
    assert await store.record(qid, [update], token="t2", now=t + 51) == 1
    counts = (await store.status()).counts
    assert counts["delivered"] == 1
    assert counts["sending"] == 1


# -- an error in one send of a batch ---------------------------------------------------


def _failing(db: Db, *, fail_message: str) -> Store:
    """A real store whose first write of ``fail_message``'s results fails
    (a disk error, a dropped connection at the wrong moment)."""
    base = type(db.store())

    class FailingOnce(base):  # type: ignore[valid-type,misc]
        armed = True

        async def record(
            self,
            message: str,
            updates: Sequence[RecipientUpdate],
            *,
            token: str,
            now: float,
        ) -> int:
            if message == fail_message and self.armed:
                self.armed = False
                raise OSError("disk I/O error (injected)")
            return int(await super().record(message, updates, token=token, now=now))

    if isinstance(db.store(), SQLiteStore):
        store: Store = FailingOnce(db.path)  # type: ignore[attr-defined]
    else:
        store = FailingOnce(db.url, schema=db.schema)  # type: ignore[attr-defined]
    return store


@pytest.mark.parametrize("which", ["expired", "delivered"])
async def test_an_error_in_one_send_then_run_again_sends_nothing_twice(
    db: Db, smtp_sink: Callable[..., Sink], which: str
) -> None:
    """``expired``: the failing send is one with nothing to send (its record
    fails at once) while the others wait for their 354; ``delivered``: it
    fails recording a delivery, when the others are at their final dot."""
    sink = smtp_sink("-w", "1")
    ids = await _fill(db, range(4))
    if which == "expired":
        await db.sql(f"UPDATE outbox_messages SET expires = 1.0 WHERE id = {db.mark}", ids[0])
    rec = Recorder()
    outbox = Outbox(
        _failing(db, fail_message=ids[0]),
        policy=OutboxPolicy(lease=5.0, poll=0.05),
        hooks=[rec],
    )
    stop = asyncio.Event()
    errors = 0
    async with _mailer(sink) as mailer:
        for _ in range(5):  # a supervisor, bounded
            try:
                worker = asyncio.ensure_future(outbox.run(mailer, stop=stop))
                for _ in range(200):  # bounded: 200 x 20 ms
                    await asyncio.sleep(0.02)
                    if worker.done():
                        break
                    counts = (await outbox.status()).counts
                    if counts["queued"] + counts["deferred"] + counts["sending"] == 0:
                        break
                stop.set()
                await asyncio.wait_for(worker, timeout=10)
                break
            except OSError:
                errors += 1
                stop.clear()
        status = await outbox.status()
    assert errors == 1
    sent = deliveries(sink)
    assert max(sent.values()) == 1
    if which == "expired":
        assert set(sent) == _pairs(1, 2, 3)
        counts = {"delivered": 6, "expired": 2}
    else:
        assert set(sent) == _pairs(0, 1, 2, 3)
        counts = {"delivered": 8}
    assert {k: v for k, v in status.counts.items() if v} == counts


# -- bad rows ----------------------------------------------------------------------

# (kind, SQL on the victim message, the error expected), per store.  The
# PostgreSQL column types rule out text in a number column or a body, so
# there the garbage is NaN and NULL.
_SQLITE_BAD = [
    ("orphan", "DELETE FROM outbox_messages WHERE id = ?", "no message row"),
    ("text body", "UPDATE outbox_messages SET body = 'hello' WHERE id = ?", "body is text"),
    ("expires", "UPDATE outbox_messages SET expires = 'soon' WHERE id = ?", "expires 'soon'"),
    (
        "attempts",
        "UPDATE outbox_recipients SET attempts = 'two' WHERE message = ?",
        "attempts is not an integer: 'two'",
    ),
    ("due", "UPDATE outbox_recipients SET due = 'now' WHERE message = ?", "due is not a number"),
    (
        "state",
        "UPDATE outbox_recipients SET state = 'paused' WHERE message = ?",
        "unknown state 'paused'",
    ),
    (
        "address",
        "UPDATE outbox_recipients SET address = 'not an address' "
        "WHERE message = ? AND address LIKE 'a%'",
        "is not a valid address",
    ),
]
_PG_BAD = [
    ("orphan", "DELETE FROM outbox_messages WHERE id = $1", "no message row"),
    ("expires", "UPDATE outbox_messages SET expires = 'NaN' WHERE id = $1", "expires NaN"),
    ("due", "UPDATE outbox_recipients SET due = 'NaN' WHERE message = $1", "due is not a number"),
    ("null due", "UPDATE outbox_recipients SET due = NULL WHERE message = $1", "NULL"),
    (
        "state",
        "UPDATE outbox_recipients SET state = 'paused' WHERE message = $1",
        "unknown state 'paused'",
    ),
    (
        "address",
        "UPDATE outbox_recipients SET address = 'not an address' "
        "WHERE message = $1 AND address LIKE 'a%'",
        "is not a valid address",
    ),
]


@pytest.mark.parametrize(
    ("db", "case"),
    [("sqlite", c) for c in _SQLITE_BAD] + [("postgres", c) for c in _PG_BAD],
    indirect=["db"],
    ids=[f"sqlite-{c[0]}" for c in _SQLITE_BAD] + [f"postgres-{c[0]}" for c in _PG_BAD],
)
async def test_a_bad_row_is_quarantined_and_the_rest_is_sent(
    db: Db,
    smtp_sink: Callable[..., Sink],
    caplog: pytest.LogCaptureFixture,
    case: tuple[str, str, str],
) -> None:
    kind, sql, error = case
    sink = smtp_sink()
    ids = await _fill(db, range(4))
    victim = ids[2]
    await db.sql(sql, victim)
    rec = Recorder()
    caplog.set_level(logging.WARNING, logger="resilient_smtp")
    outbox = Outbox(db.store(), policy=OutboxPolicy(poll=0.05), hooks=[rec])
    async with _mailer(sink) as mailer:
        await _drain(outbox, mailer)
        status = await outbox.status()
    sent = deliveries(sink)
    assert max(sent.values()) == 1
    quarantined = [e for e in rec.events if e.kind == "outbox_quarantined"]
    assert quarantined, rec.kinds()
    assert all(e.data["id"] == victim for e in quarantined)
    assert all(error in e.data["error"] for e in quarantined), [e.data for e in quarantined]
    assert "quarantined" in caplog.text
    good = _pairs(0, 1, 3)
    if kind == "address":
        # The other recipient of the message is good and is sent.
        good |= {("<m2@example.org>", "b2@example.com")}
    assert set(sent) == good
    counts = {k: v for k, v in status.counts.items() if v}
    assert counts == {"delivered": len(good), "quarantined": 8 - len(good)}
    [why] = [r for r in status.reasons if r.state == "quarantined"]
    assert why.reason == "bad_row"
    assert why.last_detail is not None and error in why.last_detail


async def test_retry_quarantined_after_a_fix(db: Db, smtp_sink: Callable[..., Sink]) -> None:
    sink = smtp_sink()
    [qid] = await _fill(db, [0])
    await db.sql(f"UPDATE outbox_recipients SET state = 'paused' WHERE message = {db.mark}", qid)
    outbox = Outbox(db.store(), policy=OutboxPolicy(poll=0.05))
    async with _mailer(sink) as mailer:
        await _drain(outbox, mailer)
        assert (await outbox.status()).counts["quarantined"] == 2
        assert await outbox.retry(states=["quarantined"]) == 2
        await _drain(outbox, mailer)
        status = await outbox.status()
    assert status.counts["delivered"] == 2
    assert set(deliveries(sink)) == _pairs(0)


# -- the command line and run_worker ---------------------------------------------------


async def test_outbox_accepts_a_postgresql_url(db: Db) -> None:
    if db.kind != "postgres":
        outbox = Outbox(str(db.path))  # type: ignore[attr-defined]
        assert isinstance(outbox.store, SQLiteStore)
        await outbox.close()
        return
    from resilient_smtp.outbox import PostgresStore

    outbox = Outbox(db.url)  # type: ignore[attr-defined]
    assert isinstance(outbox.store, PostgresStore)
    await outbox.status()  # it connects
    await outbox.close()


async def test_run_worker_starts_again_after_the_database_went_away(
    db: Db, smtp_sink: Callable[..., Sink]
) -> None:
    sink = smtp_sink()
    await _fill(db, range(2))
    delivered = asyncio.Event()
    seen: list[str] = []

    def watch(event: Event) -> None:
        if event.kind == "outbox_delivered":
            seen.append(event.data["recipient"])
            if len(seen) == 4:
                delivered.set()

    store = db.store(fragile=True)
    await db.outage()
    async with _mailer(sink) as mailer:
        worker = asyncio.ensure_future(
            run_worker(
                mailer,
                store,
                stop=delivered,
                policy=OutboxPolicy(poll=0.05),
                hooks=[watch],
            )
        )
        await asyncio.sleep(0.2)
        assert not worker.done()  # the error did not end it
        await db.restore()
        await asyncio.wait_for(worker, timeout=10)  # starts again after 1 s
    assert set(deliveries(sink)) == _pairs(0, 1)


def test_status_and_retry_quarantined_on_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"

    async def fill() -> None:
        async with Outbox(SQLiteStore(db)) as outbox:
            qid = await outbox.put(_message(0))
            await outbox.put(_message(1))
            await outbox.store.quarantine(now=0.0)  # nothing bad yet
            import sqlite3

            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE outbox_recipients SET state = 'x' WHERE message = ?", (qid,))
            assert len(await outbox.store.quarantine(now=1.0)) == 2

    asyncio.run(fill())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "resilient_smtp", "outbox", *args, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    data = json.loads(run("status", "--json").stdout)
    assert data["recipients"]["quarantined"] == 2
    assert data["oldest"]["quarantined"]["id"]
    [why] = [r for r in data["reasons"] if r["state"] == "quarantined"]
    assert why["count"] == 2
    assert why["last_detail"] == "unknown state 'x'"
    text = run("status").stdout
    assert "quarantined 2" in text
    assert "quarantined (none) bad_row: 2" in text
    assert "unknown state 'x'" in text
    again = run("retry", "--state", "quarantined")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "2 recipient(s) due now"


async def test_a_file_made_by_the_previous_version_gains_the_new_columns(
    tmp_path: Path, smtp_sink: Callable[..., Sink]
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE outbox_messages (id TEXT PRIMARY KEY, message_id TEXT NOT NULL,
                sender TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL,
                expires REAL NOT NULL);
            CREATE TABLE outbox_recipients (message TEXT NOT NULL REFERENCES
                outbox_messages(id) ON DELETE CASCADE, address TEXT NOT NULL,
                state TEXT NOT NULL, due REAL, attempts INTEGER NOT NULL DEFAULT 0,
                reason TEXT, detail TEXT, destination TEXT,
                suspended INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
                claimed_by TEXT, claim_until REAL, PRIMARY KEY (message, address));
            """
        )
    sink = smtp_sink()
    async with Outbox(str(path)) as outbox, _mailer(sink) as mailer:
        await outbox.put(_message(0))
        await _drain(outbox, mailer)
        assert (await outbox.status()).counts["delivered"] == 2
    assert set(deliveries(sink)) == _pairs(0)


async def test_a_cancelled_pass_releases_its_claims_and_sends_nothing_twice(
    db: Db, smtp_sink: Callable[..., Sink]
) -> None:
    sink = smtp_sink("-w", "2")
    await _fill(db, range(3))
    outbox = Outbox(db.store(), policy=OutboxPolicy(lease=5.0))
    async with _mailer(sink) as mailer:
        task = asyncio.ensure_future(outbox.run_once(mailer))
        for _ in range(500):  # bounded: 500 x 2 ms
            if await db.claimed() == 6:
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)  # the sends wait for their 354
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nothing had reached a final dot: all due again, at once (a send
        # stopped while being marked "sending" is put back as deferred).
        assert await db.claimed() == 0
        counts = (await outbox.status()).counts
        assert counts["queued"] + counts["deferred"] == 6, counts
        await _drain(outbox, mailer)
        status = await outbox.status()
    assert status.counts["delivered"] == 6
    sent = deliveries(sink)
    assert set(sent) == _pairs(0, 1, 2)
    assert max(sent.values()) == 1
