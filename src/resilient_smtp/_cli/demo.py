"""``python -m resilient_smtp demo``: the library against a difficult server.

An embedded SMTP server on 127.0.0.1 pushes back the way real ones do:

- it takes at most ``rate`` messages a second (a token bucket with a small
  burst) and answers ``421 4.7.0 Try again later, closing connection`` over
  that, as a throttling provider does;
- it greylists one domain (``450 4.2.0 Greylisted``, as postgrey does);
- it refuses every third connection at the greeting with ``421 4.3.2 All
  server ports are busy`` (Postfix's postscreen text);
- it does not know one recipient (``550 5.1.1 User unknown``);
- once, it drops the connection after the end of the data.

A few hundred messages go through a :class:`Mailer` with its defaults (only
``tls="none"``, since the server is on loopback), with live progress; the
run ends with a table: the final states, the retries by reason, and the rate
achieved against the server's limit.  No configuration, no network beyond
loopback, well under a minute.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, TextIO

from .._events import Event
from .._mailer import Mailer
from .._result import SendResult, State

__all__ = ["DemoServer", "run_demo"]

UNKNOWN = "nobody@demo.test"
GREYLISTED_DOMAIN = "greylist.demo.test"


@dataclass
class DemoServer:
    """The difficult server's rules and what it saw."""

    rate: float = 40.0
    burst: int = 3
    accepted: int = 0
    connections: int = 0
    throttled: int = 0
    busy: int = 0
    greylisted: int = 0
    dropped: int = 0
    _tokens: float = 0.0
    _stamp: float = 0.0
    _drop_next_data: bool = True

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """One message's worth of the server's rate, if there is one."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def start(self) -> tuple[asyncio.AbstractServer, int]:
        try:
            from aiosmtpd.smtp import SMTP
        except ImportError:  # pragma: no cover - depends on the install
            raise SystemExit(
                "the demo's embedded server needs aiosmtpd: pip install -e '.[demo]'"
            ) from None
        rules = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if rules._drop_next_data and server.transport is not None:
                    rules._drop_next_data = False
                    rules.dropped += 1
                    server.transport.close()
                    return "250 OK"
                rules.accepted += len(envelope.rcpt_tos)
                return "250 2.0.0 Ok: queued"

        seen: set[str] = set()  # greylisted recipients already refused once

        class Difficult(SMTP):
            greeted = False

            async def push(self, status: Any) -> None:
                text = str(status)
                if not self.greeted and text.startswith("220"):
                    self.greeted = True
                    rules.connections += 1
                    if rules.connections % 3 == 2:
                        rules.busy += 1
                        text = "421 4.3.2 All server ports are busy"
                await super().push(text)
                if text.startswith("421") and self.transport is not None:
                    self.transport.close()

            async def smtp_MAIL(self, arg: str) -> None:
                if not rules.take():
                    rules.throttled += 1
                    await self.push("421 4.7.0 Try again later, closing connection")
                    return
                await super().smtp_MAIL(arg)

            async def smtp_RCPT(self, arg: str) -> None:
                address = arg.partition("<")[2].partition(">")[0].lower()
                if address == UNKNOWN:
                    await self.push("550 5.1.1 <nobody@demo.test>: User unknown")
                    return
                if address.endswith("@" + GREYLISTED_DOMAIN) and address not in seen:
                    seen.add(address)
                    rules.greylisted += 1
                    await self.push("450 4.2.0 Greylisted, see http://postgrey.demo.test/")
                    return
                await super().smtp_RCPT(arg)

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Difficult(Handler(), hostname="difficult.demo.test"), "127.0.0.1", 0
        )
        return server, server.sockets[0].getsockname()[1]


def _messages(count: int) -> list[EmailMessage]:
    out = []
    for i in range(count):
        if i == count // 3:
            to = UNKNOWN
        elif i % 25 == 7:
            to = f"user{i}@{GREYLISTED_DOMAIN}"
        else:
            to = f"user{i}@demo.test"
        msg = EmailMessage()
        msg["From"] = "demo@resilient-smtp.test"
        msg["To"] = to
        msg["Subject"] = f"Demo message {i}"
        msg["Message-ID"] = f"<demo-{i}@resilient-smtp.test>"
        msg.set_content("This message was sent by python -m resilient_smtp demo.\n" * 12)
        out.append(msg)
    return out


class _Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.states: Counter[State] = Counter()
        self.tty = out.isatty()
        self._shown = -1

    def add(self, result: SendResult) -> None:
        for r in result:
            self.states[r.state] += 1
        done = sum(self.states.values())
        if self.tty:
            self.draw(done)
        elif done * 4 // self.total != self._shown:  # a line at each quarter
            self._shown = done * 4 // self.total
            self.draw(done)
            self.out.write("\n")

    def draw(self, done: int) -> None:
        width = 30
        filled = width * done // self.total
        counts = "  ".join(f"{s.value} {self.states[s]}" for s in State)
        self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}  {counts}")
        self.out.flush()


async def run_demo(
    count: int = 300, rate: float = 40.0, concurrency: int = 20, out: TextIO = sys.stdout
) -> int:
    """Run the demo; returns 0 when every message has a final state."""
    rules = DemoServer(rate=rate)
    server, port = await rules.start()
    retries: Counter[str] = Counter()

    def hook(event: Event) -> None:
        if event.kind == "retry":
            retries[str(event.data.get("reason"))] += 1

    out.write(
        f"A difficult SMTP server is listening on 127.0.0.1:{port}: at most {rate:g} messages/s "
        f"(421 over that), greylisting {GREYLISTED_DOMAIN}, a 421 at every third greeting, "
        f"an unknown recipient, one connection dropped after the data.\n"
        f"Sending {count} messages through Mailer(...) with its defaults.\n\n"
    )
    progress = _Progress(count, out)
    gate = asyncio.Semaphore(concurrency)
    results: list[SendResult] = []
    first_try: list[float] = []  # when each message delivered at its first try was done
    started = time.monotonic()
    async with Mailer("127.0.0.1", port, tls="none", hooks=[hook]) as mailer:

        async def one(msg: EmailMessage) -> None:
            async with gate:
                result = await mailer.send(msg)
            results.append(result)
            if result.ok and result.attempts == 1:
                first_try.append(time.monotonic() - started)
            progress.add(result)

        await asyncio.gather(*(one(m) for m in _messages(count)))
    elapsed = time.monotonic() - started
    server.close()
    await server.wait_closed()
    if progress.tty:
        out.write("\n")
    steady = len(first_try) / max(first_try) if first_try else 0.0
    _report(out, results, retries, rules, elapsed, steady, count)
    return 0 if sum(len(r) for r in results) == count else 1


def _report(
    out: TextIO,
    results: list[SendResult],
    retries: Counter[str],
    rules: DemoServer,
    elapsed: float,
    steady: float,
    count: int,
) -> None:
    states: Counter[State] = Counter(r.state for res in results for r in res)
    why: dict[State, Counter[str]] = {s: Counter() for s in State}
    for res in results:
        for r in res:
            if r.state is not State.DELIVERED and r.reason:
                why[r.state][r.reason] += 1
    delivered = states[State.DELIVERED]
    out.write("\nFinal state of every recipient\n")
    for s in State:
        detail = ", ".join(f"{k} {v}" for k, v in why[s].most_common())
        out.write(f"  {s.value:<10} {states[s]:>5}  {detail}\n")
    out.write(f"  {'total':<10} {sum(states.values()):>5}  (sent {count})\n")
    out.write("\nRetries by reason\n")
    for reason, n in retries.most_common() or [("none", 0)]:
        out.write(f"  {reason:<22} {n:>5}\n")
    attempts = sum(res.attempts for res in results)
    achieved = delivered / elapsed if elapsed else 0.0
    out.write("\nThe server's view\n")
    out.write(f"  throttled with 421     {rules.throttled:>5}\n")
    out.write(f"  busy 421 at greeting   {rules.busy:>5}\n")
    out.write(f"  greylisted             {rules.greylisted:>5}\n")
    out.write(f"  dropped after the data {rules.dropped:>5}\n")
    out.write(f"\nRate (the server's limit is {rules.rate:g}/s)\n")
    out.write(
        f"  while sending: {steady:.1f}/s ({steady / rules.rate:.0%} of the limit), "
        f"{attempts / max(1, len(results)):.2f} transactions per message\n"
        f"  overall:       {delivered} delivered in {elapsed:.1f} s ({achieved:.1f}/s), "
        "including the retries' waits (10 s at least after a rate limit)\n"
    )
    out.write(
        "\nDeferred recipients carry retry_in (greylisting asks for minutes: "
        "requeue them); the ambiguous one may have been delivered, so it was not "
        "sent twice.\n"
    )
