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
``tls="none"``, since the server is on loopback) and
:meth:`Mailer.send_many`; the demo prints the few lines it runs first.  The
progress display says what the sends are waiting for and the live rate
against the server's limit; the run ends with a table that explains each
number: the final states, the deferred recipients and their ``retry_in``,
the retries by reason, and where the time went.  No configuration, no
network beyond loopback, well under a minute.

``--serve`` (:func:`serve_demo`) keeps the same server running on a fixed
port (127.0.0.1:2525) so you can aim your own code at it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, TextIO

from .._bulk import BulkSummary, RichProgress, Sent
from .._events import Event
from .._mailer import Mailer
from .._result import RecipientResult, SendResult, State

__all__ = ["SERVE_PORT", "DemoServer", "run_demo", "serve_demo"]

SERVE_PORT = 2525

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

    def describe(self) -> str:
        return (
            f"at most {self.rate:g} messages/s (421 over that), greylisting "
            f"{GREYLISTED_DOMAIN}, a 421 at every third greeting, {UNKNOWN} unknown, "
            "one connection dropped after the data"
        )

    async def start(self, port: int = 0) -> tuple[asyncio.AbstractServer, int]:
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
            lambda: Difficult(Handler(), hostname="difficult.demo.test"), "127.0.0.1", port
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


CODE = """\
    async with Mailer("127.0.0.1", {port}, tls="none",  # loopback: no TLS on offer
                      hooks=[watch]) as mailer:       # events feed the line under the bar
        async for sent in mailer.send_many(messages, concurrency={concurrency},
                                           progress=RichProgress()):
            results.append(sent.result)
"""

# What each final state means for the user, beside its count.
MEANING = {
    State.DELIVERED: "the server took the message (250 after the data)",
    State.REJECTED: "permanent: do not retry; fix the address or the setting",
    State.DEFERRED: "still transient when the retry policy stopped: requeue after retry_in",
    State.AMBIGUOUS: "the connection broke after the data: it may have arrived, so not resent",
}


class _Watch:
    """The hook and the note under the bar: what the sends are waiting for
    (from the policy's "retry" events) and the live delivery rate."""

    WINDOW = 2.0  # seconds of deliveries the live rate is measured over

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.retries: Counter[str] = Counter()
        self.waits: list[tuple[float, str, float]] = []  # (until, reason, delay)
        self.delivered: deque[float] = deque()
        self.first_try: list[float] = []  # when each first-try delivery finished
        self.started = time.monotonic()

    def begin(self) -> None:
        """The batch starts now: first-try times count from here, as the
        summary's elapsed time does."""
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        if event.kind == "retry":
            reason = str(event.data.get("reason"))
            self.retries[reason] += 1
            delay = float(event.data.get("delay") or 0.0)
            if delay > 0:
                self.waits.append((time.monotonic() + delay, reason, delay))

    def sent(self, sent: Sent) -> None:
        now = time.monotonic()
        if sent.result is None:
            return
        for r in sent.result:
            if r.state is State.DELIVERED:
                self.delivered.append(now)
                if r.attempts == 1:
                    self.first_try.append(now - self.started)

    def note(self) -> str:
        now = time.monotonic()
        while self.delivered and self.delivered[0] < now - self.WINDOW:
            self.delivered.popleft()
        span = min(self.WINDOW, max(now - self.started, 1e-3))
        rate = len(self.delivered) / span
        text = f"{rate:.0f}/s now, the server allows {self.limit:g}/s"
        self.waits = [w for w in self.waits if w[0] > now]
        if self.waits:
            until, reason, _ = max(self.waits)
            text += (
                f"; {len(self.waits)} waiting (up to {until - now:.0f} s): "
                f"server said {reason.replace('_', ' ')}"
            )
        return text


class _DemoProgress:
    """send_many's rich bar, with :class:`_Watch`'s note under it."""

    def __init__(self, bar: RichProgress, watch: _Watch) -> None:
        self.bar = bar
        self.watch = watch

    def start(self, total: int | None) -> None:
        self.watch.begin()
        self.bar.start(total)

    def update(self, sent: Sent, summary: BulkSummary) -> None:
        self.watch.sent(sent)
        self.bar.note(self.watch.note())
        self.bar.update(sent, summary)

    def finish(self, summary: BulkSummary) -> None:
        self.bar.note("")
        self.bar.finish(summary)


async def run_demo(
    count: int = 300, rate: float = 40.0, concurrency: int = 20, out: TextIO = sys.stdout
) -> int:
    """Run the demo; returns 0 when every message has a final state."""
    from rich.console import Console

    rules = DemoServer(rate=rate)
    server, port = await rules.start()
    watch = _Watch(rate)
    out.write(
        f"A difficult SMTP server is listening on 127.0.0.1:{port}: {rules.describe()}.\n\n"
        f"Sending {count} messages with the Mailer's defaults (retry policy, adaptive "
        "limiter, destination health, a pool of 4 connections).  The code:\n\n"
        + CODE.format(port=port, concurrency=concurrency)
        + "\n"
    )
    out.flush()
    bar = RichProgress(Console(file=out), description="sending")
    display = _DemoProgress(bar, watch)
    results: list[SendResult] = []

    async def tick() -> None:
        # The note changes while nothing finishes (every send waiting).
        while True:
            await asyncio.sleep(0.25)
            bar.note(watch.note())

    ticker = asyncio.ensure_future(tick())
    try:
        async with Mailer("127.0.0.1", port, tls="none", hooks=[watch]) as mailer:
            sends = mailer.send_many(_messages(count), concurrency=concurrency, progress=display)
            async with sends:
                async for sent in sends:
                    assert sent.result is not None  # the demo's messages are all valid
                    results.append(sent.result)
            summary = sends.summary
    finally:
        ticker.cancel()
        server.close()
        await server.wait_closed()
    _report(out, results, watch, rules, summary, count)
    return 0 if sum(len(r) for r in results) == count else 1


def _report(
    out: TextIO,
    results: list[SendResult],
    watch: _Watch,
    rules: DemoServer,
    summary: BulkSummary,
    count: int,
) -> None:
    recipients = [r for res in results for r in res]
    states: Counter[State] = Counter(r.state for r in recipients)
    why: dict[State, Counter[str]] = {s: Counter() for s in State}
    for r in recipients:
        if r.state is not State.DELIVERED and r.reason:
            why[r.state][r.reason] += 1
    out.write("\nFinal state of every recipient\n")
    for s in State:
        detail = ", ".join(f"{k} {v}" for k, v in why[s].most_common())
        detail = f"{detail}: " if detail else ""
        out.write(f"  {s.value:<10} {states[s]:>5}  {detail}{MEANING[s]}\n")
    out.write(f"  {'total':<10} {sum(states.values()):>5}  (sent {count})\n")
    _deferred(out, [r for r in recipients if r.state is State.DEFERRED])

    out.write("\nRetries by reason (each a new transaction after a back-off)\n")
    for reason, n in watch.retries.most_common() or [("none", 0)]:
        out.write(f"  {reason:<22} {n:>5}\n")
    out.write("\nThe server's view\n")
    out.write(f"  throttled with 421     {rules.throttled:>5}  over its {rules.rate:g}/s\n")
    out.write(f"  busy 421 at greeting   {rules.busy:>5}  every third connection\n")
    out.write(f"  greylisted             {rules.greylisted:>5}  first try of each\n")
    out.write(f"  dropped after the data {rules.dropped:>5}  the ambiguous one\n")

    elapsed = summary.elapsed
    first = watch.first_try
    sending = min(max(first), elapsed) if first else 0.0
    pace = len(first) / sending if sending else 0.0
    attempts = sum(res.attempts for res in results)
    out.write(f"\nWhere the time went (the server allows {rules.rate:g} messages/s)\n")
    out.write(
        f"  {sending:5.1f} s  sending: {len(first)} messages delivered at their first try, "
        f"{pace:.1f}/s, {pace / rules.rate:.0%} of the server's limit\n"
        f"  {elapsed - sending:5.1f} s  retries after the last first-try delivery: a "
        "rate-limit 421 is retried at the pace the adaptive limiter found, no fixed wait; "
        "a greylisted recipient would wait 300 s, so it is deferred with retry_in\n"
        f"  {elapsed:5.1f} s  in all; {attempts / max(1, len(results)):.2f} transactions "
        "per message\n"
    )


def _deferred(out: TextIO, deferred: list[RecipientResult], show: int = 8) -> None:
    if not deferred:
        return
    out.write(
        "\nDeferred recipients: retry_in is how many seconds from now a retry is "
        "worth it (the server's own wait, or the policy's floor for the reason); "
        "put them back in your queue for then, or use the outbox\n"
    )
    for r in deferred[:show]:
        retry_in = "?" if r.retry_in is None else f"{r.retry_in:.0f} s"
        out.write(f"  {r.address:<32} {r.reason or '':<16} retry_in {retry_in}\n")
    if len(deferred) > show:
        out.write(f"  ... and {len(deferred) - show} more\n")


async def serve_demo(
    port: int = SERVE_PORT,
    rate: float = 40.0,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
) -> int:
    """Keep the difficult server running on 127.0.0.1:``port`` until
    ``stop`` is set (or the task is cancelled: Ctrl-C)."""
    rules = DemoServer(rate=rate)
    try:
        server, port = await rules.start(port)
    except OSError as exc:
        out.write(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}\n")
        return 1
    out.write(
        f"A difficult SMTP server is listening on 127.0.0.1:{port}: {rules.describe()}.\n"
        "Aim your code at it, for example:\n\n"
        f'    Mailer("127.0.0.1", {port}, tls="none")\n\n'
        "Ctrl-C stops it.\n"
    )
    out.flush()
    try:
        await (stop or asyncio.Event()).wait()
    except asyncio.CancelledError:
        pass
    finally:
        server.close()
        await server.wait_closed()
        out.write(
            f"\nstopped; it accepted {rules.accepted} recipient(s) on {rules.connections} "
            f"connection(s), throttled {rules.throttled}, greylisted {rules.greylisted}\n"
        )
    return 0
