"""Health is asked again once the limiter's permit comes: sends that queued
behind the limiter while another send's reply paused the relay (a sending
quota) or suspended the destination do not go out regardless."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from resilient_smtp import Mailer, RateLimiter, RetryPolicy, State
from resilient_smtp.testing import FakeClock, ScriptedTransport


def _message(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = f"u{i}@example.com"
    msg["Subject"] = "quota"
    msg.set_content("x")
    return msg


async def test_sends_queued_behind_the_limiter_respect_a_pause_decided_meanwhile() -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("mail", "451 4.7.1 Hourly sending quota exceeded")
    async with Mailer(
        "relay.test",
        tls="none",
        transport=transport,
        clock=clock,
        limiter=RateLimiter(rate=1.0, burst=1, clock=clock),  # one send a second
        retry=RetryPolicy(max_attempts=3, deadline=60.0),
    ) as mailer:
        results = await asyncio.gather(*(mailer.send(_message(i)) for i in range(5)))
    states = [r[f"u{i}@example.com"].state for i, r in enumerate(results)]
    assert states == [State.DEFERRED] * 5
    # Only the first send reached MAIL: the quota reply paused the relay
    # for longer than the deadline, and the four queued sends saw that
    # when their permits came.
    assert sum(c.startswith("MAIL") for c in transport.commands) == 1, transport.commands
    assert all(r[f"u{i}@example.com"].reason == "sending_quota" for i, r in enumerate(results))
