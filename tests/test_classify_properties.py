"""Bad input gets a clear answer, never a crash (hypothesis).

Arbitrary text, arbitrary bytes, code-like prefixes, non-ASCII and huge
multi-line replies: classify() always returns a Classification whose fields
are consistent, and every 421 ends the session.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import Action, Classification, Reason, Scope, Stage, classify

_CODES = st.sampled_from(
    ["", "220 ", "250 ", "421 ", "421-", "450 ", "451 ", "452 ", "500 ", "550 ", "552 ",
     "554-", "599 ", "600 ", "999 ", "42 ", "4211 ", "-1 "]
)  # fmt: skip
_STATUS = st.sampled_from(
    ["", "4.7.0 ", "5.1.1 ", "4.7.28 ", "5.7.606 ", "4.4.7 ", "2.0.0 ", "9.9.9 ", "5.", "4.7.",
     "5.999.999 ", "5.1000.1 "]
)  # fmt: skip
_HOSTS = st.one_of(
    st.none(),
    st.sampled_from(["mta6.am0.yahoodns.net", "aspmx.l.google.com", "mx1.qq.com", ""]),
    st.text(max_size=40),
)
_STAGES = st.one_of(st.none(), st.sampled_from(list(Stage)))


def _consistent(c: Classification) -> None:
    assert isinstance(c, Classification)
    assert isinstance(c.reason, Reason)
    assert isinstance(c.transient, bool)
    assert isinstance(c.action, Action)
    assert isinstance(c.scope, Scope)
    assert c.explanation
    assert c.retry_after is None or 0 < c.retry_after <= 7 * 86400
    assert c.reply.code is None or 200 <= c.reply.code <= 599
    if c.reply.code == 421:
        assert c.session_over


@given(st.text(), _HOSTS, _STAGES)
def test_any_text(text: str, host: str | None, stage: Stage | None) -> None:
    _consistent(classify(text, host=host, stage=stage))


@given(st.binary())
def test_any_bytes(raw: bytes) -> None:
    _consistent(classify(raw))


@given(st.binary())
def test_any_bytes_decoded_as_latin1(raw: bytes) -> None:
    # What a caller gets when it decodes wire bytes leniently itself.
    _consistent(classify(raw.decode("latin-1")))


@given(_CODES, _STATUS, st.text(max_size=300), _STAGES)
def test_code_like_prefixes(code: str, status: str, text: str, stage: Stage | None) -> None:
    _consistent(classify(code + status + text, stage=stage))


@given(st.sampled_from(["421 ", "421-"]), _STATUS, st.text(max_size=300), _HOSTS, _STAGES)
def test_every_421_ends_the_session(
    code: str, status: str, text: str, host: str | None, stage: Stage | None
) -> None:
    c = classify(code + status + text, host=host, stage=stage)
    assert c.reply.code == 421
    assert c.session_over
    assert c.explanation.startswith("421: the server closed the session")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["421", "450", "550", "554"]), st.text(max_size=80)),
        min_size=100,
        max_size=3000,
    )
)
def test_huge_multi_line_replies(lines: list[tuple[str, str]]) -> None:
    raw = "".join(f"{code}-{text}\r\n" for code, text in lines[:-1])
    raw += f"{lines[-1][0]} {lines[-1][1]}\r\n"
    c = classify(raw)
    _consistent(c)
    assert c.reply.code == int(lines[0][0])


@given(st.text(alphabet=st.characters(min_codepoint=0x80), max_size=200))
def test_non_ascii_text(text: str) -> None:
    _consistent(classify("550 5.7.1 " + text))
    _consistent(classify(text))
