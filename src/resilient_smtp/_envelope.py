"""The envelope: who the message is from and to, checked before any I/O.

Everything that can be known to be wrong without talking to a server is
refused here with :class:`InvalidMessageError`: no recipients, addresses with
CR or LF (SMTP command injection), addresses that are not ``local@domain``,
a message with no sender.  What depends on the server (a non-ASCII address
needs SMTPUTF8, RFC 6531) is checked after EHLO, still before MAIL FROM.
"""

from __future__ import annotations

import copy
import email.generator
import email.policy
import email.utils
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Any, cast

from ._errors import InvalidMessageError

__all__ = ["Envelope", "build_envelope", "render_message"]

# RFC 5321 §4.5.3.1: local part <= 64 octets, a path <= 256 octets (with the
# angle brackets), so an address <= 254.
_MAX_LOCAL = 64
_MAX_ADDRESS = 254
# Deliberately simple: one @, a non-empty local part and a domain made of
# labels or an address literal.  Servers are the judge of the rest.
_ADDRESS = re.compile(
    r"^[^@\s<>()\[\],;:\\\"]+@(?:[^@\s<>()\[\],;:\\\".]+(?:\.[^@\s<>()\[\],;:\\\".]+)*|\[[^\]\s]+\])$"
)
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_HIDDEN = ("bcc", "resent-bcc")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: MAIL FROM and the RCPT TO list (duplicates removed,
    order kept)."""

    sender: str
    recipients: tuple[str, ...]

    @property
    def needs_smtputf8(self) -> bool:
        """Whether any address is non-ASCII (RFC 6531 SMTPUTF8 required)."""
        return not all(a.isascii() for a in (self.sender, *self.recipients))


def check_address(address: object, what: str) -> str:
    """Return ``address`` if it is a usable SMTP address, else raise."""
    if not isinstance(address, str):
        raise InvalidMessageError(f"{what} must be a str, not {type(address).__name__}")
    if _FORBIDDEN.search(address):
        raise InvalidMessageError(f"{what} {address!r} contains CR, LF or NUL")
    if what == "sender" and address == "":
        return address  # the null reverse-path <> (RFC 5321 §4.5.5), for bounces
    local = address.rpartition("@")[0]
    if len(address) > _MAX_ADDRESS or len(local) > _MAX_LOCAL or not _ADDRESS.match(address):
        raise InvalidMessageError(f"{what} {address!r} is not a valid address (local@domain)")
    return address


def _header_addresses(message: Message, *names: str) -> list[str]:
    values: list[str] = []
    for name in names:
        values.extend(str(v) for v in message.get_all(name, []))
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def build_envelope(
    message: Message | bytes | str,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | str | None = None,
) -> Envelope:
    """The envelope for ``message``: the explicit ``sender``/``recipients``
    if given, else (as ``smtplib.send_message`` does) Sender or From, and
    To, Cc and Bcc.  Raises :class:`InvalidMessageError`."""
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(message, Message):
        if not isinstance(message, (bytes, str)):
            raise InvalidMessageError(
                f"message must be an email.message.Message, bytes or str, "
                f"not {type(message).__name__}"
            )
        if sender is None or recipients is None:
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
    checked = [check_address(r, "recipient") for r in recipients]
    if not checked:
        raise InvalidMessageError("the message has no recipients")
    return Envelope(
        sender=check_address(sender, "sender"),
        recipients=tuple(dict.fromkeys(checked)),
    )


def render_message(message: Message | bytes | str, *, smtputf8: bool = False) -> bytes:
    """The bytes to send after DATA: Bcc removed, CRLF line endings."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode("utf-8")
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
    generator.flatten(cast(Any, message))  # any Message, whatever its policy class
    return out.getvalue()
