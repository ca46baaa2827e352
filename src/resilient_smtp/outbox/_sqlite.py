"""The embedded outbox store: one SQLite file, no server.

WAL journal mode lets readers (``outbox status``) run while a worker
writes, and ``synchronous=FULL`` makes every commit durable: in WAL mode
the default NORMAL may lose the last commits on power loss (SQLite's
documentation of PRAGMA synchronous).  Claims take the write lock at once
(``BEGIN IMMEDIATE``), so several worker processes on one file never claim
the same recipient.  sqlite3 blocks, so every call runs in a thread
(:func:`asyncio.to_thread`), one at a time on one connection.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._records import (
    FINAL_STATES,
    Claimed,
    DestinationStatus,
    NewMessage,
    OutboxState,
    OutboxStatus,
    RecipientUpdate,
)

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
    PRIMARY KEY (message, address)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox_recipients (state, due);
CREATE INDEX IF NOT EXISTS outbox_updated ON outbox_recipients (state, updated);
"""

_WAITING = (OutboxState.QUEUED.value, OutboxState.DEFERRED.value)
_FINAL = tuple(s.value for s in FINAL_STATES)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteStore:
    """An outbox :class:`~resilient_smtp.outbox.Store` in the SQLite file
    ``path`` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
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

    async def claim(self, *, worker: str, now: float, until: float, limit: int) -> list[Claimed]:
        def go(db: sqlite3.Connection) -> list[Claimed]:
            free = (
                f"state IN ({_marks(2)}) AND due <= ? AND (claimed_by IS NULL OR claim_until < ?)"
            )
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT message FROM outbox_recipients WHERE {free} "
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
                    "UPDATE outbox_recipients SET claimed_by = ?, claim_until = ? "
                    f"WHERE message = ? AND {free}",
                    (worker, until, mid, *_WAITING, now, now),
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
                        created=m[3],
                        expires=m[4],
                        attempts=dict(rows),
                    )
                )
            return claimed

        return await self._run(go)

    async def mark_sending(self, message: str, addresses: Sequence[str], *, now: float) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox_recipients SET state = 'sending', updated = ? "
                f"WHERE message = ? AND address IN ({_marks(len(addresses))})",
                (now, message, *addresses),
            )

        await self._run(go)

    async def record(
        self, message: str, updates: Sequence[RecipientUpdate], *, now: float
    ) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE outbox_recipients SET state = ?, due = ?, attempts = ?, reason = ?, "
                "detail = ?, destination = ?, suspended = ?, updated = ?, claimed_by = NULL, "
                "claim_until = NULL WHERE message = ? AND address = ?",
                [
                    (
                        u.state.value,
                        u.due,
                        u.attempts,
                        u.reason,
                        u.detail,
                        u.destination,
                        int(u.suspended),
                        now,
                        message,
                        u.address,
                    )
                    for u in updates
                ],
            )

        await self._run(go)

    async def extend(self, *, worker: str, until: float) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox_recipients SET claim_until = ? WHERE claimed_by = ?",
                (until, worker),
            )

        await self._run(go)

    async def release(self, *, worker: str) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox_recipients SET claimed_by = NULL, claim_until = NULL "
                f"WHERE claimed_by = ? AND state IN ({_marks(2)})",
                (worker, *_WAITING),
            )

        await self._run(go)

    async def recover(self, *, now: float) -> list[tuple[str, str]]:
        def go(db: sqlite3.Connection) -> list[tuple[str, str]]:
            lost = "state = 'sending' AND (claim_until IS NULL OR claim_until < ?)"
            rows = db.execute(
                f"SELECT message, address FROM outbox_recipients WHERE {lost}", (now,)
            ).fetchall()
            db.execute(
                "UPDATE outbox_recipients SET state = 'ambiguous', reason = 'worker_lost', "
                "detail = 'the worker stopped while sending; the server may have the message', "
                f"updated = ?, claimed_by = NULL, claim_until = NULL WHERE {lost}",
                (now, now),
            )
            return [(m, a) for m, a in rows]

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
                f"SELECT MIN(due) FROM outbox_recipients WHERE state IN ({_marks(2)})",
                _WAITING,
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._run(go)

    async def status(self) -> OutboxStatus:
        def go(db: sqlite3.Connection) -> OutboxStatus:
            counts = dict.fromkeys((s.value for s in OutboxState), 0)
            for state, n in db.execute(
                "SELECT state, COUNT(*) FROM outbox_recipients GROUP BY state"
            ):
                counts[state] = n
            messages = db.execute("SELECT COUNT(*) FROM outbox_messages").fetchone()[0]
            oldest = db.execute(
                "SELECT m.id, m.created, r.reason FROM outbox_recipients r "
                "JOIN outbox_messages m ON m.id = r.message WHERE r.state = 'deferred' "
                "ORDER BY m.created LIMIT 1"
            ).fetchone()
            destinations = [
                DestinationStatus(destination=d, deferred=n, suspended=s, last_reason=r)
                for d, n, s, r in db.execute(
                    "SELECT destination, COUNT(*), SUM(suspended), "
                    "(SELECT reason FROM outbox_recipients i WHERE i.state = 'deferred' AND "
                    " i.destination IS o.destination ORDER BY updated DESC LIMIT 1) "
                    "FROM outbox_recipients o WHERE state = 'deferred' "
                    "GROUP BY destination ORDER BY COUNT(*) DESC"
                )
            ]
            return OutboxStatus(
                counts=counts,
                messages=messages,
                oldest_deferred_id=None if oldest is None else oldest[0],
                oldest_deferred_created=None if oldest is None else oldest[1],
                oldest_deferred_reason=None if oldest is None else oldest[2],
                destinations=tuple(destinations),
            )

        return await self._run(go)

    async def retry(
        self, *, now: float, states: Sequence[OutboxState], message: str | None = None
    ) -> int:
        def go(db: sqlite3.Connection) -> int:
            where, args = _selection(states, message)
            return db.execute(
                "UPDATE outbox_recipients SET state = 'deferred', due = ?, updated = ?, "
                f"claimed_by = NULL, claim_until = NULL WHERE {where}",
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
