"""An SMTP reply: basic code, enhanced status code, text.

Servers send replies in many shapes: single or multi-line (``421-...`` then
``421 ...``), with or without an RFC 3463 enhanced status code, sometimes
folded by a relay into one line.  :meth:`Reply.parse` accepts all of them and
never raises: a reply it cannot read keeps its text and gets ``code=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply"]

# RFC 5321 §4.2: a reply line is three digits, then a space (last line) or a
# hyphen (continuation), then text.  RFC 3463 §2: class.subject.detail, where
# class is 2, 4 or 5, subject is up to three digits, detail up to three.
_LINE = re.compile(r"([2-5][0-9][0-9])([ -]|$)")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9.])")

# A reply is never usefully longer than this; RFC 5321 §4.5.3.1.5 caps a reply
# line at 512 octets.  Huge inputs are cut so classification stays fast.
_MAX_TEXT = 4096


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
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        raw = raw[:_MAX_TEXT]
        parts: list[str] = []
        enhanced: str | None = None
        for line in raw.splitlines():
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
        text = " ".join(parts)
        if enhanced is None and code is not None:
            # Relays and bounces sometimes put the status later in the text
            # (after an IP address, say); only trust one whose class matches
            # the code's class.
            first = str(code)[0]
            enhanced = next(
                (e.group(0) for e in _ENHANCED.finditer(text) if e.group(1) == first), None
            )
        if code is not None and not 200 <= code <= 599:
            code = None
        return cls(code=code, enhanced=enhanced, text=text)

    @property
    def code_class(self) -> int | None:
        """The first digit of the basic code (2, 3, 4 or 5), else ``None``."""
        return None if self.code is None else self.code // 100

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)
