"""DestinationHealth: suspensions, half-open probes, the relay-wide pause, events."""

from __future__ import annotations

import pytest

from resilient_smtp import (
    Admission,
    DestinationHealth,
    Event,
    HealthStatus,
    Reason,
    classify,
)
from resilient_smtp.testing import FakeClock

REPUTATION = classify("421 4.7.28 unusual rate of unsolicited mail")
BLOCKLISTED = classify("554 5.7.1 blocklisted")
BUSY = classify("451 4.3.2 system busy")
BUSY_STATED = classify("451 4.3.2 system busy, try again in 600 seconds")
DROPPED = classify(ConnectionResetError())
QUOTA = classify("550 5.7.1 Daily sending quota exceeded")
BAD_LOGIN = classify("535 5.7.8 authentication failed")
UNKNOWN_USER = classify("550 5.1.1 user unknown")
RATE_LIMITED = classify("421 4.7.0 Try again later, closing connection")


def _health(
    clock: FakeClock, events: list[Event] | None = None, **kw: object
) -> DestinationHealth:
    hooks = [events.append] if events is not None else []
    return DestinationHealth(clock=clock, hooks=hooks, **kw)  # type: ignore[arg-type]


def test_the_replies_used_here_mean_what_the_tests_say() -> None:
    assert REPUTATION.reason is Reason.REPUTATION_DEFERRAL
    assert BLOCKLISTED.reason is Reason.BLOCKLISTED
    assert BUSY.reason is Reason.SERVER_BUSY
    assert BUSY_STATED.retry_after == 600.0
    assert DROPPED.reason is Reason.CONNECTION_ERROR
    assert QUOTA.reason is Reason.SENDING_QUOTA
    assert BAD_LOGIN.reason is Reason.AUTH_CREDENTIALS


def test_a_destination_starts_healthy() -> None:
    health = _health(FakeClock())
    assert Admission(allowed=True) == health.admit("mx.example")
    assert HealthStatus(state="healthy") == health.status("mx.example")
    assert health.keys_held == 0


@pytest.mark.parametrize("failure", [REPUTATION, BLOCKLISTED])
def test_reputation_and_blocklist_replies_suspend_at_once(failure: object) -> None:
    clock = FakeClock(start=100.0)
    events: list[Event] = []
    health = _health(clock, events, severe_base=900.0)
    health.record("mx.example", failure)  # type: ignore[arg-type]
    admission = health.admit("mx.example")
    assert not admission.allowed
    assert admission.retry_in == 900.0
    assert admission.reason is failure.reason  # type: ignore[attr-defined]
    status = health.status("mx.example")
    assert status.state == "suspended"
    assert status.until == 1000.0
    assert [e.kind for e in events] == ["suspended"]
    assert events[0].data["destination"] == "mx.example"
    assert events[0].data["seconds"] == 900.0
    assert health.admit("other.example").allowed  # only that destination


@pytest.mark.parametrize("failure", [BUSY, DROPPED])
def test_repeated_busy_or_dropped_connections_suspend(failure: object) -> None:
    clock = FakeClock()
    health = _health(clock, failure_threshold=3, suspend_base=60.0)
    for n in (1, 2):
        health.record("mx.example", failure)  # type: ignore[arg-type]
        assert health.status("mx.example") == HealthStatus(state="healthy", failures=n)
        assert health.admit("mx.example").allowed
    health.record("mx.example", failure)  # type: ignore[arg-type]
    assert health.status("mx.example").state == "suspended"
    assert health.admit("mx.example").retry_in == 60.0


def test_a_success_or_old_failures_reset_the_count() -> None:
    clock = FakeClock()
    health = _health(clock, failure_threshold=3, failure_window=300.0)
    health.record("mx.example", BUSY)
    health.record("mx.example", BUSY)
    health.record("mx.example", None)
    health.record("mx.example", BUSY)
    assert health.status("mx.example").failures == 1
    health.record("mx.example", BUSY)
    clock.advance(301.0)
    assert health.status("mx.example").failures == 0
    health.record("mx.example", BUSY)
    assert health.status("mx.example") == HealthStatus(state="healthy", failures=1)


def test_half_open_lets_one_probe_through_and_a_success_closes_it() -> None:
    clock = FakeClock()
    events: list[Event] = []
    health = _health(clock, events, severe_base=100.0)
    health.record("mx.example", REPUTATION)
    clock.advance(100.0)
    assert health.status("mx.example").state == "half_open"
    probe = health.admit("mx.example")
    assert probe.allowed
    assert probe.probe
    other = health.admit("mx.example")
    assert not other.allowed  # one probe at a time
    assert other.reason is Reason.REPUTATION_DEFERRAL
    health.record("mx.example", None)
    assert health.status("mx.example") == HealthStatus(state="healthy")
    assert Admission(allowed=True) == health.admit("mx.example")
    assert [e.kind for e in events] == ["suspended", "resumed"]
    assert events[1].data["down_for"] == 100.0
    assert health.keys_held == 0


def test_a_failed_probe_suspends_again_for_longer_up_to_the_cap() -> None:
    clock = FakeClock()
    health = _health(clock, suspend_base=60.0, suspend_cap=300.0, failure_threshold=1)
    seen = []
    health.record("mx.example", BUSY)
    for _ in range(5):
        seen.append(health.admit("mx.example").retry_in)
        clock.advance(seen[-1])
        assert health.admit("mx.example").probe
        health.record("mx.example", BUSY)
    assert seen == [60.0, 120.0, 240.0, 300.0, 300.0]


def test_a_probe_that_never_reports_frees_the_slot() -> None:
    clock = FakeClock()
    health = _health(clock, failure_threshold=1, suspend_base=10.0, probe_timeout=30.0)
    health.record("mx.example", DROPPED)
    clock.advance(10.0)
    assert health.admit("mx.example").probe
    refused = health.admit("mx.example")
    assert refused.retry_in == 30.0
    clock.advance(30.0)
    assert health.admit("mx.example").probe


def test_results_in_flight_during_a_suspension_change_nothing() -> None:
    clock = FakeClock()
    events: list[Event] = []
    health = _health(clock, events, severe_base=100.0)
    health.record("mx.example", BLOCKLISTED)
    clock.advance(10.0)
    health.record("mx.example", BLOCKLISTED)  # attempts already in flight
    health.record("mx.example", BUSY)
    health.record("mx.example", None)
    assert health.status("mx.example").until == 100.0
    assert [e.kind for e in events] == ["suspended"]


def test_a_stated_wait_is_honoured_up_to_the_cap() -> None:
    clock = FakeClock()
    health = _health(clock, failure_threshold=1, suspend_base=60.0, suspend_cap=3600.0)
    health.record("mx.example", BUSY_STATED)
    assert health.admit("mx.example").retry_in == 600.0
    capped = _health(clock, failure_threshold=1, suspend_base=60.0, suspend_cap=300.0)
    capped.record("mx.example", BUSY_STATED)
    assert capped.admit("mx.example").retry_in == 300.0


def test_an_answer_that_is_not_about_health_closes_a_half_open_breaker() -> None:
    clock = FakeClock()
    health = _health(clock, failure_threshold=1, suspend_base=10.0)
    health.record("mx.example", BUSY)
    clock.advance(10.0)
    assert health.admit("mx.example").probe
    health.record("mx.example", UNKNOWN_USER)  # the server answered
    assert health.status("mx.example").state == "healthy"
    health.record("mx.example", RATE_LIMITED)  # the limiter's business, not ours
    assert health.status("mx.example").state == "healthy"


def test_bad_credentials_are_a_configuration_error_not_a_pause() -> None:
    # The reactions table: wrong credentials are for a human to fix, and
    # each result says so; a pause would hide the cause behind "paused".
    health = _health(FakeClock())
    health.record("smtp.relay.example", BAD_LOGIN)
    assert health.admit("smtp.relay.example").allowed
    assert health.status("any.other.example").state == "healthy"


@pytest.mark.parametrize("failure", [QUOTA])
def test_quota_pauses_the_whole_relay(failure: object) -> None:
    clock = FakeClock()
    events: list[Event] = []
    health = _health(clock, events, pause_base=300.0)
    health.record("smtp.relay.example", failure)  # type: ignore[arg-type]
    for key in ("smtp.relay.example", "any.other.example"):
        admission = health.admit(key)
        assert not admission.allowed
        assert admission.retry_in == 300.0
        assert admission.reason is failure.reason  # type: ignore[attr-defined]
        assert health.status(key).state == "paused"
        assert health.status(key).until == 300.0
    assert [e.kind for e in events] == ["paused"]
    assert events[0].data["seconds"] == 300.0
    clock.advance(300.0)
    assert health.status("x.example").state == "half_open"
    assert health.admit("x.example").probe
    assert not health.admit("y.example").allowed  # one probe for the relay
    health.record("x.example", failure)  # type: ignore[arg-type]
    assert health.admit("y.example").retry_in == 600.0  # doubled
    clock.advance(600.0)
    assert health.admit("y.example").probe
    health.record("y.example", None)
    assert health.admit("z.example").allowed
    assert [e.kind for e in events] == ["paused", "paused", "resumed"]


def test_a_pause_outranks_a_shorter_suspension() -> None:
    clock = FakeClock()
    health = _health(clock, severe_base=100.0, pause_base=1000.0)
    health.record("mx.example", REPUTATION)
    health.record("mx.example", QUOTA)
    admission = health.admit("mx.example")
    assert admission.retry_in == 1000.0
    assert admission.reason is Reason.SENDING_QUOTA


def test_healthy_destinations_cost_nothing_and_stale_ones_are_dropped() -> None:
    clock = FakeClock()
    health = _health(clock, failure_window=60.0)
    for i in range(100_000):
        health.record(f"mx{i}.example", None)
    assert health.keys_held == 0
    for i in range(10_000):
        health.record(f"flaky{i}.example", DROPPED)
    assert health.keys_held == 10_000
    clock.advance(61.0)
    for i in range(200):
        health.record(f"new{i}.example", DROPPED)
    assert health.keys_held == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"suspend_base": 0.0}, "suspend_base"),
        ({"suspend_cap": float("inf")}, "suspend_cap"),
        ({"pause_base": "5"}, "pause_base"),
        ({"probe_timeout": -1.0}, "probe_timeout"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        DestinationHealth(**kwargs)  # type: ignore[arg-type]


# -- decisions taken elsewhere (what RedisHealth relays between workers) --------


def test_adopt_suspends_and_resume_ends_it_with_shared_events() -> None:
    clock = FakeClock()
    events: list[Event] = []
    h = _health(clock, events)
    h.adopt("mx.example", seconds=120.0, reason=Reason.BLOCKLISTED, suspensions=2)
    refused = h.admit("mx.example")
    assert not refused.allowed and refused.retry_in == pytest.approx(120.0)
    st = h.suspended()["mx.example"]
    assert (st.state, st.reason, st.suspensions) == ("suspended", Reason.BLOCKLISTED, 2)
    # A shorter suspension heard later changes nothing.
    h.adopt("mx.example", seconds=10.0, reason=Reason.SERVER_BUSY, suspensions=1)
    assert h.status("mx.example").reason is Reason.BLOCKLISTED
    h.resume("mx.example")
    assert h.admit("mx.example").allowed and h.suspended() == {}
    assert [e.kind for e in events] == ["suspended", "resumed"]
    assert all(e.data["shared"] is True for e in events)


def test_adopt_a_relay_pause_refuses_every_key() -> None:
    clock = FakeClock()
    h = _health(clock)
    h.adopt(None, seconds=60.0, reason=Reason.SENDING_QUOTA, suspensions=1)
    assert h.status("any.example").state == "paused"
    assert set(h.suspended()) == {None}
    clock.advance(61.0)
    assert h.admit("any.example").probe  # the pause ended: one probe goes
