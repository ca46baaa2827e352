"""More Mailer cases against the scripted aiosmtpd server on 127.0.0.1:
splits combined with failures, several failures in one transaction,
cancellation, concurrent sends over a small pool.

As in test_mailer.py, waits go through a FakeClock and the network is real;
every test checks each recipient's final state and what the server accepted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from email.message import EmailMessage

import pytest

from resilient_smtp import (
    ConcurrencyLimiter,
    Event,
    Mailer,
    PoolLimits,
    Reason,
    RetryPolicy,
    SendResult,
    State,
)
from resilient_smtp.testing import DROP, FakeClock, ScriptedSMTPServer

SENDER = "app@example.org"


def make_message(*to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("Hi there.\n")
    return msg


STALL = "stall@example.com"


class StallingServer:
    """A minimal SMTP server on 127.0.0.1 that never answers ``RCPT TO:<STALL>``.

    It counts open connections (``open``, ``max_open``) and records the
    recipients of every accepted message in ``accepted``.
    """

    def __init__(self) -> None:
        self.open = 0
        self.max_open = 0
        self.accepted: list[tuple[str, ...]] = []
        self.stalled = asyncio.Event()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> StallingServer:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        rcpts: list[str] = []
        try:
            writer.write(b"220 stall.test ESMTP\r\n")
            while line := await reader.readline():
                verb, _, arg = line.decode().strip().partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    reply = "250-stall.test\r\n250 8BITMIME"
                elif verb == "MAIL":
                    rcpts, reply = [], "250 2.1.0 Ok"
                elif verb == "RCPT":
                    addr = arg.partition("<")[2].partition(">")[0]
                    if addr == STALL:
                        self.stalled.set()
                        continue
                    rcpts.append(addr)
                    reply = "250 2.1.5 Ok"
                elif verb == "DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.accepted.append(tuple(rcpts))
                    reply = "250 2.0.0 Ok: queued"
                elif verb in ("RSET", "NOOP"):
                    reply = "250 2.0.0 Ok"
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                else:
                    reply = "500 5.5.2 Error: command not recognized"
                writer.write(reply.encode() + b"\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedSMTPServer]:
    async with ScriptedSMTPServer() as s:
        yield s


def mailer_for(server: ScriptedSMTPServer, clock: FakeClock | None = None, **kw: object) -> Mailer:
    kw.setdefault("retry", RetryPolicy(max_attempts=3, deadline=24 * 3600.0))
    return Mailer(
        "127.0.0.1",
        server.port,
        tls="none",
        clock=clock or FakeClock(),
        **kw,  # type: ignore[arg-type]
    )


async def _until(predicate: object, turns: int = 10_000) -> None:
    """Let the loop run (client and server share it) until ``predicate()``."""
    assert callable(predicate)
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_452_at_the_first_rcpt_is_a_failure_not_an_endless_split(
    server: ScriptedSMTPServer,
) -> None:
    # A 452 4.5.3 to the first RCPT of a transaction leaves nothing to split
    # (RFC 5321 §4.5.3.1.10 is about the recipients after the accepted
    # ones): it is a temporary failure of that recipient, for the retry
    # policy, and the transaction goes on with the others.  The scripted
    # server refuses the first RCPT of every transaction, up to 30 times, so
    # a Mailer that kept splitting would spin instead of ending.
    server.on("rcpt", "452 4.5.3 Error: too many recipients", nth=1, times=30)
    rcpts = ["a@example.com", "b@example.com"]
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message(*rcpts))
    assert server.commands.count("MAIL") == 3, "one transaction per attempt, no tight loop"
    assert result.delivered == ("b@example.com",)
    assert result.deferred == ("a@example.com",)
    a = result["a@example.com"]
    assert a.attempts == 3
    assert a.classification is not None
    assert a.classification.reason is Reason.TOO_MANY_RECIPIENTS
    assert [m.recipients for m in server.messages] == [("b@example.com",)]


async def test_split_and_421_in_the_same_send_deliver_each_recipient_once(
    server: ScriptedSMTPServer,
) -> None:
    # At most two recipients per transaction, and one 421 at the second RCPT
    # of the second transaction (after its first recipient was accepted).
    server.on("rcpt", "452 4.5.3 Error: too many recipients", nth=3, times=None)
    server.on("rcpt", "421 4.7.0 Try again later, closing connection", nth=2, times=1)
    rcpts = [f"r{i}@example.com" for i in range(7)]
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message(*rcpts))
    assert result.ok
    assert Counter(server.delivered_to) == Counter(rcpts)
    assert all(len(m.recipients) <= 2 for m in server.messages)


async def test_rejected_recipient_stays_rejected_when_data_gets_a_421(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    server.on("data", "421 4.3.2 Service shutting down")
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message("a@example.com", "gone@example.com"))
    assert result["gone@example.com"].state is State.REJECTED
    assert result["gone@example.com"].attempts == 1
    assert result["a@example.com"].state is State.DELIVERED
    assert result["a@example.com"].attempts == 2
    assert server.delivered_to == ["a@example.com"]


async def test_drop_at_second_rcpt_retries_the_whole_batch_once(
    server: ScriptedSMTPServer,
) -> None:
    server.on("rcpt", DROP, nth=2)
    rcpts = ["a@example.com", "b@example.com", "c@example.com"]
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message(*rcpts))
    assert result.ok
    assert all(r.attempts == 2 for r in result)
    assert [m.recipients for m in server.messages] == [tuple(rcpts)]


async def test_permanent_failure_after_the_dot_is_not_resent(
    server: ScriptedSMTPServer,
) -> None:
    server.on("end_of_data", "554 5.7.1 Message rejected as spam")
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.rejected == ("a@example.com", "b@example.com")
    assert server.commands.count("DATA") == 1
    assert server.messages == []


async def test_rejected_and_ambiguous_in_one_send(server: ScriptedSMTPServer) -> None:
    server.on("rcpt", "550 5.1.1 User unknown", recipient="gone@example.com", times=None)
    server.on("end_of_data", DROP)
    async with mailer_for(server) as mailer:
        result = await mailer.send(make_message("gone@example.com", "a@example.com"))
    assert result.rejected == ("gone@example.com",)
    assert result.ambiguous == ("a@example.com",)
    assert [m.recipients for m in server.dropped_after_data] == [("a@example.com",)]
    assert server.commands.count("DATA") == 1


async def test_cancelled_during_a_transaction_releases_its_connection() -> None:
    # Cancel a send while it waits for a RCPT reply that never comes: the
    # connection must be closed (not pooled mid-transaction) and the pool's
    # only slot freed for the next send.  (The server here is a separate
    # one that can stall: with aiosmtplib on Python 3.11, a cancellation
    # that lands in the same loop turn as the reply is lost inside
    # asyncio.wait_for, CPython gh-86296, so the reply must not come.)
    async with StallingServer() as server:
        mailer = Mailer(
            "127.0.0.1",
            server.port,
            tls="none",
            clock=FakeClock(),
            pool=PoolLimits(max_connections=1),
        )
        async with mailer:
            task = asyncio.create_task(mailer.send(make_message(STALL)))
            await asyncio.wait_for(server.stalled.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert mailer.pool.idle_count() == 0
            await _until(lambda: server.open == 0)  # closed, not kept
            result = await asyncio.wait_for(mailer.send(make_message("b@example.com")), 10)
            assert result.ok
            assert mailer.pool.opened == 2
        assert server.accepted == [("b@example.com",)]
        await _until(lambda: server.open == 0)


async def test_cancelled_during_a_retry_wait_holds_nothing(
    server: ScriptedSMTPServer,
) -> None:
    server.on("mail", "451 4.3.0 Temporary local problem", times=None)
    me: list[asyncio.Task[SendResult]] = []

    def cancel_on_retry(event: Event) -> None:
        if event.kind == "retry" and me:
            me[0].cancel()  # lands on the clock.sleep() that follows

    mailer = mailer_for(server, pool=PoolLimits(max_connections=1), hooks=[cancel_on_retry])
    async with mailer:
        task = asyncio.create_task(mailer.send(make_message("a@example.com")))
        me.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        me.clear()
        server.clear()
        result = await asyncio.wait_for(mailer.send(make_message("b@example.com")), 10)
    assert result.ok
    assert server.delivered_to == ["b@example.com"]


async def test_concurrent_sends_share_a_small_pool_and_arrive_once(
    server: ScriptedSMTPServer,
) -> None:
    # 40 sends at once through 2 connections, a few transient failures on
    # the way: every recipient exactly once.
    server.on("rcpt", "450 4.2.0 Greylisted", recipient="u7@example.com")
    server.on("mail", "451 4.3.0 Temporary local problem", times=3)
    rcpts = [f"u{i}@example.com" for i in range(40)]
    async with mailer_for(server, pool=PoolLimits(max_connections=2)) as mailer:
        results = await asyncio.gather(*(mailer.send(make_message(r)) for r in rcpts))
    assert all(r.ok for r in results)
    assert Counter(server.delivered_to) == Counter(rcpts)


async def test_concurrent_sends_never_open_more_connections_than_allowed() -> None:
    async with StallingServer() as server:
        mailer = Mailer(
            "127.0.0.1",
            server.port,
            tls="none",
            clock=FakeClock(),
            pool=PoolLimits(max_connections=3),
            # No pacing: all 60 sends want a connection at once, so the pool's
            # cap is what holds them (the adaptive limiter would serialise them).
            limiter=ConcurrencyLimiter(limit=60),
        )
        rcpts = [f"u{i}@example.com" for i in range(60)]
        async with mailer:
            results = await asyncio.gather(*(mailer.send(make_message(r)) for r in rcpts))
        assert all(r.ok for r in results)
        assert Counter(a for m in server.accepted for a in m) == Counter(rcpts)
        assert server.max_open == 3
        await _until(lambda: server.open == 0)
