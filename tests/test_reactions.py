"""The reactions table: one row per reason, consistent with the taxonomy,
read by every part that acts on a reply, and rendered in the docs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from resilient_smtp import (
    REACTIONS,
    AdaptiveLimiter,
    Classification,
    DestinationHealth,
    Mailer,
    Reaction,
    Reactions,
    Reason,
    RetryBudget,
    RetryPolicy,
    Stage,
)
from resilient_smtp._classify.reactions import render_markdown
from resilient_smtp._classify.taxonomy import default_transient
from resilient_smtp._transport.pool import Pool
from resilient_smtp.testing import FakeClock, ScriptedTransport

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reactions.md"


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_every_reason_has_a_row(reason: Reason) -> None:
    # A new Reason (say ACCEPTED for 2xx) must get a row here first.
    assert reason in REACTIONS, f"REACTIONS has no row for Reason.{reason.name}: add one"
    assert isinstance(REACTIONS[reason], Reaction)


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_recipient_fate_agrees_with_the_taxonomy(reason: Reason) -> None:
    fate = REACTIONS[reason].recipient
    transient = default_transient(reason)
    # A 2xx (ACCEPTED) is not transient, and there is nothing to give up.
    if transient is None or reason is Reason.ACCEPTED:
        assert fate == "by_code"
    elif transient:
        assert fate == "retry"
    else:
        assert fate in ("give_up", "hold")
    if fate == "hold":
        assert REACTIONS[reason].configuration


def test_a_table_missing_a_row_is_refused() -> None:
    rows: dict[Reason | tuple[Reason, Stage], Reaction] = {
        k: v for k, v in REACTIONS.items() if k != Reason.GREYLISTED
    }
    with pytest.raises(ValueError, match="greylisted"):
        Reactions(rows)


def test_rows_are_frozen_and_validated() -> None:
    row = REACTIONS[Reason.RATE_LIMITED]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.rate = "none"  # type: ignore[misc]
    with pytest.raises(ValueError, match="rate"):
        row.replace(rate="halve")
    with pytest.raises(ValueError, match="retry_floor"):
        row.replace(retry_floor=-1.0)


def test_the_contradictions_are_resolved() -> None:
    creds = REACTIONS[Reason.AUTH_CREDENTIALS]
    assert creds.configuration and creds.health == "none" and creds.relay == "next"
    session = REACTIONS[Reason.SESSION_LIMIT]
    assert session.rate == "none" and session.reconnect_at_once and session.retry_cost == 0
    reputation = REACTIONS[Reason.REPUTATION_DEFERRAL]
    assert reputation.health == "suspend" and reputation.floor_grows


def test_every_part_reads_the_table() -> None:
    assert REACTIONS.reasons(rate="cut") == AdaptiveLimiter.DEFAULT_PUSHBACK
    assert dict(RetryPolicy().min_waits) == dict(REACTIONS.floors())
    assert RetryPolicy().growing == REACTIONS.reasons(floor_grows=True)
    assert RetryPolicy().reconnect_at_once == REACTIONS.reasons(reconnect_at_once=True)
    budget = RetryBudget()
    for reason in Reason:
        cost = REACTIONS[reason].retry_cost
        assert budget.cost(reason) == (budget.retry_cost if cost is None else cost)


def _failure(reason: Reason) -> Classification:
    return Classification.without_reply(reason, transient=True, explanation="test")


def test_an_overridden_table_reaches_health_pool_limiter_and_policy() -> None:
    table = REACTIONS.replace(Reason.GREYLISTED, health="suspend", rate="cut", retry_floor=7.0)
    table = table.replace(Reason.RATE_LIMITED, concurrency="reduce")
    clock = FakeClock()
    mailer = Mailer("relay.example:25", clock=clock, reactions=table)
    assert mailer.retry.min_waits[Reason.GREYLISTED] == 7.0
    assert isinstance(mailer.limiter, AdaptiveLimiter)
    assert Reason.GREYLISTED in mailer.limiter.pushback
    mailer.health.record("relay.example:25", _failure(Reason.GREYLISTED))
    assert mailer.health.status("relay.example:25").state == "suspended"
    health = DestinationHealth(clock=clock)  # the default table: no effect
    health.record("relay.example:25", _failure(Reason.GREYLISTED))
    assert health.status("relay.example:25").state == "healthy"
    assert Reason.RATE_LIMITED in Pool(ScriptedTransport(), clock=clock, reactions=table)._shrink


def test_a_stage_row_overrides_the_reason_row() -> None:
    table = REACTIONS.replace((Reason.SERVER_BUSY, Stage.CONNECT), retry_floor=30.0)
    assert table.for_reply(Reason.SERVER_BUSY, Stage.CONNECT).retry_floor == 30.0
    assert table.for_reply(Reason.SERVER_BUSY, Stage.MAIL).retry_floor == 0.0
    assert table.for_reply(Reason.SERVER_BUSY).retry_floor == 0.0


def test_the_docs_render_the_table() -> None:
    page = DOCS.read_text(encoding="utf-8")
    m = re.search(r"<!-- generated:[^\n]*-->\n(.*?)<!-- end generated -->", page, re.S)
    assert m is not None, "docs/reactions.md lost its generated block"
    assert m.group(1) == render_markdown(), (
        "docs/reactions.md is out of date: regenerate the block with "
        "python -m resilient_smtp._classify.reactions"
    )
