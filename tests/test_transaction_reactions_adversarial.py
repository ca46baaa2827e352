"""The reactions table's ``others`` and ``connection`` columns, overridden in
odd combinations, against a real loopback server (tests/_raw_smtp.py) in
each sending mode: step by step, pipelined, and pipelined messages (the
next envelope behind the previous dot).

Every refusal row set to ``others="retry"`` (so a refusal anywhere, at
MAIL, at any RCPT, at DATA or after the dot, would abandon the
transaction); ``connection="close"`` on a recipient refusal while the other
recipients are accepted; ``others="split"`` inside a chain.  Each test
asserts every recipient's final state and, from the server's record, that
nothing was lost and nothing was sent twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

import pytest

from _raw_smtp import RawSMTPServer
from resilient_smtp import REACTIONS, Mailer, PoolLimits, Reactions, Reason, RetryPolicy, State
from resilient_smtp.testing import FakeClock

FIRST = ("a@example.com", "b@example.com", "c@example.com")
SECOND = ("d@example.com", "e@example.com", "f@example.com")
THIRD = ("g@example.com", "h@example.com")
_ids = itertools.count(1)

UNKNOWN = b"550 5.1.1 User unknown"
SENDER_REFUSED = b"553 5.7.1 Sender address rejected: not owned by user"
DATA_REFUSED = b"554 5.5.1 Error: transaction failed"
SPAM = b"554 5.7.1 Message rejected as spam"
TOO_MANY = b"452 4.5.3 Too many recipients"


def everything(**changes: Any) -> Reactions:
    """The default table with ``changes`` on every row."""
    table = REACTIONS
    for key in REACTIONS:
        table = table.replace(key, **changes)
    return table


def message(rcpts: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = "reactions, adversarial"
    msg["Message-ID"] = f"<react-{next(_ids)}@resilient-smtp.test>"
    msg.set_content("Hello.\n")
    return msg


MODES = ["step", "pipelined", "chained"]


def server_for(mode: str, faults: dict[Any, bytes]) -> RawSMTPServer:
    return RawSMTPServer(pipelining=mode != "step", faults=faults)


def mailer(port: int, mode: str, reactions: Reactions, attempts: int = 1) -> Mailer:
    return Mailer(
        ("127.0.0.1", port),
        tls="none",
        timeout=2.0,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=attempts, deadline=86400.0),
        pool=PoolLimits(max_connections=1),
        reactions=reactions,
        pipeline_messages=mode == "chained",
    )


def states(result: Any) -> dict[str, State]:
    return {r.address: r.state for r in result}


def every(rcpts: Sequence[str], state: State) -> dict[str, State]:
    return dict.fromkeys(rcpts, state)


def check_record(delivered_to: list[str], known: dict[str, State]) -> None:
    got = Counter(delivered_to)
    for rcpt, state in known.items():
        want = 1 if state is State.DELIVERED else 0
        assert got[rcpt] == want, (rcpt, state, got)
    assert max(got.values(), default=0) <= 1, got


async def send_all(
    s: RawSMTPServer, mode: str, reactions: Reactions, batches: Sequence[Sequence[str]]
) -> list[dict[str, State]]:
    async with mailer(s.port, mode, reactions) as m:
        results = await asyncio.gather(*(m.send(message(b)) for b in batches))
    got = [states(r) for r in results]
    check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
    for _ in range(400):
        if s.open_connections == 0:
            break
        await asyncio.sleep(0.005)
    assert s.open_connections == 0
    return got


# -- others="retry" on every row, a refusal at each stage ------------------------

RETRY_ALL = everything(others="retry")


@pytest.mark.parametrize("mode", MODES)
async def test_others_retry_everywhere_refusal_at_mail(mode: str) -> None:
    # A MAIL refusal has no "others": the transaction's recipients take the
    # MAIL verdict; the second send (its own transaction) is untouched.
    async with server_for(mode, {(1, 1, "mail"): SENDER_REFUSED}) as s:
        got = await send_all(s, mode, RETRY_ALL, [FIRST, SECOND])
    assert set(got[0].values()) == {State.REJECTED}
    assert got[1] == every(SECOND, State.DELIVERED)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
async def test_others_retry_everywhere_refusal_at_each_rcpt(mode: str, k: int) -> None:
    # The k-th recipient of the first send is unknown: it alone is
    # rejected, the others of that transaction wait (deferred, one
    # attempt), nobody of it gets the message; the second send goes on.
    async with server_for(mode, {(1, 1, f"rcpt{k}"): UNKNOWN}) as s:
        got = await send_all(s, mode, RETRY_ALL, [FIRST, SECOND])
    refused = FIRST[k - 1]
    assert got[0] == {**every(FIRST, State.DEFERRED), refused: State.REJECTED}
    assert got[1] == every(SECOND, State.DELIVERED)
    assert not [m for m in s.stored if set(m.recipients) & set(FIRST)]


@pytest.mark.parametrize("mode", MODES)
async def test_others_retry_everywhere_refusal_in_the_second_envelope(mode: str) -> None:
    # In the chained mode the second envelope went behind the first's dot:
    # its abandonment must not touch the first (delivered) nor the third.
    async with server_for(mode, {(1, 2, "rcpt2"): UNKNOWN}) as s:
        got = await send_all(s, mode, RETRY_ALL, [FIRST, SECOND, THIRD])
    assert got[0] == every(FIRST, State.DELIVERED)
    assert got[1] == {**every(SECOND, State.DEFERRED), "e@example.com": State.REJECTED}
    assert got[2] == every(THIRD, State.DELIVERED)


@pytest.mark.parametrize(("point", "answer"), [("data", DATA_REFUSED), ("dot", SPAM)])
@pytest.mark.parametrize("mode", MODES)
async def test_others_retry_everywhere_refusal_at_data_and_after_the_dot(
    mode: str, point: str, answer: bytes
) -> None:
    # At DATA and after the dot a reply concerns every accepted recipient
    # alike: "others" has nobody to act on; each is refused once.
    async with server_for(mode, {(1, 1, point): answer}) as s:
        got = await send_all(s, mode, RETRY_ALL, [FIRST, SECOND])
    assert got[0] == every(FIRST, State.REJECTED)
    assert got[1] == every(SECOND, State.DELIVERED)


# -- connection="close" on a recipient refusal, the others accepted ----------------

CLOSE_ON_UNKNOWN = REACTIONS.replace(Reason.RECIPIENT_UNKNOWN, connection="close")
CLOSE_ON_SPAM = REACTIONS.replace(Reason.SPAM_CONTENT, connection="close")

# Chained, a close the first send makes (its row says so) lands under the
# envelope the next send already wrote: the next send must go again on a new
# connection without losing its attempt or blaming the destination.


@pytest.mark.parametrize(
    "mode",
    ["step", "pipelined", "chained"],
)
async def test_connection_close_on_a_refused_recipient_the_accepted_still_get_it(
    mode: str,
) -> None:
    # One attempt each: a send must not lose it to another send's row.
    async with server_for(mode, {(1, 1, "rcpt2"): UNKNOWN}) as s:
        got = await send_all(s, mode, CLOSE_ON_UNKNOWN, [FIRST, SECOND, THIRD])
    assert got[0] == {**every(FIRST, State.DELIVERED), "b@example.com": State.REJECTED}
    assert got[1] == every(SECOND, State.DELIVERED)
    assert got[2] == every(THIRD, State.DELIVERED)
    # The first connection carried the first message only.
    assert s.connections == 2


@pytest.mark.parametrize(
    "mode",
    ["step", "pipelined", "chained"],
)
async def test_connection_close_on_the_dot_reply_costs_the_next_send_nothing(mode: str) -> None:
    # The same with the row of the first message's dot reply (spam, 554):
    # with one attempt the second send must still be delivered.
    async with server_for(mode, {(1, 1, "dot"): SPAM}) as s:
        got = await send_all(s, mode, CLOSE_ON_SPAM, [FIRST, SECOND])
    assert got[0] == every(FIRST, State.REJECTED)
    assert got[1] == every(SECOND, State.DELIVERED)
    assert s.connections == 2


async def test_a_connection_known_to_close_is_not_passed_on() -> None:
    async with server_for("chained", {(1, 1, "rcpt2"): UNKNOWN}) as s:
        async with mailer(s.port, "chained", CLOSE_ON_UNKNOWN, attempts=3) as m:
            one, two = await asyncio.gather(m.send(message(FIRST)), m.send(message(SECOND)))
        assert states(two) == every(SECOND, State.DELIVERED)
        assert states(one)["b@example.com"] is State.REJECTED
        check_record(s.delivered_to, {**states(one), **states(two)})
        # One MAIL per message: none written on a connection that was
        # going to be closed.
        assert s.commands.count("MAIL") == 2


# -- others="split" inside a chain ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_split_in_the_middle_of_a_chain(mode: str) -> None:
    # The second send's 2nd recipient is "too many" (others="split"): the
    # rest go in a new transaction of the same send, on a connection the
    # third send may meanwhile hold; each recipient once.
    async with server_for(mode, {(1, 2, "rcpt2"): TOO_MANY}) as s:
        got = await send_all(s, mode, REACTIONS, [FIRST, SECOND, THIRD])
    assert got == [every(r, State.DELIVERED) for r in (FIRST, SECOND, THIRD)]
    assert Counter(s.delivered_to) == Counter(FIRST + SECOND + THIRD)


@pytest.mark.parametrize("mode", MODES)
async def test_close_and_retry_on_every_row_a_421_free_refusal_chain(mode: str) -> None:
    # others="retry" and connection="close" on every row: one unknown
    # recipient in each of three sends.  Each send's refused recipient is
    # rejected, its others deferred, nothing is stored, and every
    # transaction is on a connection of its own.
    table = everything(others="retry", connection="close")
    faults = {(n, 1, "rcpt1"): UNKNOWN for n in (1, 2, 3)}
    async with server_for(mode, faults) as s:
        got = await send_all(s, mode, table, [FIRST, SECOND, THIRD])
    for rcpts, g in zip((FIRST, SECOND, THIRD), got, strict=True):
        assert g == {**every(rcpts, State.DEFERRED), rcpts[0]: State.REJECTED}
    assert s.stored == []
    assert s.connections == 3
