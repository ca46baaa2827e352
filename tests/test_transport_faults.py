"""The pipelined transaction against hostile servers (raw asyncio, 127.0.0.1).

For each reply position of a flight (MAIL, the k-th RCPT, DATA, the final
dot, BDAT LAST), a 421 or a dropped connection; the two wire defects (a
final reply merged with the 354; 2xx and unreadable replies after the dot);
servers that offer PIPELINING and then misbehave.  Every recipient's final
state is asserted, and the server's own record says nothing was lost and
nothing arrived twice.  Waits run on a FakeClock; the network is real.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from email.message import EmailMessage

import pytest

from _raw_smtp import DROP, STALL, RawSMTPServer
from resilient_smtp import Mailer, RetryPolicy, State
from resilient_smtp.testing import FakeClock

RCPTS = ("a@example.com", "b@example.com", "c@example.com")
_ids = itertools.count(1)


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(RCPTS)
    msg["Subject"] = "fault test"
    msg["Message-ID"] = f"<fault-{next(_ids)}@resilient-smtp.test>"
    msg.set_content("Hello.\n.a line that starts with a dot\n")
    return msg


def mailer(server: RawSMTPServer, attempts: int = 2, **kw: object) -> Mailer:
    return Mailer(
        ("127.0.0.1", server.port),
        tls="none",
        timeout=2.0,
        clock=FakeClock(),
        retry=RetryPolicy(max_attempts=attempts, deadline=86400.0),
        **kw,  # type: ignore[arg-type]
    )


def check_record(server: RawSMTPServer, states: dict[str, State]) -> None:
    """Nothing lost, nothing twice: delivered once; deferred and rejected
    never stored; ambiguous at most once."""
    got = Counter(server.delivered_to)
    for rcpt, state in states.items():
        if state is State.DELIVERED:
            assert got[rcpt] == 1, (rcpt, state, got)
        elif state is State.AMBIGUOUS:
            assert got[rcpt] <= 1, (rcpt, state, got)
        else:
            assert got[rcpt] == 0, (rcpt, state, got)
    for stored in server.stored:
        assert b"a line that starts with a dot" in stored.data


async def send(server: RawSMTPServer, attempts: int = 2, **kw: object) -> dict[str, State]:
    async with mailer(server, attempts, **kw) as m:
        result = await m.send(message())
    states = {r.address: r.state for r in result}
    check_record(server, states)
    return states


ALL = dict.fromkeys(RCPTS, State.DELIVERED)

# A session-ending answer on the first connection, anywhere before the
# message left: every recipient waits and goes again on a new connection.
BEFORE_MESSAGE = [
    (point, answer)
    for point in ("mail", "rcpt1", "rcpt2", "rcpt3", "data")
    for answer in (b"421 4.7.0 Try again later", DROP)
]


@pytest.mark.parametrize(("point", "answer"), BEFORE_MESSAGE)
async def test_pipelined_session_end_before_the_message_defers_and_retries(
    point: str, answer: bytes
) -> None:
    async with RawSMTPServer(faults={(1, point): answer}) as server:
        assert await send(server, attempts=1) == dict.fromkeys(RCPTS, State.DEFERRED)
        assert server.stored == []
    async with RawSMTPServer(faults={(1, point): answer}) as server:
        assert await send(server) == ALL
        assert server.connections == 2


async def test_421_to_one_recipient_defers_it_and_never_rejects_the_others() -> None:
    # Postfix access table: "421 4.7.0 <x>: Recipient address rejected".
    faults = {(1, "rcpt2"): b"421 4.7.0 <b@example.com>: Recipient address rejected: policy"}
    async with RawSMTPServer(faults=faults) as server:
        assert await send(server, attempts=1) == dict.fromkeys(RCPTS, State.DEFERRED)


async def test_a_refused_recipient_keeps_its_own_outcome() -> None:
    async with RawSMTPServer(faults={"rcpt2": b"550 5.1.1 User unknown"}) as server:
        states = await send(server)
    assert states == {**ALL, "b@example.com": State.REJECTED}
    assert server.commands.count("MAIL") == 1


@pytest.mark.parametrize("answer", [DROP, b"999 what", b"600 x", b"199 x", b"garbage"])
async def test_no_readable_reply_after_the_dot_is_ambiguous_never_resent(answer: bytes) -> None:
    async with RawSMTPServer(faults={"dot": answer}) as server:
        assert await send(server, attempts=3) == dict.fromkeys(RCPTS, State.AMBIGUOUS)
        assert len(server.stored) == 1
        assert server.commands.count("DATA") == 1


@pytest.mark.parametrize("answer", [b"251 2.1.5 will forward", b"200 ok", b"250-a\r\n250 b"])
async def test_any_2xx_after_the_dot_is_acceptance(answer: bytes) -> None:
    async with RawSMTPServer(faults={"dot": answer}) as server:
        assert await send(server, attempts=3) == ALL
        assert len(server.stored) == 1


async def test_421_after_the_dot_is_a_refusal_and_is_retried() -> None:
    async with RawSMTPServer(faults={(1, "dot"): b"421 4.3.0 queue trouble"}) as server:
        assert await send(server) == ALL


async def test_final_reply_merged_with_354_is_not_a_delivery() -> None:
    # Defect: "354 go ahead\r\n250 ok" in one packet made the recipients
    # delivered without the message ever being written.
    merged = b"354 go ahead\r\n250 2.0.0 ok"
    async with RawSMTPServer(faults={"data": merged}) as server:
        assert await send(server, attempts=1) == dict.fromkeys(RCPTS, State.DEFERRED)
        assert server.stored == []
    async with RawSMTPServer(faults={(1, "data"): merged}) as server:
        assert await send(server) == ALL


async def test_a_refusal_merged_with_354_is_the_verdict() -> None:
    async with RawSMTPServer(faults={"data": b"354 go\r\n554 5.7.1 no thanks"}) as server:
        assert await send(server) == dict.fromkeys(RCPTS, State.REJECTED)
        assert server.stored == []


async def test_replies_held_and_sent_in_one_write_are_read_in_order() -> None:
    async with RawSMTPServer(hold_replies=True, faults={"rcpt2": b"550 5.1.1 no"}) as server:
        states = await send(server)
    assert states == {**ALL, "b@example.com": State.REJECTED}


async def test_an_extra_reply_puts_the_session_out_of_step_and_is_not_a_delivery() -> None:
    # A server that advertises PIPELINING and answers MAIL twice: every later
    # reply is shifted by one, so DATA is "answered" with an RCPT's 250.
    faults = {(1, "mail"): b"250 ok\r\n250 ok"}
    async with RawSMTPServer(faults=faults) as server:
        assert await send(server, attempts=1) == dict.fromkeys(RCPTS, State.DEFERRED)
    async with RawSMTPServer(faults=faults) as server:
        assert await send(server) == ALL


async def test_without_pipelining_one_command_per_flight() -> None:
    async with RawSMTPServer(pipelining=False, faults={"rcpt2": b"550 5.1.1 no"}) as server:
        states = await send(server)
    assert states == {**ALL, "b@example.com": State.REJECTED}


# -- opt-in: BDAT LAST behind the envelope ---------------------------------


async def test_chunking_delivers_in_one_flight() -> None:
    async with RawSMTPServer(chunking=True) as server:
        assert await send(server, chunking=True) == ALL
        assert "DATA" not in server.commands
        assert server.commands.count("BDAT") == 1


@pytest.mark.parametrize("point", ["mail", "rcpt1", "rcpt3", "bdat"])
async def test_chunking_read_421_defers_and_retries(point: str) -> None:
    async with RawSMTPServer(chunking=True, faults={(1, point): b"421 4.7.0 later"}) as server:
        assert await send(server, chunking=True) == ALL


@pytest.mark.parametrize("point", ["mail", "rcpt2", "bdat"])
async def test_chunking_drop_after_the_flight_is_ambiguous(point: str) -> None:
    # The wider window of the opt-in mode: the message had left with the
    # envelope, so a recipient not known to be refused may have it.
    async with RawSMTPServer(chunking=True, faults={point: DROP}) as server:
        states = await send(server, attempts=3, chunking=True)
        assert states == dict.fromkeys(RCPTS, State.AMBIGUOUS)
        assert server.commands.count("BDAT") <= 1


async def test_chunking_drop_keeps_a_refusal_already_read() -> None:
    faults = {"rcpt1": b"550 5.1.1 no", "rcpt3": DROP}
    async with RawSMTPServer(chunking=True, faults=faults) as server:
        states = await send(server, attempts=3, chunking=True)
    assert states == {
        "a@example.com": State.REJECTED,
        "b@example.com": State.AMBIGUOUS,
        "c@example.com": State.AMBIGUOUS,
    }


async def test_chunking_unreadable_after_bdat_is_ambiguous() -> None:
    async with RawSMTPServer(chunking=True, faults={"bdat": b"999 eh"}) as server:
        states = await send(server, attempts=3, chunking=True)
        assert states == dict.fromkeys(RCPTS, State.AMBIGUOUS)
        assert len(server.stored) == 1


async def test_chunking_hook_gets_the_whole_batch_before_the_flight() -> None:
    seen: list[tuple[list[str], int]] = []
    async with RawSMTPServer(chunking=True, faults={"rcpt2": b"550 5.1.1 no"}) as server:

        async def hook(recipients: list[str]) -> None:
            seen.append((recipients, server.commands.count("MAIL")))

        async with mailer(server, chunking=True) as m:
            await m.send(message(), before_end_of_data=hook)
    assert seen == [(list(RCPTS), 0)]


async def test_default_hook_gets_the_accepted_after_354() -> None:
    seen: list[list[str]] = []

    async def hook(recipients: list[str]) -> None:
        seen.append(recipients)

    async with RawSMTPServer(faults={"rcpt2": b"550 5.1.1 no"}) as server, mailer(server) as m:
        await m.send(message(), before_end_of_data=hook)
    assert seen == [["a@example.com", "c@example.com"]]


async def test_chunking_falls_back_where_chunking_is_not_offered() -> None:
    async with RawSMTPServer() as server:
        assert await send(server, chunking=True) == ALL
        assert server.commands.count("DATA") == 1


# -- cancellation leaves no open socket --------------------------------------


@pytest.mark.parametrize(
    ("point", "chunking"),
    [("mail", False), ("rcpt2", False), ("data", False), ("dot", False), ("bdat", True)],
)
async def test_cancellation_at_each_wait_closes_the_socket(point: str, chunking: bool) -> None:
    async with RawSMTPServer(chunking=chunking, faults={point: STALL}) as server:
        async with mailer(server, chunking=chunking) as m:
            task = asyncio.create_task(m.send(message()))
            await asyncio.wait_for(server.event(point).wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(200):  # bounded: the server sees the close within a few turns
            if server.open_connections == 0:
                break
            await asyncio.sleep(0.005)
        assert server.open_connections == 0


@pytest.mark.parametrize("chunking", [False, True])
async def test_cancellation_in_the_before_end_of_data_hook_closes_the_socket(
    chunking: bool,
) -> None:
    entered = asyncio.Event()

    async def hook(recipients: list[str]) -> None:
        entered.set()
        await asyncio.Event().wait()  # an outbox write that never finishes

    async with RawSMTPServer(chunking=chunking) as server:
        async with mailer(server, chunking=chunking) as m:
            task = asyncio.create_task(m.send(message(), before_end_of_data=hook))
            await asyncio.wait_for(entered.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(200):
            if server.open_connections == 0:
                break
            await asyncio.sleep(0.005)
        assert server.open_connections == 0
        assert server.stored == []  # nothing of the message left
