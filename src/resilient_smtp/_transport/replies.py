"""Reading SMTP replies off the wire: a pure, incremental parser.

The transport owns its reply reading so that it knows exactly which bytes
answer which command: a pipelined flight (RFC 2920) gets its replies back
in order, and a reply that arrives before the message was sent can never be
mistaken for the verdict on it.

The parser is strict about codes.  RFC 5321 §4.2 defines a reply code as
three digits whose first is 2 to 5 and whose second is 0 to 5; §4.2.1 says a
multi-line reply repeats the same code on every line.  Anything else (``999``,
``600``, ``199``, ``260``, text with no code, a multi-line reply that changes
its code) is not a reply we can act on: :class:`UnreadableReply`.  After the
final dot that makes the recipients ``ambiguous`` (the server may have taken
the message), never a verdict either way.

Sizes are bounded as aiosmtplib bounds them: a line longer than 8192 bytes,
or a reply longer than 32 KiB, is unreadable.  (RFC 5321 §4.5.3.1.5 caps a
reply line at 512 octets; the slack is for real servers that exceed it.)
"""

from __future__ import annotations

import aiosmtplib

from .._classify.reply import Reply

__all__ = ["MAX_LINE", "MAX_REPLY", "ReplyParser", "UnreadableReply", "make_reply"]

MAX_LINE = 8192
MAX_REPLY = 32 * 1024


class UnreadableReply(aiosmtplib.SMTPException):
    """The server sent bytes that are not an SMTP reply.

    The session cannot be trusted after this (which reply answers which
    command is lost), so the connection is closed.  The transaction treats it
    like a reply that never came: before the final dot the recipients wait
    for another attempt; after it they are ambiguous.
    """


def _valid_code(line: bytes) -> bool:
    return (
        len(line) >= 3
        and 0x32 <= line[0] <= 0x35  # 2..5
        and 0x30 <= line[1] <= 0x35  # 0..5
        and 0x30 <= line[2] <= 0x39  # 0..9
        and (len(line) == 3 or line[3] in b" -")
    )


def make_reply(code: int, lines: list[str]) -> Reply:
    """A :class:`Reply` from a code and its lines' texts (codes taken off).

    Success and go-ahead replies are never classified, so their text is not
    parsed for an enhanced status code (four of them a message)."""
    text = "\n".join(lines)
    if code < 400:
        return Reply(code, None, text)
    return Reply.parse(text, code=code)


class ReplyParser:
    """Bytes in, complete replies out, in the order the server sent them.

    :meth:`feed` takes whatever arrived and returns the replies it completed;
    an incomplete reply waits for more bytes.  Anything that is not a reply
    ends the list with an :class:`UnreadableReply`, and every later feed
    returns one too (the stream is out of step for good).
    """

    __slots__ = ("_broken", "_buffer", "_code", "_lines", "_size")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code = 0
        self._lines: list[str] = []
        self._size = 0
        self._broken: str | None = None

    @property
    def pending(self) -> bool:
        """Part of a reply has arrived, but not its last line."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> list[Reply | UnreadableReply]:
        """The replies ``data`` completed, in order; an :class:`UnreadableReply`
        is the last item when the stream stopped making sense (the replies
        before it still count)."""
        if self._broken is not None:
            return [UnreadableReply(self._broken)]
        self._buffer += data
        out: list[Reply | UnreadableReply] = []
        buf = self._buffer
        start = 0
        try:
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    if len(buf) - start > MAX_LINE:
                        self._fail(f"a reply line longer than {MAX_LINE} bytes")
                    break
                line = bytes(buf[start:end]).rstrip(b"\r")
                start = end + 1
                reply = self._line(line)
                if reply is not None:
                    out.append(reply)
        except UnreadableReply as exc:
            out.append(exc)
        finally:
            del buf[:start]
        return out

    def _line(self, line: bytes) -> Reply | None:
        if len(line) > MAX_LINE:
            self._fail(f"a reply line longer than {MAX_LINE} bytes")
        if not _valid_code(line):
            shown = line[:80].decode("utf-8", "replace")
            self._fail(f"not an SMTP reply line: {shown!r}")
        code = int(line[:3])
        if self._lines and code != self._code:
            self._fail(f"a multi-line reply changed its code from {self._code} to {code}")
        self._code = code
        self._size += len(line) + 2
        if self._size > MAX_REPLY:
            self._fail(f"a reply longer than {MAX_REPLY} bytes")
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if len(line) > 3 and line[3] == 0x2D:  # "-": more lines follow
            return None
        lines, self._lines, self._size = self._lines, [], 0
        return make_reply(code, lines)

    def _fail(self, why: str) -> None:
        self._broken = why
        raise UnreadableReply(why)
