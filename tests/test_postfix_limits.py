"""The Mailer's defaults against a real MTA's limits: a private Postfix instance.

Postfix's smtpd counts MAIL commands per client with anvil
(``smtpd_client_message_rate_limit`` per ``anvil_rate_time_unit``) and
answers ``450 4.7.1 Error: too much mail from 127.0.0.1`` over it; beyond
``smtpd_client_connection_count_limit`` it greets with ``421 4.7.0 ... too
many connections``.  The instance is our own (``tests/_postfix_server.py``):
its own configuration, queue and port, mail discarded.  The figures (ratios
to an oracle and a naive loop) are in ``bench/bench_pushback.py``; here the
behaviour is checked: every message delivered, the limit found, few refusals.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from _postfix_server import PrivatePostfix, postfix_missing
from resilient_smtp import (
    AdaptiveLimiter,
    Classification,
    Event,
    Limiter,
    Mailer,
    PoolLimits,
    Reason,
    RetryPolicy,
)
from resilient_smtp._retry.delays import DEFAULT_MIN_WAITS

# Refused messages go back through the limiter (which took the pushback)
# rather than into the 10 s per-message floor.
POLICY = RetryPolicy(
    max_attempts=10,
    base=0.05,
    cap=2.0,
    min_waits={**DEFAULT_MIN_WAITS, Reason.RATE_LIMITED: 0.0, Reason.TOO_MANY_CONNECTIONS: 0.0},
)


def _require_postfix() -> None:
    reason = postfix_missing()
    if reason is None:
        return
    if os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail(reason)  # as root, scripts/services/postfix-private.sh installs it
    pytest.skip(reason)


@pytest.fixture
def rate_limited_postfix() -> Iterator[PrivatePostfix]:
    _require_postfix()
    with PrivatePostfix(message_rate_limit=30, rate_time_unit="1s") as pf:
        yield pf


@pytest.fixture
def connection_limited_postfix() -> Iterator[PrivatePostfix]:
    _require_postfix()
    with PrivatePostfix(connection_count_limit=2) as pf:
        yield pf


class Seen(Limiter):
    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self.limiter = limiter
        self.replies: list[Classification | None] = []

    def acquire(self, key: str):  # type: ignore[no-untyped-def]
        return self.limiter.acquire(key)

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        self.replies.append(classification)
        return self.limiter.feedback(key, classification)


async def _send(
    pf: PrivatePostfix,
    n: int,
    *,
    retry: RetryPolicy | None = POLICY,
    pool: PoolLimits | None = None,
) -> tuple[list[str], Seen, list[Event]]:
    events: list[Event] = []
    seen = Seen(AdaptiveLimiter(hooks=[events.append]))
    async with Mailer(
        "127.0.0.1", pf.port, tls="none", limiter=seen, retry=retry, pool=pool
    ) as mailer:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    mailer.send(
                        b"Subject: t\r\n\r\nhi\r\n",
                        sender="s@example.org",
                        recipients=[f"r{i}@example.com"],
                    )
                    for i in range(n)
                )
            ),
            timeout=120.0,
        )
    return [r.recipients[0].state.value for r in results], seen, events


async def test_postfix_message_rate_limit_is_found_and_everything_arrives(
    rate_limited_postfix: PrivatePostfix,
) -> None:
    states, seen, events = await _send(rate_limited_postfix, 120)
    assert states == ["delivered"] * 120
    refused = [c for c in seen.replies if c is not None]
    assert refused, "the limit was never hit: the test shows nothing"
    assert {c.reason for c in refused} == {Reason.RATE_LIMITED}
    assert "too much mail" in (refused[0].reply.text if refused[0].reply else "")
    # A short run with 1-2 s windows: the first overshoot and its probes dominate.
    assert len(refused) <= 0.5 * 120
    cuts = [e for e in events if e.kind == "rate_changed"]
    assert 1 <= len(cuts) <= len(refused)


async def test_postfix_connection_count_limit_lowers_concurrency(
    connection_limited_postfix: PrivatePostfix,
) -> None:
    states, seen, events = await _send(connection_limited_postfix, 100)
    assert states == ["delivered"] * 100
    refused = [c for c in seen.replies if c is not None]
    assert refused and {c.reason for c in refused} == {Reason.TOO_MANY_CONNECTIONS}
    assert any("concurrency" in e.data for e in events)
    assert len(refused) <= 20  # a halving per event: 16, 8, 4, 2 at once


@pytest.fixture
def connection_rate_limited_postfix() -> Iterator[PrivatePostfix]:
    _require_postfix()
    extra = {"smtpd_client_connection_rate_limit": "5"}
    with PrivatePostfix(rate_time_unit="2s", extra=extra) as pf:
        yield pf


async def test_postfix_connection_rate_limit_is_waited_out_not_hammered(
    connection_rate_limited_postfix: PrivatePostfix,
) -> None:
    """``smtpd_client_connection_rate_limit`` greets with the same ``421 ...
    too many connections`` as the count limit.  With the Mailer's defaults
    (RetryPolicy(), 5 attempts), once one connection at a time is still
    refused the limiter spaces the attempts out in time: every message
    arrives, instead of each refused send spending its attempts at once."""
    # 25 messages a connection: the pool opens new connections as it goes,
    # more than 5 in 2 s.  The Mailer's default retry policy.
    n = 200
    states, seen, _ = await _send(
        connection_rate_limited_postfix, n, retry=None, pool=PoolLimits(max_messages=25)
    )
    assert states == ["delivered"] * n
    refused = [c for c in seen.replies if c is not None]
    assert refused, "the limit was never hit: the test shows nothing"
    assert {c.reason for c in refused} == {Reason.TOO_MANY_CONNECTIONS}
    assert len(refused) <= 20
