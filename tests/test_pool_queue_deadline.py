"""Time spent queued for the pool's own connection window is waiting, not a
session: a deadline that passes there is "waiting for a permit", never a
connection error that would count against a healthy destination."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from email.message import EmailMessage

import pytest

from resilient_smtp import (
    ConcurrencyLimiter,
    DestinationHealth,
    Limiter,
    Mailer,
    PoolLimits,
    Reason,
    RetryPolicy,
    State,
    Transport,
)
from resilient_smtp._classify.reply import Reply
from resilient_smtp._transport.connection import Connection
from resilient_smtp.testing import ScriptedTransport

REPLY_DELAY = 0.004  # real seconds per reply: a slow server, on the system clock
DEADLINE = 0.03  # the first message takes ~7 replies; seven more queue behind it


class _Slow:
    """A scripted connection whose every reply takes REPLY_DELAY."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        await self.inner.send(commands, payload)

    async def read_reply(self) -> Reply:
        await asyncio.sleep(REPLY_DELAY)
        return await self.inner.read_reply()


class _SlowTransport(Transport):
    def __init__(self) -> None:
        self.inner = ScriptedTransport()

    async def connect(self, host: str, port: int) -> Connection:
        return _Slow(await self.inner.connect(host, port))  # type: ignore[return-value]


def _message(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = f"u{i}@example.com"
    msg["Subject"] = "queued"
    msg.set_content("x")
    return msg


@pytest.mark.parametrize("limiter", ["default", "concurrency"])
async def test_a_deadline_in_the_pools_queue_is_a_wait_not_a_connection_error(
    limiter: str,
) -> None:
    health = DestinationHealth()
    transport = _SlowTransport()
    chosen: Limiter | None = ConcurrencyLimiter(8) if limiter == "concurrency" else None
    async with Mailer(
        "mx.test",
        tls="none",
        transport=transport,
        limiter=chosen,
        health=health,
        pool=PoolLimits(max_connections=1),
        retry=RetryPolicy(max_attempts=1, deadline=DEADLINE),
    ) as mailer:
        results = await asyncio.gather(*(mailer.send(_message(i)) for i in range(8)))
    outcomes = [r[f"u{i}@example.com"] for i, r in enumerate(results)]
    reasons = Counter(o.reason for o in outcomes if o.state is not State.DELIVERED)
    # Only a send that reached the server (opened a connection, or sent MAIL
    # on a reused one) can run out of time in a session; the rest waited in
    # the pool's queue for the one connection.
    script = transport.inner
    reached = script.connections + sum(c.startswith("MAIL") for c in script.commands)
    assert reasons[Reason.CONNECTION_ERROR.value] <= reached < 8, (reasons, reached)
    assert reasons[Reason.RATE_LIMITED.value] >= 8 - reached, reasons
    if not reasons[Reason.CONNECTION_ERROR.value]:
        assert not health.suspended()
