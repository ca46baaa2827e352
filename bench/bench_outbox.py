"""The cost of durability: the outbox against the Mailer alone, on smtp-sink.

One smtp-sink on 127.0.0.1 (no dump file).  In one run, with the same
messages (1 recipient, about 1 KB):

1. Mailer alone: ``mailer.send()`` for every message, ``--batch`` at once
   (a fixed concurrency limit of ``--batch``, in every Mailer here).
2. put(): ``outbox.put()`` for every message into a fresh store, one at a
   time (each returns after its commit) and ``--batch`` at once.
3. worker: ``outbox.run_once(mailer)`` until the queue is empty
   (``--batch`` messages claimed and sent at once), the same Mailer setup.
4. put + worker end to end.

Ratios are against the Mailer alone measured in the same run.  SQLite
always (a file in a temp dir); PostgreSQL too when RESILIENT_SMTP_PG_URL is
set (``. scripts/services/postgres.sh``).

    python bench/bench_outbox.py            # 2000 messages
    python bench/bench_outbox.py --quick    # 300 messages
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from resilient_smtp import ConcurrencyLimiter, Mailer, RetryPolicy
from resilient_smtp.outbox import Outbox, OutboxPolicy, SQLiteStore, Store

HOST = "127.0.0.1"
SENDER = "bench@resilient-smtp.test"


def _message(i: int) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: r{i}@example.com\r\nSubject: bench {i}\r\n"
        f"Message-ID: <outbox-{i}@resilient-smtp.test>\r\n\r\n"
    ).encode()
    return head + (b"x" * 70 + b"\r\n") * 12


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(binary):
        raise SystemExit("smtp-sink not found: install Debian's postfix package")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    cmd = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), f"{HOST}:{port}", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):  # at most 5 s
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.01)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _mailer(port: int, batch: int) -> Mailer:
    # A fixed concurrency limit, not the default adaptive one: a fresh
    # adaptive limiter starts cautiously and ramps up, which would measure
    # the ramp, not the cost of durability.
    return Mailer(
        HOST,
        port,
        tls="none",
        retry=RetryPolicy(max_attempts=1),
        limiter=ConcurrencyLimiter(batch),
    )


async def _bounded(n: int, at_once: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(i)`` for i < n, ``at_once`` at a time; return the seconds."""
    sem = asyncio.Semaphore(at_once)

    async def go(i: int) -> None:
        async with sem:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(go(i) for i in range(n)))
    return time.perf_counter() - start


async def mailer_alone(port: int, n: int, batch: int) -> float:
    async with _mailer(port, batch) as mailer:

        async def send(i: int) -> None:
            result = await mailer.send(
                _message(i), sender=SENDER, recipients=[f"r{i}@example.com"]
            )
            if not result.ok:
                raise SystemExit(f"the Mailer failed a send to smtp-sink: {result!r}")

        return n / await _bounded(n, batch, send)


async def outbox_rates(
    port: int, n: int, batch: int, store: Callable[[], Store]
) -> dict[str, float]:
    rates: dict[str, float] = {}
    policy = OutboxPolicy(batch=batch)
    async with Outbox(store(), policy=policy) as outbox:

        async def put(i: int) -> None:
            await outbox.put(_message(i), sender=SENDER, recipients=[f"r{i}@example.com"])

        rates["put, one at a time"] = n / await _bounded(n, 1, put)
        rates["put, concurrent"] = n / await _bounded(n, batch, lambda i: put(n + i))

        async with _mailer(port, batch) as mailer:
            start = time.perf_counter()
            done = 0
            for _ in range(10 * n):  # bounded
                got = await outbox.run_once(mailer)
                if not got:
                    break
                done += got
            rates["worker"] = done / (time.perf_counter() - start)
            status = await outbox.status()
            if status.counts["delivered"] != 2 * n:
                raise SystemExit(f"the worker did not deliver everything: {status.counts}")

            await outbox.purge(states=["delivered"])
            start = time.perf_counter()
            await _bounded(n, batch, lambda i: put(2 * n + i))
            for _ in range(10 * n):
                if not await outbox.run_once(mailer):
                    break
            rates["put + worker"] = n / (time.perf_counter() - start)
    return rates


async def main(n: int, batch: int) -> None:
    with smtp_sink() as port, tempfile.TemporaryDirectory() as tmp:
        await mailer_alone(port, min(n, 200), batch)  # warm-up
        base = await mailer_alone(port, n, batch)
        print(f"{n} messages, {batch} at once, smtp-sink on loopback")
        print(f"{'':34} {'msg/s':>9} {'vs Mailer':>10}")
        print(f"{'Mailer alone':34} {base:9.0f} {1.0:10.2f}")
        stores: dict[str, Callable[[], Store]] = {
            "SQLite": lambda: SQLiteStore(Path(tmp) / f"{uuid.uuid4().hex}.db")
        }
        url = os.environ.get("RESILIENT_SMTP_PG_URL")
        if url:
            from resilient_smtp.outbox import PostgresStore

            stores["PostgreSQL"] = lambda: PostgresStore(url, schema=f"b_{uuid.uuid4().hex[:8]}")
        for name, make in stores.items():
            for what, rate in (await outbox_rates(port, n, batch, make)).items():
                print(f"{name + ' ' + what:34} {rate:9.0f} {rate / base:10.2f}")
        if url:
            import asyncpg

            conn = await asyncpg.connect(url)
            for (schema,) in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'b\\_%'"
            ):
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 messages")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(300 if args.quick else args.messages, args.batch))
