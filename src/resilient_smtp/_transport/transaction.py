"""One SMTP transaction, with every reply classified and every recipient
keeping its own outcome.

:func:`run_transaction` sends MAIL, RCPT for each recipient, DATA and the
message on an open connection and sorts the recipients of the batch by what
the server said.  It never raises for a server's answer or a broken
connection: the outcome records where it stopped and why, so the Mailer
knows each recipient's reply even when the server says 421 half-way.

Three ways to send, the same semantics:

``step``
    Without PIPELINING: one command, its reply, the next command (four round
    trips for one recipient, ``3 + n`` for ``n``).
``pipelined``
    Where the server offers PIPELINING (RFC 2920): MAIL, every RCPT and DATA
    in one flight, the replies read back in order and classified one by one;
    after the 354 the message and its final dot.  Two round trips whatever
    the number of recipients.  The ambiguity window is the step-by-step one:
    nothing of the message leaves before the 354.
``chunking`` (opt-in, ``Mailer(chunking=True)``)
    Where the server offers PIPELINING and CHUNKING (RFC 3030): MAIL, every
    RCPT and ``BDAT <size> LAST`` with the message in one flight; one round
    trip.  The message leaves before any reply is read, which widens the
    ambiguity window: if the connection is lost after the flight, every
    recipient whose RCPT reply was 2xx or never read is ``ambiguous`` (the
    server may have taken MAIL, the RCPT and the chunk and delivered
    before the connection went), where in the other modes they would wait
    for another attempt.  A recipient whose RCPT reply was read as a refusal,
    or a transaction whose MAIL reply was read as a refusal or any read 421,
    is still certain.  So ``before_end_of_data`` is called with the whole
    batch, before the flight.
pipelined messages (opt-in, ``Mailer(pipeline_messages=True)``)
    The pipelined mode, plus: right after the message is written, a send
    waiting for the connection takes it over (``pass_on``) and writes its
    MAIL, RCPTs and DATA behind the final dot; this transaction reads the
    dot's reply, then ends its turn (``after`` of the next one), closing
    the connection first if it must not be reused.  About one round trip
    per message; each message's ambiguity window is the default one (the
    next message still waits for its own 354).

Reply rules (RFC 5321 §4.2.1, §3.8; RFC 2920 §3.1):

- a reply concerns the command it answers: an RCPT reply decides that
  recipient only;
- what a refusal does to the *other* recipients of the transaction and to
  the connection is the reactions table's (:mod:`.._classify.reactions`)
  ``others`` and ``connection`` columns, read here for each reply (the
  ``Mailer(reactions=...)`` table): ``others="keep"`` goes on with them,
  ``"retry"`` abandons the transaction (the accepted and the untried wait
  for another attempt; no message is sent in it), ``"split"`` sends the
  rest in a new transaction at once; ``connection="close"`` drops the
  connection after the transaction instead of reusing it;
- a session-ending reply (a 421, a drop, a timeout, bytes that are not a
  reply) ends the session whatever the table says: it defers the
  recipients already accepted and those whose replies never came, for a
  new connection; a 421 is never a permanent verdict;
- only a reply that follows the final dot (or BDAT LAST) can make a
  recipient delivered, and any 2xx there does; an unreadable one there is
  ambiguous;
- a reply that arrives after the 354 and before the message was sent is the
  server speaking out of turn: the message is not sent; a 4xx/5xx there is
  the verdict, anything else a protocol violation that defers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

from .._classify.classifier import Classification
from .._classify.reactions import REACTIONS, Reaction, Reactions
from .._classify.reply import Reply
from .._classify.taxonomy import Reason, Scope, Stage, action_for
from .connection import BodyNotSent, Connection, dot_unstuff

__all__ = ["NO_REPLY", "BeforeEndOfData", "Outcome", "ProtocolViolation", "run_transaction"]

Classify = Callable[..., Classification]
BeforeEndOfData = Callable[[list[str]], Awaitable[None]]
"""Called with the recipients the server may take the message for, just
before the first byte of the message is written."""
PassOn = Callable[[], Awaitable["asyncio.Future[bool] | None"]]
"""Hands the connection to the next sender after the final dot (see
:meth:`.pool.Lease.pass_on`)."""

# Exceptions that mean "no reply": the connection dropped, timed out or sent
# something that is not SMTP.
NO_REPLY = (aiosmtplib.SMTPException, OSError, TimeoutError)  # UnreadableReply is an SMTPException


class ProtocolViolation(aiosmtplib.SMTPException):
    """The server said something no command asked for (a 2xx right behind
    the 354, before the message was sent).  The session is out of step."""


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

    def conclude(self, addresses: list[str], c: Classification) -> None:
        """A refusal of ``addresses``: deferred if it ended the session (it
        is then no verdict on them), else settled by what it says."""
        if c.session_over:
            self.defer(addresses, c)
        else:
            self.settle(addresses, c)

    def defer(
        self, addresses: list[str], c: Classification, why: str = "the session ended"
    ) -> None:
        """Wait for another attempt, whatever ``c`` says of itself: the
        session ended (or the transaction was abandoned), which is never a
        verdict on these recipients."""
        if addresses and not c.transient:
            c = dataclasses.replace(
                c,
                transient=True,
                action=action_for(c.reason, True),
                explanation=f"{c.explanation}; {why}: not a verdict on the recipient",
            )
        for a in addresses:
            self.pending[a] = c


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
    chunking: bool = False,
    reactions: Reactions = REACTIONS,
    after: asyncio.Future[bool] | None = None,
    pass_on: PassOn | None = None,
) -> Outcome:
    """Send one message to ``batch`` over ``conn``; ``body`` is dot-stuffed.

    ``before_end_of_data(recipients)`` is awaited just before the message
    is written: from then on, a broken connection leaves those recipients
    ambiguous.  A durable queue records that here.  In the default modes it
    comes after the 354, with the accepted recipients; with ``chunking``
    (used only where the server offers PIPELINING and CHUNKING) before the
    one flight, with the whole batch.  If it raises, nothing of the message
    is sent and the error propagates.

    ``reactions`` (the Mailer's table) says what a refusal does to the
    other recipients and to the connection (its ``others`` and
    ``connection`` columns).

    ``after``: the connection was passed on by a holder still reading the
    reply to its final dot; no reply is read before it is resolved.
    ``pass_on`` (pipelined default mode only): called right after the
    message is written; it may hand the connection to a sender waiting for
    it and return a turn, which this transaction resolves once it has read
    its last reply.
    """
    run = _Run(
        conn,
        batch,
        classify,
        host,
        reused,
        resend_ambiguous,
        before_end_of_data,
        reactions,
        after,
        pass_on,
    )
    pipelined = conn.supports("pipelining")
    try:
        if chunking and pipelined and conn.supports("chunking"):
            await run.chunked(sender, options, body)
        else:
            await run.envelope_then_data(sender, options, body, pipelined)
    except _CallerError as wrapped:
        raise wrapped.error from None
    return run.out


class _CallerError(Exception):
    """Carries an exception raised by the caller's hook past the handlers
    that turn connection errors into outcomes."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _mail(sender: str, options: list[str]) -> bytes:
    return " ".join([f"MAIL FROM:<{sender}>", *options]).encode()


def _rcpt(recipient: str) -> bytes:
    return f"RCPT TO:<{recipient}>".encode()


class _Run:
    """The state of one transaction while its replies come in."""

    def __init__(
        self,
        conn: Connection,
        batch: list[str],
        classify: Classify,
        host: str,
        reused: bool,
        resend_ambiguous: bool,
        hook: BeforeEndOfData | None,
        reactions: Reactions,
        after: asyncio.Future[bool] | None,
        pass_on: PassOn | None,
    ) -> None:
        self.conn = conn
        self.after = after
        self.pass_on = pass_on
        self.batch = batch
        self.classify = classify
        self.host = host
        self.reused = reused
        self.resend_ambiguous = resend_ambiguous
        self.hook = hook
        self.reactions = reactions
        self.out = Outcome()
        self.accepted: list[str] = []
        self.too_many: dict[str, Classification] = {}
        """Recipients whose reply said ``others="split"``: a new transaction."""
        self.abandoned: Classification | None = None
        """A reply whose row says ``others="retry"``: no message is sent in
        this transaction; the accepted wait for another attempt."""
        self.answered = 0
        """RCPT replies read so far."""

    def judge(self, reply: Reply | BaseException, stage: Stage) -> Classification:
        """Classify a reply that is not a success, note it, and act on its
        row's ``connection`` column."""
        c = self.classify(reply, host=self.host, stage=stage)
        self.out.note(c)
        if self.reaction(c).connection == "close":
            self.out.broken = True
        return c

    def reaction(self, c: Classification) -> Reaction:
        return self.reactions.for_reply(c.reason, c.stage)

    # -- the envelope -----------------------------------------------------

    async def mail_reply(self) -> bool:
        """Read MAIL's reply; False (and everyone settled) if refused."""
        if self.after is not None:
            if not self.after.done():
                # The previous holder passed the connection on before
                # reading the reply to its final dot: that reply comes first.
                await asyncio.wait((self.after,))
            if not self.after.cancelled() and self.after.result():
                # It closed the connection (its row said so, or its read
                # failed) under our envelope: a connection lost before any
                # reply of ours, as an idle one the server closed.
                raise aiosmtplib.SMTPServerDisconnected(
                    "the connection was closed by the send before this one"
                )
        reply = await self.conn.read_reply()
        if reply.code is not None and 200 <= reply.code < 300:
            return True
        if _out_of_step(reply):
            self.violation(f"the server answered MAIL with {reply.code}", list(self.batch))
            return False
        c = self.judge(reply, Stage.MAIL)
        if self.reused and c.session_over and c.reason is Reason.CONNECTION_ERROR:
            # "421 4.4.2 ... timeout exceeded": the server had given up on
            # the idle connection; any other 421 is real pushback.
            self.out.stale = True
        self.out.conclude(self.batch, c)
        return False

    async def rcpt_reply(self, rcpt: str) -> bool:
        """Read one RCPT reply and decide that recipient; False if the
        session ended (the rest are then deferred)."""
        reply = await self.conn.read_reply()
        self.answered += 1
        if reply.code is not None and 200 <= reply.code < 300:
            self.accepted.append(rcpt)
            return True
        if _out_of_step(reply):
            rest = [rcpt, *self.accepted, *self.batch[self.answered :]]
            self.violation(f"the server answered RCPT with {reply.code}", rest)
            return False
        c = self.judge(reply, Stage.RCPT)
        if c.session_over:
            # The replies already read stand; the accepted recipients were
            # never sent the message, so they wait with the untried ones.
            self.out.defer([rcpt, *self.accepted, *self.batch[self.answered :]], c)
            return False
        others = self.reaction(c).others
        if others == "split" and self.accepted:
            # The row of too_many_recipients (RFC 5321 §4.5.3.1.10): send the
            # rest in another transaction.  (Before any recipient was
            # accepted there is nothing to split: a refusal of that
            # recipient, for the retry policy.)
            self.too_many[rcpt] = c
            return True
        self.out.settle([rcpt], c)
        if others == "retry" and self.abandoned is None:
            self.abandoned = c
        return True

    def abandon(self, untried: list[str]) -> None:
        """A reply's row said ``others="retry"``: the accepted and the
        untried wait for another attempt; none is sent the message here."""
        assert self.abandoned is not None
        self.settle_too_many()
        self.out.defer([*self.accepted, *untried], self.abandoned, "the transaction was abandoned")
        self.accepted = []

    def settle_too_many(self) -> None:
        """The recipients refused as too many go in another transaction."""
        self.out.split.extend(self.too_many)
        self.too_many = {}

    async def drain(self, n: int) -> bool:
        """Read ``n`` replies nobody needs (RFC 2920 §3.1: the client reads
        every reply of a flight); False if the session ended meanwhile."""
        for _ in range(n):
            try:
                reply = await self.conn.read_reply()
            except NO_REPLY:
                self.out.broken = True
                return False
            if reply.code == 421 or _out_of_step(reply):
                # A 354 here would have the RSET that follows land in a
                # message: the session cannot be reused.
                self.out.broken = True
                return False
        return True

    # -- default modes ----------------------------------------------------

    async def envelope_then_data(
        self, sender: str, options: list[str], body: bytes, pipelined: bool
    ) -> None:
        conn, out, batch = self.conn, self.out, self.batch
        stage = Stage.MAIL
        try:
            if pipelined:
                await conn.send([_mail(sender, options), *map(_rcpt, batch), b"DATA"])
            else:
                await conn.send([_mail(sender, options)])
            if not await self.mail_reply():
                if pipelined and not out.broken and await self.drain(len(batch) + 1):
                    await self.reset()
                return
            stage = Stage.RCPT
            for i, rcpt in enumerate(batch):
                if not pipelined:
                    await conn.send([_rcpt(rcpt)])
                if not await self.rcpt_reply(rcpt):
                    return
                if not pipelined and self.abandoned is not None:
                    self.abandon(batch[i + 1 :])
                    break
                if not pipelined and self.too_many and self.accepted:
                    out.split.extend(batch[i + 1 :])
                    break
            if pipelined and self.abandoned is not None:
                # Pipelined, the other replies were read and decide their own
                # recipients; the accepted ones wait.
                self.abandon([])
            self.settle_too_many()
            stage = Stage.DATA
            if not pipelined:
                if not self.accepted:
                    if not out.broken:
                        await self.reset()
                    return
                await conn.send([b"DATA"])
            reply = await conn.read_reply()
            if reply.code is not None and reply.code < 400 and reply.code != 354:
                # A 2xx to DATA: the replies are out of step with the
                # commands (an extra reply somewhere in the flight).
                self.violation(f"the server answered DATA with {reply.code}", list(self.accepted))
                return
            if reply.code != 354:
                if self.accepted:
                    c = self.judge(reply, stage)
                    if c.session_over:
                        out.defer(self.accepted, c)
                        return
                    if not out.broken:
                        # RSET first: a reply other than its 250 (the 354
                        # itself, one reply late) shows the refusal was
                        # another command's reply, not a verdict on these.
                        await self.reset()
                        if out.broken:
                            what = f"RSET after DATA's {reply.code} was not answered 250"
                            self.violation(what, list(self.accepted))
                            return
                    out.settle(self.accepted, c)
                    return
                if reply.code == 421:
                    out.broken = True
                if not out.broken:
                    await self.reset()
                return
            if not self.accepted:
                # RFC 2920 §3.1 has the server refuse DATA when no RCPT
                # succeeded; this one said go ahead (or the transaction was
                # abandoned after the recipients it accepted).  Sending no
                # message means ending the session.
                out.broken = True
                return
            await self.message(body, pipelined)
        except NO_REPLY as exc:
            self.lost(exc, stage)

    async def message(self, body: bytes, pipelined: bool) -> None:
        """After the 354: the hook, a look for an out-of-turn reply, then the
        message and the reply that follows its final dot."""
        conn = self.conn
        if self.hook is not None:
            await self.call_hook(list(self.accepted))
        if not conn.reply_waiting():
            # One loop turn lets a reply or a close that the server sent
            # right behind its 354 arrive before any of the message leaves.
            await asyncio.sleep(0)
        if conn.reply_waiting():
            await self.out_of_turn()
            return
        try:
            await conn.send([], body)
        except BodyNotSent as exc:
            self.lost(exc, Stage.DATA)
            return
        # Opt-in (Mailer(pipeline_messages=True)), pipelined only: a sender
        # waiting for this destination takes the connection now and writes
        # its envelope right behind this final dot (RFC 2920 §3.1: message
        # content may be the first "command" of a group).  Its replies come
        # after this one, so it reads once this turn is over.
        pass_on = self.pass_on if pipelined and not self.out.broken else None
        turn = await pass_on() if pass_on is not None else None
        settled = False
        try:
            try:
                reply = await conn.read_reply()
            except NO_REPLY as exc:
                self.lost(exc, Stage.END_OF_DATA)
            else:
                self.verdict(reply, self.accepted)
            settled = True
        finally:
            if turn is not None:
                await self.end_turn(turn, settled)

    async def end_turn(self, turn: asyncio.Future[bool], settled: bool) -> None:
        """The reply after the final dot is read (or never will be): the
        next holder may read now.  A connection that must not be reused, or
        whose reply is still unread (cancelled meanwhile: the replies would
        be out of step), is closed first, so the next holder's reads fail
        before any of its message left: its recipients are only deferred."""
        closing = not settled or self.out.broken
        try:
            if closing:
                self.out.broken = True
                await self.conn.close()
        finally:
            turn.set_result(closing)

    async def out_of_turn(self) -> None:
        """The server spoke after its 354 and before the message: it is not
        sent, and the session is over."""
        self.out.broken = True
        try:
            reply = await self.conn.read_reply()
        except NO_REPLY as exc:
            self.lost(exc, Stage.DATA)
            return
        finally:
            await self.conn.close()
        if reply.code is not None and reply.code >= 400:
            # smtp-sink -A: "354" and "550 ..." in one write, then a close.
            c = self.judge(reply, Stage.DATA)
            self.out.conclude(self.accepted, c)
            return
        self.violation(
            f"the server answered {reply.code} after its 354, before the message was sent "
            "(the message was not sent)",
            list(self.accepted),
        )

    def violation(self, what: str, recipients: list[str]) -> None:
        """Replies that cannot answer the commands sent: the session is out
        of step, and nothing it said about ``recipients`` can be trusted."""
        self.out.broken = True
        c = self.judge(ProtocolViolation(what + "; the session is out of step"), Stage.DATA)
        self.out.defer(recipients, c)

    def verdict(self, reply: Reply, accepted: list[str]) -> None:
        """The reply after the final dot (or BDAT LAST): any 2xx is
        acceptance (RFC 5321 §4.2.1)."""
        self.conn.messages += 1
        if reply.code is not None and 200 <= reply.code < 300:
            self.out.delivered = list(accepted)
            return
        c = self.judge(reply, Stage.END_OF_DATA)
        self.out.conclude(accepted, c)

    # -- opt-in: BDAT LAST behind the envelope ------------------------------

    async def chunked(self, sender: str, options: list[str], body: bytes) -> None:
        conn, out, batch = self.conn, self.out, self.batch
        chunk = dot_unstuff(body)
        if self.hook is not None:
            await self.call_hook(list(batch))
        commands = [_mail(sender, options), *map(_rcpt, batch), b"BDAT %d LAST" % len(chunk)]
        try:
            await conn.send(commands, chunk)
        except BodyNotSent as exc:
            self.lost(exc, Stage.MAIL)
            return
        stage = Stage.MAIL
        try:
            if not await self.mail_reply():
                if not out.broken and await self.drain(len(batch) + 1):
                    await self.reset()
                return
            stage = Stage.RCPT
            for rcpt in batch:
                if not await self.rcpt_reply(rcpt):
                    return
            self.settle_too_many()
            stage = Stage.END_OF_DATA
            reply = await conn.read_reply()
        except NO_REPLY as exc:
            out.broken = True
            c = self.judge(exc, stage)
            # The chunk has left: whoever may have been taken is ambiguous.
            if stage is Stage.MAIL:
                self.ambiguous(list(batch), c)
                return
            self.ambiguous([*self.accepted, *batch[self.answered :]], c)
            # Refused as too many: certainly not taken.
            out.defer(list(self.too_many), c)
            return
        if self.accepted:
            self.verdict(reply, self.accepted)
        elif reply.code == 421:
            out.broken = True
        if (reply.code is None or not 200 <= reply.code < 300) and not out.broken:
            await self.reset()

    # -- shared ends ------------------------------------------------------

    async def call_hook(self, recipients: list[str]) -> None:
        assert self.hook is not None
        try:
            await self.hook(recipients)
        except BaseException as exc:
            self.out.broken = True  # the DATA phase is open: the session is unusable
            raise _CallerError(exc) from exc

    def ambiguous(self, addresses: list[str], c: Classification) -> None:
        if self.resend_ambiguous:
            self.out.defer(addresses, c)
        else:
            self.out.ambiguous.update(dict.fromkeys(addresses, c))

    def lost(self, exc: BaseException, stage: Stage) -> None:
        """No reply (drop, timeout, unreadable bytes) at ``stage`` in the
        default modes."""
        out = self.out
        out.broken = True
        c = self.judge(exc, stage)
        if stage is Stage.END_OF_DATA:
            # The final dot was sent: the server may have taken the message.
            self.ambiguous(self.accepted, c)
            return
        if self.reused and stage is Stage.MAIL:
            out.stale = True
        settled = out.pending.keys() | out.rejected.keys()
        rest = [a for a in self.batch if a not in settled and a not in out.split]
        out.defer(rest, c)

    async def reset(self) -> None:
        """RSET after a transaction that did not complete, so the connection
        can be reused; any trouble marks it broken."""
        try:
            if (await self.conn.reset()).code != 250:
                self.out.broken = True
        except NO_REPLY:
            self.out.broken = True


def _out_of_step(reply: Reply) -> bool:
    """A 3xx (the 354 that DATA wants) answering MAIL or RCPT: the replies
    are a step behind the commands; nothing they say can be trusted."""
    return reply.code is not None and 300 <= reply.code < 400
