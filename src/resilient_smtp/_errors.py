"""Errors.  One base class, :class:`ResilientSMTPError`, for every error this
library raises.

A failure to deliver is not an exception: ``Mailer.send`` returns it in the
:class:`~resilient_smtp.SendResult` (``raise_for_failures()`` turns it into
:class:`SendFailed`).  The other exceptions here are for input that cannot
be sent, for the pieces a user implements (an MX resolver raises
:class:`DomainNotFound`, a connection raises :class:`BodyNotSent`), and for
the Redis link, whose failures the Redis-backed parts catch themselves.
"""

from __future__ import annotations

import smtplib
from typing import TYPE_CHECKING, Any

import aiosmtplib

if TYPE_CHECKING:
    from ._classify.classifier import Classification
    from ._result import SendResult

__all__ = [
    "BodyNotSent",
    "DomainNotFound",
    "InvalidMessageError",
    "RedisUnavailable",
    "ResilientSMTPError",
    "SendFailed",
]


class ResilientSMTPError(Exception):
    """Base class of every error this library raises."""


class InvalidMessageError(ResilientSMTPError, ValueError):
    """The message or its envelope cannot be sent as given (raised before
    any network traffic)."""


class DomainNotFound(ResilientSMTPError, LookupError):
    """The domain does not exist (NXDOMAIN), or publishes a null MX
    (RFC 7505).  An MX resolver raises it; the recipients are rejected."""


class BodyNotSent(ResilientSMTPError, aiosmtplib.SMTPServerDisconnected):
    """The connection was gone before any of the message was written, so the
    message certainly did not arrive (not the ambiguous window).

    A :class:`~resilient_smtp.Connection`'s ``send_body`` raises it; being an
    ``SMTPServerDisconnected`` too, it is classified as a connection error.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RedisUnavailable(ResilientSMTPError):
    """Redis did not answer in time, or answered with an error (the fallback applies)."""


class SendFailed(ResilientSMTPError, smtplib.SMTPException):
    """Not every recipient was delivered; ``result`` has each one's state.

    Also an :class:`smtplib.SMTPException` (as aiosmtplib's errors are also
    ``ConnectionError`` where that fits): Django documents that
    ``send_mail()`` raises ``SMTPException``, and code written for smtplib
    or Django's SMTP backend catches exactly that.  ``recipients`` maps each
    recipient not delivered to ``(code, text)`` of its last reply, like
    ``smtplib.SMTPRecipientsRefused.recipients``.
    """

    def __init__(self, result: SendResult) -> None:
        parts = [
            f"{r.address}: {r.state.value} ({r.reason}: {r.explanation})"
            for r in result.recipients
            if r.state.value != "delivered"
        ]
        super().__init__("not delivered to " + "; ".join(parts))
        self.result = result

    @property
    def classification(self) -> Classification | None:
        """The verdict on sending the whole message again, which is what
        ``RetryPolicy.on_exception`` reads from an exception (and
        ``SendFailed`` is an ``OSError`` now, which it catches): transient
        only when nobody got the message and every failure was transient.
        Once anyone got it (or may have: ambiguous), sending it all again
        would duplicate it, so the verdict is permanent; retry
        ``result.deferred`` alone instead."""
        results = self.result.recipients
        failed = [
            r for r in results if r.classification is not None and r.state.value != "delivered"
        ]
        if not failed:
            return None
        reached = any(r.state.value in ("delivered", "ambiguous") for r in results)
        permanent = next((r for r in failed if r.state.value == "rejected"), None)
        if permanent is not None:
            return permanent.classification
        c = failed[0].classification
        assert c is not None
        if not reached and all(r.state.value == "deferred" for r in failed):
            return c
        from ._classify.classifier import Classification as _Classification

        return _Classification.without_reply(
            c.reason,
            transient=False,
            session_over=False,
            explanation=(
                f"partly delivered ({c.explanation}); sending the whole message again "
                "would duplicate it: retry only the deferred recipients"
            ),
        )

    @property
    def recipients(self) -> dict[str, tuple[int | None, str]]:
        out: dict[str, tuple[int | None, str]] = {}
        for r in self.result.recipients:
            if r.state.value != "delivered":
                c = r.classification
                out[r.address] = (None, "") if c is None else (c.reply.code, c.reply.text)
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its args (the text); rebuild from the result.
        return (type(self), (self.result,))
