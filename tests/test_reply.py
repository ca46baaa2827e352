"""Reply.parse: every shape a server (or a relay's bounce) sends, never a crash.

Reply texts are real: smtp-sink and Postfix 3.7 as observed on loopback,
Gmail's and Yahoo's documented replies.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_smtp import Reply

_ENHANCED = re.compile(r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$")


def test_single_line_with_enhanced_status() -> None:
    assert Reply.parse("421 4.7.0 Try again later") == Reply(421, "4.7.0", "Try again later")


def test_single_line_without_enhanced_status() -> None:
    assert Reply.parse("550 Ip frequency limited") == Reply(550, None, "Ip frequency limited")


def test_multi_line_reply_is_joined_and_the_repeated_status_kept_once() -> None:
    # Gmail's 4.7.28 deferral, as it arrives on the wire.
    raw = (
        "421-4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of\r\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
        "421 4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
    )
    reply = Reply.parse(raw)
    assert reply.code == 421
    assert reply.enhanced == "4.7.28"
    assert reply.text.startswith("[203.0.113.5      15] Our system has detected")
    assert "unsolicited mail originating" in reply.text
    assert "4.7.28" not in reply.text
    assert "\n" not in reply.text


def test_multi_line_without_enhanced_status() -> None:
    # GMX sends no enhanced codes and folds its refusals over several lines.
    raw = (
        "554-gmx.net (mxgmx016) Nemesis ESMTP Service not available\n"
        "554 Reject due to policy restrictions."
    )
    reply = Reply.parse(raw)
    assert (reply.code, reply.enhanced) == (554, None)
    assert reply.text == (
        "gmx.net (mxgmx016) Nemesis ESMTP Service not available Reject due to policy restrictions."
    )


def test_code_given_separately_as_aiosmtplib_does() -> None:
    # aiosmtplib's exceptions carry (code, message) with the status in the message.
    reply = Reply.parse("4.7.0 realpeer.test Error: too many connections from 127.0.0.1", code=421)
    assert reply == Reply(421, "4.7.0", "realpeer.test Error: too many connections from 127.0.0.1")


def test_status_later_in_a_relayed_text_is_trusted_when_its_class_matches() -> None:
    reply = Reply.parse("550 host mx.example.net said: 5.7.1 Message rejected as spam")
    assert reply.enhanced == "5.7.1"


def test_status_later_in_the_text_with_another_class_is_not_trusted() -> None:
    reply = Reply.parse("550 host said: 4.7.1 something else")
    assert reply.enhanced is None


def test_bytes_are_decoded_and_bad_utf8_replaced() -> None:
    reply = Reply.parse(b"554 5.7.1 Mail rejet\xe9 (policy)")
    assert reply.code == 554
    assert reply.enhanced == "5.7.1"
    assert reply.text == "Mail rejet\ufffd (policy)"


def test_non_ascii_text_is_kept() -> None:
    reply = Reply.parse(
        "550 5.5.0 Le compte du destinataire est bloqué. The recipient account is blocked."
    )
    assert reply.text.startswith("Le compte du destinataire est bloqué.")


@pytest.mark.parametrize("raw", ["", "   ", "\r\n", "\r\n\r\n"])
def test_empty_reply(raw: str) -> None:
    assert Reply.parse(raw) == Reply(None, None, "")


@pytest.mark.parametrize("raw", ["999 what is this", "100 Continue", "000 zero"])
def test_codes_out_of_range_give_no_code(raw: str) -> None:
    reply = Reply.parse(raw)
    assert reply.code is None
    assert reply.text  # the text is kept for the explanation


def test_code_given_out_of_range_is_dropped() -> None:
    # aiosmtplib uses code -1 for a malformed response.
    assert Reply.parse("Malformed SMTP response line", code=-1).code is None


def test_garbage_keeps_its_text_and_has_no_code() -> None:
    assert Reply.parse("garbage in, garbage out") == Reply(None, None, "garbage in, garbage out")


def test_huge_reply_is_cut() -> None:
    # RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; a megabyte of
    # continuation lines must not make classification slow.
    raw = "".join(f"550-5.7.1 line {i} of a very long rejection\r\n" for i in range(30_000))
    reply = Reply.parse(raw + "550 5.7.1 end\r\n")
    assert reply.code == 550
    assert reply.enhanced == "5.7.1"
    assert len(reply.text) < 5_000


def test_code_class() -> None:
    assert Reply.parse("250 2.0.0 Ok").code_class == 2
    assert Reply.parse("421 closing").code_class == 4
    assert Reply.parse("no code").code_class is None


def test_str_shows_code_status_and_text() -> None:
    assert str(Reply.parse("421 4.7.0 Try again later")) == "421 4.7.0 Try again later"
    assert str(Reply(None, None, "")) == ""


def test_reply_is_frozen() -> None:
    reply = Reply.parse("250 ok")
    with pytest.raises(AttributeError):
        reply.code = 500  # type: ignore[misc]


_CODES = st.sampled_from(["", "250 ", "421 ", "421-", "450 ", "550 ", "552-", "999 ", "42 ", "5"])
_STATUS = st.sampled_from(["", "4.7.0 ", "5.1.1 ", "4.7.28 ", "5.7.606 ", "9.9.9 ", "4.", "5.1."])


@given(st.text())
def test_parse_never_raises_on_any_text(raw: str) -> None:
    _check(Reply.parse(raw))


@given(st.binary())
def test_parse_never_raises_on_any_bytes(raw: bytes) -> None:
    _check(Reply.parse(raw))


@given(_CODES, _STATUS, st.text(max_size=200))
def test_parse_never_raises_on_code_like_prefixes(code: str, status: str, text: str) -> None:
    _check(Reply.parse(code + status + text))


def _check(reply: Reply) -> None:
    assert reply.code is None or 200 <= reply.code <= 599
    assert reply.enhanced is None or _ENHANCED.match(reply.enhanced)
    assert isinstance(reply.text, str)


@given(
    st.sampled_from(["", "421 ", "250-", "550", "5.1.1 ", "450 4.7.1 ", " 552 5.2.2", "999 "]),
    st.text(alphabet=st.sampled_from(list("ab 4.5.7[]-\t\u00a0\u3000x0123")), max_size=40),
    st.none() | st.sampled_from([421, 550, 42, 4211, -1, 250, 354]),
)
def test_the_one_line_path_is_the_loop(head: str, rest: str, code: int | None) -> None:
    # Reply.parse reads a one-line reply with one match; it must give what
    # the line-by-line loop gives.
    from resilient_smtp._classify.reply import _parse_lines

    line = head + rest
    if len(line.splitlines()) != 1:
        return
    fast = Reply.parse(line, code=code)
    enhanced, text, loop_code = _parse_lines([line], code)
    assert fast.text == text
    if enhanced is not None:
        assert fast.enhanced == enhanced
    assert fast.code == (loop_code if loop_code is not None and 200 <= loop_code <= 599 else None)
    # Built without the dataclass __init__, it is still the same value.
    assert fast == Reply(fast.code, fast.enhanced, fast.text)
    assert hash(fast) == hash(Reply(fast.code, fast.enhanced, fast.text))
