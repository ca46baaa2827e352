"""The reply parser the transport reads every reply with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_smtp._transport.connection import dot_stuff, dot_unstuff
from resilient_smtp._transport.replies import MAX_LINE, ReplyParser, UnreadableReply


def feed(*chunks: bytes) -> list[object]:
    p = ReplyParser()
    out: list[object] = []
    for c in chunks:
        out.extend(p.feed(c))
    return out


def test_single_and_multi_line_replies_in_one_packet() -> None:
    out = feed(b"250-first\r\n250-second\r\n250 last\r\n354 go ahead\r\n")
    assert [(r.code, r.text) for r in out] == [(250, "first\nsecond\nlast"), (354, "go ahead")]  # type: ignore[attr-defined]


def test_a_reply_split_across_reads_waits_for_its_last_line() -> None:
    p = ReplyParser()
    assert p.feed(b"421-4.7.0 Too many") == []
    assert p.pending
    assert p.feed(b"\r\n421 4.7.0 try ") == []
    (reply,) = p.feed(b"later\r\n")
    assert reply.code == 421  # type: ignore[union-attr]
    assert reply.enhanced == "4.7.0"  # type: ignore[union-attr]
    assert not p.pending


def test_a_bare_code_is_a_reply() -> None:
    (reply,) = feed(b"250\r\n")
    assert reply.code == 250  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [
        b"999 weird\r\n",
        b"600 nope\r\n",
        b"199 low\r\n",
        b"260 x\r\n",
        b"garbage\r\n",
        b"25 x\r\n",
        b"250x\r\n",
        b"250-a\r\n251 b\r\n",
    ],
)
def test_invalid_codes_are_unreadable(raw: bytes) -> None:
    out = feed(raw)
    assert isinstance(out[-1], UnreadableReply)


def test_replies_before_garbage_still_count_and_garbage_sticks() -> None:
    p = ReplyParser()
    out = p.feed(b"250 ok\r\n999 bad\r\n250 ok\r\n")
    assert out[0].code == 250  # type: ignore[union-attr]
    assert isinstance(out[1], UnreadableReply)
    assert len(out) == 2
    assert isinstance(p.feed(b"250 ok\r\n")[0], UnreadableReply)


def test_size_bounds() -> None:
    assert isinstance(feed(b"250 " + b"x" * (MAX_LINE + 1))[-1], UnreadableReply)
    many = b"".join(b"250-" + b"y" * 500 + b"\r\n" for _ in range(100))
    assert isinstance(feed(many)[-1], UnreadableReply)


@given(st.binary(max_size=300))
def test_any_bytes_give_replies_or_unreadable_never_an_exception(data: bytes) -> None:
    for item in feed(data):
        assert isinstance(item, UnreadableReply) or 200 <= item.code <= 559  # type: ignore[attr-defined]


@given(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"")))
def test_bdat_chunk_is_the_unstuffed_message(body: bytes) -> None:
    expected = body.replace(b"\n", b"\r\n")
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert dot_unstuff(dot_stuff(body)) == expected
