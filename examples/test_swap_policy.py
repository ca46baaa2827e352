"""Testing your own code that sends mail: swap the retry policy and the clock.

Run it with ``pytest examples/test_swap_policy.py`` (needs the ``test`` extra:
pytest, pytest-asyncio, hypothesis, aiosmtpd).  No test sleeps for real and
none uses the network: a greylisting wait of ten minutes takes microseconds.

The top half is "your application": a function that sends a receipt and
tells the caller what to do next.  It takes its Mailer from outside, which is
the one seam the tests need.  The bottom half is the tests.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
from hypothesis import given

from resilient_smtp import (
    Classification,
    Mailer,
    Reason,
    RetryPolicy,
    State,
    classify,
)
from resilient_smtp.testing import (
    FakeClock,
    ScriptedSMTPServer,
    ScriptedTransport,
    classifications,
    no_waits,
)

# ---------------------------------------------------------------------------
# Your application.


@dataclass(frozen=True)
class Outcome:
    """What the shop does next with one receipt."""

    action: str  # "done", "requeue" or "drop"
    retry_in: float | None = None
    reason: str | None = None


def receipt(to: str, order: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@example.org"
    message["To"] = to
    message["Subject"] = f"Receipt for order {order}"
    message.set_content("Thank you for your order.\n")
    return message


async def send_receipt(mailer: Mailer, to: str, order: int) -> Outcome:
    """Send one receipt; requeue it when the server asked us to wait."""
    result = await mailer.send(receipt(to, order))
    r = result[to]
    if r.state is State.DELIVERED:
        return Outcome("done")
    if r.state is State.DEFERRED:
        return Outcome("requeue", retry_in=r.retry_in, reason=r.reason)
    # Rejected, or ambiguous (it may have arrived: never send it twice).
    return Outcome("drop", reason=r.reason)


def triage(c: Classification) -> str:
    """Your own decision on a classification: requeue, drop, or call a human."""
    if c.transient:
        return "requeue"
    if c.action.value == "fix_configuration":
        return "alert"
    return "drop"


# ---------------------------------------------------------------------------
# The tests.

GREYLIST = "450 4.2.0 Greylisted, see http://postgrey.example/"


def mailer_for(transport: ScriptedTransport, clock: FakeClock, policy: RetryPolicy) -> Mailer:
    # A ScriptedTransport needs no sockets; pass it the same FakeClock as the
    # Mailer so connection ages are measured on it too.
    return Mailer("smtp.example.com", transport=transport, clock=clock, retry=policy)


@pytest.mark.asyncio
async def test_default_policy_requeues_a_greylisted_receipt() -> None:
    # The default policy fits a request path: greylisting asks for 5 minutes,
    # which is more than the 60 s deadline, so the send stops at once and
    # says when to try again.
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", GREYLIST, times=None)
    async with mailer_for(transport, clock, RetryPolicy()) as mailer:
        outcome = await send_receipt(mailer, "bob@example.com", 1)
    assert outcome.action == "requeue"
    assert outcome.reason == "greylisted"
    assert outcome.retry_in is not None
    assert outcome.retry_in >= 300
    assert transport.messages == []


@pytest.mark.asyncio
async def test_a_patient_policy_waits_out_greylisting_on_a_fake_clock() -> None:
    # Swap in a policy for a background worker: an hour in all.  The two
    # five-minute waits happen on the fake clock, not in real time.
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", GREYLIST, times=2)
    worker = RetryPolicy(max_attempts=10, deadline=3600.0)
    started = time.monotonic()
    async with mailer_for(transport, clock, worker) as mailer:
        outcome = await send_receipt(mailer, "bob@example.com", 2)
    assert outcome == Outcome("done")
    assert clock.monotonic() >= 600  # two greylisting waits of 300 s
    assert time.monotonic() - started < 1.0  # ... that took no real time
    assert [m.recipients for m in transport.messages] == [("bob@example.com",)]


@pytest.mark.asyncio
async def test_a_single_attempt_policy_never_retries() -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("mail", "421 4.7.0 Try again later, closing connection")
    async with mailer_for(transport, clock, RetryPolicy(max_attempts=1)) as mailer:
        outcome = await send_receipt(mailer, "carol@example.com", 3)
    assert outcome.action == "requeue"
    assert outcome.reason == "rate_limited"
    assert transport.connections == 1


@pytest.mark.asyncio
async def test_a_permanent_failure_is_dropped_without_retrying() -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", "550 5.1.1 User unknown", times=None)
    async with mailer_for(transport, clock, RetryPolicy()) as mailer:
        outcome = await send_receipt(mailer, "nobody@example.com", 4)
    assert outcome == Outcome("drop", reason="recipient_unknown")
    assert clock.sleeps == []


@pytest.mark.asyncio
async def test_against_a_real_smtp_server_with_no_waits() -> None:
    # For code that builds its Mailer on the default (system) clock:
    # no_waits() turns every wait off, and the clock still moves on, so
    # two "slow down" replies (10 s each by default) cost no real time.
    started = time.monotonic()
    async with ScriptedSMTPServer() as server:
        server.on("mail", "421 4.7.0 Try again later, closing connection", times=2)
        with no_waits():
            async with Mailer("127.0.0.1", server.port, tls="none") as mailer:
                outcome = await send_receipt(mailer, "dave@example.com", 5)
    assert outcome == Outcome("done")
    assert server.delivered_to == ["dave@example.com"]
    assert time.monotonic() - started < 5.0


def test_a_seeded_policy_gives_a_reproducible_schedule() -> None:
    # Seed the jitter and drop the per-reason floors when the schedule itself
    # is what you test.  Deciding never sleeps.
    def schedule() -> list[float]:
        policy = RetryPolicy(rng=random.Random(7), min_waits={}, deadline=None)
        state = policy.start(FakeClock())
        failure = classify("451 4.3.0 Temporary local problem")
        return [state.decide(failure).delay for _ in range(4)]

    first = schedule()
    assert first == schedule()
    assert all(0 <= d <= 2 ** (n - 1) for n, d in enumerate(first, start=1))


def test_the_policy_is_frozen_and_replace_validates() -> None:
    policy = RetryPolicy()
    patient = policy.replace(deadline=600.0)
    assert (policy.deadline, patient.deadline) == (60.0, 600.0)
    longer_greylisting = policy.replace(min_waits={**policy.min_waits, Reason.GREYLISTED: 600.0})
    assert longer_greylisting.min_waits[Reason.GREYLISTED] == 600.0
    with pytest.raises(ValueError, match="max_attempts"):
        policy.replace(max_attempts=0)


@given(classifications())
def test_triage_never_requeues_a_permanent_failure(c: Classification) -> None:
    # The kit's hypothesis strategy feeds real-looking and random replies
    # through the classifier.
    decision = triage(c)
    assert decision in ("requeue", "drop", "alert")
    assert (decision == "requeue") == c.transient
