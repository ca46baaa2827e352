"""Soak: a few thousand messages over several connections into a server that
misbehaves at random.

The server (a small asyncio SMTP server on 127.0.0.1, seeded) injects, at
every stage, 421-and-close, silent drops, 4xx and 5xx replies; it caps
transactions at two recipients (452 4.5.3 for the third), never knows the
``nobody-*`` recipients, sometimes closes an idle connection after a 421
4.4.2, and sometimes drops the connection right after it has *accepted* a
message (the client cannot know: ``ambiguous``).

Afterwards, exactly:

- every recipient of every send has one final state;
- the server holds one copy of each message for each recipient that ended
  ``delivered`` or ``ambiguous``, and none for the others: nothing lost,
  nothing duplicated;
- every connection the Mailer opened was closed, the server sees none left
  open, and no task is left on the loop.

Bounded in count (``MESSAGES``) and in real time (``TIME_LIMIT``); waits go
through a FakeClock, so the retry back-offs and suspensions take no time.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from resilient_smtp import Mailer, PoolLimits, Reply, RetryPolicy, SendResult, State
from resilient_smtp._transport.connection import AiosmtplibTransport, Connection, Transport
from resilient_smtp.testing import FakeClock

MESSAGES = 2000
CONCURRENCY = 24  # sends in flight at once
CONNECTIONS = 4  # per destination (PoolLimits.max_connections)
MAX_ATTEMPTS = 4
TIME_LIMIT = 120.0  # real seconds; the run takes a few
SEED = 20240521

# Fault odds per command, per kind.
P_CLOSE_421 = 0.008
P_DROP = 0.006
P_SOFT = 0.012
P_HARD = 0.003
P_IDLE_CLOSE = 0.01  # after a transaction: "421 4.4.2 ... timeout exceeded", close
P_DROP_AFTER_ACCEPT = 0.004


SOFT = {
    "connect": "421 4.3.2 Service not available, closing transmission channel",
    "ehlo": "421 4.3.2 Service not available, closing transmission channel",
    "mail": "451 4.3.0 Temporary local problem, please try later",
    "rcpt": "450 4.2.0 Greylisted, please try again later",
    "data": "451 4.3.0 Error: queue file write error",
    "dot": "451 4.3.0 Error: queue file write error",
}
HARD = {
    "mail": "550 5.7.1 Sender address rejected: Access denied",
    "rcpt": "550 5.1.1 User unknown",
    "data": "554 5.6.0 Message content rejected",
    "dot": "554 5.6.0 Message content rejected",
}
CLOSE_421 = "421 4.7.0 Try again later, closing connection"


@dataclass
class ChaosServer:
    """An SMTP server on loopback that fails at random, and keeps count."""

    rng: random.Random
    port: int = 0
    open: int = 0
    max_open: int = 0
    sessions: int = 0
    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(Message-ID, recipient) -> copies accepted."""
    unanswered: set[tuple[str, str]] = field(default_factory=set)
    """(Message-ID, recipient) dropped after the dot, not accepted."""
    injected: Counter[str] = field(default_factory=Counter)
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _fault(self, stage: str) -> str | None:
        """None (answer normally), "close" (421 and close), "drop", or a reply."""
        x = self.rng.random()
        for kind, p in (("close", P_CLOSE_421), ("drop", P_DROP)):
            if x < p:
                self.injected[f"{stage}:{kind}"] += 1
                return kind
            x -= p
        if stage in SOFT and x < P_SOFT:
            self.injected[f"{stage}:soft"] += 1
            return SOFT[stage]
        x -= P_SOFT
        if stage in HARD and x < P_HARD:
            self.injected[f"{stage}:hard"] += 1
            return HARD[stage]
        return None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.sessions += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(*lines: str) -> None:
            writer.write("".join(f"{line}\r\n" for line in lines).encode())
            await writer.drain()

        async def faulted(stage: str) -> bool:
            """Apply a fault for ``stage``; True if the reply was given.
            Raises _Closed when the session is over."""
            fault = self._fault(stage)
            if fault is None:
                return False
            if fault == "drop":
                raise _Closed
            if fault == "close":
                await say(CLOSE_421)
                raise _Closed
            await say(fault)
            return True

        sender: str | None = None
        rcpts: list[str] = []
        try:
            if not await faulted("connect"):
                await say("220 chaos.test ESMTP")
            else:
                return
            while line := await reader.readline():
                verb, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    if not await faulted("ehlo"):
                        await say("250-chaos.test", "250-8BITMIME", "250 PIPELINING")
                elif verb == "MAIL":
                    if not await faulted("mail"):
                        sender, rcpts = arg, []
                        await say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = arg.partition("<")[2].partition(">")[0]
                    if sender is None:
                        await say("503 5.5.1 Error: need MAIL command")
                    elif len(rcpts) >= 2:
                        await say("452 4.5.3 Error: too many recipients")
                    elif addr.startswith("nobody-"):
                        await say(f"550 5.1.1 <{addr}>: Recipient address rejected")
                    elif not await faulted("rcpt"):
                        rcpts.append(addr)
                        await say("250 2.1.5 Ok")
                elif verb == "DATA":
                    if not rcpts:
                        await say("503 5.5.1 Error: need RCPT command")
                    elif not await faulted("data"):
                        await say("354 End data with <CR><LF>.<CR><LF>")
                        mid = await _read_message(reader)
                        if self.rng.random() < P_DROP_AFTER_ACCEPT:
                            # Accepted and queued, but the 250 never gets out.
                            self.injected["dot:drop_after_accept"] += 1
                            self.accepted.update((mid, r) for r in rcpts)
                            raise _Closed
                        fault = self._fault("dot")
                        if fault == "drop":
                            # Not accepted, and no answer: ambiguous to the client.
                            self.unanswered.update((mid, r) for r in rcpts)
                            raise _Closed
                        if fault == "close":
                            await say(CLOSE_421)
                            raise _Closed
                        if fault is not None:
                            await say(fault)
                        else:
                            self.accepted.update((mid, r) for r in rcpts)
                            await say("250 2.0.0 Ok: queued")
                            if self.rng.random() < P_IDLE_CLOSE:
                                self.injected["idle:close"] += 1
                                await say("421 4.4.2 chaos.test Error: timeout exceeded")
                                raise _Closed
                        sender, rcpts = None, []
                elif verb == "RSET":
                    sender, rcpts = None, []
                    await say("250 2.0.0 Ok")
                elif verb == "NOOP":
                    await say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await say("221 2.0.0 Bye")
                    return
                else:
                    await say("502 5.5.2 Error: command not recognized")
        except _Closed:
            return


class _Closed(Exception):
    pass


async def _read_message(reader: asyncio.StreamReader) -> str:
    """Read up to the final dot; return the Message-ID."""
    mid = ""
    while (line := await reader.readline()) not in (b".\r\n", b""):
        if not mid and line[:11].lower() == b"message-id:":
            mid = line[11:].decode().strip()
    if not line:
        raise _Closed
    return mid


class CountingTransport(Transport):
    """Wraps the aiosmtplib transport; counts connections opened and closed."""

    def __init__(self, inner: AiosmtplibTransport) -> None:
        self.inner = inner
        self.opened = 0
        self.closed = 0

    async def connect(self, host: str, port: int) -> Connection:
        conn = await self.inner.connect(host, port)
        self.opened += 1
        return _Counted(conn, self)


class _Counted:
    """A Connection that tells its transport when it is closed."""

    def __init__(self, inner: Connection, owner: CountingTransport) -> None:
        self._inner = inner
        self._owner = owner
        self._closed = False
        self.host = inner.host
        self.created_at = inner.created_at

    @property
    def messages(self) -> int:
        return self._inner.messages

    @messages.setter
    def messages(self, value: int) -> None:
        self._inner.messages = value

    def supports(self, extension: str) -> bool:
        return self._inner.supports(extension)

    def is_open(self) -> bool:
        return self._inner.is_open()

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        await self._inner.send(commands, payload)

    async def read_reply(self) -> Reply:
        return await self._inner.read_reply()

    def reply_waiting(self) -> bool:
        return self._inner.reply_waiting()

    async def reset(self) -> Reply:
        return await self._inner.reset()

    async def noop(self) -> Reply:
        return await self._inner.noop()

    async def close(self) -> None:
        await self._inner.close()
        if not self._closed:
            self._closed = True
            self._owner.closed += 1


def build_messages(rng: random.Random) -> list[tuple[EmailMessage, str, list[str]]]:
    out = []
    for i in range(MESSAGES):
        n = rng.choice((1, 1, 2, 3))
        rcpts = [
            f"nobody-{i}-{j}@example.com" if rng.random() < 0.02 else f"u{i}-{j}@example.com"
            for j in range(n)
        ]
        mid = f"<soak-{i}@resilient-smtp.test>"
        msg = EmailMessage()
        msg["From"] = "soak@example.org"
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = f"soak {i}"
        msg["Message-ID"] = mid
        msg.set_content("x" * rng.randrange(100, 2000) + "\n.dot-stuffed line\n")
        out.append((msg, mid, rcpts))
    return out


async def _settle(predicate: object, rounds: int = 200) -> bool:
    """Give the loop a bounded chance (a few ms of real time at most per
    round) to finish closing sockets."""
    assert callable(predicate)
    for _ in range(rounds):
        if predicate():
            return True
        await asyncio.sleep(0.001)
    return bool(predicate())


async def test_soak_random_faults_nothing_lost_nothing_duplicated_nothing_leaked() -> None:
    rng = random.Random(SEED)
    server = ChaosServer(random.Random(SEED + 1))
    await server.start()
    transport = CountingTransport(AiosmtplibTransport(tls="none", timeout=10.0))
    mailer = Mailer(
        "127.0.0.1",
        server.port,
        transport=transport,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=MAX_ATTEMPTS, deadline=None),
        pool=PoolLimits(max_connections=CONNECTIONS, max_messages=50),
    )
    messages = build_messages(rng)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(msg: EmailMessage) -> SendResult:
        async with gate:
            return await mailer.send(msg)

    async def run() -> list[SendResult]:
        async with mailer:
            return await asyncio.gather(*(one(m) for m, _, _ in messages))

    try:
        results = await asyncio.wait_for(run(), TIME_LIMIT)
    finally:
        await server.stop()

    # Every recipient of every send has exactly one final state.
    expected: Counter[tuple[str, str]] = Counter()
    states: Counter[State] = Counter()
    for (_, mid, rcpts), result in zip(messages, results, strict=True):
        assert [r.address for r in result] == rcpts
        for r in result:
            states[r.state] += 1
            assert 1 <= r.attempts <= MAX_ATTEMPTS, r
            if r.state is State.DELIVERED or (
                r.state is State.AMBIGUOUS and (mid, r.address) not in server.unanswered
            ):
                expected[(mid, r.address)] = 1
            if r.state is State.REJECTED:
                assert r.classification is not None and not r.classification.transient
            if r.state is State.DEFERRED:
                assert r.classification is not None and r.classification.transient
                assert r.retry_in is not None
            if r.address.startswith("nobody-"):
                assert r.state is State.REJECTED
    total = sum(len(rcpts) for _, _, rcpts in messages)
    assert sum(states.values()) == total
    print(f"states: {dict(states)}; faults: {dict(server.injected)}")
    print(f"sessions: {server.sessions} (at most {server.max_open} at once)")

    # Nothing lost, nothing duplicated: exactly one copy per delivered or
    # ambiguous recipient, none for the others.
    assert server.accepted == expected, (
        f"lost: {sorted(expected - server.accepted)[:5]}, "
        f"extra: {sorted(server.accepted - expected)[:5]}"
    )

    # The faults did happen, and most mail still went through.
    assert states[State.DELIVERED] > 0.9 * total
    for kind in ("mail:close", "rcpt:drop", "rcpt:soft", "dot:soft", "idle:close"):
        assert server.injected[kind] > 0, server.injected
    assert states[State.AMBIGUOUS] > 0

    # Nothing leaked: every connection opened was closed, on both sides,
    # and no more than the pool allows were open at once.
    assert transport.opened == transport.closed
    assert mailer.pool.idle_count() == 0
    assert await _settle(lambda: server.open == 0), f"{server.open} server sessions still open"
    assert server.max_open <= CONNECTIONS
    current = asyncio.current_task()
    assert await _settle(lambda: not (asyncio.all_tasks() - {current})), asyncio.all_tasks()
