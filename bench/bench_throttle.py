"""Sending into a throttling server: adaptive limiter vs naive retries vs an oracle.

A loopback aiosmtpd server (``bench/_throttle_server.py``) accepts at most
``R`` messages a second with a small burst and answers ``421 4.7.0 Try again
later, closing connection`` (and closes) when a sender goes faster.  Each
client sends the same ``N`` messages over a few aiosmtplib connections,
reconnecting after a 421, against a fresh server:

* ``adaptive``: :class:`resilient_smtp.AdaptiveLimiter` with its defaults
  (it does not know ``R``) and ``classify()`` feedback;
* ``naive``: no limiter, a ``backoff.expo`` retry loop (backoff's defaults:
  full jitter, factor 1, base 2) around each send;
* ``oracle``: :class:`resilient_smtp.RateLimiter` set to exactly ``R``.

It reports goodput (messages delivered per second, over the whole run and
after a warm-up) as a fraction of ``R``, and attempts per delivered message.

    python bench/bench_throttle.py            # R=100/s, 1000 messages each (~55 s)
    python bench/bench_throttle.py --quick    # 120 messages each (a few seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import backoff

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _throttle_server import start_throttling_server

from resilient_smtp import AdaptiveLimiter, Event, Limiter, RateLimiter, classify

HOST = "127.0.0.1"
SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.org"
BODY = b"Subject: throttle bench\r\n\r\nHello.\r\n"
MAX_TRIES = 30  # per message, for every client: loops stay bounded


@dataclasses.dataclass
class Outcome:
    kind: str
    name: str = ""
    delivered: int = 0
    attempts: int = 0
    refused: int = 0
    gave_up: int = 0
    elapsed: float = 0.0
    goodput: float = 0.0
    steady_goodput: float = 0.0
    timed_out: bool = False


class _Conn:
    """One aiosmtplib connection, reopened after the server drops it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.smtp: aiosmtplib.SMTP | None = None

    async def send(self) -> None:
        if self.smtp is None or not self.smtp.is_connected:
            self.smtp = aiosmtplib.SMTP(hostname=HOST, port=self.port, timeout=10, start_tls=False)
            await self.smtp.connect()
        await self.smtp.sendmail(SENDER, [RECIPIENT], BODY)

    async def close(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.smtp.close()


_SendOne = Callable[[_Conn, Outcome], Awaitable[bool]]


def _with_limiter(limiter: Limiter) -> _SendOne:
    async def send_one(conn: _Conn, out: Outcome) -> bool:
        for _ in range(MAX_TRIES):
            async with limiter.acquire(HOST):
                out.attempts += 1
                try:
                    await conn.send()
                except (aiosmtplib.SMTPException, OSError) as exc:
                    failure: Any = exc
                else:
                    failure = None
            if failure is None:
                limiter.feedback(HOST, None)
                return True
            out.refused += 1
            limiter.feedback(HOST, classify(failure, host=HOST))
        return False

    return send_one


def _naive(factor: float) -> _SendOne:
    async def send_one(conn: _Conn, out: Outcome) -> bool:
        @backoff.on_exception(
            backoff.expo,
            (aiosmtplib.SMTPException, OSError),
            max_tries=MAX_TRIES,
            logger=None,
            factor=factor,
        )
        async def attempt() -> None:
            out.attempts += 1
            try:
                await conn.send()
            except (aiosmtplib.SMTPException, OSError):
                out.refused += 1
                raise

        try:
            await attempt()
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True

    return send_one


async def run_client(
    name: str,
    send_one: _SendOne,
    *,
    rate: float,
    burst: int,
    messages: int,
    connections: int,
    warmup: float,
) -> Outcome:
    controller, port = start_throttling_server(rate, burst)
    handler = controller.handler
    out = Outcome(name, _NAMES[name])
    remaining = messages
    deadline = 10.0 + 4.0 * messages / rate

    async def worker() -> None:
        nonlocal remaining
        conn = _Conn(port)
        try:
            while remaining > 0:
                remaining -= 1
                if await send_one(conn, out):
                    out.delivered += 1
                else:
                    out.gave_up += 1
        finally:
            await conn.close()

    started = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(connections))), timeout=deadline
        )
    except asyncio.TimeoutError:
        out.timed_out = True
    finally:
        controller.stop()
    times = sorted(t for t in handler.delivery_times if t >= started)
    if times:
        out.elapsed = times[-1] - started
        out.goodput = len(times) / out.elapsed / rate if out.elapsed > 0 else 0.0
        late = [t for t in times if t >= started + warmup]
        if len(late) > 1:
            out.steady_goodput = (len(late) - 1) / (late[-1] - late[0]) / rate
    # The server's count of MAIL commands is the ground truth for attempts.
    out.attempts = max(out.attempts, handler.mail_commands)
    return out


def _table(outcomes: list[Outcome], rate: float, warmup: float) -> str:
    by = {o.kind: o for o in outcomes}
    lines = [
        f"{'client':<38} {'goodput/R':>9} {f'after {warmup:g}s':>10} {'attempts/msg':>12} "
        f"{'refused':>7} {'gave up':>7} {'elapsed':>8}",
    ]
    for o in outcomes:
        per = o.attempts / o.delivered if o.delivered else float("inf")
        flag = "  (timed out)" if o.timed_out else ""
        lines.append(
            f"{o.name:<38} {o.goodput:>9.3f} {o.steady_goodput:>10.3f} {per:>12.3f} "
            f"{o.refused:>7} {o.gave_up:>7} {o.elapsed:>7.1f}s{flag}"
        )
    a, n, r = by.get("adaptive"), by.get("naive"), by.get("oracle")
    if a and a.delivered:
        lines.append("")
        if n and n.goodput:
            lines.append(
                f"adaptive vs naive:  goodput x{a.goodput / n.goodput:.3f}, attempts/msg "
                f"x{(a.attempts / a.delivered) / (n.attempts / max(n.delivered, 1)):.3f}"
            )
        if r and r.goodput:
            lines.append(f"adaptive vs oracle: goodput x{a.goodput / r.goodput:.3f}")
    return "\n".join(lines)


_T0 = time.monotonic()


def _print_event(event: Event) -> None:
    print(f"  {time.monotonic() - _T0:7.3f}s {event.message}")


_NAMES = {
    "adaptive": "adaptive (AdaptiveLimiter, R unknown)",
    "naive": "naive (backoff.expo, no limiter)",
    "naive-fast": "naive, backoff.expo(factor=0.1)",
    "oracle": "oracle (RateLimiter at exactly R)",
}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="server limit R, msgs/s")
    parser.add_argument("--burst", type=int, default=5, help="server burst (token bucket size)")
    parser.add_argument("--messages", type=int, default=1000, help="messages per client")
    parser.add_argument("--connections", type=int, default=4, help="parallel connections")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before 'steady'")
    parser.add_argument(
        "--clients", default="adaptive,naive,oracle", help="comma-separated subset to run"
    )
    parser.add_argument(
        "--naive-factor",
        type=float,
        default=1.0,
        help="backoff.expo factor for the naive client (1 = backoff's default: waits of "
        "U(0,1), U(0,2), U(0,4) s...)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print the rate cuts")
    parser.add_argument("--quick", action="store_true", help="120 messages (CI smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.messages, args.warmup = 100.0, 120, 0.5
    kinds = [k.strip() for k in args.clients.split(",") if k.strip()]
    for k in kinds:
        if k not in _NAMES:
            parser.error(f"unknown client {k!r}; choose from {', '.join(_NAMES)}")

    print(
        f"throttling server: R={args.rate:g}/s, burst {args.burst}; {args.messages} messages "
        f"per client over {args.connections} connections"
    )
    outcomes = []
    for kind in kinds:
        if kind == "adaptive":
            hooks = [_print_event] if args.verbose else []
            send_one = _with_limiter(AdaptiveLimiter(hooks=hooks))
        elif kind == "oracle":
            send_one = _with_limiter(RateLimiter(rate=args.rate, burst=5))
        elif kind == "naive-fast":
            send_one = _naive(0.1)
        else:
            send_one = _naive(args.naive_factor)
        out = await run_client(
            kind,
            send_one,
            rate=args.rate,
            burst=args.burst,
            messages=args.messages,
            connections=args.connections,
            warmup=args.warmup,
        )
        outcomes.append(out)
    print(_table(outcomes, args.rate, args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
