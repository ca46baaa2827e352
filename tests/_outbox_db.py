"""The outbox's databases for failure tests: a real SQLite file, or a
schema on the real PostgreSQL test server, with the means to hurt them.

``Db.store(fragile=True)`` gives the store a worker under test uses: on
SQLite with a 50 ms busy timeout (so a lock held by someone else makes its
calls fail instead of waiting); on PostgreSQL through a :class:`TcpProxy`.
``outage()`` takes the database away from fragile stores (SQLite: another
connection holds the write lock; PostgreSQL: every connection through the
proxy is cut and new ones are refused, as during a restart) until
``restore()``.  ``sql()`` edits rows by hand, as an operator or a bad
migration would.  ``deliveries(sink)`` reads the smtp-sink dump.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from _pg_server import pg_url
from _tcp_proxy import TcpProxy
from conftest import Sink
from resilient_smtp.outbox import SQLiteStore, Store


def deliveries(sink: Sink) -> Counter[tuple[str, str]]:
    """(Message-ID, recipient) pairs in the sink's dump, with repeats."""
    seen: Counter[tuple[str, str]] = Counter()
    for block in sink.dumped().split("X-Client-Addr:")[1:]:
        rcpts, mid = [], None
        for line in block.splitlines():
            if line.startswith("X-Rcpt-Args:"):
                rcpts.append(line.split(":", 1)[1].strip().split()[0].strip("<>"))
            elif line.lower().startswith("message-id:") and mid is None:
                mid = line.split(":", 1)[1].strip()
        assert mid is not None, block
        for r in rcpts:
            seen[(mid, r)] += 1
    return seen


class Db:
    kind = ""
    mark = "?"
    """The first query parameter's placeholder in :meth:`sql`."""

    def store(self, *, fragile: bool = False) -> Store:
        raise NotImplementedError

    async def sql(self, query: str, *args: Any) -> None:
        raise NotImplementedError

    async def claimed(self) -> int:
        """Recipients a worker holds now."""
        raise NotImplementedError

    async def outage(self) -> None:
        raise NotImplementedError

    async def restore(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close every store made here."""


class SQLiteDb(Db):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._made: list[Store] = []
        self._locker: sqlite3.Connection | None = None

    def store(self, *, fragile: bool = False) -> Store:
        s = SQLiteStore(self.path, timeout=0.05 if fragile else 30.0)
        self._made.append(s)
        return s

    async def sql(self, query: str, *args: Any) -> None:
        # A plain connection: foreign keys are off, as in the sqlite3 shell.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(query, args)
        finally:
            conn.close()

    async def claimed(self) -> int:
        conn = sqlite3.connect(self.path)
        try:
            query = "SELECT COUNT(*) FROM outbox_recipients WHERE claimed_by IS NOT NULL"
            return int(conn.execute(query).fetchone()[0])
        finally:
            conn.close()

    async def outage(self) -> None:
        self._locker = sqlite3.connect(self.path, isolation_level=None)
        self._locker.execute("BEGIN EXCLUSIVE")

    async def restore(self) -> None:
        assert self._locker is not None
        self._locker.execute("COMMIT")
        self._locker.close()
        self._locker = None

    async def close(self) -> None:
        if self._locker is not None:
            await self.restore()
        for s in self._made:
            await s.close()


class PostgresDb(Db):
    kind = "postgres"
    mark = "$1"

    def __init__(self, url: str, schema: str, proxy: TcpProxy) -> None:
        self.url = url
        self.schema = schema
        self.proxy = proxy
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{proxy.port}"
        self.proxied = urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )
        self._made: list[Store] = []

    def store(self, *, fragile: bool = False) -> Store:
        from resilient_smtp.outbox import PostgresStore

        s: Store = PostgresStore(self.proxied if fragile else self.url, schema=self.schema)
        self._made.append(s)
        return s

    async def sql(self, query: str, *args: Any) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, server_settings={"search_path": self.schema})
        try:
            # Bypasses the foreign keys for this session, as a restore of a
            # dump or a careless migration can.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(query, *args)
        finally:
            await conn.close()

    async def claimed(self) -> int:
        import asyncpg

        conn = await asyncpg.connect(self.url, server_settings={"search_path": self.schema})
        try:
            query = "SELECT COUNT(*) FROM outbox_recipients WHERE claimed_by IS NOT NULL"
            return int(await conn.fetchval(query))
        finally:
            await conn.close()

    async def outage(self) -> None:
        self.proxy.down()

    async def restore(self) -> None:
        self.proxy.up()

    async def close(self) -> None:
        for s in self._made:
            with contextlib.suppress(Exception):
                await s.close()


@contextlib.asynccontextmanager
async def open_db(kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    if kind == "sqlite":
        db = SQLiteDb(tmp_path / "outbox.db")
        try:
            yield db
        finally:
            await db.close()
        return
    import asyncpg

    url = pg_url()
    parts = urlsplit(url)
    schema = f"f_{uuid.uuid4().hex[:12]}"
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        pg = PostgresDb(url, schema, proxy)
        try:
            yield pg
        finally:
            await pg.close()
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()
