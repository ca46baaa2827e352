"""One SMTP transaction, step by step, with every reply classified.

:func:`run_transaction` sends MAIL, RCPT for each recipient, DATA and the
message on an open connection and sorts the recipients of the batch by what
the server said.  It never raises for a server's answer or a broken
connection: the outcome records where it stopped and why, so the Mailer
knows each recipient's reply even when the server says 421 half-way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

from .._classify.classifier import Classification
from .._classify.reply import Reply
from .._classify.taxonomy import Reason, Scope, Stage
from .connection import BodyNotSent, Connection

__all__ = ["BeforeEndOfData", "Outcome", "run_transaction"]

Classify = Callable[..., Classification]
BeforeEndOfData = Callable[[list[str]], Awaitable[None]]
"""Called with the accepted recipients just before the final dot is sent."""

# Exceptions that mean "no reply": the connection dropped, timed out or sent
# something that is not SMTP.
NO_REPLY = (aiosmtplib.SMTPException, OSError, TimeoutError)


@dataclass(slots=True)
class Outcome:
    """Where each recipient of one transaction stands afterwards."""

    delivered: list[str] = field(default_factory=list)
    rejected: dict[str, Classification] = field(default_factory=dict)
    pending: dict[str, Classification] = field(default_factory=dict)
    ambiguous: dict[str, Classification] = field(default_factory=dict)
    split: list[str] = field(default_factory=list)
    """Recipients not tried because the server wanted fewer per transaction."""
    failure: Classification | None = None
    """The failure that concerns the destination or the session, if any."""
    broken: bool = False
    """The connection must not be reused."""
    stale: bool = False
    """A reused connection was dead before the first reply: not a failure."""
    permitted: bool = True
    """A limiter permit was taken for this attempt (so feedback is owed)."""

    def note(self, c: Classification) -> None:
        if c.session_over:
            self.broken = True
        if self.failure is None and (
            c.scope in (Scope.DESTINATION, Scope.CONNECTION, Scope.SENDER) or c.session_over
        ):
            self.failure = c

    def settle(self, addresses: list[str], c: Classification) -> None:
        for a in addresses:
            (self.pending if c.transient else self.rejected)[a] = c


async def run_transaction(
    conn: Connection,
    *,
    sender: str,
    batch: list[str],
    body: bytes,
    options: list[str],
    classify: Classify,
    host: str,
    reused: bool,
    resend_ambiguous: bool,
    before_end_of_data: BeforeEndOfData | None = None,
) -> Outcome:
    """Send one message to ``batch`` over ``conn``; ``body`` is dot-stuffed.

    ``before_end_of_data(accepted)`` is awaited after the server's 354 and
    before the message and its final dot are written: from then on, a broken
    connection leaves those recipients ambiguous.  A durable queue records
    that here.  If it raises, nothing is sent and the error propagates.
    """
    out = Outcome()

    def judge(reply: Reply | BaseException, stage: Stage) -> Classification:
        c = classify(reply, host=host, stage=stage)
        out.note(c)
        return c

    try:
        return await _steps(
            conn,
            out,
            sender,
            batch,
            body,
            options,
            judge,
            reused,
            resend_ambiguous,
            before_end_of_data,
        )
    except _CallerError as wrapped:
        raise wrapped.error from None


class _CallerError(Exception):
    """Carries an exception raised by the caller's hook past the handlers
    that turn connection errors into outcomes."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _steps(
    conn: Connection,
    out: Outcome,
    sender: str,
    batch: list[str],
    body: bytes,
    options: list[str],
    judge: Callable[[Reply | BaseException, Stage], Classification],
    reused: bool,
    resend_ambiguous: bool,
    before_end_of_data: BeforeEndOfData | None,
) -> Outcome:
    stage = Stage.MAIL
    accepted: list[str] = []
    untried = list(batch)
    try:
        reply = await conn.mail(sender, options)
        if reply.code != 250:
            c = judge(reply, stage)
            if reused and c.session_over and c.reason is Reason.CONNECTION_ERROR:
                # "421 4.4.2 ... timeout exceeded": the server had given up
                # on the idle connection; any other 421 is real pushback.
                out.stale = True
            out.settle(untried, c)
            return out
        stage = Stage.RCPT
        while untried:
            rcpt = untried[0]
            reply = await conn.rcpt(rcpt)
            untried.pop(0)
            if reply.code in (250, 251):
                accepted.append(rcpt)
                continue
            c = judge(reply, stage)
            if c.reason is Reason.TOO_MANY_RECIPIENTS and accepted:
                # RFC 5321 §4.5.3.1.10: send the rest in another transaction.
                # (A 452 to the first RCPT leaves nothing to split: it is a
                # temporary failure of them all, for the retry policy.)
                out.split = [rcpt, *untried]
                untried = []
                break
            out.settle([rcpt], c)
            if c.session_over:
                # The replies already received stand; the accepted ones were
                # never sent the message, so they wait with the rest.
                out.settle(accepted + untried, c)
                return out
        if not accepted:
            await _reset(conn, out)
            return out
        stage = Stage.DATA
        reply = await conn.data()
        if reply.code != 354:
            out.settle(accepted, judge(reply, stage))
            if not out.broken:
                await _reset(conn, out)
            return out
        if before_end_of_data is not None:
            try:
                await before_end_of_data(list(accepted))
            except BaseException as exc:
                out.broken = True  # the DATA phase is open: the session is unusable
                raise _CallerError(exc) from exc
        stage = Stage.END_OF_DATA
        try:
            reply = await conn.send_body(body)
        except BodyNotSent as exc:
            # The server closed right after its 354 (smtp-sink -A): the
            # message never left, so this is not the ambiguous window.
            stage = Stage.DATA
            out.broken = True
            out.settle(accepted, judge(exc, stage))
            return out
        conn.messages += 1
        if reply.code == 250:
            out.delivered = accepted
        else:
            out.settle(accepted, judge(reply, stage))
        return out
    except NO_REPLY as exc:
        out.broken = True
        c = judge(exc, stage)
        if stage is Stage.END_OF_DATA:
            # The final dot was sent: the server may have taken the message.
            if resend_ambiguous:
                out.settle(accepted, c)
            else:
                out.ambiguous.update(dict.fromkeys(accepted, c))
        else:
            if reused and stage is Stage.MAIL:
                out.stale = True
            out.settle(accepted + untried, c)
        return out


async def _reset(conn: Connection, out: Outcome) -> None:
    """RSET after a transaction that sent no data, so the connection can be
    reused; any trouble marks it broken."""
    try:
        if (await conn.reset()).code != 250:
            out.broken = True
    except NO_REPLY:
        out.broken = True
