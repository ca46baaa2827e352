"""Mailer.send_many: bounded concurrency, results as they finish, a summary.

Against a real aiosmtpd server on 127.0.0.1 where the network matters, and
the scripted transport on a FakeClock where the order of finishing does.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator, Sequence
from email.message import EmailMessage

import pytest

from _sync_server import server_in_thread
from resilient_smtp import (
    BulkSummary,
    ConcurrencyLimiter,
    Connection,
    InvalidMessageError,
    Mailer,
    PoolLimits,
    RetryPolicy,
    RichProgress,
    Sent,
    State,
    Transport,
)
from resilient_smtp import sync as sync_api
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer, ScriptedTransport

POLICY = RetryPolicy(deadline=30.0, base=0.01, cap=0.05)


def message(i: int, to: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = to or f"user{i}@example.com"
    msg["Subject"] = f"bulk {i}"
    msg.set_content("hello\n")
    return msg


async def test_every_message_once_with_a_final_state_and_a_summary() -> None:
    async with ScriptedSMTPServer() as server:
        server.on("rcpt", "550 5.1.1 User unknown", recipient="nobody@example.com", times=None)
        server.on("rcpt", "450 4.2.0 Greylisted", recipient="grey@example.com", times=None)
        msgs = [message(i) for i in range(30)]
        msgs[5] = message(5, "nobody@example.com")
        msgs[9] = message(9, "grey@example.com")
        clock = FakeClock()
        async with Mailer("127.0.0.1", server.port, tls="none", retry=POLICY, clock=clock) as m:
            seen: list[Sent] = []
            async with m.send_many(msgs, concurrency=4) as sends:
                async for sent in sends:
                    seen.append(sent)
                summary = sends.summary
    assert sorted(s.index for s in seen) == list(range(30))
    assert all(s.message is msgs[s.index] for s in seen)
    states = {s.index: s.result.recipients[0].state for s in seen if s.result is not None}
    assert states[5] is State.REJECTED
    assert states[9] is State.DEFERRED
    assert sum(st is State.DELIVERED for st in states.values()) == 28
    assert (summary.messages, summary.delivered, summary.rejected, summary.deferred) == (
        30,
        28,
        1,
        1,
    )
    assert summary.total == 30
    # What the server took: 28 messages, none twice.
    assert sorted(server.delivered_to) == sorted(
        f"user{i}@example.com" for i in range(30) if i not in (5, 9)
    )
    assert "30 messages: 30 recipients (28 delivered, 1 rejected, 1 deferred" in str(summary)


class _Counting(Transport):
    """A transport that records how many transactions are open at once."""

    def __init__(self) -> None:
        self.inner = ScriptedTransport()
        self.active = 0
        self.most = 0

    async def connect(self, host: str, port: int) -> Connection:
        conn = await self.inner.connect(host, port)
        outer = self

        class Wrapped:
            def __getattr__(self, name: str) -> object:
                return getattr(conn, name)

            async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
                if commands and commands[0].startswith(b"MAIL"):
                    outer.active += 1
                    outer.most = max(outer.most, outer.active)
                    for _ in range(5):  # a network would let the others run here
                        await asyncio.sleep(0)
                await conn.send(commands, payload)
                if payload:  # the message: this transaction's last flight
                    outer.active -= 1

        return Wrapped()  # type: ignore[return-value]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_concurrency_bounds_the_sends_in_flight(concurrency: int) -> None:
    transport = _Counting()
    mailer = Mailer(
        "mx.test",
        transport=transport,
        clock=FakeClock(),
        pool=PoolLimits(max_connections=10),
        limiter=ConcurrencyLimiter(100),  # only send_many's bound holds them
    )
    summary = await mailer.send_many(
        [message(i) for i in range(20)], concurrency=concurrency
    ).wait()
    assert summary.delivered == 20
    assert transport.most == concurrency


async def test_results_come_as_they_finish() -> None:
    # The first message is greylisted once: it waits out a back-off while
    # the others go through, so it comes last.
    transport = ScriptedTransport().on(
        "rcpt", "450 4.2.0 Greylisted", recipient="user0@example.com"
    )
    policy = RetryPolicy(deadline=1000.0)  # greylisting waits 300 s (on the fake clock)
    mailer = Mailer("mx.test", transport=transport, clock=FakeClock(), retry=policy)
    order = [s.index async for s in mailer.send_many([message(i) for i in range(5)])]
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert order[-1] == 0


async def test_an_invalid_message_is_reported_and_the_rest_go_on() -> None:
    bad = EmailMessage()
    bad["Subject"] = "no sender, no recipients"
    bad.set_content("x")
    transport = ScriptedTransport()
    mailer = Mailer("mx.test", transport=transport, clock=FakeClock())
    seen = {s.index: s async for s in mailer.send_many([message(0), bad, message(2)])}
    assert isinstance(seen[1].error, InvalidMessageError)
    assert seen[1].result is None
    assert seen[0].result is not None and seen[0].result.ok
    assert seen[2].result is not None and seen[2].result.ok
    assert len(transport.messages) == 2


async def test_the_input_is_read_lazily_and_closing_stops_the_rest() -> None:
    taken: list[int] = []

    def source() -> Iterator[EmailMessage]:
        for i in range(1000):
            taken.append(i)
            yield message(i)

    transport = ScriptedTransport()
    mailer = Mailer("mx.test", transport=transport, clock=FakeClock())
    sends = mailer.send_many(source(), concurrency=2)
    assert sends.summary.total is None
    got = 0
    async with sends:
        async for _ in sends:
            got += 1
            if got == 3:
                break
    # A few more than were yielded were started; nowhere near all of them.
    # (How many depends on loop turns: the default limiter does not pace a
    # destination that never pushed back, so sends finish sooner.)
    assert 3 <= len(taken) <= 3 + 2 + 4
    assert len(transport.messages) < 10
    # Iterating after close yields nothing more.
    assert [s async for s in sends] == []


async def test_a_bug_in_a_send_is_raised_to_the_reader() -> None:
    class Broken(ScriptedTransport):
        async def connect(self, host: str, port: int) -> Connection:
            raise RuntimeError("a bug, not a delivery failure")

    mailer = Mailer("mx.test", transport=Broken(), clock=FakeClock())
    with pytest.raises(RuntimeError, match="a bug"):
        async for _ in mailer.send_many([message(i) for i in range(3)]):
            pass


def test_bad_arguments_raise_at_once() -> None:
    mailer = Mailer("mx.test", transport=ScriptedTransport())
    with pytest.raises(TypeError, match="use send"):
        mailer.send_many(message(0))  # a Message is iterable (its header names)
    with pytest.raises(ValueError, match="concurrency"):
        mailer.send_many([], concurrency=0)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def start(self, total: int | None) -> None:
        self.calls.append(("start", total))

    def update(self, sent: Sent, summary: BulkSummary) -> None:
        self.calls.append(("update", summary.messages))

    def finish(self, summary: BulkSummary) -> None:
        self.calls.append(("finish", summary.delivered))


async def test_a_progress_display_sees_start_each_message_and_the_end() -> None:
    rec = _Recorder()
    mailer = Mailer("mx.test", transport=ScriptedTransport(), clock=FakeClock())
    await mailer.send_many([message(i) for i in range(4)], progress=rec).wait()
    assert rec.calls == [
        ("start", 4),
        ("update", 1),
        ("update", 2),
        ("update", 3),
        ("update", 4),
        ("finish", 4),
    ]


async def test_rich_progress_draws_the_bar_the_note_and_the_summary() -> None:
    from rich.console import Console

    out = io.StringIO()
    display = RichProgress(Console(file=out, width=100))
    mailer = Mailer("mx.test", transport=ScriptedTransport(), clock=FakeClock())
    sends = mailer.send_many([message(i) for i in range(6)], progress=display)
    display.note("waiting 4 s: server said rate limited")
    await sends.wait()
    text = out.getvalue()
    assert "6/6" in text
    assert "delivered 6" in text
    assert "waiting 4 s: server said rate limited" in text
    assert "6 messages: 6 recipients (6 delivered" in text


def test_the_sync_mailer_sends_many_too() -> None:
    with server_in_thread() as server:
        server.on("rcpt", "550 5.1.1 User unknown", recipient="nobody@example.com")
        msgs = [message(i) for i in range(8)]
        msgs[3] = message(3, "nobody@example.com")
        with sync_api.Mailer("127.0.0.1", server.port, tls="none") as mailer:
            sends = mailer.send_many(msgs, concurrency=3)
            seen = sorted(s.index for s in sends)
            summary = sends.summary
    assert seen == list(range(8))
    assert (summary.delivered, summary.rejected) == (7, 1)
    assert len(server.messages) == 7
