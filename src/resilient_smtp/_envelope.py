"""The envelope and the message, checked before any I/O, never repaired.

Everything that can be known to be wrong without talking to a server is
refused here with :class:`InvalidMessageError`, before the first byte:

- an address that does not parse exactly as given.  ``email.utils.parseaddr``
  "repairs" malformed input (``"to@other.com <to@example.com>"`` becomes
  ``to@other.com``, ``"to\\nevil@example.com"`` becomes ``toevil@...``), so it
  is never used: the small grammar below (RFC 5322 §3.4 mailboxes, without
  comments) either matches the whole string or the address is refused, and
  the address sent is the addr-spec it matched, character for character;
- CR, LF or NUL in an address (SMTP command injection);
- a header that could start a new header or end the header section when
  rendered (header injection): a line break not followed by folding white
  space, NUL, a bad field name.  ``EmailMessage`` refuses this itself; a
  compat32 ``email.message.Message`` (what ``message_from_bytes`` and
  Django build) does not, and the generator writes ``"x\\r\\nBcc: ..."``
  out as two header lines;
- a raw ``bytes``/``str`` message whose header section is not well formed
  (NUL, a bare CR, mixed line endings, a line that is neither a field nor a
  continuation), or a ``str`` that cannot be encoded as UTF-8.

What only the server can reveal (a non-ASCII local part needs SMTPUTF8,
RFC 6531) becomes the affected recipients' result, not an exception.  A
non-ASCII domain is IDNA-encoded on the wire when the server does not offer
SMTPUTF8 (as Django's SMTP backend does).
"""

from __future__ import annotations

import copy
import email.errors
import email.generator
import email.policy
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any, cast

from ._classify.classifier import Classification
from ._classify.taxonomy import Reason
from ._errors import InvalidMessageError

if TYPE_CHECKING:
    from ._transport.transaction import BeforeEndOfData, Outcome

__all__ = [
    "Envelope",
    "WireBatch",
    "build_envelope",
    "check_address",
    "check_message",
    "check_mx_envelope",
    "idna_address",
    "parse_address_list",
    "parse_mailbox",
    "render_message",
    "wire_batch",
]

# RFC 5321 §4.5.3.1: local part <= 64 octets, a path <= 256 octets (with the
# angle brackets), so an address <= 254.
_MAX_LOCAL = 64
_MAX_ADDRESS = 254

# RFC 5322 §3.2.3 atext, plus any non-ASCII character (RFC 6532 §3.2).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# RFC 5322 §3.2.4: qtext or a quoted-pair; never CR, LF or NUL.
_QUOTED = r'"(?:[^"\\\r\n\x00]|\\[^\r\n\x00])*"'
_LOCAL = rf"(?:{_DOT_ATOM}|{_QUOTED})"
# RFC 5321 §4.1.2 domain: letters, digits, hyphens (and underscores, which
# real host names carry), or non-ASCII for an IDN; or an address literal.
_LETDIG = r"[A-Za-z0-9_\u0080-\U0010ffff]"
_LABEL = rf"{_LETDIG}(?:[A-Za-z0-9_\-\u0080-\U0010ffff]*{_LETDIG})?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[^\[\]\\\s\x00]+\])"
# A bare local part ("django") is refused, unlike Django (its ticket
# #15042): RFC 5321 §4.1.2 wants a domain in every path but <Postmaster>,
# and in an application a missing domain is a bug far more often than a
# relay trusted to append its own (see docs/sync.md).
_ADDR_SPEC = rf"{_LOCAL}@{_DOMAIN}"
_ADDRESS = re.compile(_ADDR_SPEC)
# RFC 5322 §3.2.5 phrase: words (atoms, which may carry the periods of
# obs-phrase as in "J. Smith", or quoted strings) separated by white space.
_WORD = rf"(?:(?:{_ATEXT}|\.)+|{_QUOTED})"
_MAILBOX = re.compile(
    rf"(?P<bare>{_ADDR_SPEC})|(?:{_WORD}(?:[ \t]+{_WORD})*)?[ \t]*<(?P<angle>{_ADDR_SPEC})>"
)
_GROUP_NAME = re.compile(rf"{_WORD}(?:[ \t]+{_WORD})*")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
# RFC 5322 §3.6.8: a field name is printable ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_RAW_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_FOLD = re.compile(r"(?:\r\n|\n|\r)[ \t]+")
_HIDDEN = ("bcc", "resent-bcc")
# Defects the stdlib notes that are not repairs: obsolete but valid syntax,
# and UTF-8 local parts (RFC 6532, sent with SMTPUTF8).
_HARMLESS = (email.errors.ObsoleteHeaderDefect, email.errors.NonASCIILocalPartDefect)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: MAIL FROM and the RCPT TO list (duplicates removed,
    order kept)."""

    sender: str
    recipients: tuple[str, ...]

    @property
    def needs_smtputf8(self) -> bool:
        """Whether any address is non-ASCII, so SMTPUTF8 (RFC 6531) is
        wanted: a non-ASCII local part requires it; a non-ASCII domain can
        also go IDNA-encoded to a server without it (see :func:`wire_batch`)."""
        return not all(a.isascii() for a in (self.sender, *self.recipients))


def _local(address: str) -> str:
    return address.rpartition("@")[0]


def _refuse(what: str, address: str, why: str) -> InvalidMessageError:
    return InvalidMessageError(f"Invalid address: {what} {address!r} {why}")


def check_address(address: object, what: str) -> str:
    """Return ``address`` if it is exactly an addr-spec (``local@domain``),
    else raise :class:`InvalidMessageError`."""
    if not isinstance(address, str):
        raise InvalidMessageError(f"{what} must be a str, not {type(address).__name__}")
    if _FORBIDDEN.search(address):
        raise _refuse(what, address, "contains CR, LF or NUL")
    if what == "sender" and address == "":
        return address  # the null reverse-path <> (RFC 5321 §4.5.5), for bounces
    if not _ADDRESS.fullmatch(address):
        raise _refuse(what, address, "is not a valid address (local@domain), exactly as given")
    if not _encodable(address):
        raise _refuse(what, address, "is not valid Unicode (a lone surrogate)")
    local, _, domain = address.rpartition("@")
    if len(address.encode()) > _MAX_ADDRESS or len(local.encode()) > _MAX_LOCAL:
        raise _refuse(what, address, "is too long (RFC 5321 §4.5.3.1)")
    if not domain.isascii():
        try:
            domain.encode("idna")
        except UnicodeError as exc:
            raise _refuse(what, address, f"has a domain that is not a valid IDN ({exc})") from None
    return address


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def idna_address(address: str) -> str:
    """``address`` with its domain IDNA-encoded (the local part as is).
    Already-ASCII domains, ``xn--`` ones included, are left alone."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{domain.encode('idna').decode('ascii')}"


def parse_mailbox(value: object, what: str = "address") -> str:
    """The addr-spec of one mailbox, ``"local@domain"`` or
    ``"Display Name <local@domain>"``; anything else is refused, never
    repaired.  ``"to@other.com <to@example.com>"`` is refused: an unquoted
    ``@`` is not allowed in a display name, and guessing which address was
    meant is what lets mail go to the wrong one."""
    if not isinstance(value, str):
        raise InvalidMessageError(f"{what} must be a str, not {type(value).__name__}")
    if _FORBIDDEN.search(value):
        raise _refuse(what, value, "contains CR, LF or NUL")
    m = _MAILBOX.fullmatch(value.strip(" \t"))
    if m is None:
        raise _refuse(
            what, value, "is not a valid address ('local@domain' or 'Name <local@domain>')"
        )
    return check_address(m.group("bare") or m.group("angle"), what)


def parse_address_list(value: str, what: str = "address") -> list[str]:
    """The addr-specs of an address-list header value (RFC 5322 §3.4), with
    groups (``undisclosed-recipients:;``).  Folding is undone first."""
    text = _FOLD.sub(" ", value)
    if not text.strip(" \t"):
        return []  # an empty field, as a parsed message may carry
    found: list[str] = []
    for item, in_group in _split_list(text, what):
        item = item.strip(" \t")
        if in_group and not item:
            continue  # an empty group, or the end of one
        found.append(parse_mailbox(item, what))
    return found


def _split_list(text: str, what: str) -> list[tuple[str, bool]]:
    """Split at the commas (and group delimiters) outside quotes and angle
    brackets; each part says whether it lies in a group."""
    parts: list[tuple[str, bool]] = []
    start = 0
    quoted = angle = group = closed = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif not angle and ch == ",":
            if not (closed and not text[start:i].strip(" \t")):
                parts.append((text[start:i], group))
            start, closed = i + 1, False
        elif not angle and ch == ":" and not group:
            if not _GROUP_NAME.fullmatch(text[start:i].strip(" \t")):
                raise _refuse(what, text, "has a ':' that does not start a group")
            group, start = True, i + 1
        elif not angle and ch == ";" and group:
            parts.append((text[start:i], True))
            group, closed, start = False, True, i + 1
        i += 1
    if quoted or angle or group:
        raise _refuse(what, text, "has an unclosed quote, '<' or group")
    rest = text[start:]
    if rest.strip(" \t") or not closed:
        parts.append((rest, False))
    return parts


def _header_addresses(message: Message, *names: str) -> list[str]:
    values: list[str] = []
    for name in names:
        for v in message.get_all(name, []):
            # An EmailMessage header has been parsed already, and str() of
            # it is the parser's repair ("\\@a" reads '"\\"@a'): its
            # defects say whether the original parsed as it stands.
            for defect in getattr(v, "defects", ()):
                if not isinstance(defect, _HARMLESS):
                    raise InvalidMessageError(
                        f"Invalid address: the {name} header {str(v)!r} is not a valid "
                        f"address as given ({defect})"
                    )
            values.extend(parse_address_list(str(v), f"the {name} header"))
    return values


def check_message(message: object) -> None:
    """Refuse a message that would not reach the server as it was checked:
    header injection in any part of a ``Message``, or a malformed raw one.
    Raises :class:`InvalidMessageError`."""
    if isinstance(message, Message):
        for part in message.walk():
            for name, value in part.items():
                _check_header(str(name), str(value))
    elif isinstance(message, (bytes, str)):
        data = message
        if isinstance(data, str):
            try:
                data = data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidMessageError(
                    f"the message is not valid Unicode ({exc.reason} at {exc.start})"
                ) from None
        _check_raw_header(data)
    else:
        raise InvalidMessageError(
            f"message must be an email.message.Message, bytes or str, not {type(message).__name__}"
        )


def _check_header(name: str, value: str) -> None:
    if not _FIELD_NAME.fullmatch(name):
        raise InvalidMessageError(f"invalid header name {name!r}")
    if "\x00" in value:
        raise InvalidMessageError(f"the {name} header contains NUL")
    if not _encodable(value):
        raise InvalidMessageError(f"the {name} header is not valid Unicode (a lone surrogate)")
    # The generator splits a value at every line break str.splitlines()
    # knows (\r, \n, but also \v, \f, \x1c-\x1e, \x85, \u2028, \u2029) and
    # writes each piece on its own line: a piece that does not start with
    # white space becomes a header of its own, an empty one ends the headers.
    lines = value.splitlines(keepends=True)
    if lines and lines[-1] != lines[-1].splitlines()[0]:
        raise InvalidMessageError(f"the {name} header value ends with a line break: {value!r}")
    for line in lines[1:]:
        if line[:1] not in (" ", "\t") or not line.strip():
            raise InvalidMessageError(
                f"the {name} header contains a line break that is not folding "
                f"(header injection): {value!r}"
            )


def _check_raw_header(data: bytes) -> None:
    """The header section of a raw message: fields and continuations only."""
    if not _RAW_FIELD.match(data):
        return  # no header section: all of it is body
    end = len(data)
    for blank in (b"\r\n\r\n", b"\n\n"):
        at = data.find(blank)
        if at != -1:
            end = min(end, at)
    head = data[:end]
    if b"\x00" in head:
        raise InvalidMessageError("the message's header section contains NUL")
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf:
        raise InvalidMessageError("the message's header section contains a bare CR")
    if crlf and head.count(b"\n") != crlf:
        raise InvalidMessageError("the message's header section mixes CRLF and bare LF lines")
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if not line.strip():
                raise InvalidMessageError("the message's header section has a blank-looking line")
        elif not _RAW_FIELD.match(line):
            raise InvalidMessageError(
                f"the message's header section has a line that is not a header: {line[:60]!r}"
            )


def build_envelope(
    message: Message | bytes | str,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | str | None = None,
) -> Envelope:
    """The envelope for ``message``: the explicit ``sender``/``recipients``
    (addr-specs) if given, else (as ``smtplib.send_message`` does) Sender or
    From, and To, Cc and Bcc, parsed exactly.  Also checks the message (see
    :func:`check_message`).  Raises :class:`InvalidMessageError`."""
    check_message(message)
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(message, Message) and (sender is None or recipients is None):
        raise InvalidMessageError(
            "a raw (bytes/str) message needs explicit sender= and recipients="
        )
    if sender is None:
        assert isinstance(message, Message)
        found = _header_addresses(message, "Sender") or _header_addresses(message, "From")
        if not found:
            raise InvalidMessageError("the message has no From (or Sender) and no sender= given")
        sender = found[0]
    if recipients is None:
        assert isinstance(message, Message)
        recipients = _header_addresses(message, "To", "Cc", "Bcc")
    checked: dict[str, str] = {}
    for r in recipients:
        r = check_address(r, "recipient")
        # One RCPT per address on the wire: "a@bücher.de" and
        # "a@xn--bcher-kva.de" are the same mailbox.
        checked.setdefault(r if r.isascii() else idna_address(r), r)
    if not checked:
        raise InvalidMessageError("the message has no recipients")
    return Envelope(sender=check_address(sender, "sender"), recipients=tuple(checked.values()))


def check_mx_envelope(envelope: Envelope) -> None:
    """MX delivery looks up each recipient's domain: an address literal
    (``user@[192.0.2.1]``) has none to look up."""
    for r in envelope.recipients:
        if r.endswith("]"):
            raise _refuse("recipient", r, "has an address literal, which MX delivery cannot route")


@dataclass(slots=True)
class WireBatch:
    """One transaction's addresses as they go on the wire, and the way back
    to the caller's spelling of them (for results and the outbox hook)."""

    sender: str
    batch: list[str]
    smtputf8: bool
    refused: dict[str, Classification] = field(default_factory=dict)
    back: dict[str, str] | None = None

    def hook(self, hook: BeforeEndOfData | None) -> BeforeEndOfData | None:
        back = self.back
        if hook is None or back is None:
            return hook

        async def in_callers_spelling(accepted: list[str]) -> None:
            await hook([back.get(a, a) for a in accepted])

        return in_callers_spelling

    def restore(self, out: Outcome) -> Outcome:
        """``out`` keyed by the caller's addresses, with the refused ones."""
        back = self.back
        if back is not None:
            out.delivered = [back.get(a, a) for a in out.delivered]
            out.split = [back.get(a, a) for a in out.split]
            for name in ("rejected", "pending", "ambiguous"):
                old = getattr(out, name)
                setattr(out, name, {back.get(a, a): c for a, c in old.items()})
        out.rejected.update(self.refused)
        return out

    @staticmethod
    def refuse_all(addresses: Iterable[str], why: str) -> dict[str, Classification]:
        c = Classification.without_reply(
            Reason.CONTENT_REJECTED, transient=False, session_over=False, explanation=why
        )
        return dict.fromkeys(addresses, c)


def wire_batch(
    sender: str, pending: Iterable[str], smtputf8_offered: bool, host: str
) -> WireBatch:
    """The addresses of one transaction on a server that does (or does not)
    offer SMTPUTF8.  Domains travel IDNA-encoded (an A-label is the same
    domain to every server, and Django's headers carry A-labels too); a
    non-ASCII local part needs SMTPUTF8 (RFC 6531 §3.4): without it, the
    recipients that have one (or all, if the sender has one) are refused
    with a reason while the others go on.  The message is rendered for
    SMTPUTF8 whenever it is used."""
    pending = list(pending)
    needs = [a for a in (sender, *pending) if not _local(a).isascii()]
    refused: dict[str, Classification] = {}
    # SMTPUTF8 whenever the server offers it and an address is non-ASCII:
    # a message built with such addresses has them in its headers, and
    # only SMTPUTF8 lets those travel as UTF-8 (RFC 6532).
    idn = not (sender.isascii() and all(a.isascii() for a in pending))
    smtputf8 = bool(needs) or (idn and smtputf8_offered)
    if needs and not smtputf8_offered:
        smtputf8 = False
        hit = pending if needs[0] is sender else [a for a in pending if a in needs]
        c = Classification.without_reply(
            Reason.POLICY_REJECTED,
            transient=False,
            session_over=False,
            explanation=(
                f"{needs[0]!r} has a non-ASCII local part, which needs SMTPUTF8 "
                f"(RFC 6531); {host} does not offer it"
            ),
        )
        refused = dict.fromkeys(hit, c)
        pending = [a for a in pending if a not in refused]
    if sender.isascii() and all(a.isascii() for a in pending):
        return WireBatch(sender, pending, smtputf8, refused)
    wire = {idna_address(a): a for a in pending}
    return WireBatch(idna_address(sender), list(wire), smtputf8, refused, wire)


def render_message(message: Message | bytes | str, *, smtputf8: bool = False) -> bytes:
    """The bytes to send after DATA: Bcc removed, CRLF line endings.
    A message that cannot be rendered raises :class:`InvalidMessageError`."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        try:
            return message.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMessageError(f"the message is not valid Unicode ({exc.reason})") from None
    if "Bcc" in message or "Resent-Bcc" in message:
        # Bcc recipients get the message through the envelope, never the
        # header.  A shallow copy with its own header list leaves the
        # caller's message untouched without copying the body.
        clone = copy.copy(message)
        state = vars(clone)  # a new dict: Message keeps its headers in "_headers"
        state["_headers"] = [h for h in state["_headers"] if h[0].lower() not in _HIDDEN]
        message = clone
    policy = email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP
    # The generator, not message.as_bytes(policy=...): subclasses such as
    # Django's SafeMIMEText override as_bytes() without the policy argument.
    out = io.BytesIO()
    generator = email.generator.BytesGenerator(out, mangle_from_=False, policy=policy)
    try:
        generator.flatten(cast(Any, message))  # any Message, whatever its policy class
    except (UnicodeError, LookupError, ValueError, TypeError) as exc:
        raise InvalidMessageError(f"the message cannot be rendered: {exc}") from exc
    return out.getvalue()
