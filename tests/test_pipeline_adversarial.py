"""Adversarial tests of ``Mailer(pipeline_messages=True)``.

The next send writes MAIL, RCPT* and DATA right behind the previous send's
final dot, and reads its own replies only once the previous send has read
the reply to that dot (its "turn").  These tests attack that hand-over:
replies trickled, merged, continued, early; a drop at each step of a chain
of three; cancellation of either send at every loop turn of the combined
flight; the Mailer closed mid-chain; a deadline passing during the turn
wait; the pool's message and age caps; several waiting senders; two
destinations at once; the outbox's ``before_end_of_data`` hook; CHUNKING.

Every test asserts each recipient's final state and, from the server's own
record (tests/_raw_smtp.py), that nothing was lost and nothing was sent
twice; an autouse fixture checks that no task is left running, no socket is
left open at the server, and nothing was reported to the loop's exception
handler ("Task/Future exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from email.message import EmailMessage
from typing import Any

import pytest

from _gate_proxy import GateProxy
from _raw_smtp import DROP, STALL, RawSMTPServer
from conftest import Sink
from resilient_smtp import Mailer, PoolLimits, RetryPolicy, State
from resilient_smtp.testing import DROP as AIOSMTPD_DROP
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer

FIRST = ("a@example.com", "b@example.com", "c@example.com")
SECOND = ("d@example.com", "e@example.com", "f@example.com")
THIRD = ("g@example.com", "h@example.com")
_ids = itertools.count(1)
WATCHDOG = 30.0
"""Real seconds after which a hung test is cancelled (and fails)."""


# -- hygiene: no task, socket or unretrieved exception left behind -------------


@pytest.fixture(autouse=True)
async def hygiene() -> AsyncIterator[list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    before = asyncio.all_tasks()
    hung: list[bool] = []
    timer: asyncio.TimerHandle | None = None

    def watchdog() -> None:  # a hang fails the test instead of the run
        nonlocal timer
        hung.append(True)
        for task in asyncio.all_tasks(loop) - before:
            task.cancel()
        timer = loop.call_later(0.5, watchdog)  # again, for clean-ups that hang too

    timer = loop.call_later(WATCHDOG, watchdog)
    try:
        yield reported
        assert not hung, f"the test hung for {WATCHDOG} s"
        for _ in range(10):
            await asyncio.sleep(0)
        gc.collect()  # "never retrieved" is reported when the object goes
        for _ in range(3):
            await asyncio.sleep(0)
        left = {
            t
            for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done()
        }
        assert not left, left
        assert not reported, [c.get("message") for c in reported]
    finally:
        timer.cancel()
        loop.set_exception_handler(previous)


async def closed_at_server(server: RawSMTPServer) -> None:
    """Every connection the server saw is closed (bounded wait: the close
    may need a loop turn or two to reach the server's side)."""
    for _ in range(400):
        if server.open_connections == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{server.open_connections} connection(s) left open")


# -- helpers -----------------------------------------------------------------------


def message(rcpts: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = "adversarial chain"
    msg["Message-ID"] = f"<adv-{next(_ids)}@resilient-smtp.test>"
    msg.set_content("Hello.\n.a line that starts with a dot\n")
    return msg


def mailer(port: int, attempts: int = 2, connections: int = 1, **kw: Any) -> Mailer:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("retry", RetryPolicy(max_attempts=attempts, deadline=86400.0))
    kw.setdefault("pool", PoolLimits(max_connections=connections))
    kw.setdefault("timeout", 2.0)
    if "mx" not in kw:
        kw["host"] = ("127.0.0.1", port)
    else:
        kw["port"] = port
    return Mailer(tls="none", pipeline_messages=True, **kw)


def states(result: Any) -> dict[str, State]:
    return {r.address: r.state for r in result}


def every(rcpts: Sequence[str], state: State) -> dict[str, State]:
    return dict.fromkeys(rcpts, state)


def check_record(delivered_to: list[str], known: dict[str, State]) -> None:
    """Nothing lost, nothing twice: delivered exactly once; ambiguous at
    most once; deferred and rejected never stored."""
    got = Counter(delivered_to)
    for rcpt, state in known.items():
        if state is State.DELIVERED:
            assert got[rcpt] == 1, (rcpt, state, got)
        elif state is State.AMBIGUOUS:
            assert got[rcpt] <= 1, (rcpt, state, got)
        else:
            assert got[rcpt] == 0, (rcpt, state, got)
    assert max(got.values(), default=0) <= 1, got  # nobody twice, known or not


async def until(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never reached: {what}")


def second_envelope_in(server: RawSMTPServer) -> bool:
    """The server has read the second transaction's DATA command."""
    return server.commands.count("DATA") >= 2


# -- replies trickled, continued, merged -------------------------------------------


async def test_trickled_replies_three_chained_sends() -> None:
    # Every reply reaches the client in pieces of 3 bytes (split across
    # reads, the dot's reply too): the chain still reads each reply as its
    # own, in order.
    at = frozenset({(1, 1), (1, 2)})
    async with (
        RawSMTPServer(dot_waits=2.0, dot_waits_at=at) as server,
        GateProxy(server.port, trickle=3) as proxy,
    ):
        async with mailer(proxy.port) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in (FIRST, SECOND, THIRD)))
        got = [states(r) for r in results]
        assert got == [every(r, State.DELIVERED) for r in (FIRST, SECOND, THIRD)]
        assert server.chained == 2
        assert server.connections == 1
        check_record(server.delivered_to, {k: v for g in got for k, v in g.items()})
        await closed_at_server(server)


async def test_a_dot_reply_continued_by_the_next_envelopes_reply() -> None:
    # The dot's reply is a multi-line one whose last line is the next
    # envelope's MAIL reply ("250-queued" + "250 2.1.0 Ok"): every later
    # reply of the second transaction shifts by one, its DATA is answered
    # by an RCPT's 250, out of step.  The first is delivered (a 2xx after
    # its dot); the second's message is not sent there, and goes again.
    faults = {(1, 1, "dot"): b"250-2.0.0 queued as ABC"}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, timeout=0.3) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(two) == every(SECOND, State.DELIVERED)
        assert s.chained == 1
        assert s.connections == 2
        check_record(s.delivered_to, {**states(one), **states(two)})
        await closed_at_server(s)


async def test_a_354_read_as_an_rcpt_reply_is_out_of_step_at_once() -> None:
    # The same shift as above: the last RCPT is answered, in the client's
    # reading, by the 354.  That alone says the session is out of step.
    faults = {(1, 1, "dot"): b"250-2.0.0 queued as ABC"}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, attempts=1, timeout=0.3) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(two) == every(SECOND, State.DEFERRED)
        check_record(s.delivered_to, {**states(one), **states(two)})
        # Deferred as out of step, not as a server that stopped answering.
        assert not [r for r in two if "timed out" in (r.explanation or "").lower()], [
            r.explanation for r in two
        ]


@pytest.mark.parametrize(
    "dot",
    [b"251 2.0.0 queued", b"200 fine", b"252 2.0.0 odd but 2xx"],
    ids=["251", "200", "252"],
)
async def test_any_2xx_after_the_dot_is_delivered_and_the_chain_goes_on(dot: bytes) -> None:
    faults = {(1, 1, "dot"): dot}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, attempts=1) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(two) == every(SECOND, State.DELIVERED)
        assert s.connections == 1 and s.chained == 1
        check_record(s.delivered_to, {**states(one), **states(two)})


@pytest.mark.parametrize(
    "dot", [b"600 what", b"2x0 ok", b"\xff\xfe garbage"], ids=["600", "2x0", "binary"]
)
async def test_an_invalid_dot_reply_is_ambiguous_once_and_the_next_is_not(dot: bytes) -> None:
    faults = {(1, 1, "dot"): dot}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, attempts=1) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.AMBIGUOUS)
        # Its message never left on the broken connection: a new one.
        assert states(two) == every(SECOND, State.DELIVERED)
        assert Counter(s.delivered_to)["a@example.com"] == 1
        check_record(s.delivered_to, {**states(one), **states(two)})
        await closed_at_server(s)


async def test_an_extra_reply_never_turns_into_another_recipients_rejection() -> None:
    # The first's dot is answered twice ("250 queued" + "250 queued").  The
    # second's replies are read one position late: MAIL <- the extra 250,
    # d <- MAIL's 250, e <- d's, f <- e's, DATA <- f's "550 User unknown".
    # d and e were accepted by the server; f alone is unknown.  A 550 for
    # one recipient must never be the verdict of the others.
    faults = {
        (1, 1, "dot"): b"250 2.0.0 queued\r\n250 2.0.0 queued",
        (1, 2, "rcpt3"): b"550 5.1.1 <f@example.com>: User unknown",
    }
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, attempts=2) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.DELIVERED)
        second = states(two)
        check_record(s.delivered_to, {**states(one), **second})
        assert second["d@example.com"] is not State.REJECTED
        assert second["e@example.com"] is not State.REJECTED


# -- a drop at each step of a chain of three ----------------------------------------

CHAIN = frozenset({(1, 1), (1, 2)})
POINTS = [
    ((1, 1, "dot"), DROP),
    ((1, 2, "mail"), DROP),
    ((1, 2, "rcpt2"), DROP),
    ((1, 2, "data"), DROP),
    ((1, 2, "dot"), DROP),
    ((1, 3, "mail"), DROP),
    ((1, 3, "data"), DROP),
    ((1, 3, "dot"), DROP),
    ((1, 2, "dot"), b"421 4.3.0 shutting down"),
    ((1, 3, "rcpt1"), b"421 4.7.0 go away"),
]


@pytest.mark.parametrize(("where", "answer"), POINTS, ids=[f"{w}-{a[:4]!r}" for w, a in POINTS])
async def test_a_fault_anywhere_in_a_chain_of_three(
    where: tuple[int, int, str], answer: bytes
) -> None:
    _, t, point = where
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=CHAIN, faults={where: answer}) as s:
        async with mailer(s.port, attempts=2) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in (FIRST, SECOND, THIRD)))
        got = [states(r) for r in results]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        for n, (rcpts, g) in enumerate(zip((FIRST, SECOND, THIRD), got, strict=True), 1):
            if n == t and point == "dot" and answer == DROP:
                # Its message was written, the reply to it never came.
                assert g == every(rcpts, State.AMBIGUOUS), (n, g)
            else:
                # A 421 after a dot is a refusal (sent again); every other
                # fault came before that message left: sent again.
                assert g == every(rcpts, State.DELIVERED), (n, g)
        # A new connection for the sends after the fault; none after the last.
        assert s.connections == (1 if where == (1, 3, "dot") else 2)
        await closed_at_server(s)


async def test_six_waiting_senders_and_a_drop_after_every_second_dot() -> None:
    # Every connection drops after its 2nd message's dot: each such message
    # is ambiguous (stored once), every other is delivered once.
    faults = {(n, 2, "dot"): DROP for n in range(1, 10)}
    rcpts = [(f"s{i}@example.com",) for i in range(6)]
    async with RawSMTPServer(faults=faults) as s:
        async with mailer(s.port, attempts=3) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        got = {k: v for r in results for k, v in states(r).items()}
        check_record(s.delivered_to, got)
        assert set(got.values()) <= {State.DELIVERED, State.AMBIGUOUS}
        # Exactly the 2nd message of each connection was cut after its dot.
        ambiguous = sum(v is State.AMBIGUOUS for v in got.values())
        assert ambiguous == s.connections - (1 if s.connections * 2 > 6 + ambiguous else 0)
        assert Counter(s.delivered_to) == Counter(r[0] for r in rcpts)
        await closed_at_server(s)


# -- cancellation at every loop turn --------------------------------------------------


@pytest.mark.parametrize("victim", [0, 1, 2], ids=["first", "second", "third"])
async def test_cancel_one_send_of_a_chain_at_every_loop_turn(victim: int) -> None:
    # A chain of three, cancelling one of them after k loop turns for
    # k = 0 .. 59: before it has a permit, while connecting, in its
    # envelope, waiting for the turn, reading its replies, writing its
    # message, reading its dot reply.  Whatever k, the other sends'
    # recipients are delivered exactly once, the cancelled one's message
    # reaches the server at most once, and nothing is left behind.
    batches = (FIRST, SECOND, THIRD)
    at = frozenset({(1, 1), (1, 2)})
    async with RawSMTPServer(dot_waits=0.05, dot_waits_at=at) as s:
        for k in range(60):
            s.stored.clear()
            async with mailer(s.port, attempts=3) as m:
                tasks = [asyncio.create_task(m.send(message(b))) for b in batches]
                for _ in range(k):
                    await asyncio.sleep(0)
                tasks[victim].cancel()
                done = await asyncio.gather(*tasks, return_exceptions=True)
            for i, (rcpts, result) in enumerate(zip(batches, done, strict=True)):
                if i == victim and isinstance(result, asyncio.CancelledError):
                    continue
                assert not isinstance(result, BaseException), (k, i, result)
                assert states(result) == every(rcpts, State.DELIVERED), (k, i)
                assert all(Counter(s.delivered_to)[r] == 1 for r in rcpts), (k, i)
            assert max(Counter(s.delivered_to).values()) == 1, k
            await closed_at_server(s)


async def test_close_the_mailer_at_every_loop_turn_of_a_chain() -> None:
    # Mailer.close() after k loop turns of a chain of three.  Every send
    # still ends with a final state for each recipient (or raises the
    # pool's "closed" error before anything was sent); each message
    # reaches the server at most once, and once every send has returned
    # no connection is left open.
    batches = (FIRST, SECOND, THIRD)
    async with RawSMTPServer(dot_waits=0.05, dot_waits_at=frozenset({(1, 1)})) as s:
        for k in range(60):
            s.stored.clear()
            m = mailer(s.port, attempts=2)
            tasks = [asyncio.create_task(m.send(message(b))) for b in batches]
            for _ in range(k):
                await asyncio.sleep(0)
            await m.close()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            got: dict[str, State] = {}
            for result in done:
                if isinstance(result, BaseException):
                    assert isinstance(result, RuntimeError), (k, result)
                    continue
                got.update(states(result))
            check_record(s.delivered_to, got)
            await m.close()
            await closed_at_server(s)


async def test_the_next_send_cancelled_while_it_waits_for_the_turn() -> None:
    # The first's dot reply is held by the proxy; the second has written its
    # envelope and waits for the turn.  Cancelling it leaves the first's
    # reading alone: the first is delivered, the second's message never
    # left, the connection is closed once the first has read its reply.
    async with (
        RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s,
        GateProxy(s.port, hold_after=b"354 ") as proxy,
    ):
        async with mailer(proxy.port) as m:
            one = asyncio.create_task(m.send(message(FIRST)))
            two = asyncio.create_task(m.send(message(SECOND)))
            await until(lambda: second_envelope_in(s), "second envelope")
            for _ in range(5):
                await asyncio.sleep(0)
            assert not one.done() and not two.done()
            two.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            assert not one.done()  # still waiting for its reply
            # (Released before awaiting the cancelled send: its pool close
            # waits for the first's turn, within Deadline's 1 s grace.)
            proxy.release()
            with pytest.raises(asyncio.CancelledError):
                await two
            assert states(await one) == every(FIRST, State.DELIVERED)
        assert [m.recipients for m in s.stored] == [FIRST]
        assert s.chained == 1
        await closed_at_server(s)


async def test_the_previous_send_cancelled_while_its_reply_is_held() -> None:
    # The first is cancelled while the server's "250 queued" for it is held
    # (so the server has its message: the caller cancelled, it gets no
    # answer).  The second's envelope sits behind the dot; the connection
    # is closed before the second reads, so it goes again, once.
    async with (
        RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s,
        GateProxy(s.port, hold_after=b"354 ") as proxy,
    ):
        async with mailer(proxy.port, attempts=1) as m:
            one = asyncio.create_task(m.send(message(FIRST)))
            two = asyncio.create_task(m.send(message(SECOND)))
            await until(lambda: second_envelope_in(s), "second envelope")
            one.cancel()
            with pytest.raises(asyncio.CancelledError):
                await one
            proxy.release()
            assert states(await two) == every(SECOND, State.DELIVERED)
        assert Counter(s.delivered_to) == Counter(FIRST + SECOND)
        assert s.connections == 2
        await closed_at_server(s)


async def test_the_mailer_closed_mid_chain() -> None:
    # Mailer.close() while the first reads its (held) dot reply and the
    # second waits for the turn, a third waits for the window: every send
    # completes once, no connection is left open.
    async with (
        RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s,
        GateProxy(s.port, hold_after=b"354 ") as proxy,
    ):
        m = mailer(proxy.port)
        tasks = [asyncio.create_task(m.send(message(r))) for r in (FIRST, SECOND, THIRD)]
        await until(lambda: second_envelope_in(s), "second envelope")
        closing = asyncio.create_task(m.close())
        for _ in range(5):
            await asyncio.sleep(0)
        proxy.release()
        results = await asyncio.gather(*tasks)
        await closing
        got = [states(r) for r in results]
        assert got == [every(r, State.DELIVERED) for r in (FIRST, SECOND, THIRD)]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        await closed_at_server(s)


async def test_a_deadline_passing_during_the_turn_wait() -> None:
    # System clock, a 0.15 s deadline for every send.  The first's dot reply
    # is held past it: the first's recipients are ambiguous (its message
    # left), the second's deferred (its envelope left, its message never:
    # it waited for the turn).  Neither is ever counted twice.
    async with (
        RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s,
        GateProxy(s.port, hold_after=b"354 ") as proxy,
    ):
        m = mailer(
            proxy.port,
            clock=None,
            retry=RetryPolicy(max_attempts=3, deadline=0.15),
        )
        async with m:
            one = asyncio.create_task(m.send(message(FIRST)))
            two = asyncio.create_task(m.send(message(SECOND)))
            await until(lambda: second_envelope_in(s), "second envelope")
            r1, r2 = await asyncio.gather(one, two)
            proxy.release()
        assert states(r1) == every(FIRST, State.AMBIGUOUS)
        assert states(r2) == every(SECOND, State.DEFERRED)
        assert [m.recipients for m in s.stored] == [FIRST]
        await closed_at_server(s)


# -- the pool's caps ------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 2, 3, 5])
async def test_max_messages_boundary_with_a_chain(cap: int) -> None:
    # n sends on one connection slot: each connection carries at most `cap`
    # messages, the last of them never has an envelope behind its dot.
    n = 7
    rcpts = [(f"m{i}@example.com",) for i in range(n)]
    async with RawSMTPServer() as s:
        async with mailer(s.port, pool=PoolLimits(max_connections=1, max_messages=cap)) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        assert all(r.ok for r in results)
        assert Counter(s.delivered_to) == Counter(r[0] for r in rcpts)
        per_connection = Counter(m_n for m_n in _mails_per_connection(s))
        assert max(per_connection.values()) <= cap
        assert s.connections == -(-n // cap)  # ceil: every connection filled
        await closed_at_server(s)


def _mails_per_connection(s: RawSMTPServer) -> list[int]:
    """The connection number of each MAIL the server read (from the stored
    record: one Stored per message; connections counted by QUIT order)."""
    # The raw server keeps no per-connection record of commands; messages
    # are stored in order and each connection's are contiguous with one
    # connection slot, so split the commands at each EHLO.
    out: list[int] = []
    conn = 0
    for verb in s.commands:
        if verb == "EHLO":
            conn += 1
        elif verb == "MAIL":
            out.append(conn)
    return out


@pytest.mark.parametrize("limits", ["max_age=0", "idle_timeout=0"])
async def test_no_reuse_allowed_means_no_chain_and_nothing_lost(limits: str) -> None:
    if limits == "max_age=0":
        pool = PoolLimits(max_connections=1, max_age=0)
    else:
        pool = PoolLimits(max_connections=1, idle_timeout=0)
    rcpts = [(f"m{i}@example.com",) for i in range(4)]
    async with RawSMTPServer(dot_waits=0.02) as s:
        async with mailer(s.port, pool=pool) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        assert all(r.ok for r in results)
        assert Counter(s.delivered_to) == Counter(r[0] for r in rcpts)
        assert s.chained == 0  # no envelope on a connection not to be reused
        assert s.connections == 4
        await closed_at_server(s)


# -- several senders, two destinations --------------------------------------------------


async def test_two_destinations_in_one_mailer_chain_separately() -> None:
    # One Mailer, MX delivery to two domains whose hosts are 127.0.0.1 and
    # 127.0.0.2 (same port): sends to both interleaved, some with
    # recipients at both.  A connection is only ever passed on within its
    # destination: each server gets exactly its own recipients, once.
    async with RawSMTPServer() as sa, RawSMTPServer(host="127.0.0.2", port=sa.port) as sb:
        hosts = {"a.example": "127.0.0.1", "b.example": "127.0.0.2"}

        async def resolve(domain: str) -> list[tuple[int, str]]:
            return [(10, hosts[domain])]

        sends = [
            (f"a{i}@a.example",)
            if i % 3 == 0
            else (f"b{i}@b.example",)
            if i % 3 == 1
            else (f"a{i}@a.example", f"b{i}@b.example")
            for i in range(9)
        ]
        async with mailer(sa.port, connections=1, mx=resolve) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in sends))
        assert all(r.ok for r in results)
        everyone = [x for r in sends for x in r]
        assert Counter(sa.delivered_to) == Counter(x for x in everyone if x.endswith("a.example"))
        assert Counter(sb.delivered_to) == Counter(x for x in everyone if x.endswith("b.example"))
        assert sa.connections == 1 and sb.connections == 1
        await closed_at_server(sa)
        await closed_at_server(sb)


# -- the outbox's hook ------------------------------------------------------------------


async def test_a_hook_that_raises_in_the_chained_transaction() -> None:
    # The second's hook raises after its 354 (its envelope went behind the
    # first's dot): the second's send raises that error, the first is
    # delivered, the second's message never left, the third goes on.
    seen: list[tuple[str, ...]] = []

    class Boom(Exception):
        pass

    async def hook(recipients: list[str]) -> None:
        seen.append(tuple(recipients))
        if recipients[0] == "d@example.com":
            raise Boom("store down")

    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s:
        async with mailer(s.port) as m:
            one, two, three = await asyncio.gather(
                *(m.send(message(r), before_end_of_data=hook) for r in (FIRST, SECOND, THIRD)),
                return_exceptions=True,
            )
        assert isinstance(two, Boom)
        assert not isinstance(one, BaseException) and not isinstance(three, BaseException)
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(three) == every(THIRD, State.DELIVERED)
        assert Counter(s.delivered_to) == Counter(FIRST + THIRD)
        assert seen[:2] == [FIRST, SECOND]
        await closed_at_server(s)


async def test_a_slow_hook_in_the_chain_with_a_third_waiting() -> None:
    # The second's hook takes a few loop turns (a durable store's write)
    # while the first's turn is long over and a third waits: the hook sees
    # exactly the recipients accepted on its own 354, each message once.
    seen: list[tuple[str, ...]] = []

    async def hook(recipients: list[str]) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        seen.append(tuple(recipients))

    faults = {(1, 2, "rcpt2"): b"550 5.1.1 User unknown"}
    async with RawSMTPServer(faults=faults) as s:
        async with mailer(s.port) as m:
            results = await asyncio.gather(
                *(m.send(message(r), before_end_of_data=hook) for r in (FIRST, SECOND, THIRD))
            )
        got = [states(r) for r in results]
        assert got == [
            every(FIRST, State.DELIVERED),
            {**every(SECOND, State.DELIVERED), "e@example.com": State.REJECTED},
            every(THIRD, State.DELIVERED),
        ]
        assert seen == [FIRST, ("d@example.com", "f@example.com"), THIRD]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        assert s.connections == 1
        await closed_at_server(s)


# -- CHUNKING -----------------------------------------------------------------------------


async def test_chunking_and_pipeline_messages_together() -> None:
    rcpts = [FIRST, SECOND, THIRD]
    async with RawSMTPServer(chunking=True) as s:
        async with mailer(s.port, chunking=True) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        assert [states(r) for r in results] == [every(r, State.DELIVERED) for r in rcpts]
        assert "DATA" not in s.commands and s.commands.count("BDAT") == 3
        assert Counter(s.delivered_to) == Counter(FIRST + SECOND + THIRD)
        assert s.connections == 1
        await closed_at_server(s)


@pytest.mark.parametrize("answer", [DROP, STALL, b"421 4.3.0 bye"], ids=["drop", "stall", "421"])
async def test_chunking_a_fault_after_bdat_with_senders_waiting(answer: bytes) -> None:
    rcpts = [FIRST, SECOND, THIRD]
    async with RawSMTPServer(chunking=True, faults={(1, 1, "bdat"): answer}) as s:
        async with mailer(s.port, attempts=2, chunking=True, timeout=0.3) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in rcpts))
        got = [states(r) for r in results]
        if answer == b"421 4.3.0 bye":
            assert got[0] == every(FIRST, State.DELIVERED)
        else:
            assert got[0] == every(FIRST, State.AMBIGUOUS)
        assert got[1:] == [every(r, State.DELIVERED) for r in rcpts[1:]]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        await closed_at_server(s)


# -- early replies, oversized replies ------------------------------------------------


@pytest.mark.parametrize("t", [1, 2], ids=["first", "chained-second"])
async def test_354_and_a_verdict_in_one_packet_sends_no_message(t: int) -> None:
    # "354 go ahead" and "250 ok" in one write, before any of the message
    # (the "reported delivered, never sent"): that transaction's
    # message is not sent on this connection; it goes again on a new one,
    # and is delivered once.  The other send is unaffected.
    faults = {(1, t, "data"): b"354 go ahead\r\n250 2.0.0 Ok: queued"}
    async with RawSMTPServer(faults=faults) as s:
        async with mailer(s.port) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(two) == every(SECOND, State.DELIVERED)
        check_record(s.delivered_to, {**states(one), **states(two)})
        assert s.connections == 2
        await closed_at_server(s)


async def test_an_oversized_dot_reply_is_ambiguous_and_the_next_goes_again() -> None:
    # A multi-line reply to the dot longer than the parser's bound (32 KiB):
    # unreadable, so the first is ambiguous (stored once); the second's
    # envelope, written behind that dot, is never read from the broken
    # session, and the second goes again on a new connection.
    huge = b"\r\n".join([b"250-" + b"x" * 200] * 200 + [b"250 2.0.0 ok"])
    faults = {(1, 1, "dot"): huge}
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)}), faults=faults) as s:
        async with mailer(s.port, attempts=1) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(one) == every(FIRST, State.AMBIGUOUS)
        assert states(two) == every(SECOND, State.DELIVERED)
        assert s.chained == 1
        check_record(s.delivered_to, {**states(one), **states(two)})
        await closed_at_server(s)


# -- a server that answers DATA with 354 after refusing MAIL ---------------------------


class _AlwaysData:
    """A hostile pipelining server: MAIL refused (550), RCPT out of sequence
    (503), and yet DATA answered 354 (RFC 2920 §3.1 wants it refused).  It
    records every line it reads as message content."""

    def __init__(self) -> None:
        self.port = 0
        self.content: list[bytes] = []
        self.open = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> _AlwaysData:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        answers = {
            b"EHLO": b"250-hostile.test\r\n250-PIPELINING\r\n250 8BITMIME",
            b"MAIL": b"550 5.7.1 Sender refused",
            b"RCPT": b"503 5.5.1 need MAIL",
            b"RSET": b"250 2.0.0 Ok",
            b"QUIT": b"221 2.0.0 Bye",
        }
        try:
            writer.write(b"220 hostile.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper()
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while (part := await reader.readline()) not in (b".\r\n", b""):
                        self.content.append(part)
                    if not part:
                        break
                    writer.write(b"554 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(answers.get(verb, b"502 5.5.2 what?") + b"\r\n")
                if verb == b"QUIT":
                    break
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


async def test_a_354_after_a_refused_mail_gets_no_command_into_a_message() -> None:
    async with _AlwaysData() as s:
        async with mailer(s.port, attempts=1, timeout=0.3) as m:
            result = await m.send(message(FIRST))
        assert states(result) == every(FIRST, State.REJECTED)
        for _ in range(200):
            if s.open == 0:
                break
            await asyncio.sleep(0.005)
        assert s.open == 0
        # No command of ours was read as message text.
        assert s.content == [], s.content


# -- smtp-sink -----------------------------------------------------------------------------


async def test_smtp_sink_dropping_after_every_dot(smtp_sink: Callable[..., Sink]) -> None:
    # smtp-sink -q .: it disconnects, without a reply, after every final
    # dot.  Each message's reply is lost after it left (ambiguous, never
    # resent); an envelope chained behind a dot is on a dead connection
    # before its message left, so it goes again on a new one.  The dump
    # (what smtp-sink took) has each message at most once.
    sink = smtp_sink("-q", ".")
    msgs = [message([f"q{i}-{j}@example.com" for j in range(2)]) for i in range(5)]
    async with mailer(sink.port, attempts=1) as m:
        results = await asyncio.gather(*(m.send(msg) for msg in msgs))
        opened = m.pool.opened
    got = {k: v for r in results for k, v in states(r).items()}
    assert set(got.values()) == {State.AMBIGUOUS}
    assert opened == len(msgs)  # one connection per message: none survives its dot
    ids = Counter(sink.message_ids())
    assert max(ids.values(), default=0) <= 1, ids
    assert set(ids) <= {str(msg["Message-ID"]) for msg in msgs}


async def test_smtp_sink_many_senders_capped_connections(smtp_sink: Callable[..., Sink]) -> None:
    # 15 sends, 2 connections of at most 4 messages each, chained: every
    # message in the dump exactly once, every recipient delivered.
    sink = smtp_sink()
    msgs = [message([f"c{i}-{j}@example.com" for j in range(3)]) for i in range(15)]
    pool = PoolLimits(max_connections=2, max_messages=4)
    async with mailer(sink.port, pool=pool) as m:
        results = await asyncio.gather(*(m.send(msg) for msg in msgs))
        opened = m.pool.opened
    assert all(r.ok for r in results)
    assert opened >= 4  # 15 messages, at most 4 per connection
    assert Counter(sink.message_ids()) == Counter(str(msg["Message-ID"]) for msg in msgs)
    assert Counter(sink.recipients()) == Counter(
        r for msg in msgs for r in str(msg["To"]).split(", ")
    )


# -- aiosmtpd (no PIPELINING offered) -------------------------------------------------------


async def test_aiosmtpd_without_pipelining_chains_nothing_and_loses_nothing() -> None:
    # A real aiosmtpd server: it does not offer PIPELINING, so the option
    # changes nothing on the wire (no envelope behind a dot); a 421 to a
    # later message's RCPT and a drop after another's dot still leave each
    # recipient with its own state, each message taken at most once.
    async with ScriptedSMTPServer() as server:
        server.on("rcpt", "421 4.7.0 Try again later", recipient="e@example.com", times=1)
        server.on("end_of_data", AIOSMTPD_DROP, times=1)
        async with mailer(server.port, attempts=2) as m:
            results = await asyncio.gather(*(m.send(message(r)) for r in (FIRST, SECOND, THIRD)))
        got = {k: v for r in results for k, v in states(r).items()}
        # The first message's dot was dropped: ambiguous, kept at most once;
        # the second's 421 at e went again (the whole transaction: none of
        # it had been sent).
        assert got == {
            **every(FIRST, State.AMBIGUOUS),
            **every(SECOND, State.DELIVERED),
            **every(THIRD, State.DELIVERED),
        }
        delivered = [r for msg in server.messages for r in msg.recipients]
        check_record(delivered, got)


# -- a taker that writes nothing; large messages ------------------------------------------


async def test_a_taker_that_sends_nothing_hands_the_pending_turn_on() -> None:
    # The second send takes the connection passed on behind the first's dot
    # but has nothing to send there (its only recipient needs SMTPUTF8,
    # which the server does not offer): it gives the connection back with
    # the first's turn still open, and the third, taking it, reads nothing
    # before the first's reply.  Everyone ends as they should, once.
    async with RawSMTPServer(dot_waits=2.0, dot_waits_at=frozenset({(1, 1)})) as s:
        async with mailer(s.port) as m:
            one, two, three = await asyncio.gather(
                m.send(message(FIRST)),
                m.send(message(["jürgen@example.com"])),
                m.send(message(THIRD)),
            )
        assert states(one) == every(FIRST, State.DELIVERED)
        assert states(two) == {"jürgen@example.com": State.REJECTED}
        assert states(three) == every(THIRD, State.DELIVERED)
        assert s.connections == 1
        assert Counter(s.delivered_to) == Counter(FIRST + THIRD)
        await closed_at_server(s)


async def test_large_messages_chained_under_write_flow_control() -> None:
    # 1 MB messages (the socket's write buffer fills and drains): each
    # envelope still goes behind the previous message's complete body.
    big = "line of text for a big message\n" * 35000
    msgs = []
    for rcpts in (FIRST, SECOND, THIRD):
        msg = message(rcpts)
        msg.set_content(big)
        msgs.append(msg)
    async with RawSMTPServer() as s:
        async with mailer(s.port) as m:
            results = await asyncio.gather(*(m.send(msg) for msg in msgs))
        assert all(r.ok for r in results)
        assert s.connections == 1
        assert [len(st.data) > 1_000_000 for st in s.stored] == [True] * 3
        assert Counter(s.delivered_to) == Counter(FIRST + SECOND + THIRD)
        await closed_at_server(s)
