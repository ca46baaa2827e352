"""The outbox store for many workers on many machines: PostgreSQL.

Workers claim messages with ``SELECT ... FOR UPDATE SKIP LOCKED``: a
message row another worker has locked is skipped instead of waited for,
and the recipients are then claimed with an ``UPDATE`` that re-checks
they are still free (in READ COMMITTED every statement sees the rows
committed before it, PostgreSQL's documentation, "Transaction Isolation"),
so two workers never hold the same recipient.

Built on asyncpg (the ``postgres`` extra): it speaks the protocol natively
on asyncio, so no call blocks the event loop and no thread is needed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from .._checks import whole_number
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

__all__ = ["PostgresStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_messages (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    body BYTEA NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_recipients (
    message TEXT NOT NULL REFERENCES outbox_messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    due DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    detail TEXT,
    destination TEXT,
    suspended BOOLEAN NOT NULL DEFAULT FALSE,
    updated DOUBLE PRECISION NOT NULL,
    claimed_by TEXT,
    claim_until DOUBLE PRECISION,
    PRIMARY KEY (message, address)
);
ALTER TABLE outbox_recipients ADD COLUMN IF NOT EXISTS claim_token TEXT;
ALTER TABLE outbox_recipients ADD COLUMN IF NOT EXISTS suspended_until DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox_recipients (state, due);
CREATE INDEX IF NOT EXISTS outbox_updated ON outbox_recipients (state, updated);
"""

_WAITING = [OutboxState.QUEUED.value, OutboxState.DEFERRED.value]
_FINAL = [s.value for s in FINAL_STATES]
_KNOWN = [s.value for s in OutboxState]
# NaN sorts above every number in PostgreSQL: a NaN due would never be due.
_FREE = (
    "r.state = ANY($1::text[]) AND r.due <= $2 AND r.due <> 'NaN' "
    "AND (r.claimed_by IS NULL OR r.claim_until < $2)"
)
_GOOD_MESSAGE = "m.created <> 'NaN' AND m.expires <> 'NaN'"
_IS_WAITING = "r.state IN ('queued', 'deferred')"
_DEFERRED = "i.state = 'deferred'"
_SUSPENDED = "i.state = 'deferred' AND i.suspended_until > $1"
# The column types rule out text in a number or a body; what is left to go
# wrong is an unknown state, a recipient whose message row is gone (a
# foreign key dropped or bypassed), and NaN or NULL where a time belongs.
_BAD: tuple[tuple[str, str], ...] = (
    (f"r.state NOT IN {tuple(_KNOWN)!r}", "'unknown state ' || quote_literal(r.state)"),
    (
        f"{_IS_WAITING} AND NOT EXISTS (SELECT 1 FROM outbox_messages m WHERE m.id = r.message)",
        "'no message row with id ' || quote_literal(r.message)",
    ),
    (
        f"{_IS_WAITING} AND (r.due IS NULL OR r.due = 'NaN')",
        "'due is not a number: ' || quote_nullable(r.due)",
    ),
    (
        f"{_IS_WAITING} AND EXISTS (SELECT 1 FROM outbox_messages m WHERE m.id = r.message "
        f"AND NOT ({_GOOD_MESSAGE}))",
        "'the message row is malformed: ' || (SELECT 'created ' || m.created || ', expires ' "
        "|| m.expires FROM outbox_messages m WHERE m.id = r.message)",
    ),
)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DROP_EMPTY = (
    "DELETE FROM outbox_messages m WHERE NOT EXISTS "
    "(SELECT 1 FROM outbox_recipients r WHERE r.message = m.id)"
)


class PostgresStore(Store):
    """An outbox :class:`~resilient_smtp.outbox.Store` in PostgreSQL.

    ``dsn`` is a ``postgresql://`` URL (its password never appears in this
    object's repr).  ``schema`` puts the tables in that schema (created if
    missing), for several outboxes in one database.  The connection pool
    opens on first use.
    """

    def __init__(self, dsn: str, *, schema: str = "public", max_connections: int = 10) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("dsn must be a postgresql:// URL")
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema must be a plain lower-case identifier, not {schema!r}")
        self._dsn = dsn
        self.schema = schema
        self._max = whole_number("max_connections", max_connections)
        self._pool: Any = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    async def _db(self) -> Any:
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max,
                    server_settings={"search_path": self.schema},
                )
                async with pool.acquire() as conn, conn.transaction():
                    # One creator at a time: CREATE ... IF NOT EXISTS races.
                    await conn.execute("SELECT pg_advisory_xact_lock(8008135)")
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                    await conn.execute(_SCHEMA)
                self._pool = pool
        return self._pool

    async def add(self, message: NewMessage) -> None:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO outbox_messages VALUES ($1, $2, $3, $4, $5, $6)",
                message.id,
                message.message_id,
                message.sender,
                message.body,
                message.created,
                message.expires,
            )
            await conn.executemany(
                "INSERT INTO outbox_recipients (message, address, state, due, updated) "
                "VALUES ($1, $2, 'queued', $3, $3)",
                [(message.id, a, message.created) for a in message.recipients],
            )

    async def claim(
        self, *, worker: str, token: str, now: float, until: float, limit: int
    ) -> list[Claimed]:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            messages = await conn.fetch(
                "SELECT m.id, m.message_id, m.sender, m.body, m.created, m.expires "
                "FROM outbox_messages m WHERE EXISTS (SELECT 1 FROM outbox_recipients r "
                f"WHERE r.message = m.id AND {_FREE}) AND {_GOOD_MESSAGE} "
                "ORDER BY m.created LIMIT $3 FOR UPDATE OF m SKIP LOCKED",
                _WAITING,
                now,
                limit,
            )
            if not messages:
                return []
            rows = await conn.fetch(
                "UPDATE outbox_recipients r SET claimed_by = $4, claim_until = $5, "
                f"claim_token = $6 WHERE r.message = ANY($3::text[]) AND {_FREE} "
                "RETURNING r.message, r.address, r.attempts",
                _WAITING,
                now,
                [m["id"] for m in messages],
                worker,
                until,
                token,
            )
        attempts: dict[str, dict[str, int]] = {}
        for r in rows:
            attempts.setdefault(r["message"], {})[r["address"]] = r["attempts"]
        return [
            Claimed(
                id=m["id"],
                message_id=m["message_id"],
                sender=m["sender"],
                body=bytes(m["body"]),
                created=m["created"],
                expires=m["expires"],
                attempts=attempts[m["id"]],
                token=token,
                until=until,
            )
            for m in messages
            if m["id"] in attempts  # claimed meanwhile by a worker that committed first
        ]

    async def mark_sending(
        self, message: str, addresses: Sequence[str], *, token: str, now: float
    ) -> bool:
        pool = await self._db()
        wanted = sorted(set(addresses))
        # One statement, so all or none: the rows are updated only if every
        # one is still held under the token by a claim that has not lapsed.
        done = await pool.execute(
            "WITH held AS (SELECT address FROM outbox_recipients "
            "WHERE message = $1 AND address = ANY($2::text[]) AND claim_token = $4 "
            "AND claim_until >= $3 AND state = ANY($5::text[]) FOR UPDATE) "
            "UPDATE outbox_recipients r SET state = 'sending', updated = $3 FROM held "
            "WHERE r.message = $1 AND r.address = held.address "
            "AND (SELECT COUNT(*) FROM held) = $6",
            message,
            wanted,
            now,
            token,
            _WAITING,
            len(wanted),
        )
        return _count(done) == len(wanted)

    async def record(
        self, message: str, updates: Sequence[RecipientUpdate], *, token: str, now: float
    ) -> int:
        pool = await self._db()
        # One statement for the lot (one round trip), fenced by the token.
        done = await pool.execute(
            "UPDATE outbox_recipients r SET state = u.state, due = u.due, "
            "attempts = u.attempts, reason = u.reason, detail = u.detail, "
            "destination = u.destination, suspended = u.suspended, "
            "suspended_until = u.suspended_until, updated = $10, claimed_by = NULL, "
            "claim_until = NULL, claim_token = NULL "
            "FROM unnest($1::text[], $2::float8[], $3::int[], $4::text[], $5::text[], "
            "$6::text[], $7::bool[], $8::float8[], $9::text[]) "
            "AS u(state, due, attempts, reason, detail, destination, suspended, "
            "suspended_until, address) "
            "WHERE r.message = $11 AND r.address = u.address AND r.claim_token = $12",
            [u.state.value for u in updates],
            [u.due for u in updates],
            [u.attempts for u in updates],
            [u.reason for u in updates],
            [u.detail for u in updates],
            [u.destination for u in updates],
            [u.suspended for u in updates],
            [u.suspended_until for u in updates],
            [u.address for u in updates],
            now,
            message,
            token,
        )
        return _count(done)

    async def extend(self, *, token: str, now: float, until: float) -> int:
        pool = await self._db()
        done = await pool.execute(
            "UPDATE outbox_recipients SET claim_until = $2 "
            "WHERE claim_token = $1 AND claimed_by IS NOT NULL AND claim_until >= $3",
            token,
            until,
            now,
        )
        return _count(done)

    async def release(self, *, token: str) -> None:
        pool = await self._db()
        await pool.execute(
            "UPDATE outbox_recipients SET claimed_by = NULL, claim_until = NULL, "
            "claim_token = NULL WHERE claim_token = $1 AND state = ANY($2::text[])",
            token,
            _WAITING,
        )

    async def recover(self, *, now: float) -> list[tuple[str, str]]:
        pool = await self._db()
        # The claim token stays: the worker, if alive after all, may still
        # record the verdict it got.
        rows = await pool.fetch(
            "UPDATE outbox_recipients SET state = 'ambiguous', reason = 'worker_lost', "
            "detail = 'the worker stopped while sending; the server may have the message', "
            "updated = $1, claimed_by = NULL, claim_until = NULL "
            "WHERE state = 'sending' AND (claim_until IS NULL OR claim_until < $1) "
            "RETURNING message, address",
            now,
        )
        return [(r["message"], r["address"]) for r in rows]

    async def quarantine(self, *, now: float) -> list[Quarantined]:
        pool = await self._db()
        found: list[Quarantined] = []
        async with pool.acquire() as conn, conn.transaction():
            for where, error in _BAD:
                for r in await conn.fetch(
                    "UPDATE outbox_recipients r SET state = 'quarantined', reason = 'bad_row', "
                    f"detail = {error}, updated = $1, claimed_by = NULL, claim_until = NULL, "
                    f"claim_token = NULL WHERE {where} "
                    "RETURNING r.message, r.address, r.detail",
                    now,
                ):
                    found.append(
                        Quarantined(message=r["message"], address=r["address"], error=r["detail"])
                    )
        return found

    async def prune(self, *, before: float) -> int:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "DELETE FROM outbox_recipients WHERE state = ANY($1::text[]) AND updated < $2",
                _FINAL,
                before,
            )
            await conn.execute(_DROP_EMPTY)
        return _count(done)

    async def next_due(self) -> float | None:
        pool = await self._db()
        due = await pool.fetchval(
            "SELECT MIN(due) FROM outbox_recipients WHERE state = ANY($1::text[]) "
            "AND due <> 'NaN'",
            _WAITING,
        )
        return None if due is None else float(due)

    async def status(self, *, now: float | None = None) -> OutboxStatus:
        if now is None:
            now = time.time()
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            counts = dict.fromkeys((s.value for s in OutboxState), 0)
            for r in await conn.fetch(
                "SELECT state, COUNT(*) AS n FROM outbox_recipients GROUP BY state"
            ):
                counts[r["state"]] = r["n"]
            messages = await conn.fetchval("SELECT COUNT(*) FROM outbox_messages")
            oldest = {
                r["state"]: OldestMessage(id=r["id"], created=r["created"], reason=r["reason"])
                for r in await conn.fetch(
                    "SELECT DISTINCT ON (r.state) r.state, m.id, m.created, r.reason "
                    "FROM outbox_recipients r JOIN outbox_messages m ON m.id = r.message "
                    "WHERE m.created <> 'NaN' ORDER BY r.state, m.created"
                )
            }
            # Each column is named after the field it fills.
            destinations = [
                DestinationStatus(**r)
                for r in await conn.fetch(
                    "SELECT destination, COUNT(*) AS deferred, "
                    "COUNT(*) FILTER (WHERE suspended) AS suspended, "
                    f"{_latest('reason', 'destination', where=_DEFERRED)} AS last_reason "
                    "FROM outbox_recipients o WHERE state = 'deferred' "
                    "GROUP BY destination ORDER BY COUNT(*) DESC"
                )
            ]
            reasons = [
                ReasonStatus(**r)
                for r in await conn.fetch(
                    "SELECT state, destination, reason, COUNT(*) AS count, "
                    "MAX(updated) AS last_updated, "
                    f"{_latest('detail', 'state', 'destination', 'reason')} AS last_detail "
                    "FROM outbox_recipients o GROUP BY state, destination, reason "
                    "ORDER BY state, COUNT(*) DESC"
                )
            ]
            suspensions = [
                SuspensionStatus(**r)
                for r in await conn.fetch(
                    "SELECT destination, MAX(suspended_until) AS until, COUNT(*) AS deferred, "
                    f"{_latest('reason', 'destination', where=_SUSPENDED)} AS reason "
                    "FROM outbox_recipients o WHERE state = 'deferred' "
                    "AND suspended_until > $1 AND suspended_until <> 'NaN' "
                    "GROUP BY destination ORDER BY MAX(suspended_until)",
                    now,
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

    async def retry(
        self, *, now: float, states: Sequence[OutboxState], message: str | None = None
    ) -> int:
        pool = await self._db()
        done = await pool.execute(
            "UPDATE outbox_recipients SET state = 'deferred', due = $1, updated = $1, "
            "claimed_by = NULL, claim_until = NULL, claim_token = NULL "
            "WHERE state = ANY($2::text[]) AND ($3::text IS NULL OR message = $3)",
            now,
            [s.value for s in states],
            message,
        )
        return _count(done)

    async def purge(self, *, states: Sequence[OutboxState], message: str | None = None) -> int:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "DELETE FROM outbox_recipients "
                "WHERE state = ANY($1::text[]) AND ($2::text IS NULL OR message = $2)",
                [s.value for s in states],
                message,
            )
            await conn.execute(_DROP_EMPTY)
        return _count(done)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _latest(column: str, *same: str, where: str = "") -> str:
    return latest(column, *same, where=where, equal="IS NOT DISTINCT FROM")


def _count(status: str) -> int:
    """The row count in a command status such as ``"DELETE 3"``."""
    return int(status.rsplit(" ", 1)[-1])
