"""The embedded outbox store: one SQLite file, no server.

WAL journal mode lets readers (``outbox status``) run while a worker
writes, and ``synchronous=FULL`` makes every commit durable: in WAL mode
the default NORMAL may lose the last commits on power loss (SQLite's
documentation of PRAGMA synchronous).  Claims take the write lock at once
(``BEGIN IMMEDIATE``), so several worker processes on one file never claim
the same recipient.  sqlite3 blocks, so every call runs in a thread
(:func:`asyncio.to_thread`), one at a time on one connection.

SQLite stores any value in any column (its "type affinity"), so a row
edited by hand can hold text where a number belongs: claims skip rows
whose types are wrong and :meth:`SQLiteStore.quarantine` sets them aside
(``typeof()`` tells the storage class, SQLite's "Datatypes" page).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._records import (
    FINAL_STATES,
    Claimed,
    DestinationStatus,
    NewMessage,
    OldestMessage,
    OutboxState,
    OutboxStatus,
    Quarantined,
    ReasonStatus,
    RecipientUpdate,
    Store,
    SuspensionStatus,
    status_of,
)
from ._sql import latest

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_messages (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_recipients (
    message TEXT NOT NULL REFERENCES outbox_messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    due REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    detail TEXT,
    destination TEXT,
    suspended INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    claimed_by TEXT,
    claim_until REAL,
    claim_token TEXT,
    suspended_until REAL,
    PRIMARY KEY (message, address)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox_recipients (state, due);
CREATE INDEX IF NOT EXISTS outbox_updated ON outbox_recipients (state, updated);
"""
# Columns added after the first release: an older file gains them on open.
_ADDED = {"claim_token": "TEXT", "suspended_until": "REAL"}

_WAITING = (OutboxState.QUEUED.value, OutboxState.DEFERRED.value)
_FINAL = tuple(s.value for s in FINAL_STATES)
_KNOWN = tuple(s.value for s in OutboxState)
_NUMBER = "IN ('integer', 'real')"
_GOOD_MESSAGE = (
    f"typeof(m.body) = 'blob' AND typeof(m.created) {_NUMBER} AND typeof(m.expires) {_NUMBER} "
    "AND typeof(m.sender) = 'text' AND typeof(m.message_id) = 'text'"
)
_IS_WAITING = f"state IN {_WAITING!r}"
_DEFERRED = "i.state = 'deferred'"
_SUSPENDED = "i.state = 'deferred' AND i.suspended_until > ?"
# Each kind of row a worker cannot act on: the condition, and the error as
# an SQL expression (the offending value quoted, never a body).
_BAD: tuple[tuple[str, str], ...] = (
    (f"state NOT IN {_KNOWN!r}", "'unknown state ' || quote(state)"),
    (
        f"{_IS_WAITING} AND NOT EXISTS (SELECT 1 FROM outbox_messages m WHERE m.id = message)",
        "'no message row with id ' || quote(message)",
    ),
    (f"{_IS_WAITING} AND typeof(due) NOT {_NUMBER}", "'due is not a number: ' || quote(due)"),
    (
        f"{_IS_WAITING} AND typeof(attempts) != 'integer'",
        "'attempts is not an integer: ' || quote(attempts)",
    ),
    (
        f"{_IS_WAITING} AND EXISTS (SELECT 1 FROM outbox_messages m WHERE m.id = message "
        f"AND NOT ({_GOOD_MESSAGE}))",
        "'the message row is malformed: ' || (SELECT 'body is ' || typeof(m.body) "
        "|| ', created ' || quote(m.created) || ', expires ' || quote(m.expires) "
        "|| ', sender is ' || typeof(m.sender) || ', message_id is ' || typeof(m.message_id) "
        "FROM outbox_messages m WHERE m.id = message)",
    ),
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteStore(Store):
    """An outbox :class:`~resilient_smtp.outbox.Store` in the SQLite file
    ``path`` (created if missing).  ``timeout`` is how long a call waits
    for another process's write lock (SQLite's busy timeout) before it
    raises ``sqlite3.OperationalError: database is locked``."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        if self.path in ("", ":memory:"):
            # sqlite3 would open a private temporary or in-memory database:
            # an outbox that forgets everything when it closes.
            raise ValueError(f"the outbox needs a file to be durable, not {self.path!r}")
        # isolation_level=None: no implicit transactions; each method
        # says BEGIN itself.  The connection is used from worker threads,
        # one at a time under the lock.
        self._db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox_recipients)")}
        for column, kind in _ADDED.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE outbox_recipients ADD COLUMN {column} {kind}")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await asyncio.to_thread(locked)

    async def add(self, message: NewMessage) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO outbox_messages VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.message_id,
                    message.sender,
                    message.body,
                    message.created,
                    message.expires,
                ),
            )
            db.executemany(
                "INSERT INTO outbox_recipients (message, address, state, due, updated) "
                "VALUES (?, ?, 'queued', ?, ?)",
                [(message.id, a, message.created, message.created) for a in message.recipients],
            )

        await self._run(go)

    async def claim(
        self, *, worker: str, token: str, now: float, until: float, limit: int
    ) -> list[Claimed]:
        def go(db: sqlite3.Connection) -> list[Claimed]:
            free = (
                f"state IN ({_marks(2)}) AND due <= ? AND typeof(attempts) = 'integer' "
                "AND (claimed_by IS NULL OR claim_until < ?)"
            )
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT message FROM outbox_recipients WHERE {free} AND EXISTS "
                    f"(SELECT 1 FROM outbox_messages m WHERE m.id = message AND {_GOOD_MESSAGE}) "
                    "GROUP BY message ORDER BY MIN(due) LIMIT ?",
                    (*_WAITING, now, now, limit),
                )
            ]
            claimed = []
            for mid in ids:
                rows = db.execute(
                    "SELECT address, attempts FROM outbox_recipients "
                    f"WHERE message = ? AND {free}",
                    (mid, *_WAITING, now, now),
                ).fetchall()
                db.execute(
                    "UPDATE outbox_recipients SET claimed_by = ?, claim_token = ?, "
                    f"claim_until = ? WHERE message = ? AND {free}",
                    (worker, token, until, mid, *_WAITING, now, now),
                )
                m = db.execute(
                    "SELECT message_id, sender, body, created, expires FROM outbox_messages "
                    "WHERE id = ?",
                    (mid,),
                ).fetchone()
                claimed.append(
                    Claimed(
                        id=mid,
                        message_id=m[0],
                        sender=m[1],
                        body=bytes(m[2]),
                        created=float(m[3]),
                        expires=float(m[4]),
                        attempts=dict(rows),
                        token=token,
                        until=until,
                    )
                )
            return claimed

        return await self._run(go)

    async def mark_sending(
        self, message: str, addresses: Sequence[str], *, token: str, now: float
    ) -> bool:
        def go(db: sqlite3.Connection) -> bool:
            n = db.execute(
                "UPDATE outbox_recipients SET state = 'sending', updated = ? "
                f"WHERE message = ? AND address IN ({_marks(len(addresses))}) "
                f"AND claim_token = ? AND claim_until >= ? AND state IN ({_marks(2)})",
                (now, message, *addresses, token, now, *_WAITING),
            ).rowcount
            if n != len(addresses):
                raise _Refused
            return True

        try:
            return await self._run(go)
        except _Refused:
            return False

    async def record(
        self, message: str, updates: Sequence[RecipientUpdate], *, token: str, now: float
    ) -> int:
        def go(db: sqlite3.Connection) -> int:
            if not updates:
                return 0
            # executemany sums the rows each statement changed into rowcount.
            return db.executemany(
                "UPDATE outbox_recipients SET state = ?, due = ?, attempts = ?, reason = ?, "
                "detail = ?, destination = ?, suspended = ?, suspended_until = ?, "
                "updated = ?, claimed_by = NULL, claim_until = NULL, claim_token = NULL "
                "WHERE message = ? AND address = ? AND claim_token = ?",
                [
                    (
                        u.state.value,
                        u.due,
                        u.attempts,
                        u.reason,
                        u.detail,
                        u.destination,
                        int(u.suspended),
                        u.suspended_until,
                        now,
                        message,
                        u.address,
                        token,
                    )
                    for u in updates
                ],
            ).rowcount

        return await self._run(go)

    async def extend(self, *, token: str, now: float, until: float) -> int:
        def go(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE outbox_recipients SET claim_until = ? "
                "WHERE claim_token = ? AND claimed_by IS NOT NULL AND claim_until >= ?",
                (until, token, now),
            ).rowcount

        return await self._run(go)

    async def release(self, *, token: str) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox_recipients SET claimed_by = NULL, claim_until = NULL, "
                f"claim_token = NULL WHERE claim_token = ? AND state IN ({_marks(2)})",
                (token, *_WAITING),
            )

        await self._run(go)

    async def recover(self, *, now: float) -> list[tuple[str, str]]:
        def go(db: sqlite3.Connection) -> list[tuple[str, str]]:
            lost = "state = 'sending' AND (claim_until IS NULL OR claim_until < ?)"
            rows = db.execute(
                f"SELECT message, address FROM outbox_recipients WHERE {lost}", (now,)
            ).fetchall()
            # The claim token stays: the worker, if alive after all, may
            # still record the verdict it got.
            db.execute(
                "UPDATE outbox_recipients SET state = 'ambiguous', reason = 'worker_lost', "
                "detail = 'the worker stopped while sending; the server may have the message', "
                f"updated = ?, claimed_by = NULL, claim_until = NULL WHERE {lost}",
                (now, now),
            )
            return [(m, a) for m, a in rows]

        return await self._run(go)

    async def quarantine(self, *, now: float) -> list[Quarantined]:
        def go(db: sqlite3.Connection) -> list[Quarantined]:
            found = []
            for where, error in _BAD:
                rows = db.execute(
                    f"SELECT message, address, {error} FROM outbox_recipients WHERE {where}"
                ).fetchall()
                for mid, address, text in rows:
                    db.execute(
                        "UPDATE outbox_recipients SET state = 'quarantined', "
                        "reason = 'bad_row', detail = ?, updated = ?, claimed_by = NULL, "
                        "claim_until = NULL, claim_token = NULL "
                        "WHERE message IS ? AND address IS ?",
                        (text, now, mid, address),
                    )
                    found.append(Quarantined(message=str(mid), address=str(address), error=text))
            return found

        return await self._run(go)

    async def prune(self, *, before: float) -> int:
        def go(db: sqlite3.Connection) -> int:
            n = db.execute(
                f"DELETE FROM outbox_recipients WHERE state IN ({_marks(len(_FINAL))}) "
                "AND updated < ?",
                (*_FINAL, before),
            ).rowcount
            _drop_empty(db)
            return n

        return await self._run(go)

    async def next_due(self) -> float | None:
        def go(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                f"SELECT MIN(due) FROM outbox_recipients WHERE state IN ({_marks(2)}) "
                f"AND typeof(due) {_NUMBER}",
                _WAITING,
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._run(go)

    async def status(self, *, now: float | None = None) -> OutboxStatus:
        if now is None:
            now = time.time()

        def go(db: sqlite3.Connection) -> OutboxStatus:
            counts = dict.fromkeys((s.value for s in OutboxState), 0)
            for state, n in db.execute(
                "SELECT state, COUNT(*) FROM outbox_recipients GROUP BY state"
            ):
                counts[str(state)] = n
            messages = db.execute("SELECT COUNT(*) FROM outbox_messages").fetchone()[0]
            oldest = {}
            for state, n in counts.items():
                row = None
                if n:
                    row = db.execute(
                        "SELECT m.id, m.created, r.reason FROM outbox_recipients r "
                        "JOIN outbox_messages m ON m.id = r.message WHERE r.state = ? "
                        f"AND typeof(m.created) {_NUMBER} ORDER BY m.created LIMIT 1",
                        (state,),
                    ).fetchone()
                if row is not None:
                    oldest[state] = OldestMessage(id=row[0], created=float(row[1]), reason=row[2])
            destinations = [
                DestinationStatus(destination=d, deferred=n, suspended=s, last_reason=r)
                for d, n, s, r in db.execute(
                    "SELECT destination, COUNT(*), SUM(suspended), "
                    f"{_latest('reason', 'destination', where=_DEFERRED)} "
                    "FROM outbox_recipients o WHERE state = 'deferred' "
                    "GROUP BY destination ORDER BY COUNT(*) DESC"
                )
            ]
            reasons = [
                ReasonStatus(
                    state=str(st),
                    destination=d,
                    reason=r,
                    count=n,
                    last_detail=detail,
                    last_updated=_number(last),
                )
                for st, d, r, n, last, detail in db.execute(
                    "SELECT state, destination, reason, COUNT(*), MAX(updated), "
                    f"{_latest('detail', 'state', 'destination', 'reason')} "
                    "FROM outbox_recipients o GROUP BY state, destination, reason "
                    "ORDER BY state, COUNT(*) DESC"
                )
            ]
            suspensions = [
                SuspensionStatus(destination=d, until=float(u), reason=r, deferred=n)
                for d, u, n, r in db.execute(
                    "SELECT destination, MAX(suspended_until), COUNT(*), "
                    f"{_latest('reason', 'destination', where=_SUSPENDED)} "
                    "FROM outbox_recipients o WHERE state = 'deferred' "
                    f"AND typeof(suspended_until) {_NUMBER} AND suspended_until > ? "
                    "GROUP BY destination ORDER BY MAX(suspended_until)",
                    (now, now),
                )
            ]
            return status_of(
                counts=counts,
                messages=messages,
                oldest=oldest,
                destinations=destinations,
                reasons=reasons,
                suspensions=suspensions,
            )

        return await self._run(go)

    async def retry(
        self, *, now: float, states: Sequence[OutboxState], message: str | None = None
    ) -> int:
        def go(db: sqlite3.Connection) -> int:
            where, args = _selection(states, message)
            return db.execute(
                "UPDATE outbox_recipients SET state = 'deferred', due = ?, updated = ?, "
                f"claimed_by = NULL, claim_until = NULL, claim_token = NULL WHERE {where}",
                (now, now, *args),
            ).rowcount

        return await self._run(go)

    async def purge(self, *, states: Sequence[OutboxState], message: str | None = None) -> int:
        def go(db: sqlite3.Connection) -> int:
            where, args = _selection(states, message)
            n = db.execute(f"DELETE FROM outbox_recipients WHERE {where}", args).rowcount
            _drop_empty(db)
            return n

        return await self._run(go)

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class _Refused(Exception):
    """A fenced write found the claim lost: roll the transaction back."""


def _latest(column: str, *same: str, where: str = "") -> str:
    return latest(column, *same, where=where, equal="IS")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _selection(states: Sequence[OutboxState], message: str | None) -> tuple[str, tuple[Any, ...]]:
    where = f"state IN ({_marks(len(states))})"
    args: tuple[Any, ...] = tuple(s.value for s in states)
    if message is not None:
        where += " AND message = ?"
        args += (message,)
    return where, args


def _drop_empty(db: sqlite3.Connection) -> None:
    db.execute(
        "DELETE FROM outbox_messages WHERE NOT EXISTS "
        "(SELECT 1 FROM outbox_recipients r WHERE r.message = outbox_messages.id)"
    )
