"""The Mailer against Postfix's smtp-sink on 127.0.0.1, in its fault modes.

smtp-sink applies a fault to every connection, so a transient fault ends in
``deferred`` once the policy gives up (3 attempts here, on a FakeClock: the
waits take no real time, the network is real).  Every test checks the final
state of every recipient and counts the test's unique Message-ID in the
sink's dump (``-D``): nothing lost, nothing sent twice.

What the dump records: smtp-sink writes a transaction as soon as it has read
the final dot, *before* it answers.  So a message answered with ``421``,
``450`` or ``500`` after the dot (``-Q .``, ``-r .``, ``-f .``), or never
answered (``-q .``, ``-W .:N``), is in the dump too.  A server that refuses
after the dot has not taken the message, so retrying it is right and the
dump then holds one copy per attempt; where the reply never came the client
cannot know, and the Mailer must not send it again (``ambiguous``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

import pytest

from conftest import Sink
from resilient_smtp import Mailer, PoolLimits, Reason, RetryPolicy, Stage, State
from resilient_smtp.testing import FakeClock

pytestmark = pytest.mark.smtp_sink

SinkFactory = Callable[..., Sink]

SENDER = "app@example.org"
RCPTS = ("alice@example.com", "bob@example.com")
ATTEMPTS = 3

_ids = itertools.count(1)


def make_message(*to: str) -> tuple[EmailMessage, str]:
    """A small message with a Message-ID no other test uses."""
    mid = f"<sink-{next(_ids)}@resilient-smtp.test>"
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to or RCPTS)
    msg["Subject"] = "smtp-sink test"
    msg["Message-ID"] = mid
    msg.set_content("Hello.\n.a line that starts with a dot\n")
    return msg, mid


def mailer_for(*sinks: Sink, attempts: int = ATTEMPTS, **kw: object) -> Mailer:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("clock", FakeClock())
    return Mailer(
        [("127.0.0.1", s.port) for s in sinks],
        tls="none",
        retry=RetryPolicy(max_attempts=attempts, deadline=24 * 3600.0),
        **kw,  # type: ignore[arg-type]
    )


def key(sink: Sink) -> str:
    return f"127.0.0.1:{sink.port}"


@dataclass(frozen=True)
class Case:
    """One smtp-sink fault mode and what must become of both recipients."""

    options: tuple[str, ...]
    state: State
    reason: Reason | None
    code: int | None
    attempts: int | tuple[int, ...]
    """Transactions each recipient was in (one figure: the same for all)."""
    dumped: int
    """Copies of the message in the dump."""


DELIVERED = Case((), State.DELIVERED, None, None, 1, 1)

CASES = {
    "ok": DELIVERED,
    # The greeting.
    "greeting-421-close": Case(("-Q", "CONNECT"), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 0),
    "greeting-silent-close": Case(
        ("-q", "CONNECT"), State.DEFERRED, Reason.CONNECTION_ERROR, None, 3, 0
    ),
    "greeting-450": Case(("-r", "CONNECT"), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 0),
    # A refused greeting refuses the session, not the recipients: deferred.
    "greeting-500": Case(("-f", "CONNECT"), State.DEFERRED, Reason.PROTOCOL_ERROR, 500, 1, 0),
    # EHLO: a 5xx falls back on HELO (RFC 5321 §4.1.1.1) and delivers.
    "ehlo-421-close": Case(("-Q", "EHLO,HELO"), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 0),
    "ehlo-silent-close": Case(
        ("-q", "EHLO,HELO"), State.DEFERRED, Reason.CONNECTION_ERROR, None, 3, 0
    ),
    "ehlo-450": Case(("-r", "EHLO"), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 0),
    "ehlo-500-helo-fallback": Case(("-f", "EHLO"), State.DELIVERED, None, None, 1, 1),
    # MAIL FROM.
    "mail-421-close": Case(("-Q", "MAIL"), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 0),
    "mail-450": Case(("-r", "MAIL"), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 0),
    "mail-500": Case(("-f", "MAIL"), State.REJECTED, Reason.PROTOCOL_ERROR, 500, 1, 0),
    "mail-silent-close": Case(("-q", "MAIL"), State.DEFERRED, Reason.CONNECTION_ERROR, None, 3, 0),
    "mail-421-kept-open": Case(
        ("-r", "MAIL", "-b", "421 4.7.0 Try again later"),
        State.DEFERRED,
        Reason.RATE_LIMITED,
        421,
        3,
        0,
    ),
    # RCPT TO.
    "rcpt-421-close": Case(("-Q", "RCPT"), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 0),
    "rcpt-450": Case(("-r", "RCPT"), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 0),
    # protocol_error's row says others="retry": alice's 500 abandons the
    # transaction (smtp-sink offers no PIPELINING in a fault mode), so bob
    # gets his own 500 on the next connection.
    "rcpt-500": Case(("-f", "RCPT"), State.REJECTED, Reason.PROTOCOL_ERROR, 500, (1, 2), 0),
    "rcpt-silent-close": Case(("-q", "RCPT"), State.DEFERRED, Reason.CONNECTION_ERROR, None, 3, 0),
    "rcpt-452-mailbox-full": Case(
        ("-r", "RCPT", "-b", "452 4.2.2 Mailbox full"),
        State.DEFERRED,
        Reason.MAILBOX_FULL,
        452,
        3,
        0,
    ),
    "rcpt-550-user-unknown": Case(
        ("-f", "RCPT", "-B", "550 5.1.1 User unknown"),
        State.REJECTED,
        Reason.RECIPIENT_UNKNOWN,
        550,
        1,
        0,
    ),
    # The DATA command.
    "data-421-close": Case(("-Q", "DATA"), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 0),
    "data-450": Case(("-r", "DATA"), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 0),
    "data-500": Case(("-f", "DATA"), State.REJECTED, Reason.PROTOCOL_ERROR, 500, 1, 0),
    "data-silent-close": Case(("-q", "DATA"), State.DEFERRED, Reason.CONNECTION_ERROR, None, 3, 0),
    # After the final dot (see the module docstring for what the dump holds).
    "end-of-data-421-close": Case(("-Q", "."), State.DEFERRED, Reason.SERVER_BUSY, 421, 3, 3),
    "end-of-data-450": Case(("-r", "."), State.DEFERRED, Reason.UNCLASSIFIED, 450, 3, 3),
    "end-of-data-500": Case(("-f", "."), State.REJECTED, Reason.PROTOCOL_ERROR, 500, 1, 1),
    "end-of-data-554-spam": Case(
        ("-f", ".", "-B", "554 5.7.1 Message rejected as spam"),
        State.REJECTED,
        Reason.SPAM_CONTENT,
        554,
        1,
        1,
    ),
    "end-of-data-silent-close": Case(
        ("-q", "."), State.AMBIGUOUS, Reason.CONNECTION_ERROR, None, 1, 1
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_fault_mode(smtp_sink: SinkFactory, case: Case) -> None:
    sink = smtp_sink(*case.options)
    msg, mid = make_message()
    async with mailer_for(sink) as mailer:
        result = await mailer.send(msg)
    assert [r.address for r in result] == list(RCPTS)
    tries = case.attempts if isinstance(case.attempts, tuple) else (case.attempts,) * len(RCPTS)
    for r, attempts in zip(result, tries, strict=True):
        assert r.state is case.state, (r.address, r.classification)
        assert r.reason == (case.reason.value if case.reason else None)
        assert r.attempts == attempts
        assert r.destination == key(sink)
        if case.code is not None:
            assert r.classification is not None
            assert r.classification.reply.code == case.code
        assert (r.retry_in is not None) == (case.state is State.DEFERRED)
    assert result.attempts == max(tries)
    assert sink.message_ids().count(mid) == case.dumped
    if case.state is State.DELIVERED:
        assert sink.recipients() == list(RCPTS)
    assert mailer.pool.idle_count() == 0  # close() closed what it kept


async def test_helo_fallback_is_recorded_as_plain_smtp(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-f", "EHLO")
    msg, mid = make_message()
    async with mailer_for(sink) as mailer:
        assert (await mailer.send(msg)).ok
    assert sink.message_ids() == [mid]
    assert "X-Client-Proto: SMTP\n" in sink.dumped()  # HELO, not EHLO


async def test_many_messages_share_one_connection(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    sent = []
    async with mailer_for(sink) as mailer:
        for i in range(25):
            msg, mid = make_message(f"user{i}@example.com")
            sent.append(mid)
            assert (await mailer.send(msg)).ok
        assert mailer.pool.opened == 1
    assert sink.message_ids() == sent


async def test_messages_per_connection_are_capped(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    sent = []
    async with mailer_for(sink, pool=PoolLimits(max_messages=4)) as mailer:
        for i in range(10):
            msg, mid = make_message(f"user{i}@example.com")
            sent.append(mid)
            assert (await mailer.send(msg)).ok
        assert mailer.pool.opened == 3  # 4 + 4 + 2
    assert sink.message_ids() == sent


async def test_slow_rcpt_reply_times_out_and_ends_deferred(smtp_sink: SinkFactory) -> None:
    # smtp-sink waits 5 s before answering RCPT; the Mailer gives up after
    # 0.2 s, twice (about 0.4 s of real time).  -p: no PIPELINING, because
    # smtp-sink's -W delay answers a pipelined DATA ("503 need RCPT") before
    # the delayed RCPT reply, out of order (RFC 2920 §3.1 forbids it), and
    # step by step is what this test is about; the pipelined timeouts are in
    # test_transport_faults.py.
    sink = smtp_sink("-p", "-W", "RCPT:5")
    msg, mid = make_message()
    async with mailer_for(sink, attempts=2, timeout=0.2) as mailer:
        result = await mailer.send(msg)
    assert result.deferred == RCPTS
    for r in result:
        assert r.attempts == 2
        assert r.classification is not None
        assert r.classification.reason is Reason.CONNECTION_ERROR
        assert r.classification.transient
    assert sink.message_ids().count(mid) == 0
    assert mailer.pool.opened == 2  # the timed-out connection was not reused


async def test_slow_reply_after_final_dot_is_ambiguous_and_not_resent(
    smtp_sink: SinkFactory,
) -> None:
    # The sink has the message (it dumps on reading the dot) but answers
    # only after 5 s; the Mailer times out after 0.2 s.  Resending would
    # deliver a second copy, so the recipients end ambiguous.
    sink = smtp_sink("-W", ".:5")
    msg, mid = make_message()
    async with mailer_for(sink, attempts=3, timeout=0.2) as mailer:
        result = await mailer.send(msg)
    assert result.ambiguous == RCPTS
    assert all(r.attempts == 1 for r in result)
    assert result.attempts == 1
    assert sink.message_ids().count(mid) == 1


async def test_silent_close_after_dot_with_resend_opt_in_sends_again(
    smtp_sink: SinkFactory,
) -> None:
    # resend_ambiguous=True: the caller accepts a possible duplicate.  The
    # sink did keep each copy, which is exactly why this is opt-in.
    sink = smtp_sink("-q", ".")
    msg, mid = make_message()
    async with mailer_for(sink, resend_ambiguous=True) as mailer:
        result = await mailer.send(msg)
    assert result.deferred == RCPTS
    assert all(r.attempts == ATTEMPTS for r in result)
    assert sink.message_ids().count(mid) == ATTEMPTS


async def test_354_then_550_and_close_is_not_ambiguous(smtp_sink: SinkFactory) -> None:
    # smtp-sink -A 0 answers DATA with "354" and "550 This violates SMTP" in
    # one write and closes: the server refused before the client sent a
    # single byte of the message, and it kept nothing.  "ambiguous" means the
    # final dot was sent and the reply never came; here the dot never left.
    sink = smtp_sink("-A", "0")
    msg, mid = make_message()
    async with mailer_for(sink) as mailer:
        result = await mailer.send(msg)
    assert sink.message_ids().count(mid) == 0
    for r in result:
        assert r.state is not State.AMBIGUOUS, r.classification
        assert r.classification is not None
        if r.state is State.REJECTED:
            assert r.classification.reply.code == 550
        else:
            # The 550 reached us after aiosmtplib had stopped listening (it
            # drops replies nobody asked for): all we saw was the close
            # before the message, a 451 by RFC 5321 §3.8.
            assert r.state is State.DEFERRED
            assert r.classification.stage is Stage.DATA


async def test_deferred_recipients_requeued_to_a_healthy_sink_arrive_once(
    smtp_sink: SinkFactory,
) -> None:
    # What an outbox does with a deferred result: send it again later.
    broken, healthy = smtp_sink("-Q", "RCPT"), smtp_sink()
    msg, mid = make_message()
    async with mailer_for(broken) as mailer:
        first = await mailer.send(msg)
    assert first.deferred == RCPTS
    async with mailer_for(healthy) as mailer:
        second = await mailer.send(msg, recipients=first.deferred)
    assert second.delivered == RCPTS
    assert broken.message_ids() == []
    assert healthy.message_ids() == [mid]
    assert Counter(healthy.recipients()) == Counter(RCPTS)


async def test_refused_after_dot_then_requeued_arrives_once_where_accepted(
    smtp_sink: SinkFactory,
) -> None:
    broken, healthy = smtp_sink("-Q", "."), smtp_sink()
    msg, mid = make_message()
    async with mailer_for(broken) as mailer:
        first = await mailer.send(msg)
    assert first.deferred == RCPTS
    async with mailer_for(healthy) as mailer:
        second = await mailer.send(msg, recipients=first.deferred)
    assert second.delivered == RCPTS
    assert broken.message_ids().count(mid) == ATTEMPTS  # refused copies (421)
    assert healthy.message_ids() == [mid]


async def test_fails_over_to_the_next_relay_after_a_destination_failure(
    smtp_sink: SinkFactory,
) -> None:
    # A 421 at MAIL is the destination's trouble: the retry goes to the
    # next relay, which takes the message; the first never got it.
    broken, healthy = smtp_sink("-Q", "MAIL"), smtp_sink()
    msg, mid = make_message()
    async with mailer_for(broken, healthy) as mailer:
        result = await mailer.send(msg)
    assert result.delivered == RCPTS
    for r in result:
        assert r.destination == key(healthy)
        assert r.attempts == 2
        assert r.classification is not None
        assert r.classification.reason is Reason.SERVER_BUSY  # what the first relay said
    assert broken.message_ids() == []
    assert healthy.message_ids() == [mid]


async def test_keeps_to_the_healthy_relay_while_the_first_is_suspended(
    smtp_sink: SinkFactory,
) -> None:
    # Every send tries the first relay again until health suspends it
    # (three server_busy failures in a row); after that, sends go straight
    # to the second.  Each message arrives exactly once, at the second.
    broken, healthy = smtp_sink("-Q", "CONNECT"), smtp_sink()
    sent = []
    async with mailer_for(broken, healthy) as mailer:
        results = []
        for i in range(6):
            msg, mid = make_message(f"user{i}@example.com")
            sent.append(mid)
            results.append(await mailer.send(msg))
        assert mailer.health.status(key(broken)).state == "suspended"
    assert all(r.ok for r in results)
    assert [r.recipients[0].attempts for r in results][-1] == 1
    assert healthy.message_ids() == sent
    assert broken.message_ids() == []


async def test_mixed_results_across_two_sends_on_one_sink(smtp_sink: SinkFactory) -> None:
    # A sink that refuses every RCPT for a full mailbox: the first send is
    # deferred; a second Mailer against a sink that takes everything
    # delivers the same message to the same recipients, once.
    full, healthy = smtp_sink("-r", "RCPT", "-b", "452 4.2.2 Mailbox full"), smtp_sink()
    msgs = [make_message(f"u{i}@example.com") for i in range(5)]
    async with mailer_for(full) as mailer:
        results = [await mailer.send(m) for m, _ in msgs]
    assert all(r.deferred and not r.delivered for r in results)
    async with mailer_for(healthy) as mailer:
        for (m, _), r in zip(msgs, results, strict=True):
            assert (await mailer.send(m, recipients=r.deferred)).ok
    assert full.message_ids() == []
    assert healthy.message_ids() == [mid for _, mid in msgs]
