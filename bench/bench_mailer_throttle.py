"""The throttling server of the limiter benchmark, through the Mailer.

A loopback aiosmtpd server (``bench/_throttle_server.py``) accepts at most
``R`` messages a second (a token bucket with a small burst, spent at
``MAIL FROM``) and answers ``421 4.7.0 Try again later, closing connection``
and closes when a sender goes faster.  ``N`` messages go through a
:class:`resilient_smtp.Mailer` (handed over all at once, as a batch job does,
or ``--in-flight`` at a time), each client against a fresh server:

* ``defaults``: the Mailer as an application builds it (only ``tls="none"``,
  for loopback): the adaptive limiter, which does not know ``R``, the
  default retry policy and pool;
* ``no-limiter``: the same, with a limiter that never waits: only the retry
  policy stands between the sends and the server;
* ``oracle``: the same, with ``RateLimiter(rate=R)``: a limiter told ``R``.

It reports goodput (messages delivered per second) as a fraction of ``R``:
up to the 95th percent of the messages (a refused message waits at least the
policy's 10 s floor for ``rate_limited`` before its retry, so the last few
arrive long after the bulk), from a warm-up to that point, and over the whole
run; attempts (``MAIL FROM`` commands the server saw) per delivered message;
the sends' final states.  It checks that the server accepted exactly the
messages the Mailer reports delivered.

    python bench/bench_mailer_throttle.py          # R=100/s, 1000 messages each (~45 s)
    python bench/bench_mailer_throttle.py --quick  # 150 messages, defaults only (~12 s)
    python bench/bench_mailer_throttle.py --clients defaults,no-limiter,oracle
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _throttle_server import start_throttling_server

from resilient_smtp import Event, Limiter, Mailer, RateLimiter, State

HOST = "127.0.0.1"
SENDER = "bench@example.org"
BODY = b"Subject: throttle bench\r\n\r\nHello.\r\n"

CLIENTS = {
    "defaults": "Mailer, defaults (adaptive limiter)",
    "no-limiter": "Mailer, limiter that never waits",
    "oracle": "Mailer, RateLimiter at exactly R",
}


@dataclasses.dataclass
class Outcome:
    kind: str
    states: Counter[str] = dataclasses.field(default_factory=Counter)
    delivered: int = 0  # the server's count
    attempts: int = 0  # MAIL FROM commands the server saw
    refused: int = 0  # of which answered with the 421
    elapsed: float = 0.0  # start to the last delivery
    done_after: float = 0.0  # start to the last send's return
    goodput: float = 0.0  # over the first 95% of the messages, / R
    steady_goodput: float = 0.0  # from the warm-up to the 95% mark, / R
    whole_goodput: float = 0.0  # over the whole run, retry tail included, / R
    retries: int = 0
    rate_cuts: int = 0
    timed_out: bool = False


def _limiter(kind: str, rate: float) -> Limiter | None:
    if kind == "no-limiter":
        return RateLimiter(rate=1e9, burst=1_000_000)
    if kind == "oracle":
        return RateLimiter(rate=rate, burst=5)
    return None  # the Mailer's default: AdaptiveLimiter()


async def run_client(
    kind: str, *, rate: float, burst: int, messages: int, in_flight: int, warmup: float
) -> Outcome:
    controller, port = start_throttling_server(rate, burst)
    handler = controller.handler
    out = Outcome(kind)

    def count(event: Event) -> None:
        if event.kind == "retry":
            out.retries += 1
        elif event.kind == "rate_changed":
            out.rate_cuts += 1

    mailer = Mailer(HOST, port, tls="none", limiter=_limiter(kind, rate), hooks=[count])
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> State:
        async with gate:
            result = await mailer.send(BODY, sender=SENDER, recipients=[f"rcpt{i}@example.com"])
            return result.recipients[0].state

    # The default retry policy gives each send at most 60 s once it starts.
    bound = 30.0 + 65.0 * -(-messages // in_flight) + 2.0 * messages / rate
    started = time.monotonic()
    try:
        async with mailer:
            states = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(messages))), timeout=bound
            )
        out.states.update(s.value for s in states)
    except asyncio.TimeoutError:
        out.timed_out = True
    finally:
        out.done_after = time.monotonic() - started
        controller.stop()

    times = sorted(t for t in handler.delivery_times if t >= started)
    out.delivered = handler.delivered
    out.attempts = handler.mail_commands
    out.refused = handler.refused
    if times:
        out.elapsed = times[-1] - started
        out.whole_goodput = len(times) / out.elapsed / rate if out.elapsed > 0 else 0.0
        # The bulk: up to the 95th percent of the messages.  A message that
        # got a 421 waits at least 10 s (the policy's floor for rate_limited)
        # before its retry, so the last few arrive long after the rest.
        bulk = times[: max(1, int(0.95 * messages))]
        if bulk[-1] > started:
            out.goodput = len(bulk) / (bulk[-1] - started) / rate
        late = [t for t in bulk if t >= started + warmup]
        if len(late) > 1 and late[-1] > late[0]:
            out.steady_goodput = (len(late) - 1) / (late[-1] - late[0]) / rate
    if not out.timed_out and out.states[State.DELIVERED.value] != out.delivered:
        raise SystemExit(
            f"{kind}: the server accepted {out.delivered} messages, the Mailer reports "
            f"{out.states[State.DELIVERED.value]} delivered"
        )
    return out


def table(outcomes: list[Outcome], warmup: float) -> str:
    lines = [
        f"{'':<38} {'goodput/R':>9} {'goodput/R':>9} {'goodput/R':>9}",
        f"{'client':<38} {'to 95%':>9} {f'{warmup:g}s-95%':>9} {'all':>9} {'attempts/msg':>12} "
        f"{'421s':>5} {'retries':>7} {'cuts':>5} {'last at':>8}  final states",
    ]
    for o in outcomes:
        per = o.attempts / o.delivered if o.delivered else float("inf")
        states = ", ".join(f"{k} {v}" for k, v in sorted(o.states.items()))
        flag = "  (timed out)" if o.timed_out else ""
        lines.append(
            f"{CLIENTS[o.kind]:<38} {o.goodput:>9.3f} {o.steady_goodput:>9.3f} "
            f"{o.whole_goodput:>9.3f} {per:>12.3f} {o.refused:>5} {o.retries:>7} "
            f"{o.rate_cuts:>5} {o.elapsed:>7.1f}s  {states}{flag}"
        )
    by = {o.kind: o for o in outcomes}
    d, n, r = by.get("defaults"), by.get("no-limiter"), by.get("oracle")
    if d and d.delivered:
        lines.append("")
        if n and n.delivered and n.goodput:
            lines.append(
                f"defaults vs no limiter: goodput x{d.goodput / n.goodput:.2f}, "
                f"attempts/msg x{(d.attempts / d.delivered) / (n.attempts / n.delivered):.2f}"
            )
        if r and r.goodput:
            lines.append(f"defaults vs oracle:     goodput x{d.goodput / r.goodput:.2f}")
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="server limit R, msgs/s")
    parser.add_argument("--burst", type=int, default=5, help="server burst (token bucket size)")
    parser.add_argument("--messages", type=int, default=1000, help="messages per client")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="sends at a time (0: all at once, the default)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before 'steady'")
    parser.add_argument(
        "--clients",
        default="defaults,oracle",
        help=f"comma-separated, from {','.join(CLIENTS)} (no-limiter takes about a minute "
        "more: its refused sends retry until the policy's 60 s deadline)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="150 messages, the defaults client only (CI)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.warmup, args.clients = 150, 0.5, "defaults"
    if args.in_flight <= 0:
        args.in_flight = args.messages
    kinds = [k.strip() for k in args.clients.split(",") if k.strip()]
    for k in kinds:
        if k not in CLIENTS:
            parser.error(f"unknown client {k!r}; choose from {', '.join(CLIENTS)}")

    print(
        f"throttling server: R={args.rate:g}/s, burst {args.burst}; {args.messages} messages "
        f"per client, {args.in_flight} sends in flight, over the pool's default 4 connections",
        flush=True,
    )
    outcomes: list[Any] = []
    for kind in kinds:
        outcomes.append(
            await run_client(
                kind,
                rate=args.rate,
                burst=args.burst,
                messages=args.messages,
                in_flight=args.in_flight,
                warmup=args.warmup,
            )
        )
    print(table(outcomes, args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
