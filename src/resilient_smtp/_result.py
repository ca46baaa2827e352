"""What a send did: one final state per recipient.

Every recipient of a send ends in exactly one :class:`State`:

- ``delivered``: the server accepted the message for it (250 after the data);
- ``rejected``: a permanent failure (its classification says why);
- ``deferred``: still transient when the retry policy stopped (attempts,
  deadline or budget spent); ``retry_in`` says when trying again is useful;
- ``ambiguous``: the connection broke after the end of the data was sent and
  before the reply; the message may have been delivered, so by default it is
  not sent again (a duplicate is worse than a delay for most mail).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._classify.classifier import Classification
from ._classify.taxonomy import _StrEnum
from ._errors import SendFailed

__all__ = ["RecipientResult", "SendFailed", "SendResult", "State", "failure_text"]


class State(_StrEnum):
    """The final state of one recipient."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome.

    ``classification`` is the last failure seen for the recipient (``None``
    when it was delivered at the first try); ``attempts`` counts the
    transactions that included it; ``retry_in`` (deferred only) is the
    earliest useful retry, in seconds from the end of the send.
    """

    address: str
    state: State
    classification: Classification | None = None
    attempts: int = 0
    retry_in: float | None = None
    destination: str | None = None

    @property
    def reason(self) -> str | None:
        """The classification's reason, for logs and tables."""
        return None if self.classification is None else self.classification.reason.value

    @property
    def explanation(self) -> str | None:
        """Why, with the underlying error or the server's words kept
        (``[Errno 111] Connect call failed``, a certificate error)."""
        return None if self.classification is None else failure_text(self.classification)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of :meth:`Mailer.send`, one :class:`RecipientResult` per
    recipient in envelope order.  ``result[address]`` looks one up."""

    recipients: tuple[RecipientResult, ...]
    attempts: int = 0
    elapsed: float = 0.0
    configuration_errors: tuple[str, ...] = ()
    """Settings a human must fix that kept recipients from delivery (TLS
    the destination cannot do, refused credentials, relay access), one line
    each; those recipients are deferred, not rejected."""

    def __getitem__(self, address: str) -> RecipientResult:
        for r in self.recipients:
            if r.address == address:
                return r
        raise KeyError(address)

    def __iter__(self) -> Iterator[RecipientResult]:
        return iter(self.recipients)

    def __len__(self) -> int:
        return len(self.recipients)

    def _in(self, state: State) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.state is state)

    @property
    def delivered(self) -> tuple[str, ...]:
        return self._in(State.DELIVERED)

    @property
    def rejected(self) -> tuple[str, ...]:
        return self._in(State.REJECTED)

    @property
    def deferred(self) -> tuple[str, ...]:
        return self._in(State.DEFERRED)

    @property
    def ambiguous(self) -> tuple[str, ...]:
        return self._in(State.AMBIGUOUS)

    @property
    def ok(self) -> bool:
        """Every recipient was delivered."""
        return all(r.state is State.DELIVERED for r in self.recipients)

    @property
    def retry_in(self) -> float | None:
        """The earliest useful retry among deferred recipients, if any."""
        waits = [r.retry_in for r in self.recipients if r.retry_in is not None]
        return min(waits) if waits else None

    def raise_for_failures(self) -> None:
        """Raise :class:`SendFailed` unless every recipient was delivered."""
        if not self.ok:
            raise SendFailed(self)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={len(self._in(s))}" for s in State if self._in(s))
        config = f", configuration_errors={len(self.configuration_errors)}"
        return f"SendResult({counts}, attempts={self.attempts}" + (
            config + ")" if self.configuration_errors else ")"
        )


def failure_text(c: Classification) -> str:
    """The explanation with the underlying error or reply, so the cause
    (``[Errno 111] Connect call failed``, a certificate error, the
    server's words) is never lost."""
    text = c.reply.text
    if c.reply.code is not None:
        text = f"{c.reply.code} {text}"
    if not text or text in c.explanation:
        return c.explanation
    return f"{c.explanation} ({text})"
