"""A PostgreSQL server for the outbox's store tests.

CI's scripts/services/postgres.sh starts one on 127.0.0.1 and exports
RESILIENT_SMTP_PG_URL.  Run by hand without it, the tests source that same
script once (it installs Debian's postgresql when run as root, and starts
a throw-away cluster on 127.0.0.1:15432).  When no server can be had, the
PostgreSQL tests are skipped with the reason, except under CI, where they
fail.  Each test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from resilient_smtp.outbox import Store

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services" / "postgres.sh"
_found: list[str | None] = []


def pg_url() -> str:
    """The server's URL, starting one if need be; skips (fails under CI)."""
    if not _found:
        url = os.environ.get("RESILIENT_SMTP_PG_URL")
        if not url:
            done = subprocess.run(
                [
                    "bash",
                    "-c",
                    f'set -euo pipefail; . "{_SCRIPT}" >&2; echo "$RESILIENT_SMTP_PG_URL"',
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            # The script exports nothing (and says why on stderr) when the
            # machine has no PostgreSQL and it may not install one.
            url = (done.stdout.strip() or None) if done.returncode == 0 else None
            if url is None:
                _found.append(None)
                message = f"no PostgreSQL server: {done.stderr.strip()[-500:]}"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
        _found.append(url)
    url = _found[0]
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server")
        pytest.skip("no PostgreSQL server")
    return url


@contextlib.asynccontextmanager
async def pg_store_factory() -> AsyncIterator[Callable[[], Store]]:
    """Makes PostgresStores on one fresh schema; drops it at the end."""
    try:
        import asyncpg
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("asyncpg is not installed (the postgres extra)")
        pytest.skip("asyncpg is not installed: pip install -e '.[postgres]'")
    from resilient_smtp.outbox import PostgresStore

    url = pg_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"

    def factory() -> Store:
        store: Store = PostgresStore(url, schema=schema)
        return store

    try:
        yield factory
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()
