"""Round trips per message over a real-looking network: the transport's
pipelining, side by side with its peers.

Every client talks through a loopback latency proxy (bench/_latency_proxy.py:
each chunk delayed by RTT/2 each way, checked by a ping-pong before the run;
it runs in a process of its own, so the forwarding does not share the
measured client's event loop) that counts client *flights*: the bursts a
client sends after hearing from the server, i.e. the round trips it waited
for.  2 KB messages, 24 per connection and at least 48 a row.  Clients:

* ``smtplib``: ``sendmail()`` per message on persistent connections (threads);
* ``aiosmtplib``: ``SMTP.sendmail()`` per message on persistent connections;
* ``Mailer step``: the Mailer with PIPELINING hidden from it (what it did
  before the transport pipelined);
* ``Mailer``: defaults (MAIL + every RCPT + DATA in one flight, then the
  message);
* ``Mailer chunking``: ``Mailer(chunking=True)``: MAIL + RCPTs + BDAT LAST
  with the message in one flight;
* ``Mailer pipeline_messages``: ``Mailer(pipeline_messages=True)``: the next
  message's MAIL + RCPTs + DATA right behind the previous message's final dot.
* ``Mailer defaults``: ``Mailer(...)`` with its default limiter (the
  AdaptiveLimiter and its ramp), the pool sized to the row's connections;
* ``Mailer defaults cold``: the same without the warm-up: a fresh Mailer
  whose clock starts before its first connection, as Postfix's does;
* ``Postfix``: a real Postfix 3.x relay (bench/_postfix_relay.py, a private
  instance on 127.0.0.1) with ``relayhost`` = the proxy and its destination
  concurrency limit set to the row's connections;
* ``Postfix default``: the same with Postfix's default concurrency (limit
  20, starting at 5: its slow start), in the 16-connection rows.

smtp-sink offers PIPELINING but not CHUNKING, so the rows run twice: on
smtp-sink, and on tests/_raw_smtp.py (PIPELINING and CHUNKING, in its own
process), where the chunking row is compared with its peers.  Connections are
opened and warmed (one message each) before the clock starts, and the clock
stops when the last message is answered, before the connections are closed
(the Mailer's pool QUITs its connections one after another: 16 round trips
for 16 connections, which is closing, not sending).  The Mailer
rows use a never-waiting limiter (the limiter's ramp is the pushback issue's
subject, not the wire's); ``Mailer defaults`` shows that ramp.

The Postfix rows inject the row's messages into Postfix's own smtpd (on
loopback, no proxy), where they wait on hold; the clock starts when they
are released (``postsuper -H ALL; postqueue -f``) and stops when Postfix's
queue is empty (every message delivered and its queue file removed: the
relay's own view of done, as the other clients stop at their last reply).
Postfix's connections start cold (connect, EHLO and its slow start are in
its time), so its steady rate is also reported, from smtp-sink's side: the
first to the last message's dump file (smtp-sink ``-d``), which also checks
that each message arrived exactly once.  Postfix needs root; without it the
Postfix rows are skipped with the reason.

    python bench/bench_transport.py           # RTT 20 and 50 ms, 1/5 rcpts, 1/4/16 conns
    python bench/bench_transport.py --quick   # RTT 20 ms, 1 connection
    python bench/bench_transport.py --versus-postfix  # RTT 20 ms, 1 rcpt, 1 and 16 conns
    python bench/bench_transport.py --loopback  # no proxy: Mailer vs step vs smtplib on smtp-sink

Needs smtp-sink (Debian's postfix package).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).parent))
from _latency_proxy import ProxyProcess, ping_pong
from _postfix_relay import PostfixRelay, postfix_missing

from resilient_smtp import (
    AdaptiveLimiter,
    AiosmtplibTransport,
    Connection,
    Mailer,
    PoolLimits,
    RateLimiter,
    Transport,
)
from resilient_smtp._classify.reply import Reply

HOST = "127.0.0.1"
SENDER = "bench@example.org"
ROOT = Path(__file__).resolve().parent.parent
# smtp-sink dumps every message here (``-d``): the Postfix rows read it.
# Made when smtp-sink starts (not at import: the proxy's process imports
# this module again), removed at the end of main().
DUMP = Path(tempfile.gettempdir()) / f"bench-transport-dump-{os.getpid()}"


def message(i: int, rcpts: Sequence[str], size: int = 2048) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: bench {i}\r\n"
        f"Message-ID: <transport-{i}@resilient-smtp.test>\r\n\r\n"
    ).encode()
    line = b"x" * 70 + b"\r\n"
    return head + (line * (size // len(line) + 1))[: max(0, size - len(head))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(500):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args!r}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"server did not start: {proc.args!r}")


@contextlib.contextmanager
def server(kind: str) -> Iterator[int]:
    port = _free_port()
    if kind == "smtp-sink":
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        DUMP.mkdir(exist_ok=True)
        os.chmod(DUMP, 0o777)  # smtp-sink writes as nobody
        cmd = [binary, *user, "-d", f"{DUMP}/m.", f"{HOST}:{port}", "256"]
    else:
        cmd = [sys.executable, str(ROOT / "tests" / "_raw_smtp.py"), str(port), "--chunking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------
# Clients: each runs ``n`` messages over ``conns`` connections to ``port``,
# calls ``start()`` once its connections are open and warm, and
# ``start.stop()`` when its last message is answered, before it closes its
# connections (closing is not sending: the Mailer's pool QUITs its
# connections one after another, aiosmtplib's loop here too).


class Stopwatch:
    """``start()`` starts it, ``start.stop()`` stops it (first call each);
    each notes the time and the proxy's flight count."""

    def __init__(self, flights: Callable[[], int] = lambda: 0) -> None:
        self._flights = flights
        self.started: tuple[float, int] | None = None
        self.stopped: tuple[float, int] | None = None

    def __call__(self) -> None:
        if self.started is None:
            self.started = (time.perf_counter(), self._flights())

    def stop(self) -> None:
        if self.stopped is None:
            self.stopped = (time.perf_counter(), self._flights())

    def result(self) -> tuple[float, int]:
        """Seconds and flights from start to stop (to now if never stopped)."""
        assert self.started is not None, "the client never started the clock"
        self.stop()
        assert self.stopped is not None
        return self.stopped[0] - self.started[0], self.stopped[1] - self.started[1]


Start = Stopwatch


async def run_smtplib(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
    barrier = threading.Barrier(conns, action=start)
    finish = threading.Barrier(conns, action=start.stop)

    def worker(k: int) -> None:
        with smtplib.SMTP(HOST, port, timeout=30) as s:
            s.sendmail(SENDER, rcpts, message(-1, rcpts))
            barrier.wait()
            for i in range(k, n, conns):
                s.sendmail(SENDER, rcpts, message(i, rcpts))
            finish.wait()

    # One thread per connection (the default executor has fewer than 16).
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=conns) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, worker, k) for k in range(conns)))


async def run_aiosmtplib(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
    clients = [aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False) for _ in range(conns)]
    for c in clients:
        await c.connect()
    await asyncio.gather(*(c.sendmail(SENDER, rcpts, message(-1, rcpts)) for c in clients))
    start()

    async def worker(k: int) -> None:
        for i in range(k, n, conns):
            await clients[k].sendmail(SENDER, rcpts, message(i, rcpts))

    await asyncio.gather(*(worker(k) for k in range(conns)))
    start.stop()
    for c in clients:
        await c.quit()


class _Step:
    """A connection that hides PIPELINING (and CHUNKING): one command a flight."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.host = inner.host

    created_at = property(
        lambda self: self.inner.created_at,
        lambda self, v: setattr(self.inner, "created_at", v),
    )
    messages = property(
        lambda self: self.inner.messages,
        lambda self, v: setattr(self.inner, "messages", v),
    )

    def supports(self, extension: str) -> bool:
        return extension.lower() not in ("pipelining", "chunking") and self.inner.supports(
            extension
        )

    def is_open(self) -> bool:
        return self.inner.is_open()

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        await self.inner.send(commands, payload)

    async def read_reply(self) -> Reply:
        return await self.inner.read_reply()

    def reply_waiting(self) -> bool:
        return self.inner.reply_waiting()

    async def reset(self) -> Reply:
        return await self.inner.reset()

    async def noop(self) -> Reply:
        return await self.inner.noop()

    async def close(self) -> None:
        await self.inner.close()


class _NoPipelining(Transport):
    """A transport whose connections hide PIPELINING: the step-by-step row."""

    def __init__(self) -> None:
        self.inner = AiosmtplibTransport(tls="none")

    async def connect(self, host: str, port: int) -> Connection:
        return _Step(await self.inner.connect(host, port))


# The Mailer-defaults row's limiter, sampled while it runs: (seconds since
# start, window, pace) for --trace.
TRACE: list[tuple[float, int, float]] = []


async def _sample(mailer: Mailer, key: str, t0: float) -> None:
    limiter = mailer.limiter
    assert isinstance(limiter, AdaptiveLimiter)
    while True:
        TRACE.append((time.perf_counter() - t0, limiter.window(key), limiter.rate(key)))
        await asyncio.sleep(0.025)


def _mailer_run(mode: str) -> Callable[..., Awaitable[None]]:
    async def run(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
        mailer = Mailer(
            (HOST, port),
            tls="none",
            limiter=None if mode.startswith("defaults") else RateLimiter(rate=1e9),
            pool=PoolLimits(max_connections=conns, max_messages=100_000),
            transport=_NoPipelining() if mode == "step" else None,
            chunking=mode == "chunking",
            pipeline_messages=mode == "messages",
        )
        cold = mode == "defaults cold"
        async with mailer:
            warm = await asyncio.gather(
                *(
                    mailer.send(message(-1, rcpts), sender=SENDER, recipients=rcpts)
                    for _ in range(0 if cold else conns)
                )
            )
            start()
            sampler = None
            if mode.startswith("defaults"):
                TRACE.clear()
                sampler = asyncio.ensure_future(
                    _sample(mailer, f"{HOST}:{port}", time.perf_counter())
                )
            sent = await asyncio.gather(
                *(
                    mailer.send(message(i, rcpts), sender=SENDER, recipients=rcpts)
                    for i in range(n)
                )
            )
            start.stop()
            if sampler is not None:
                sampler.cancel()
        bad = [r for r in (*warm, *sent) if not r.ok]
        if bad:
            raise SystemExit(f"Mailer {mode}: {len(bad)} sends failed: {bad[0]!r}")

    return run


# The Postfix rows' steady rate at the sink: client name -> (first to last
# dump file, messages/s), for the row just run.
STEADY: dict[str, float] = {}


def _postfix_run(default_concurrency: bool) -> Callable[..., Awaitable[None]]:
    name = "Postfix default" if default_concurrency else "Postfix"

    async def run(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
        relay = PostfixRelay(port, concurrency=None if default_concurrency else conns)
        await asyncio.to_thread(relay.start)
        try:
            await asyncio.to_thread(_clear_dump)
            batch = [(SENDER, rcpts, message(i, rcpts)) for i in range(n)]
            await asyncio.to_thread(relay.inject, batch)
            await asyncio.to_thread(relay.wait_held, n)
            start()
            await asyncio.to_thread(relay.release)
            await asyncio.to_thread(relay.wait_empty, 300.0)
            start.stop()  # all delivered: the clock stops before the shutdown
        finally:
            await asyncio.to_thread(relay.stop)
        STEADY[name] = _check_dump(n)

    return run


def _clear_dump() -> None:
    for f in DUMP.iterdir() if DUMP.exists() else ():
        f.unlink()


def _check_dump(n: int) -> float:
    """Each of messages 0..n-1 arrived exactly once at smtp-sink; returns
    the rate from the first to the last arrival."""
    ids: list[int] = []
    stamps: list[float] = []
    for f in DUMP.iterdir():
        text = f.read_bytes()
        at = text.index(b"Message-ID: <transport-") + len(b"Message-ID: <transport-")
        ids.append(int(text[at : text.index(b"@", at)]))
        stamps.append(f.stat().st_mtime)
    if sorted(ids) != list(range(n)):
        extra = len(ids) - len(set(ids))
        raise SystemExit(f"smtp-sink got {len(ids)} messages ({extra} twice), wanted {n}")
    return (n - 1) / (max(stamps) - min(stamps))


CLIENTS: dict[str, Callable[..., Awaitable[None]]] = {
    "smtplib": run_smtplib,
    "aiosmtplib": run_aiosmtplib,
    "Mailer step": _mailer_run("step"),
    "Mailer": _mailer_run("default"),
    "Mailer chunking": _mailer_run("chunking"),
    "Mailer pipeline_messages": _mailer_run("messages"),
    "Mailer defaults": _mailer_run("defaults"),
    "Mailer defaults cold": _mailer_run("defaults cold"),
    "Postfix": _postfix_run(False),
    "Postfix default": _postfix_run(True),
}


@dataclass
class Row:
    server: str
    client: str
    rtt_ms: int
    rcpts: int
    conns: int
    rate: float
    flights: float
    steady: float | None = None  # Postfix rows: first to last at the sink
    opened: int = 0  # connections opened through the proxy (warm-up included)


async def measure(
    client: str, port: int, rtt: float, rcpts: int, conns: int, n: int, srv: str
) -> Row:
    addresses = [f"rcpt{j}@example.com" for j in range(rcpts)]
    with ProxyProcess(rtt, (HOST, port)) as proxy:
        watch = Stopwatch(lambda: proxy.flights)
        STEADY.pop(client, None)
        await CLIENTS[client](proxy.port, n, conns, addresses, watch)
        elapsed, flights = watch.result()
    await asyncio.to_thread(_clear_dump)
    return Row(
        srv,
        client,
        round(rtt * 1000),
        rcpts,
        conns,
        n / elapsed,
        flights / n,
        STEADY.get(client),
        proxy.connections,
    )


async def loopback(n: int) -> None:
    """No proxy, one connection, one recipient: the Mailer's CPU cost."""
    print(f"\nLoopback smtp-sink, 1 connection, 1 recipient, {n} messages (best of 3):")
    with server("smtp-sink") as port:
        for client in ("smtplib", "Mailer step", "Mailer"):
            best = 0.0
            for _ in range(3):
                watch = Stopwatch()
                await CLIENTS[client](port, n, 1, ["rcpt@example.com"], watch)
                best = max(best, n / watch.result()[0])
            print(f"  {client:<16} {best:8.0f} msgs/s")


def _clients(srv: str, conns: int, only: Sequence[str]) -> list[str]:
    """The clients of one row group, in CLIENTS order."""
    names = [c for c in CLIENTS if not only or c in only]
    if srv == "raw":  # the chunking comparison only; Postfix speaks no BDAT
        return [c for c in names if c in ("smtplib", "Mailer", "Mailer chunking")]
    names = [c for c in names if c != "Mailer chunking"]  # smtp-sink: no CHUNKING
    if conns != 16:
        names = [c for c in names if c != "Postfix default"]
    if postfix_missing():
        names = [c for c in names if not c.startswith("Postfix")]
    return names


def _peer(rows: list[Row], r: Row, client: str) -> Row | None:
    return next(
        (
            b
            for b in rows
            if (b.server, b.rtt_ms, b.rcpts, b.conns, b.client)
            == (r.server, r.rtt_ms, r.rcpts, r.conns, client)
        ),
        None,
    )


def _ratio(r: Row, peer: Row | None) -> str:
    return "" if peer is None or peer is r else f"{r.rate / peer.rate:.2f}x"


def table(rows: list[Row]) -> str:
    out = [
        "| server | RTT | rcpts | conns | client | msgs/s | flights/msg | vs smtplib "
        "| vs Postfix | vs Postfix default |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r.rate:.1f}" + ("" if r.steady is None else f" (steady {r.steady:.1f})")
        out.append(
            f"| {r.server} | {r.rtt_ms} ms | {r.rcpts} | {r.conns} | {r.client} | {rate} | "
            f"{r.flights:.2f} | {_ratio(r, _peer(rows, r, 'smtplib'))} | "
            f"{_ratio(r, _peer(rows, r, 'Postfix'))} | "
            f"{_ratio(r, _peer(rows, r, 'Postfix default'))} |"
        )
    return "\n".join(out)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="RTT 20 ms, 1 connection only")
    ap.add_argument(
        "--versus-postfix",
        action="store_true",
        help="RTT 20 ms, 1 recipient, 1 and 16 connections: smtplib, the Mailers and Postfix",
    )
    ap.add_argument("--loopback", action="store_true", help="no proxy: CPU cost on smtp-sink")
    ap.add_argument(
        "--per-conn", type=int, default=24, help="messages per connection (at least 48 a row)"
    )
    ap.add_argument("--trace", action="store_true", help="print the Mailer defaults' window")
    args = ap.parse_args()
    if args.loopback:
        await loopback(1000)
        return
    if why := postfix_missing():
        print(f"skipping the Postfix rows: {why}")
    for rtt in (0.02, 0.05):
        per = await ping_pong(rtt)
        print(f"proxy check: RTT {rtt * 1000:.0f} ms gives {per * 1000:.1f} ms per ping-pong")
    rtts: tuple[float, ...] = (0.02,) if args.quick or args.versus_postfix else (0.02, 0.05)
    connections: tuple[int, ...] = (1,) if args.quick else (1, 4, 16)
    recipients: tuple[int, ...] = (1, 5)
    servers: tuple[str, ...] = ("smtp-sink", "raw")
    only: tuple[str, ...] = ()
    if args.versus_postfix:
        connections, recipients, servers = (1, 16), (1,), ("smtp-sink",)
        only = (
            "smtplib",
            "Mailer",
            "Mailer pipeline_messages",
            "Mailer defaults",
            "Mailer defaults cold",
            "Postfix",
            "Postfix default",
        )
    rows: list[Row] = []
    try:
        for srv in servers:
            with server(srv) as port:
                for rtt in rtts:
                    for rcpts in recipients:
                        for conns in connections:
                            n = max(48, args.per_conn * conns)
                            for client in _clients(srv, conns, only):
                                row = await asyncio.wait_for(
                                    measure(client, port, rtt, rcpts, conns, n, srv), 600
                                )
                                rows.append(row)
                                print(row, flush=True)
                                if args.trace and client.startswith("Mailer defaults"):
                                    print(
                                        "  t(s) window pace: "
                                        + " ".join(f"{t:.2f}:{w}:{p:g}" for t, w, p in TRACE[::4])
                                    )
    finally:
        print()
        print(table(rows))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(DUMP, ignore_errors=True)
