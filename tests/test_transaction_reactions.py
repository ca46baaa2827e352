"""The transaction acts from the reactions table: what a refusal does to the
*other* recipients and to the connection is the ``others`` and
``connection`` columns of the Mailer's table, so overriding a row changes
what happens on the wire.

Each test runs the default table and an overridden one and asserts that
they differ, against the scripted transport and against a real loopback
server (tests/_raw_smtp.py) whose own record says nothing was lost and
nothing arrived twice.
"""

from __future__ import annotations

from collections import Counter
from email.message import EmailMessage

import pytest

from _raw_smtp import RawSMTPServer
from resilient_smtp import REACTIONS, Mailer, Reactions, Reason, RetryPolicy, Stage, State
from resilient_smtp.testing import FakeClock, ScriptedTransport

A, B, C = "a@example.com", "b@example.com", "c@example.com"
RCPTS = (A, B, C)

UNKNOWN = "550 5.1.1 User unknown"
BLOCKED = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
TOO_MANY = "452 4.5.3 Too many recipients"


def message(n: int = 1) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(RCPTS)
    msg["Subject"] = f"reactions {n}"
    msg.set_content("Hello.\n")
    return msg


def scripted(
    transport: ScriptedTransport, reactions: Reactions = REACTIONS, attempts: int = 1
) -> Mailer:
    return Mailer(
        "mx.test",
        transport=transport,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=attempts, deadline=86400.0),
        reactions=reactions,
    )


async def states(mailer: Mailer, n: int = 1) -> dict[str, State]:
    async with mailer:
        result = await mailer.send(message(n))
    return {r.address: r.state for r in result}


STEP = ("size", "8bitmime")  # no PIPELINING: one command per flight
PIPELINED = ("size", "8bitmime", "pipelining")


# -- others: keep / retry ------------------------------------------------------


@pytest.mark.parametrize("extensions", [STEP, PIPELINED], ids=["step", "pipelined"])
async def test_others_retry_abandons_the_transaction(extensions: tuple[str, ...]) -> None:
    default = ScriptedTransport(extensions=extensions).on("rcpt", UNKNOWN, recipient=B)
    assert await states(scripted(default)) == {
        A: State.DELIVERED,
        B: State.REJECTED,
        C: State.DELIVERED,
    }
    assert default.delivered_to == [A, C]

    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, others="retry")
    changed = ScriptedTransport(extensions=extensions).on("rcpt", UNKNOWN, recipient=B)
    # One attempt: the others wait (deferred), b has its own verdict, and
    # the message went to no one.
    assert await states(scripted(changed, table)) == {
        A: State.DEFERRED,
        B: State.REJECTED,
        C: State.DEFERRED,
    }
    assert changed.messages == []
    if extensions == STEP:
        # c's RCPT was never sent: it is untried, not refused.
        assert changed.commands.count("RCPT") == 2


async def test_others_retry_then_the_others_go_on_a_new_attempt() -> None:
    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, others="retry")
    t = ScriptedTransport().on("rcpt", UNKNOWN, recipient=B)
    async with scripted(t, table, attempts=2) as m:
        result = await m.send(message())
    assert {r.address: (r.state, r.attempts) for r in result} == {
        A: (State.DELIVERED, 2),
        B: (State.REJECTED, 1),
        C: (State.DELIVERED, 2),
    }
    assert t.delivered_to == [A, C]


async def test_the_others_of_a_deferral_say_why() -> None:
    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, others="retry")
    t = ScriptedTransport().on("rcpt", UNKNOWN, recipient=B)
    async with scripted(t, table) as m:
        result = await m.send(message())
    c = next(r for r in result if r.address == A).classification
    assert c is not None and c.transient
    assert "abandoned" in c.explanation and "not a verdict on the recipient" in c.explanation


@pytest.mark.parametrize("extensions", [STEP, PIPELINED], ids=["step", "pipelined"])
async def test_blocklisted_others_keep_when_the_row_says_so(extensions: tuple[str, ...]) -> None:
    # The default row: others="retry" (another host may take them).
    default = ScriptedTransport(extensions=extensions).on("rcpt", BLOCKED, recipient=B)
    assert await states(scripted(default)) == {
        A: State.DEFERRED,
        B: State.REJECTED,
        C: State.DEFERRED,
    }
    assert default.messages == []

    table = REACTIONS.replace(Reason.BLOCKLISTED, others="keep")
    changed = ScriptedTransport(extensions=extensions).on("rcpt", BLOCKED, recipient=B)
    assert await states(scripted(changed, table)) == {
        A: State.DELIVERED,
        B: State.REJECTED,
        C: State.DELIVERED,
    }
    assert changed.delivered_to == [A, C]


async def test_a_stage_row_is_read_for_the_reply_at_that_stage() -> None:
    table = REACTIONS.replace((Reason.RECIPIENT_UNKNOWN, Stage.RCPT), others="retry")
    t = ScriptedTransport().on("rcpt", UNKNOWN, recipient=B)
    assert await states(scripted(t, table)) == {
        A: State.DEFERRED,
        B: State.REJECTED,
        C: State.DEFERRED,
    }


# -- others: split ---------------------------------------------------------------


async def test_split_sends_the_rest_at_once_unless_the_row_says_keep() -> None:
    default = ScriptedTransport().on("rcpt", TOO_MANY, recipient=C)
    assert await states(scripted(default)) == dict.fromkeys(RCPTS, State.DELIVERED)
    assert [m.recipients for m in default.messages] == [(A, B), (C,)]

    table = REACTIONS.replace(Reason.TOO_MANY_RECIPIENTS, others="keep")
    changed = ScriptedTransport().on("rcpt", TOO_MANY, recipient=C)
    # c's 452 is now its own temporary refusal, for the retry policy.
    assert await states(scripted(changed, table)) == {
        A: State.DELIVERED,
        B: State.DELIVERED,
        C: State.DEFERRED,
    }
    assert [m.recipients for m in changed.messages] == [(A, B)]


async def test_split_on_another_reason_when_the_row_says_so() -> None:
    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, others="split")
    t = ScriptedTransport(extensions=STEP).on(
        "rcpt", "450 4.1.1 Mailbox unknown, try later", recipient=B
    )
    assert await states(scripted(t, table)) == dict.fromkeys(RCPTS, State.DELIVERED)
    # b and the untried c went in a second transaction at once.
    assert [m.recipients for m in t.messages] == [(A,), (B, C)]


# -- connection: keep / close ------------------------------------------------------


@pytest.mark.parametrize("close", [False, True])
async def test_the_connection_column_decides_reuse(close: bool) -> None:
    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, connection="close") if close else REACTIONS
    t = ScriptedTransport().on("rcpt", UNKNOWN, recipient=B, times=None)
    async with scripted(t, table) as m:
        for n in (1, 2):
            result = await m.send(message(n))
            assert [r.state for r in result] == [State.DELIVERED, State.REJECTED, State.DELIVERED]
    assert t.connections == (2 if close else 1)
    assert t.commands.count("RSET") == 0  # a completed transaction needs none


async def test_a_refused_mail_keeps_or_closes_by_the_table() -> None:
    refused = "550 5.7.1 Sender address rejected: Access denied"
    for table, connections in (
        (REACTIONS, 1),
        (REACTIONS.replace(Reason.SENDER_REJECTED, connection="close"), 2),
    ):
        t = ScriptedTransport().on("mail", refused, times=1)
        async with scripted(t, table) as m:
            await m.send(message(1))
            assert [r.state for r in await m.send(message(2))] == [State.DELIVERED] * 3
        assert t.connections == connections


# -- what the table cannot change --------------------------------------------------


async def test_a_421_ends_the_session_whatever_the_row_says() -> None:
    # The 421's reason is policy_rejected; make its row as mild as possible.
    table = REACTIONS.replace(Reason.POLICY_REJECTED, others="keep", connection="keep")
    t = ScriptedTransport().on(
        "rcpt", "421 4.7.0 <b@example.com>: Recipient address rejected: policy", recipient=B
    )
    assert await states(scripted(t, table)) == dict.fromkeys(RCPTS, State.DEFERRED)
    assert t.messages == []


# -- 2xx at RCPT -------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "252 2.1.5 Cannot VRFY user, but will accept",
        "251 2.1.5 User not local; will forward",
        "250 2.1.5 Ok",
    ],
)
async def test_any_2xx_at_rcpt_is_accepted(accept: str) -> None:
    t = ScriptedTransport().on("rcpt", accept, recipient=B)
    assert await states(scripted(t)) == dict.fromkeys(RCPTS, State.DELIVERED)
    assert t.delivered_to == [A, B, C]


# -- a real server -----------------------------------------------------------------


def raw_mailer(
    server: RawSMTPServer, reactions: Reactions = REACTIONS, attempts: int = 2
) -> Mailer:
    return Mailer(
        ("127.0.0.1", server.port),
        tls="none",
        timeout=2.0,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=attempts, deadline=86400.0),
        reactions=reactions,
    )


@pytest.mark.parametrize("override", [False, True])
async def test_others_retry_on_a_real_server(override: bool) -> None:
    table = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, others="retry") if override else REACTIONS
    # Only the first connection refuses its second RCPT (b).
    faults = {(1, "rcpt2"): b"550 5.1.1 User unknown"}
    async with RawSMTPServer(faults=faults) as server, raw_mailer(server, table) as m:
        result = await m.send(message())
    assert {r.address: r.state for r in result} == {
        A: State.DELIVERED,
        B: State.REJECTED,
        C: State.DELIVERED,
    }
    assert Counter(server.delivered_to) == Counter({A: 1, C: 1})
    if override:
        # The 354 came (a and c were accepted) and no message followed: the
        # connection was dropped, and a and c went on a second one.
        assert server.connections == 2
        assert server.commands.count("DATA") == 2
    else:
        assert server.connections == 1
        assert server.commands.count("DATA") == 1


@pytest.mark.parametrize("override", [False, True])
async def test_connection_close_on_a_real_server(override: bool) -> None:
    table = (
        REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, connection="close") if override else REACTIONS
    )
    async with RawSMTPServer(faults={"rcpt2": b"550 5.1.1 User unknown"}) as server:
        async with raw_mailer(server, table) as m:
            for n in (1, 2):
                result = await m.send(message(n))
                assert [r.state for r in result] == [
                    State.DELIVERED,
                    State.REJECTED,
                    State.DELIVERED,
                ]
        assert server.connections == (2 if override else 1)
        assert Counter(server.delivered_to) == Counter({A: 2, C: 2})


async def test_a_252_at_rcpt_on_a_real_server_is_accepted() -> None:
    async with (
        RawSMTPServer(faults={"rcpt2": b"252 2.1.5 Cannot VRFY user, but will accept"}) as server,
        raw_mailer(server) as m,
    ):
        result = await m.send(message())
    assert {r.address: r.state for r in result} == dict.fromkeys(RCPTS, State.DELIVERED)
    assert Counter(server.delivered_to) == Counter(dict.fromkeys(RCPTS, 1))
