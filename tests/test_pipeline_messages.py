"""``Mailer(pipeline_messages=True)``: the next message's envelope right
behind the previous message's final dot, against hostile servers.

Two (or more) sends share one pooled connection: the first writes its
message, and the second, waiting for the connection, writes ``MAIL``, its
``RCPT``s and ``DATA`` in the same flight.  For each reply position of that
combined flight (the first message's dot, the second's MAIL, k-th RCPT and
DATA) a 421 or a dropped connection; replies merged in one packet; a reply
that comes early.  Every recipient's final state is asserted, and the
server's own record (tests/_raw_smtp.py, smtp-sink's dump) says nothing was
lost and nothing arrived twice.  The raw server waits for the client's next
line before it answers a dot (``dot_waits``), so it sees, on its side, that
the envelope came behind the dot (``server.chained``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from _raw_smtp import DROP, STALL, RawSMTPServer
from conftest import Sink
from resilient_smtp import (
    REACTIONS,
    AiosmtplibTransport,
    Connection,
    Mailer,
    PoolLimits,
    RateLimiter,
    Reason,
    RetryPolicy,
    State,
    Transport,
)
from resilient_smtp._classify.reply import Reply
from resilient_smtp.outbox import Outbox, SQLiteStore
from resilient_smtp.testing import FakeClock

FIRST = ("a@example.com", "b@example.com", "c@example.com")
SECOND = ("d@example.com", "e@example.com", "f@example.com")
_ids = itertools.count(1)
# The raw server waits (real time, bounded) for the client's next line only
# behind the first message's dot: a chained envelope arrives at once.
FIRST_DOT = frozenset({(1, 1)})


def message(rcpts: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = "pipelined messages"
    msg["Message-ID"] = f"<chain-{next(_ids)}@resilient-smtp.test>"
    msg.set_content("Hello.\n.a line that starts with a dot\n")
    return msg


def mailer(port: int, attempts: int = 2, **kw: object) -> Mailer:
    return Mailer(
        ("127.0.0.1", port),
        tls="none",
        timeout=2.0,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=attempts, deadline=86400.0),
        pool=PoolLimits(max_connections=1),
        pipeline_messages=True,
        **kw,  # type: ignore[arg-type]
    )


def check_record(delivered_to: list[str], states: dict[str, State]) -> None:
    """Nothing lost, nothing twice: delivered once; deferred and rejected
    never stored; ambiguous at most once."""
    got = Counter(delivered_to)
    for rcpt, state in states.items():
        if state is State.DELIVERED:
            assert got[rcpt] == 1, (rcpt, state, got)
        elif state is State.AMBIGUOUS:
            assert got[rcpt] <= 1, (rcpt, state, got)
        else:
            assert got[rcpt] == 0, (rcpt, state, got)


async def send_two(
    server: RawSMTPServer, attempts: int = 2, **kw: object
) -> tuple[dict[str, State], dict[str, State]]:
    """Both sends at once: the second waits for the one connection."""
    async with mailer(server.port, attempts, **kw) as m:
        one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
    first, second = ({r.address: r.state for r in res} for res in (one, two))
    check_record(server.delivered_to, {**first, **second})
    for stored in server.stored:
        assert b"a line that starts with a dot" in stored.data
    return first, second


def every(rcpts: Sequence[str], state: State) -> dict[str, State]:
    return dict.fromkeys(rcpts, state)


DELIVERED1, DELIVERED2 = every(FIRST, State.DELIVERED), every(SECOND, State.DELIVERED)


async def test_the_envelope_goes_behind_the_dot_on_one_connection() -> None:
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=FIRST_DOT) as server:
        assert await send_two(server) == (DELIVERED1, DELIVERED2)
        assert server.connections == 1
        assert server.chained == 1  # the server saw MAIL before it answered the dot
        assert server.commands.count("RSET") == 0


async def test_without_the_option_the_next_envelope_waits_for_the_dot_reply() -> None:
    # The same server, the default mode: the server waits in vain for a line
    # behind the dot (0.2 s of real time), then answers.
    async with RawSMTPServer(dot_waits=0.2, dot_waits_at=FIRST_DOT) as server:
        async with Mailer(
            ("127.0.0.1", server.port),
            tls="none",
            clock=FakeClock(),
            pool=PoolLimits(max_connections=1),
        ) as m:
            await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert server.chained == 0
        assert server.connections == 1


async def test_no_pipelining_no_chain() -> None:
    async with RawSMTPServer(pipelining=False, dot_waits=0.2, dot_waits_at=FIRST_DOT) as server:
        assert await send_two(server) == (DELIVERED1, DELIVERED2)
        assert server.chained == 0


async def test_a_connection_at_its_message_cap_is_not_passed_on() -> None:
    # max_messages=2: the second message on each connection is its last, so
    # nobody's envelope goes behind its dot; the third opens a new one.
    at = frozenset({(1, 1), (1, 2), (2, 1)})
    async with RawSMTPServer(dot_waits=0.2, dot_waits_at=at) as server:
        rcpts = [(f"m{i}@example.com",) for i in range(4)]
        async with Mailer(
            ("127.0.0.1", server.port),
            tls="none",
            clock=FakeClock(),
            pool=PoolLimits(max_connections=1, max_messages=2),
            pipeline_messages=True,
        ) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        assert all(r.ok for r in results)
        assert server.connections == 2
        # Behind (1, 1) and (2, 1); (1, 2) waited 0.2 s in vain.
        assert server.chained == 2
        assert Counter(server.delivered_to) == Counter(r[0] for r in rcpts)


async def test_send_many_chains_on_its_own() -> None:
    at = frozenset({(1, 1), (1, 2), (1, 3)})
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=at) as server:
        rcpts = [(f"m{i}@example.com",) for i in range(4)]
        async with mailer(server.port) as m:
            summary = await m.send_many([message(r) for r in rcpts], concurrency=4).wait()
        assert summary.messages == 4 and summary.delivered == 4
        assert server.chained == 3
        assert server.connections == 1
        assert Counter(server.delivered_to) == Counter(r[0] for r in rcpts)


# -- a fault at each reply position of the combined flight -------------------


@pytest.mark.parametrize("answer", [b"421 4.3.0 queue trouble", DROP], ids=["421", "drop"])
async def test_a_fault_after_the_first_dot(answer: bytes) -> None:
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): answer}
    ) as server:
        first, second = await send_two(server)
        assert server.chained == 1
    if answer == DROP:
        # The first message may have been taken: ambiguous, never resent.
        # The second never got its 354: it goes again, on a new connection.
        assert first == every(FIRST, State.AMBIGUOUS)
        assert Counter(server.delivered_to)["a@example.com"] == 1
    else:
        assert first == DELIVERED1  # a 421 is a refusal: sent again
    assert second == DELIVERED2
    assert server.connections >= 2


SECOND_POINTS = ["mail", "rcpt1", "rcpt2", "rcpt3", "data"]


@pytest.mark.parametrize("point", SECOND_POINTS)
@pytest.mark.parametrize("answer", [b"421 4.7.0 Try again later", DROP], ids=["421", "drop"])
async def test_a_fault_in_the_second_envelope(point: str, answer: bytes) -> None:
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 2, point): answer}
    ) as server:
        first, second = await send_two(server)
        assert server.chained == 1
        # The first message's verdict came before the fault: delivered once.
        assert first == DELIVERED1
        # The second's message never left before the fault: it went again.
        assert second == DELIVERED2
        assert server.connections == 2


@pytest.mark.parametrize("point", SECOND_POINTS)
async def test_a_fault_in_the_second_envelope_with_no_retry_defers(point: str) -> None:
    faults = {(1, 2, point): b"421 4.7.0 Try again later"}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=FIRST_DOT, faults=faults) as server:
        first, second = await send_two(server, attempts=1)
        assert first == DELIVERED1
        assert second == every(SECOND, State.DEFERRED)  # never ambiguous


async def test_a_refused_recipient_in_the_second_envelope_keeps_its_own_outcome() -> None:
    faults = {(1, 2, "rcpt2"): b"550 5.1.1 User unknown"}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=FIRST_DOT, faults=faults) as server:
        first, second = await send_two(server)
        assert first == DELIVERED1
        assert second == {**DELIVERED2, "e@example.com": State.REJECTED}
        assert server.connections == 1


async def test_a_dot_reply_whose_row_says_close_moves_the_second_to_a_new_connection() -> None:
    # The first message's dot reply is a refusal whose reactions row says
    # connection="close": the connection is closed before the second reads,
    # so the second (whose message never left) goes on a new connection.
    table = REACTIONS.replace(Reason.SPAM_CONTENT, connection="close")
    spam = b"554 5.7.1 Message rejected as spam"
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): spam}
    ) as server:
        first, second = await send_two(server, reactions=table)
        assert server.chained == 1
        assert first == every(FIRST, State.REJECTED)
        assert second == DELIVERED2
        assert server.connections == 2
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): spam}
    ) as server:
        # The default row keeps the connection: the second goes on it.
        assert await send_two(server) == (every(FIRST, State.REJECTED), DELIVERED2)
        assert server.connections == 1


# -- servers that misbehave ---------------------------------------------------


async def test_replies_merged_in_one_packet() -> None:
    # The dot's reply held and written with the next envelope's replies and
    # its 354, in one packet.
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=FIRST_DOT, hold_replies=True) as server:
        assert await send_two(server) == (DELIVERED1, DELIVERED2)
        assert server.chained == 1
        assert server.connections == 1


async def test_an_early_reply_puts_the_next_transaction_out_of_step() -> None:
    # An extra reply behind the dot's: the second transaction reads it as
    # its MAIL reply, every later reply shifts, and DATA is answered 2xx:
    # out of step.  Its message is not sent; it goes again.
    early = b"250 2.0.0 Ok: queued\r\n250 2.1.0 Ok"
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): early}
    ) as server:
        first, second = await send_two(server)
        assert first == DELIVERED1
        assert second == DELIVERED2
        assert server.connections == 2


async def test_an_unreadable_dot_reply_leaves_the_first_ambiguous_and_the_second_deferred() -> (
    None
):
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): b"999 what"}
    ) as server:
        first, second = await send_two(server, attempts=1)
        assert first == every(FIRST, State.AMBIGUOUS)
        # The second's loss shows at its MAIL on a reused connection: a
        # stale connection, replaced at once without counting an attempt.
        assert second == DELIVERED2


# -- the outbox's hook ----------------------------------------------------------


async def test_the_hook_gets_each_message_accepted_after_its_own_354() -> None:
    seen: list[tuple[str, ...]] = []

    async def hook(recipients: list[str]) -> None:
        seen.append(tuple(recipients))

    faults = {(1, 2, "rcpt2"): b"550 5.1.1 User unknown"}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=FIRST_DOT, faults=faults) as server:
        async with mailer(server.port) as m:
            await asyncio.gather(
                m.send(message(FIRST), before_end_of_data=hook),
                m.send(message(SECOND), before_end_of_data=hook),
            )
        assert server.chained == 1
    assert seen == [FIRST, ("d@example.com", "f@example.com")]


async def test_a_drop_after_the_dot_never_calls_the_second_hook() -> None:
    seen: list[tuple[str, ...]] = []

    async def hook(recipients: list[str]) -> None:
        seen.append(tuple(recipients))

    async with (
        RawSMTPServer(
            dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): DROP}
        ) as server,
        mailer(server.port, attempts=1) as m,
    ):
        first, second = await asyncio.gather(
            m.send(message(FIRST), before_end_of_data=hook),
            m.send(message(SECOND), before_end_of_data=hook),
        )
    assert {r.state for r in first} == {State.AMBIGUOUS}
    # The second message's first hook call is on the new connection, after
    # its 354 there: the outbox never records it as possibly sent before.
    assert seen == [FIRST, SECOND]
    assert {r.state for r in second} == {State.DELIVERED}


# -- cancellation -----------------------------------------------------------------


async def test_cancelling_the_first_after_its_dot_defers_the_second() -> None:
    # The first send is cancelled while it waits for its dot's reply (the
    # server waits for the next line, then stalls): its reply is never
    # read, so the connection is closed before the second reads anything.
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): STALL}
    ) as server:
        async with mailer(server.port, attempts=1) as m:
            one = asyncio.create_task(m.send(message(FIRST)))
            two = asyncio.create_task(m.send(message(SECOND)))
            await asyncio.wait_for(server.event("dot").wait(), 5)
            for _ in range(200):  # until the second's envelope reached the server
                if server.chained:
                    break
                await asyncio.sleep(0.005)
            one.cancel()
            with pytest.raises(asyncio.CancelledError):
                await one
            # The first closed the connection as its turn ended: the second
            # reconnects at once, not after its 2 s read timeout.
            for _ in range(200):
                if server.connections == 2:
                    break
                await asyncio.sleep(0.005)
            assert server.connections == 2
            second = await two
        assert server.chained == 1
    # Not ambiguous: its message never left on the first connection.
    assert {r.state for r in second} == {State.DELIVERED}
    assert Counter(server.delivered_to)["d@example.com"] == 1


# -- smtp-sink ---------------------------------------------------------------------


class _Counting:
    """A connection that counts MAIL commands written before the reply to
    the previous message's final dot was read: envelopes behind the dot."""

    def __init__(self, inner: Connection, counts: list[int]) -> None:
        self.inner = inner
        self.host = inner.host
        self.counts = counts
        self.dot_unread = False

    created_at = property(
        lambda self: self.inner.created_at,
        lambda self, v: setattr(self.inner, "created_at", v),
    )
    messages = property(
        lambda self: self.inner.messages,
        lambda self, v: setattr(self.inner, "messages", v),
    )

    def supports(self, extension: str) -> bool:
        return self.inner.supports(extension)

    def is_open(self) -> bool:
        return self.inner.is_open()

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        if commands and commands[0].startswith(b"MAIL") and self.dot_unread:
            self.counts[0] += 1
        await self.inner.send(commands, payload)
        if payload:
            self.dot_unread = True

    async def read_reply(self) -> Reply:
        reply = await self.inner.read_reply()
        self.dot_unread = False
        return reply

    def reply_waiting(self) -> bool:
        return self.inner.reply_waiting()

    async def reset(self) -> Reply:
        return await self.inner.reset()

    async def noop(self) -> Reply:
        return await self.inner.noop()

    async def close(self) -> None:
        await self.inner.close()


class _CountingTransport(Transport):
    def __init__(self) -> None:
        self.inner = AiosmtplibTransport(tls="none", timeout=5.0)
        self.chained = [0]

    async def connect(self, host: str, port: int) -> Connection:
        return _Counting(await self.inner.connect(host, port), self.chained)


async def test_smtp_sink_gets_every_message_once(smtp_sink: Callable[..., Sink]) -> None:
    sink = smtp_sink()
    transport = _CountingTransport()
    n = 12
    msgs = [message([f"r{i}-{j}@example.com" for j in range(3)]) for i in range(n)]
    async with Mailer(
        ("127.0.0.1", sink.port),
        tls="none",
        transport=transport,
        limiter=RateLimiter(rate=1e9),
        pool=PoolLimits(max_connections=2),
        pipeline_messages=True,
    ) as m:
        results = await asyncio.gather(*(m.send(msg) for msg in msgs))
        assert m.pool.opened == 2
    assert all(r.ok for r in results)
    # All but the first message on each connection went behind a dot.
    assert transport.chained[0] == n - 2
    assert Counter(sink.message_ids()) == Counter(str(msg["Message-ID"]) for msg in msgs)
    assert Counter(sink.recipients()) == Counter(r for msg in msgs for r in msg["To"].split(", "))


# -- the durable outbox ---------------------------------------------------------------


async def test_the_outbox_records_the_first_ambiguous_and_sends_the_second(tmp_path: Path) -> None:
    # The outbox sends a batch at once, so its second message waits for the
    # one connection and goes behind the first's dot; the connection drops
    # after that dot.  Its hook recorded the first as possibly sent (after
    # its 354) and the second only after its own 354, on the new connection.
    async with RawSMTPServer(
        dot_waits=2.0, dot_waits_at=FIRST_DOT, faults={(1, 1, "dot"): DROP}
    ) as server:
        async with Outbox(SQLiteStore(tmp_path / "outbox.db")) as outbox:
            await outbox.put(message(FIRST))
            await outbox.put(message(SECOND))
            async with mailer(server.port, attempts=1) as m:
                assert await outbox.run_once(m) == 2
            counts = (await outbox.status()).counts
        assert server.chained == 1
    assert counts["ambiguous"] == 3 and counts["delivered"] == 3
    assert sum(counts.values()) == 6
    check_record(server.delivered_to, {**every(FIRST, State.AMBIGUOUS), **DELIVERED2})
