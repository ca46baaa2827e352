"""An SMTP reply: basic code, enhanced status code, text.

Servers send replies in many shapes: single or multi-line (``421-...`` then
``421 ...``), with or without an RFC 3463 enhanced status code, sometimes
folded by a relay into one line.  :meth:`Reply.parse` accepts all of them and
never raises: a reply it cannot read keeps its text and gets ``code=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply", "parse_reply"]

# RFC 5321 §4.2: a reply line is three digits, then a space (last line) or a
# hyphen (continuation), then text.  RFC 3463 §2: class.subject.detail, where
# class is 2, 4 or 5, subject is up to three digits, detail up to three.
_LINE = re.compile(r"([2-5][0-9][0-9])([ -]|$)")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9.])")

# A reply is never usefully longer than this; RFC 5321 §4.5.3.1.5 caps a reply
# line at 512 octets.  Huge inputs are cut so classification stays fast.
_MAX_TEXT = 4096


# A status of one class anywhere in the text: the first one that
# _ENHANCED.finditer would find with that class, and the two characters it
# starts with (a quick test before the regex).
_LATE_STATUS = {
    c: (c + ".", re.compile(rf"{c}\.[0-9]{{1,3}}\.[0-9]{{1,3}}(?![0-9.])")) for c in "245"
}

# One stripped line: the code and its separator, then the status, each with
# the blanks after it (what _parse_lines does step by step), then the text.
_ONE_LINE = re.compile(
    r"(?:([2-5][0-9][0-9])(?:[ -]|$)\s*)?(?:([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])\s*)?"
    r"(.*)",
    re.DOTALL,
).match


def _parse_lines(lines: list[str], code: int | None) -> tuple[str | None, str, int | None]:
    """Several lines: take each line's code and status off, keep the first
    status and join the texts."""
    parts: list[str] = []
    enhanced: str | None = None
    for line in lines:
        line = line.strip()
        m = _LINE.match(line)
        if m:
            if code is None:
                code = int(m.group(1))
            line = line[m.end() :].lstrip()
        # Multi-line replies repeat the enhanced code on every line.
        e = _ENHANCED.match(line)
        if e and (enhanced is None or e.group(0) == enhanced):
            enhanced = e.group(0)
            line = line[e.end() :].lstrip()
        if line:
            parts.append(line)
    return enhanced, " ".join(parts), code


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed SMTP reply.

    ``code`` is the basic three-digit reply code (or ``None`` when there was
    no reply, for example a dropped connection), ``enhanced`` the RFC 3463
    status code such as ``"4.7.0"`` (or ``None``), and ``text`` the human
    text with the codes taken off, multi-line replies joined by spaces.
    """

    code: int | None
    enhanced: str | None = None
    text: str = ""

    @classmethod
    def parse(cls, raw: str | bytes, *, code: int | None = None) -> Reply:
        """Parse a reply as received from the wire or from a bounce.

        ``code`` is given when the caller already knows the basic code (as
        aiosmtplib's exceptions do) and ``raw`` holds only the message.
        """
        return parse_reply(raw, code)

    @property
    def code_class(self) -> int | None:
        """The first digit of the basic code (2, 3, 4 or 5), else ``None``."""
        return None if self.code is None else self.code // 100

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)


_new = object.__new__
_set_code = Reply.__dict__["code"].__set__
_set_enhanced = Reply.__dict__["enhanced"].__set__
_set_text = Reply.__dict__["text"].__set__
# "200" .. "599" -> 200 .. 599: a look-up instead of int() on the hot path.
_CODE_OF = {str(n): n for n in range(200, 600)}
_LATE_OF = {n: _LATE_STATUS[str(n)[0]] for n in _CODE_OF.values() if str(n)[0] in _LATE_STATUS}


def parse_reply(raw: str | bytes, code: int | None = None) -> Reply:
    """:meth:`Reply.parse`, as a plain function (the classifier calls it for
    every reply string)."""
    if type(raw) is not str and isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    lines = raw[:_MAX_TEXT].splitlines()
    if len(lines) == 1:
        # Most replies are one line: one match takes the code and the
        # status off its front (the same steps as _parse_lines).
        head, enhanced, text = _ONE_LINE(lines[0].strip()).group(1, 2, 3)  # type: ignore[union-attr]
        if code is None and head is not None:
            code = _CODE_OF[head]
    else:
        enhanced, text, code = _parse_lines(lines, code)
    if code is not None and enhanced is None:
        # Relays and bounces sometimes put the status later in the text
        # (after an IP address, say); only trust one whose class matches
        # the code's class (a 3xx has none).
        late = _LATE_OF.get(code) if 200 <= code <= 599 else _LATE_STATUS.get(str(code)[0])
        if late is not None and late[0] in text:
            e = late[1].search(text)
            enhanced = e.group(0) if e is not None else None
    if code is not None and not 200 <= code <= 599:
        code = None
    # Reply(code, enhanced, text) without the frozen dataclass's __init__,
    # whose object.__setattr__ calls cost a tenth of a fresh classification:
    # the same frozen value.
    reply: Reply = _new(Reply)
    _set_code(reply, code)
    _set_enhanced(reply, enhanced)
    _set_text(reply, text)
    return reply
