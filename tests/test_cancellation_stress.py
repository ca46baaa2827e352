"""Cancelled sends leave nothing behind: no open socket, no task, no stray error.

A raw asyncio SMTP server on 127.0.0.1 counts the sockets open at its end.
Real Mailers (aiosmtplib transport, the pool, a concurrency limiter) send to
it, and the sends are cancelled at every await point a send has:

* waiting for a limiter permit and for the pool's window (the sends queued
  behind the ones in flight);
* the pool's NOOP check of an idle connection (``noop_after=0``);
* connecting (before the banner), EHLO, MAIL, RCPT, DATA, the end of the
  data, RSET and QUIT: the server cancels every send in flight when it
  receives the command, before it answers;
* and at seeded random turns of the event loop.

Afterwards every send ended with a result, ``CancelledError`` or
``TimeoutError``; the server sees exactly the pool's idle connections open,
and none once the Mailer is closed; no task is left running.  Counts are
fixed and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from resilient_smtp import ConcurrencyLimiter, Mailer, PoolLimits, RetryPolicy, SendResult

SENDS_PER_ROUND = 40
RANDOM_SENDS = 200
# Cancel points the server can trigger: its name for the moment a command
# arrived (CONNECT: the socket was accepted, before the banner).
# No RSET: the pipelined transaction (MAIL, RCPT and DATA in one flight) ends a
# wholly refused one at its DATA reply, with no RSET to wait on.
VERBS = ("CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "BODY", "NOOP", "QUIT")


class CountingServer:
    """A minimal SMTP server that counts open sockets and can call back on a
    command before answering it."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.seen: dict[str, int] = {}
        self.on_command: Callable[[str], None] = lambda verb: None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _event(self, verb: str) -> None:
        self.seen[verb] = self.seen.get(verb, 0) + 1
        self.on_command(verb)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            self._event("CONNECT")
            await asyncio.sleep(0)
            writer.write(b"220 stress.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper().decode()
                if verb in ("EHLO", "HELO"):
                    self._event("EHLO")
                    writer.write(b"250-stress.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == "DATA":
                    self._event("DATA")
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    self._event("BODY")
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == "QUIT":
                    self._event("QUIT")
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                elif verb == "RCPT" and b"<x" in line.lower():
                    self._event("RCPT")  # every third message is refused whole: RSET follows
                    writer.write(b"550 5.1.1 no such user\r\n")
                elif verb in ("MAIL", "RCPT", "NOOP", "RSET"):
                    self._event(verb)
                    writer.write(b"250 ok\r\n")
                else:
                    writer.write(b"502 5.5.2 unknown command\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open -= 1


def _mailer(port: int) -> Mailer:
    return Mailer(
        "127.0.0.1",
        port,
        tls="none",
        # A connection cancelled mid-command is closed with QUIT, which a
        # server in the middle of DATA does not answer: bound that wait.
        timeout=0.5,
        limiter=ConcurrencyLimiter(3),  # the permit wait
        # The pool's wait, its NOOP check, and a QUIT when a connection has
        # carried its messages.
        pool=PoolLimits(max_connections=2, noop_after=0, max_messages=2),
        retry=RetryPolicy(max_attempts=1),
    )


def _message(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    user = "x" if i % 3 == 0 else "u"
    msg["To"] = f"{user}{i}a@example.com, {user}{i}b@example.com"
    msg["Subject"] = f"stress {i}"
    msg.set_content(f"body {i}")
    return msg


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded: at most about 2 s) for sockets and tasks to wind down."""
    for i in range(400):
        if condition():
            return
        await asyncio.sleep(0 if i < 50 else 0.005)
    raise AssertionError(f"timed out waiting for {what}")


def _check_outcomes(results: list[object]) -> int:
    """Every send returned a result or was cancelled / timed out; returns
    how many were cancelled."""
    cancelled = 0
    for r in results:
        if isinstance(r, asyncio.CancelledError):
            cancelled += 1
        elif not isinstance(r, (SendResult, TimeoutError)):
            raise AssertionError(f"a cancelled send raised {r!r}")
    return cancelled


async def _round(
    server: CountingServer, baseline: set[asyncio.Task[object]], arm: Callable[..., None]
) -> int:
    mailer = _mailer(server.port)
    tasks = [asyncio.ensure_future(mailer.send(_message(i))) for i in range(SENDS_PER_ROUND)]
    arm(tasks)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    cancelled = _check_outcomes(list(results))
    # Nothing leaked while the Mailer is open: the server sees exactly the
    # connections the pool keeps idle.
    await _until(lambda: server.open == mailer.pool.idle_count(), "server sockets == pool idle")
    await mailer.close()
    await _until(lambda: server.open == 0, "0 open sockets at the server")
    await _until(lambda: not (asyncio.all_tasks() - baseline), "no leaked tasks")
    return cancelled


@pytest.mark.parametrize("verb", VERBS)
async def test_cancel_every_send_in_flight_when_the_server_sees(verb: str) -> None:
    server = CountingServer()
    await server.start()
    baseline = asyncio.all_tasks()
    total_cancelled = 0
    try:
        # The k-th time the server sees the verb it cancels every send in
        # flight: the one waiting for that reply, and the others wherever
        # they are (queued for a permit or the window, mid-transaction).
        for k in (1, 3, 7):

            def arm(tasks: list[asyncio.Future[SendResult]], k: int = k) -> None:
                count = 0

                def on_command(seen: str) -> None:
                    nonlocal count
                    if seen != verb:
                        return
                    count += 1
                    if count == k:
                        for t in tasks:
                            t.cancel()

                server.on_command = on_command

            total_cancelled += await _round(server, baseline, arm)
            server.on_command = lambda verb: None
    finally:
        await server.stop()
    assert server.seen.get(verb, 0) >= 1, f"the sends never reached {verb}"
    assert total_cancelled > 0


async def test_cancel_at_random_turns_of_the_event_loop() -> None:
    server = CountingServer()
    await server.start()
    baseline = asyncio.all_tasks()
    rng = random.Random(17)
    cancelled = 0
    try:
        for _ in range(RANDOM_SENDS // SENDS_PER_ROUND):

            def arm(tasks: list[asyncio.Future[SendResult]]) -> None:
                for t in tasks:
                    asyncio.get_running_loop().call_soon(_cancel_after, t, rng.randrange(300))

            cancelled += await _round(server, baseline, arm)
    finally:
        await server.stop()
    assert cancelled > RANDOM_SENDS // 4


def _cancel_after(task: asyncio.Future[SendResult], turns: int) -> None:
    """Cancel ``task`` after ``turns`` more turns of the event loop."""
    if task.done():
        return
    if turns == 0:
        task.cancel()
    else:
        asyncio.get_running_loop().call_soon(_cancel_after, task, turns - 1)
