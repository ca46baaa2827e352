"""Mailer throughput on Postfix's smtp-sink, side by side with its peers.

One smtp-sink on 127.0.0.1 (no dump file: disk would be the bottleneck)
receives 1 KB messages, one recipient each, from:

* ``smtplib``: the standard library, ``sendmail()`` on one connection;
* ``aiosmtplib``: raw ``SMTP.sendmail()`` on one persistent connection;
* the :class:`resilient_smtp.Mailer` on one connection (``PoolLimits(
  max_connections=1)``): with its defaults (the adaptive limiter, a fresh
  connection every 100 messages), with a limiter that never waits
  (``RateLimiter(rate=1e9)``), and with that limiter and one persistent
  connection (``max_messages`` unbounded), the same footing as the raw peers;
* with 16 sends in flight: the Mailer with a pool of 1 and of 4 connections,
  and raw aiosmtplib on 4 connections.

Every figure is a median over rounds that run the clients in rotating order,
and every ratio compares figures taken in the same run.  Loops are bounded in
count and in time.  Besides messages per second the table gives the client's
CPU time per message (``time.process_time``), which a busy machine disturbs
less than wall time.

    python bench/bench_mailer.py            # 3 rounds of up to 2000 messages (~45 s)
    python bench/bench_mailer.py --quick    # 1 round of 300 messages (~8 s, CI)
    python bench/bench_mailer.py --profile  # cProfile of the Mailer on one connection

Needs smtp-sink (Debian's postfix package; scripts/test installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import platform
import pstats
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiosmtplib

from resilient_smtp import Limiter, Mailer, PoolLimits, RateLimiter

HOST = "127.0.0.1"
SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.com"
IN_FLIGHT = 16  # concurrent sends for the pool rows
WARMUP = 50  # messages before the clock starts, per measurement


def message(i: int, size: int = 1024) -> bytes:
    """A ``size``-byte RFC 5322 message with CRLF line endings."""
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}@resilient-smtp.test>\r\n\r\n"
    ).encode()
    line = b"x" * 70 + b"\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)] + b"\r\n"
    return head + body


# --------------------------------------------------------------------------
# smtp-sink


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Run smtp-sink on a free loopback port; yield the port."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(binary):
        raise SystemExit("smtp-sink not found: install Debian's postfix package")
    port = _free_port()
    cmd = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), f"{HOST}:{port}", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(500):
            if proc.poll() is not None:
                raise SystemExit(f"smtp-sink exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.01)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------
# Clients: each sends ``count`` messages (stopping early at ``limit`` seconds)
# and returns (messages sent in the timed part, seconds).


@dataclass
class Run:
    port: int
    count: int
    limit: float
    warmup: float
    bodies: list[bytes] = field(default_factory=list)

    def body(self, i: int) -> bytes:
        return self.bodies[i % len(self.bodies)]

    def warming(self, i: int, started: float) -> bool:
        """Still warming up after ``i`` messages: at least WARMUP messages
        and ``warmup`` seconds (the adaptive limiter ramps up), at most 10x
        the measured count."""
        if i >= 10 * self.count:
            return False
        return i < WARMUP or time.perf_counter() - started < self.warmup


@dataclass(frozen=True)
class Sample:
    """One measurement: messages sent, wall seconds, client CPU seconds."""

    done: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.done / self.wall

    @property
    def cpu_per_msg(self) -> float:
        return self.cpu / self.done * 1e6


class Stopwatch:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def sample(self, done: int) -> Sample:
        return Sample(done, time.perf_counter() - self.wall, time.process_time() - self.cpu)


def run_smtplib(run: Run) -> Sample:
    with smtplib.SMTP(HOST, run.port, timeout=10) as smtp:
        i, began = 0, time.perf_counter()
        while run.warming(i, began):
            smtp.sendmail(SENDER, [RECIPIENT], run.body(i))
            i += 1
        clock = Stopwatch()
        done = 0
        while done < run.count and time.perf_counter() - clock.wall < run.limit:
            smtp.sendmail(SENDER, [RECIPIENT], run.body(done))
            done += 1
        return clock.sample(done)


async def run_aiosmtplib(run: Run) -> Sample:
    smtp = aiosmtplib.SMTP(hostname=HOST, port=run.port, start_tls=False, timeout=10)
    await smtp.connect()
    try:
        i, began = 0, time.perf_counter()
        while run.warming(i, began):
            await smtp.sendmail(SENDER, [RECIPIENT], run.body(i))
            i += 1
        clock = Stopwatch()
        done = 0
        while done < run.count and time.perf_counter() - clock.wall < run.limit:
            await smtp.sendmail(SENDER, [RECIPIENT], run.body(done))
            done += 1
        return clock.sample(done)
    finally:
        await smtp.quit()


async def run_aiosmtplib_pool(run: Run, connections: int) -> Sample:
    """``connections`` raw connections, each sending in turn."""
    clients = [
        aiosmtplib.SMTP(hostname=HOST, port=run.port, start_tls=False, timeout=10)
        for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        i, began = 0, time.perf_counter()
        while run.warming(i, began):
            await clients[i % connections].sendmail(SENDER, [RECIPIENT], run.body(i))
            i += 1
        clock = Stopwatch()
        left = run.count

        async def worker(smtp: aiosmtplib.SMTP) -> int:
            nonlocal left
            n = 0
            while left > 0 and time.perf_counter() - clock.wall < run.limit:
                left -= 1
                await smtp.sendmail(SENDER, [RECIPIENT], run.body(n))
                n += 1
            return n

        done = sum(await asyncio.gather(*(worker(c) for c in clients)))
        return clock.sample(done)
    finally:
        await asyncio.gather(*(c.quit() for c in clients))


def no_wait_limiter() -> Limiter:
    # A bucket so large it never makes anyone wait: the limiter's own cost,
    # without its pacing.
    return RateLimiter(rate=1e9, burst=1_000_000)


def make_mailer(port: int, *, connections: int, limiter: str, max_messages: int) -> Mailer:
    return Mailer(
        HOST,
        port,
        tls="none",
        timeout=10,
        limiter=no_wait_limiter() if limiter == "none" else None,
        pool=PoolLimits(max_connections=connections, max_messages=max_messages),
    )


async def run_mailer(
    run: Run,
    *,
    connections: int = 1,
    in_flight: int = 1,
    limiter: str = "default",
    max_messages: int = 100,
) -> Sample:
    async with make_mailer(
        run.port, connections=connections, limiter=limiter, max_messages=max_messages
    ) as mailer:
        failed = 0

        async def send(i: int) -> None:
            nonlocal failed
            result = await mailer.send(run.body(i), sender=SENDER, recipients=[RECIPIENT])
            failed += not result.ok

        i, began = 0, time.perf_counter()
        while run.warming(i, began):
            await send(i)
            i += 1
        clock = Stopwatch()
        left = run.count

        async def worker() -> int:
            nonlocal left
            n = 0
            while left > 0 and time.perf_counter() - clock.wall < run.limit:
                left -= 1
                await send(n)
                n += 1
            return n

        done = sum(await asyncio.gather(*(worker() for _ in range(in_flight))))
        sample = clock.sample(done)
    if failed:
        raise SystemExit(f"the Mailer failed {failed} sends to a healthy smtp-sink")
    return sample


# --------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Client:
    key: str
    label: str
    measure: Callable[[Run], Sample]


def _sync(factory: Callable[[Run], Awaitable[Sample]]) -> Callable[[Run], Sample]:
    def measure(run: Run) -> Sample:
        return asyncio.run(factory(run))  # type: ignore[arg-type]

    return measure


SINGLE = [
    Client("smtplib", "smtplib sendmail(), 1 connection", run_smtplib),
    Client("aiosmtplib", "aiosmtplib sendmail(), 1 persistent connection", _sync(run_aiosmtplib)),
    Client(
        "mailer",
        "Mailer, defaults (adaptive limiter, 100 msgs/conn)",
        _sync(lambda r: run_mailer(r)),
    ),
    Client(
        "mailer-nolimit",
        "Mailer, limiter that never waits",
        _sync(lambda r: run_mailer(r, limiter="none")),
    ),
    Client(
        "mailer-persistent",
        "Mailer, never-waiting limiter, 1 persistent conn",
        _sync(lambda r: run_mailer(r, limiter="none", max_messages=10**9)),
    ),
]
POOLED = [
    Client(
        "pool1",
        f"Mailer, pool of 1, {IN_FLIGHT} sends in flight",
        _sync(lambda r: run_mailer(r, connections=1, in_flight=IN_FLIGHT, limiter="none")),
    ),
    Client(
        "pool4",
        f"Mailer, pool of 4, {IN_FLIGHT} sends in flight",
        _sync(lambda r: run_mailer(r, connections=4, in_flight=IN_FLIGHT, limiter="none")),
    ),
    Client(
        "pool1-default",
        "Mailer, pool of 1, defaults (adaptive limiter)",
        _sync(lambda r: run_mailer(r, connections=1, in_flight=IN_FLIGHT)),
    ),
    Client(
        "pool4-default",
        "Mailer, pool of 4, defaults (adaptive limiter)",
        _sync(lambda r: run_mailer(r, connections=4, in_flight=IN_FLIGHT)),
    ),
    Client(
        "aiosmtplib4",
        "aiosmtplib sendmail(), 4 connections",
        _sync(lambda r: run_aiosmtplib_pool(r, 4)),
    ),
]


def measure(clients: list[Client], run: Run, rounds: int) -> dict[str, list[Sample]]:
    """Each client once per round, the order rotating from round to round."""
    samples: dict[str, list[Sample]] = {c.key: [] for c in clients}
    for r in range(rounds):
        order = clients[r % len(clients) :] + clients[: r % len(clients)]
        for c in order:
            s = c.measure(run)
            samples[c.key].append(s)
            print(
                f"  round {r + 1}: {c.key:<18} {s.rate:8.0f} msgs/s "
                f"{s.cpu_per_msg:6.0f} us CPU/msg",
                file=sys.stderr,
            )
    return samples


def table(
    clients: list[Client], samples: dict[str, list[Sample]], peers: list[str]
) -> tuple[str, dict[str, float]]:
    """The table, and the median rate of each client."""
    rate = {k: statistics.median(s.rate for s in v) for k, v in samples.items()}
    cpu = {k: statistics.median(s.cpu_per_msg for s in v) for k, v in samples.items()}
    head = (
        f"{'client':<52} {'msgs/s':>7} {'range':>11}"
        + "".join(f" {'vs ' + p:>14}" for p in peers)
        + f" {'CPU us/msg':>10}"
    )
    lines = [head, "-" * len(head)]
    for c in clients:
        rates = [s.rate for s in samples[c.key]]
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        cells = "".join(f" {rate[c.key] / rate[p]:>13.2f}x" for p in peers)
        lines.append(f"{c.label:<52} {rate[c.key]:>7.0f} {spread:>11}{cells} {cpu[c.key]:>10.0f}")
    return "\n".join(lines), rate


def profile(run: Run) -> None:
    prof = cProfile.Profile()
    prof.enable()
    s = asyncio.run(run_mailer(run, limiter="none", max_messages=10**9))
    prof.disable()
    print(f"Mailer, 1 connection, never-waiting limiter: {s.rate:.0f} msgs/s (under cProfile)")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(30)
        print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument(
        "--limit", type=float, default=2.0, help="seconds per measurement, at most"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of warm-up per measurement"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 300 messages (CI)")
    parser.add_argument("--profile", action="store_true", help="cProfile the Mailer instead")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds, args.limit, args.warmup = 300, 1, 1.0, 0.1

    bodies = [message(i, args.size) for i in range(64)]
    with smtp_sink() as port:
        run = Run(port, args.messages, args.limit, args.warmup, bodies)
        if args.profile:
            profile(run)
            return 0
        started = time.perf_counter()
        single = measure(SINGLE, run, args.rounds)
        pooled = measure(POOLED, run, args.rounds)
        took = time.perf_counter() - started

    print(
        f"\nMailer throughput on smtp-sink: {args.size}-byte messages, 1 recipient; medians "
        f"of {args.rounds} round(s) of up to {args.messages} messages or {args.limit:g} s "
        f"({took:.0f} s in all)"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Python {platform.python_version()}, aiosmtplib {aiosmtplib.__version__}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the end\n"
    )
    print("One connection, one send at a time:")
    text, rate = table(SINGLE, single, ["aiosmtplib", "smtplib"])
    print(text)
    print(f"\nSeveral connections, {IN_FLIGHT} sends in flight:")
    text, prate = table(POOLED, pooled, ["pool1", "aiosmtplib4"])
    print(text)
    print(
        f"\nMailer (never-waiting limiter) vs raw aiosmtplib: "
        f"{rate['mailer-nolimit'] / rate['aiosmtplib']:.2f}x (target >= 1.0x); "
        f"vs smtplib: {rate['mailer-nolimit'] / rate['smtplib']:.2f}x.  "
        f"Pool of 4 vs 1: {prate['pool4'] / prate['pool1']:.2f}x (target >= 1.25x)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
