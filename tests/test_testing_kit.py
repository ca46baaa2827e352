"""The public testing kit: ScriptedTransport, no_waits(), strategies."""

from __future__ import annotations

import time
from collections import Counter
from email.message import EmailMessage

import pytest
from hypothesis import given, settings

from resilient_smtp import Classification, Mailer, Reason, RetryPolicy, State, system_clock
from resilient_smtp.testing import (
    DROP,
    FakeClock,
    ScriptedTransport,
    classifications,
    no_waits,
    replies,
)


def message(*to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(to)
    msg["Subject"] = "kit"
    msg.set_content(".starts with a dot\nbody\n")
    return msg


async def test_scripted_transport_records_what_was_accepted() -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", "450 4.2.0 Greylisted", recipient="b@example.com")
    policy = RetryPolicy(min_waits={Reason.GREYLISTED: 1.0})
    async with Mailer("mx.test", transport=transport, clock=clock, retry=policy) as mailer:
        result = await mailer.send(message("a@example.com", "b@example.com"))
    assert result.ok
    assert [m.recipients for m in transport.messages] == [("a@example.com",), ("b@example.com",)]
    assert transport.messages[0].data.startswith(b"From: app@example.org")
    assert b"\r\n.starts with a dot" in transport.messages[0].data  # un-stuffed again
    assert transport.commands.count("MAIL") == 2
    assert transport.connections == 1


async def test_scripted_transport_connect_and_drop_stages() -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    transport.on("connect", "421 4.3.2 All server ports are busy")
    transport.on("end_of_data", DROP)
    async with Mailer("mx.test", transport=transport, clock=clock) as mailer:
        result = await mailer.send(message("a@example.com"))
    assert result["a@example.com"].state is State.AMBIGUOUS
    assert transport.connections == 2
    assert len(transport.dropped_after_data) == 1
    assert transport.messages == []


async def test_scripted_transport_421_at_rcpt_keeps_accepted_recipients_pending() -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", "421 4.7.0 Try again later", nth=2)
    async with Mailer("mx.test", transport=transport, clock=clock) as mailer:
        result = await mailer.send(message("a@example.com", "b@example.com", "c@example.com"))
    assert result.ok
    assert Counter(transport.delivered_to) == Counter(
        ["a@example.com", "b@example.com", "c@example.com"]
    )


def test_script_rejects_bad_rules() -> None:
    with pytest.raises(ValueError, match="stage"):
        ScriptedTransport().on("quit", "221 bye")
    with pytest.raises(ValueError, match="3-digit"):
        ScriptedTransport().on("rcpt", "nope")
    with pytest.raises(ValueError, match="times"):
        ScriptedTransport().on("rcpt", "450 x", times=0)


async def test_no_waits_skips_real_sleeping_but_time_moves_on() -> None:
    started = time.monotonic()
    before = system_clock.monotonic()
    with no_waits():
        await system_clock.sleep(3600)
        inside = system_clock.monotonic()
    assert inside - before >= 3600
    assert time.monotonic() - started < 1.0
    # Restored afterwards: a short real sleep really sleeps.
    t0 = time.monotonic()
    await system_clock.sleep(0.002)
    assert time.monotonic() - t0 >= 0.002


async def test_no_waits_lets_default_clock_code_retry_instantly() -> None:
    transport = ScriptedTransport().on("mail", "451 4.3.0 Temporary local problem", times=2)
    started = time.monotonic()
    with no_waits():
        policy = RetryPolicy(base=30.0, cap=60.0, deadline=600.0)
        async with Mailer("mx.test", transport=transport, retry=policy) as mailer:
            result = await mailer.send(message("a@example.com"))
    assert result.ok
    assert result["a@example.com"].attempts == 3
    assert time.monotonic() - started < 2.0


@settings(max_examples=200, deadline=None)
@given(replies())
def test_replies_strategy_gives_strings(reply: str) -> None:
    assert isinstance(reply, str)


@settings(max_examples=200, deadline=None)
@given(classifications())
def test_classifications_strategy_gives_classifications(c: Classification) -> None:
    assert isinstance(c, Classification)
    assert isinstance(c.reason, Reason)


async def test_scripted_transport_pipelines_and_chunks_like_a_real_server() -> None:
    from email.message import EmailMessage

    from resilient_smtp import Mailer, State
    from resilient_smtp.testing import FakeClock, ScriptedTransport

    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = "a@example.com, b@example.com"
    msg["Subject"] = "hi"
    msg.set_content("Hello.\n.dot\n")
    transport = ScriptedTransport(extensions=("pipelining", "chunking")).on(
        "rcpt", "550 5.1.1 no", recipient="b@example.com"
    )
    async with Mailer("mx.test", transport=transport, clock=FakeClock(), chunking=True) as m:
        result = await m.send(msg)
    assert [r.state for r in result] == [State.DELIVERED, State.REJECTED]
    assert transport.commands[1:] == ["MAIL", "RCPT", "RCPT", "BDAT"]
    assert transport.messages[0].recipients == ("a@example.com",)
    assert b"\r\n.dot\r\n" in transport.messages[0].data


async def test_scripted_354_merged_with_250_is_not_a_delivery() -> None:
    from email.message import EmailMessage

    from resilient_smtp import Mailer, RetryPolicy, State
    from resilient_smtp.testing import FakeClock, ScriptedTransport

    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = "a@example.com"
    msg.set_content("Hello.\n")
    transport = ScriptedTransport().on("data", "354 go ahead\r\n250 2.0.0 ok")
    retry = RetryPolicy(max_attempts=1)
    async with Mailer("mx.test", transport=transport, clock=FakeClock(), retry=retry) as m:
        result = await m.send(msg)
    assert [r.state for r in result] == [State.DEFERRED]
    assert transport.messages == []
