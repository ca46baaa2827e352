"""Round trips per message over a real-looking network: the transport's
pipelining, side by side with its peers.

Every client talks through a loopback latency proxy (bench/_latency_proxy.py:
each chunk delayed by RTT/2 each way, checked by a ping-pong before the run)
that counts client *flights*: the bursts a client sends after hearing from
the server, i.e. the round trips it waited for.  2 KB messages.  Clients:

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

smtp-sink offers PIPELINING but not CHUNKING, so the rows run twice: on
smtp-sink, and on tests/_raw_smtp.py (PIPELINING and CHUNKING, in its own
process), where the chunking row is compared with its peers.  Connections are
opened and warmed (one message each) before the clock starts.  The Mailer
rows use a never-waiting limiter (the limiter's ramp is the pushback issue's
subject, not the wire's).  A Postfix relay row needs a private Postfix
instance, which this script does not start (see docs/transport.md).

    python bench/bench_transport.py           # RTT 20 and 50 ms, 1/5 rcpts, 1/4/16 conns
    python bench/bench_transport.py --quick   # RTT 20 ms, 1 connection
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
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).parent))
from _latency_proxy import LatencyProxy, ping_pong

from resilient_smtp import (
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
        cmd = [binary, *user, f"{HOST}:{port}", "256"]
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
# Clients: each runs ``n`` messages over ``conns`` connections to ``port``
# and calls ``start()`` once its connections are open and warm.

Start = Callable[[], None]


async def run_smtplib(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
    barrier = threading.Barrier(conns, action=start)

    def worker(k: int) -> None:
        with smtplib.SMTP(HOST, port, timeout=30) as s:
            s.sendmail(SENDER, rcpts, message(-1, rcpts))
            barrier.wait()
            for i in range(k, n, conns):
                s.sendmail(SENDER, rcpts, message(i, rcpts))

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


def _mailer_run(mode: str) -> Callable[..., Awaitable[None]]:
    async def run(port: int, n: int, conns: int, rcpts: list[str], start: Start) -> None:
        mailer = Mailer(
            (HOST, port),
            tls="none",
            limiter=RateLimiter(rate=1e9),
            pool=PoolLimits(max_connections=conns, max_messages=100_000),
            transport=_NoPipelining() if mode == "step" else None,
            chunking=mode == "chunking",
            pipeline_messages=mode == "messages",
        )
        async with mailer:
            warm = await asyncio.gather(
                *(
                    mailer.send(message(-1, rcpts), sender=SENDER, recipients=rcpts)
                    for _ in range(conns)
                )
            )
            start()
            sent = await asyncio.gather(
                *(
                    mailer.send(message(i, rcpts), sender=SENDER, recipients=rcpts)
                    for i in range(n)
                )
            )
        bad = [r for r in (*warm, *sent) if not r.ok]
        if bad:
            raise SystemExit(f"Mailer {mode}: {len(bad)} sends failed: {bad[0]!r}")

    return run


CLIENTS: dict[str, Callable[..., Awaitable[None]]] = {
    "smtplib": run_smtplib,
    "aiosmtplib": run_aiosmtplib,
    "Mailer step": _mailer_run("step"),
    "Mailer": _mailer_run("default"),
    "Mailer chunking": _mailer_run("chunking"),
    "Mailer pipeline_messages": _mailer_run("messages"),
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


async def measure(
    client: str, port: int, rtt: float, rcpts: int, conns: int, n: int, srv: str
) -> Row:
    addresses = [f"rcpt{j}@example.com" for j in range(rcpts)]
    async with LatencyProxy(rtt, (HOST, port)) as proxy:
        mark: list[tuple[float, int]] = []

        def start() -> None:
            mark.append((time.perf_counter(), proxy.flights))

        await CLIENTS[client](proxy.port, n, conns, addresses, start)
        t0, f0 = mark[0]
        elapsed = time.perf_counter() - t0
        flights = proxy.flights - f0
    return Row(srv, client, round(rtt * 1000), rcpts, conns, n / elapsed, flights / n)


def _stamp(mark: list[float]) -> Start:
    return lambda: mark.append(time.perf_counter())


async def loopback(n: int) -> None:
    """No proxy, one connection, one recipient: the Mailer's CPU cost."""
    print(f"\nLoopback smtp-sink, 1 connection, 1 recipient, {n} messages (best of 3):")
    with server("smtp-sink") as port:
        for client in ("smtplib", "Mailer step", "Mailer"):
            best = 0.0
            for _ in range(3):
                mark: list[float] = []
                await CLIENTS[client](port, n, 1, ["rcpt@example.com"], _stamp(mark))
                best = max(best, n / (time.perf_counter() - mark[0]))
            print(f"  {client:<16} {best:8.0f} msgs/s")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="RTT 20 ms, 1 connection only")
    ap.add_argument("--loopback", action="store_true", help="no proxy: CPU cost on smtp-sink")
    args = ap.parse_args()
    if args.loopback:
        await loopback(1000)
        return
    for rtt in (0.02, 0.05):
        per = await ping_pong(rtt)
        print(f"proxy check: RTT {rtt * 1000:.0f} ms gives {per * 1000:.1f} ms per ping-pong")
    rtts = (0.02,) if args.quick else (0.02, 0.05)
    connections = (1,) if args.quick else (1, 4, 16)
    rows: list[Row] = []
    for srv in ("smtp-sink", "raw"):
        with server(srv) as port:
            for rtt in rtts:
                for rcpts in (1, 5):
                    for conns in connections:
                        n = 12 * conns
                        for client in CLIENTS:
                            if client == "Mailer chunking" and srv == "smtp-sink":
                                continue  # smtp-sink offers no CHUNKING
                            row = await asyncio.wait_for(
                                measure(client, port, rtt, rcpts, conns, n, srv), 300
                            )
                            rows.append(row)
                            print(row, flush=True)
    print(
        "\n| server | RTT | rcpts | conns | client | msgs/s | flights/msg | vs smtplib |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        base = next(
            b.rate
            for b in rows
            if (b.server, b.rtt_ms, b.rcpts, b.conns, b.client)
            == (r.server, r.rtt_ms, r.rcpts, r.conns, "smtplib")
        )
        print(
            f"| {r.server} | {r.rtt_ms} ms | {r.rcpts} | {r.conns} | {r.client} | "
            f"{r.rate:.1f} | {r.flights:.2f} | {r.rate / base:.2f}x |"
        )


if __name__ == "__main__":
    asyncio.run(main())
