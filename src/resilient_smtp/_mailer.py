"""The Mailer: the loop that ties classifier, retry policy, limiter, health
and pool together.

For each send: the envelope is checked before any I/O; then, until every
recipient has a final state, one transaction is run on a pooled connection
to the first relay that destination health admits, under the limiter; its
replies feed the limiter and health; the retry policy decides whether the
recipients still pending are tried again, and after how long.  A recipient
the server accepted is never sent the message again.

The per-send bookkeeping is a :class:`~._delivery.Delivery` (a record per
recipient), the send's deadline is enforced by :class:`~._deadline.Deadline`
alone, and what each reply does comes from the reactions table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Iterable, Sequence
from email.message import Message
from types import TracebackType
from typing import Any

from ._bulk import BulkProgress, BulkSend, MessageLike
from ._checks import mailer_arguments
from ._classify.classifier import Classification, Classifier, default_classifier
from ._classify.reactions import REACTIONS, SESSION_STAGES, Reactions
from ._classify.reply import Reply
from ._classify.taxonomy import Reason, Scope, Stage
from ._clock import Clock, SystemClock, system_clock
from ._deadline import Deadline, DeadlineReached, Gate
from ._delivery import Delivery, never_permanent, settles_recipient
from ._destination import Destination, parse_destination
from ._envelope import Envelope, build_envelope, check_mx_envelope, render_message, wire_batch
from ._errors import InvalidMessageError
from ._events import Event, Hook, emit, logger
from ._health import Admission, DestinationHealth, Health
from ._limits.limiter import Limiter
from ._mx import MXResolver, dns_resolver, mx_order, resolution_failure
from ._result import RecipientResult, SendResult, State, failure_text
from ._retry.policy import RetryPolicy
from ._transport.connection import (
    AiosmtplibTransport,
    TLSMode,
    TokenProvider,
    Transport,
    dot_stuff,
)
from ._transport.pool import Lease, Pool, PoolLimits, Slot
from ._transport.transaction import NO_REPLY, BeforeEndOfData, Outcome, run_transaction
from ._verify import VerifyReport, verify_relays

__all__ = ["Mailer"]

# Recipients refused for a reason that is not about them (a refused session,
# a configuration error) with no host left are deferred this long: Postfix's
# minimal_backoff_time.
_HELD_RETRY_IN = 300.0
# Destinations whose current failure streak this Mailer remembers (for the
# one WARNING per streak and the cause behind a suspension); oldest dropped.
_FAILING_KEPT = 4096


class Mailer:
    """Sends messages through one or more relays, resiliently.

    ``host`` is a relay (``"smtp.example.com"``, ``"host:2525"``; port 587
    unless given) or a list of them: the next is used while the previous one
    is suspended by destination health, or after it failed in this send.
    ``mx=True`` delivers straight to each recipient domain's MX hosts (port
    25, preference order, needs the ``mx`` extra: dnspython); ``mx=`` also
    takes an async resolver ``domain -> [(preference, host)]``.  ``tls`` is
    ``"starttls"`` (default: required, with certificate verification),
    ``"implicit"`` (port 465 unless given) or ``"none"``.  ``oauth_token``
    instead of ``password`` logs in with XOAUTH2: a callable (sync or async)
    returning a fresh access token, called at each new connection.  A
    ``limiter`` or ``health`` object built on another clock than the
    Mailer's (say, the system clock under a ``FakeClock`` test) is refused
    with a ``ValueError``: build it with ``clock=`` the Mailer's clock.

    ``retry``, ``limiter``, ``health``, ``classifier``, ``clock`` and
    ``transport`` all have defaults (the adaptive limiter is on) and can be
    swapped, for example in tests.  ``reactions`` is the table of what each
    reply does (:data:`~resilient_smtp.REACTIONS`, docs/reactions.md); it
    configures the parts the Mailer builds itself.  ``resend_ambiguous=True`` resends to
    recipients whose connection broke after the end of the data (they may
    get the message twice); by default they end ``ambiguous``.

    Where the server offers PIPELINING, MAIL, every RCPT and DATA go in one
    flight (two round trips per message).  ``chunking=True`` (opt-in, for
    bulk senders) also sends the message in that flight as ``BDAT ... LAST``
    where the server offers CHUNKING: one round trip, but a connection lost
    after the flight leaves every recipient not known to be refused
    ``ambiguous`` (see docs/transport.md).  ``pipeline_messages=True``
    (opt-in, for bulk senders) writes the envelope of a send waiting for the
    connection right behind the previous message's final dot, about one
    round trip per message, with the default mode's ambiguity window: the
    next message still waits for its own 354.

    Use it as an async context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        host: str | tuple[str, int] | Sequence[str | tuple[str, int]] | None = None,
        port: int | None = None,
        *,
        mx: MXResolver | bool = False,
        tls: TLSMode = "starttls",
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        local_hostname: str | None = None,
        retry: RetryPolicy | None = None,
        limiter: Limiter | None = None,
        health: Health | None = None,
        classifier: Classifier | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        pool: PoolLimits | None = None,
        resend_ambiguous: bool = False,
        hooks: Iterable[Hook] = (),
        reactions: Reactions = REACTIONS,
        oauth_token: TokenProvider | None = None,
        chunking: bool = False,
        pipeline_messages: bool = False,
    ) -> None:
        checked_hooks = mailer_arguments(
            port=port,
            retry=retry,
            limiter=limiter,
            health=health,
            classifier=classifier,
            clock=clock,
            pool=pool,
            reactions=reactions,
            resend_ambiguous=resend_ambiguous,
            chunking=chunking,
            pipeline_messages=pipeline_messages,
            hooks=hooks,
        )
        self.mx: MXResolver | None = None
        self.mx_port = port or 25
        if mx:
            if host is not None:
                raise ValueError("give relay hosts or mx=..., not both")
            if mx is True:
                _require_dnspython()
            self.mx = dns_resolver if mx is True else mx
            self.relays: tuple[Destination, ...] = ()
        else:
            if host is None:
                raise ValueError("give a relay host (or mx=True for direct MX delivery)")
            relays = [host] if isinstance(host, (str, tuple)) else list(host)
            if not relays:
                raise ValueError("give at least one relay host")
            # The port follows the TLS mode: 465 for TLS from the first
            # byte (RFC 8314 §3.3), 587 for submission with STARTTLS.
            default_port = port or (465 if tls == "implicit" else 587)
            self.relays = tuple(parse_destination(r, default_port) for r in relays)
        self.clock = clock or system_clock
        for name, part in (("limiter", limiter), ("health", health)):
            _check_clock(name, part, self.clock)
        if transport is None:
            transport = AiosmtplibTransport(
                tls=tls,
                username=username,
                password=password,
                tls_context=tls_context,
                timeout=timeout,
                local_hostname=local_hostname,
                oauth_token=oauth_token,
            )
        self.transport = transport
        self.hooks = checked_hooks
        # One set of hooks sees every decision: the policy's retries, the
        # limiter's rate changes, health's suspensions and the sends.
        self.reactions = reactions
        retry = retry or RetryPolicy(
            min_waits=reactions.floors(),
            growing=reactions.reasons(floor_grows=True),
            reconnect_at_once=reactions.reasons(reconnect_at_once=True),
        )
        self.retry = retry.replace(hooks=(*retry.hooks, *self.hooks)) if self.hooks else retry
        if limiter is None:
            from ._limits.adaptive import AdaptiveLimiter

            limiter = AdaptiveLimiter(
                clock=self.clock, hooks=self.hooks, pushback=reactions.reasons(rate="cut")
            )
        self.limiter = limiter
        self.health: Health = health or DestinationHealth(
            clock=self.clock, hooks=self.hooks, reactions=reactions
        )
        self.classifier = classifier or default_classifier
        self.pool = Pool(transport, pool, clock=self.clock, reactions=reactions)
        self.resend_ambiguous = resend_ambiguous
        # Opt-in: BDAT LAST pipelined behind the envelope where the server
        # offers PIPELINING and CHUNKING (one round trip per message; a
        # wider ambiguity window, see _transport/transaction.py).
        self.chunking = chunking
        # Opt-in: the next message's envelope right behind the final dot
        # where the server offers PIPELINING and a send waits for the
        # connection (about one round trip per message; docs/transport.md).
        self.pipeline_messages = pipeline_messages
        self._orphans: set[asyncio.Task[Any]] = set()
        """Attempts stopped at a deadline that are still closing their connection."""
        self._failing: dict[str, Classification] = {}
        """Destinations failing now (since their last success), with the first failure."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Mailer:
        """A Mailer for the relay a mail URL names, such as
        ``Mailer.from_url(os.environ["EMAIL_URL"])`` with
        ``submission://user:pass@smtp.example.com:587`` (dj-email-url and
        django-environ schemes; see :mod:`resilient_smtp._url`).  Other
        keywords go to the constructor; giving one the URL sets too is a
        :class:`TypeError`.  A bad URL raises :class:`ValueError` (the
        password never quoted)."""
        from ._url import mailer_arguments

        return cls(**mailer_arguments(url, kwargs))

    def __repr__(self) -> str:
        where = ", ".join(f"{h}:{p}" for h, p in self.relays) or f"MX:{self.mx_port}"
        return f"Mailer([{where}], transport={self.transport!r})"

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections (politely, with QUIT), and the limiter
        and health objects that hold resources of their own (``aclose()``,
        as the Redis-shared ones do)."""
        if self._orphans:  # attempts stopped at a deadline, still unwinding
            await asyncio.gather(*self._orphans, return_exceptions=True)
        await self.pool.close()
        await self.transport.aclose()
        await self.limiter.aclose()
        await self.health.aclose()

    async def verify(self, *, domains: Iterable[str] = ()) -> VerifyReport:
        """Connect to each relay as a send would (connect, EHLO or HELO,
        STARTTLS, AUTH, through the Mailer's own transport), then QUIT.

        Never raises for a server's answer: each relay's steps, what EHLO
        offered and the classified failure are in the :class:`VerifyReport`
        (``report.ok``, ``report.error``).  For MX delivery, give the
        ``domains`` whose MX hosts to check.  Limiter, health and pool are
        left alone: a check is not traffic.
        """
        return await verify_relays(
            self.transport,
            self.classifier,
            self.relays,
            mx=self.mx,
            mx_port=self.mx_port,
            domains=domains,
        )

    def _wants_events(self) -> bool:
        return bool(self.hooks) or logger.isEnabledFor(logging.INFO)

    def _emit(self, kind: str, message: str, **data: Any) -> None:
        emit(Event(kind, message, data), self.hooks)

    async def send(
        self,
        message: Message | bytes | str,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | str | None = None,
        before_end_of_data: BeforeEndOfData | None = None,
    ) -> SendResult:
        """Send ``message`` and return a final state for every recipient.

        The envelope comes from the headers (Sender/From; To, Cc, Bcc) unless
        ``sender``/``recipients`` are given.  Bad input raises
        :class:`InvalidMessageError` before any network traffic; failures
        to deliver never raise: they are in the result (see
        :meth:`SendResult.raise_for_failures`).

        ``before_end_of_data`` (for durable queues) is awaited with the
        accepted recipients of each transaction just before the final dot:
        the one moment after which a broken connection makes them
        ambiguous.  An exception it raises aborts the send.
        """
        envelope = build_envelope(message, sender=sender, recipients=recipients)
        if self.mx is not None:
            check_mx_envelope(envelope)
        # Rendered now, before any traffic, so a message that cannot be
        # rendered is refused here rather than after connecting.
        utf8 = envelope.needs_smtputf8
        bodies: dict[bool, bytes] = {utf8: dot_stuff(render_message(message, smtputf8=utf8))}
        started = self.clock.monotonic()
        hook = before_end_of_data
        if self.mx is None:
            final, transactions = await self._deliver(message, envelope, self.relays, bodies, hook)
        else:
            final, transactions = await self._deliver_mx(message, envelope, bodies, hook)
        results = tuple(final[a] for a in envelope.recipients)
        result = SendResult(
            results,
            attempts=transactions,
            elapsed=self.clock.monotonic() - started,
            configuration_errors=self._configuration_errors(results),
        )
        if self._wants_events():  # building the summary costs; skip it unheard
            self._emit(
                "final",
                repr(result),
                delivered=len(result.delivered),
                rejected=len(result.rejected),
                deferred=len(result.deferred),
                ambiguous=len(result.ambiguous),
            )
        return result

    def send_many(
        self,
        messages: Iterable[MessageLike],
        *,
        concurrency: int = 16,
        progress: BulkProgress | bool = False,
    ) -> BulkSend:
        """Send every message, at most ``concurrency`` at a time; iterate the
        returned :class:`BulkSend` (``async for sent in ...``) for each
        message's result as it finishes, or ``await ....wait()`` for the
        summary.  ``progress=True`` draws a bar (the ``progress`` extra).
        See :mod:`resilient_smtp._bulk`."""
        return BulkSend(self, messages, concurrency=concurrency, progress=progress)

    def _configuration_errors(self, results: Iterable[RecipientResult]) -> tuple[str, ...]:
        """The distinct configuration errors behind the undelivered ones."""
        seen: dict[str, None] = {}
        for r in results:
            c = r.classification
            if (
                r.state is not State.DELIVERED
                and c is not None
                and self.reactions.for_reply(c.reason, c.stage).configuration
            ):
                seen[f"{r.destination}: {failure_text(c)}"] = None
        return tuple(seen)

    async def _deliver_mx(
        self,
        message: Message | bytes | str,
        envelope: Envelope,
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData | None,
    ) -> tuple[dict[str, RecipientResult], int]:
        """Direct delivery: each recipient domain to its own MX hosts."""
        assert self.mx is not None
        by_domain: dict[str, list[str]] = {}
        for rcpt in envelope.recipients:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)

        async def one(domain: str, rcpts: list[str]) -> tuple[dict[str, RecipientResult], int]:
            assert self.mx is not None
            try:
                hosts = mx_order(domain, await self.mx(domain))
            except Exception as exc:  # DNS trouble must not crash a send
                c = resolution_failure(domain, exc)
                self._first_failure(domain, c)
                state = State.DEFERRED if c.transient else State.REJECTED
                retry_in = 300.0 if c.transient else None
                return {a: RecipientResult(a, state, c, 0, retry_in, domain) for a in rcpts}, 0
            destinations = tuple(Destination(h, self.mx_port) for h in hosts)
            return await self._deliver(
                message, Envelope(envelope.sender, tuple(rcpts)), destinations, bodies, hook
            )

        final: dict[str, RecipientResult] = {}
        transactions = 0
        tasks = [asyncio.ensure_future(one(d, r)) for d, r in by_domain.items()]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # No orphan deliveries: a caller who sees the error and sends
            # again must not race a send still running for another domain.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for part, n in parts:
            final.update(part)
            transactions += n
        return final, transactions

    async def _deliver(
        self,
        message: Message | bytes | str,
        envelope: Envelope,
        destinations: Sequence[Destination],
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData | None = None,
    ) -> tuple[dict[str, RecipientResult], int]:
        """Deliver to ``envelope``'s recipients through ``destinations``
        until each has a final state; returns the states and the
        transactions run.

        After each transaction: a refused session (greeting, EHLO,
        STARTTLS, AUTH) or a reply whose reaction says ``relay="next"``
        moves to the next destination at once; a permanent refusal that is
        not about the recipients, with no destination left, defers them
        with its cause; anything else transient goes to the retry policy.
        """
        d = Delivery(
            envelope.recipients, destinations, self.retry.start(self.clock), self.reactions
        )
        deadline = Deadline(d.retry, self.clock, self._orphans)
        chosen: tuple[Destination, Admission] | None = None
        recheck = True
        while d.pending:
            pick = chosen or self._choose(d)
            assert pick is not None  # there is always a destination to name
            dest, admission = pick
            chosen = None
            if not admission.allowed:
                wait = admission.retry_in
                if deadline.allows(wait):
                    self._emit("wait", f"{dest} suspended; waiting {wait:.1f} s", delay=wait)
                    await self.clock.sleep(wait)
                    continue
                d.note_all(self._suspended(admission, dest))
                d.defer(wait, dest)
                break

            batch = d.pending
            out = await self._attempt(
                message, envelope, dest, batch, deadline, bodies, hook, recheck
            )
            if out is None:
                recheck = False  # once: a Health whose status and admit disagree cannot loop
                continue  # suspended meanwhile: health decides what next
            recheck = True
            took = self._feedback(dest, out)
            left = d.apply(out, dest, batch)
            if out.delivered:
                d.retry.record_success()
            if not d.pending:
                break
            if out.stale and set(left) <= set(batch):
                # A pooled connection the server had closed while idle: not
                # a failure of this send; go again on a fresh connection.
                self._emit("reconnect", f"{dest}: idle connection was closed; reconnecting")
                continue
            if not left:
                continue  # only a split remainder is left: send it at once
            c = out.failure
            if c is None or (not c.transient and settles_recipient(c, self.reactions)):
                c = d.records[left[0]].last
                assert c is not None
            c = never_permanent(c)
            reaction = self.reactions.for_reply(c.reason, c.stage)
            refused = c.stage in SESSION_STAGES
            if reaction.configuration:
                self._configuration_error(dest, c)
            if (
                refused
                or reaction.relay == "next"
                or c.scope in (Scope.CONNECTION, Scope.DESTINATION)
            ):
                d.failed.add(dest)  # the next attempt prefers another relay or MX
            moves_on = refused or reaction.relay == "next" or not c.transient
            if dest in d.failed and moves_on and deadline.allows(0.0):
                # Postfix tries the next MX host after a refused session
                # (smtp_skip_5xx_greeting) or a recoverable failure, at once.
                chosen = self._choose(d, untried_only=True)
                if chosen is not None:
                    self._emit("next_host", f"{dest}: {c.reason}; trying {chosen[0]}")
                    continue
            if not c.transient:
                # Refused for a reason that is not about the recipients and
                # nowhere else to go: they wait, with the cause stated.
                d.defer(_HELD_RETRY_IN, dest)
                break
            paced = took is True and reaction.paced
            decision = d.retry.decide(c, destination=dest.key, paced=paced)
            if decision.retry:  # the policy has emitted the "retry" event
                await self.clock.sleep(decision.delay)
                continue
            d.defer(decision.retry_in, dest)
            break
        return d.results(), d.transactions

    def _choose(
        self, d: Delivery, *, untried_only: bool = False
    ) -> tuple[Destination, Admission] | None:
        """The first destination health admits, preferring ones that have
        not failed in this send (Postfix tries the next MX after a
        recoverable failure); else the one whose suspension ends first,
        with its refusal.  ``untried_only``: an admitted destination that
        has not failed in this send, or ``None``."""
        fallback: tuple[Destination, Admission] | None = None
        first: tuple[Destination, Admission] | None = None
        for dest in d.untried() if untried_only else d.destinations:
            admission = self.health.admit(dest.key)
            if admission.allowed:
                if dest not in d.failed:
                    return dest, admission
                fallback = fallback or (dest, admission)
            elif first is None or admission.retry_in < first[1].retry_in:
                first = (dest, admission)
        if untried_only:
            return None
        return fallback or first

    def _suspended(self, admission: Admission, dest: Destination) -> Classification:
        """A classification for a destination that health does not admit,
        naming the failure that suspended it when this Mailer saw it."""
        reason = admission.reason or Reason.SERVER_BUSY
        cause = self._failing.get(dest.key)
        after = reason.value if cause is None else f"{reason.value}: {failure_text(cause)}"
        return Classification.without_reply(
            reason,
            transient=True,
            scope=Scope.DESTINATION,
            retry_after=admission.retry_in,
            reply=Reply(None, None, f"{dest} is suspended"),
            explanation=(
                f"{dest} is suspended after {after}; nothing was sent "
                f"(retry in {admission.retry_in:.0f} s)"
            ),
        )

    def _feedback(self, dest: Destination, out: Outcome) -> bool | None:
        """Tell the limiter (once per permit, as the adaptive limiter counts
        them), health and the pool how the attempt went.  ``None`` means the
        destination answered normally, even if some recipients were refused.
        Returns what the limiter said: ``True`` when it took the pushback."""
        if not out.permitted:
            return None
        c = out.failure
        took = self.limiter.feedback(dest.key, c)
        if out.stale:
            return took  # an idle connection the server had closed says nothing new
        self.health.record(dest.key, c)
        self.pool.feedback(dest.host, dest.port, c)
        if c is None:
            self._failing.pop(dest.key, None)
        else:
            self._first_failure(dest.key, c)
        return took

    def _first_failure(self, key: str, c: Classification) -> None:
        """Log a destination's first failure (since its last success) at
        WARNING, with the underlying error; later ones are in the events."""
        if key in self._failing:
            return
        if len(self._failing) >= _FAILING_KEPT:
            self._failing.pop(next(iter(self._failing)))
        self._failing[key] = c
        logger.warning("%s: %s (%s)", key, failure_text(c), c.reason.value)

    def _configuration_error(self, dest: Destination, c: Classification) -> None:
        """A setting a human must fix (TLS, credentials, relay access): a
        WARNING and a ``configuration_error`` event, never a silent bounce."""
        text = failure_text(c)
        logger.warning("configuration error at %s: %s", dest, text)
        self._emit(
            "configuration_error",
            f"{dest}: {text}",
            destination=dest.key,
            reason=c.reason.value,
            explanation=c.explanation,
        )

    async def _attempt(
        self,
        message: Message | bytes | str,
        envelope: Envelope,
        dest: Destination,
        batch: list[str],
        deadline: Deadline,
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData | None = None,
        recheck: bool = True,
    ) -> Outcome | None:
        """One transaction to ``dest`` for ``batch``, under a limiter permit,
        within the send's deadline; ``None`` when, by the time the permit
        came, health had suspended ``dest`` (or paused the relay): nothing
        was sent, ask health again."""
        dot_sent: list[str] = []

        async def before_dot(accepted: list[str]) -> None:
            if hook is not None:
                await hook(accepted)
            dot_sent[:] = accepted  # from here on, a stop leaves them ambiguous

        async def attempt(gate: Gate) -> Outcome | None:
            # The pool's place first, then the limiter's permit: one queue
            # (the pool's), and the limiter sees only sends that can go at
            # once, so its round trips do not include our own queue.
            async with self.pool.slot(dest.host, dest.port) as place:
                gate.queued()
                async with self.limiter.acquire(dest.key):
                    gate.permitted()
                    if recheck and self.health.status(dest.key).state in _HELD:
                        # Decided while this send waited for its permit (a
                        # quota refusal to another send pauses the relay):
                        # the sends queued behind it do not go out regardless.
                        return None
                    return await self._session(
                        message, envelope, dest, batch, bodies, before_dot, place
                    )

        try:
            return await deadline.run(attempt)
        except DeadlineReached as stop:
            # Before the permit it was a wait (for a place in the pool or for
            # the limiter), not a failure of the server's, nor a reason to
            # suspend a healthy destination.
            c = _deadline_classification(dest, stop.in_session)
            out = Outcome(permitted=stop.in_session)
            if stop.in_session:
                out.note(c)
            unsure = [] if self.resend_ambiguous else dot_sent
            out.ambiguous.update(dict.fromkeys(unsure, c))
            out.settle([a for a in batch if a not in unsure], c)
            return out

    async def _session(
        self,
        message: Message | bytes | str,
        envelope: Envelope,
        dest: Destination,
        batch: list[str],
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData,
        place: Slot,
    ) -> Outcome:
        """A connection in ``place`` and one transaction on it."""
        connected = False
        try:
            async with place.connection() as lease:
                connected = True
                out = await self._transact(
                    lease, message, envelope, dest.host, batch, bodies, hook
                )
                if out.broken:
                    lease.discard()
                return out
        except NO_REPLY as exc:
            if connected:
                raise
            # No session at all: connecting, the greeting, EHLO, STARTTLS
            # or AUTH failed.
            c = self.classifier.classify(exc, host=dest.host)
            if c.stage is None:
                c = dataclasses.replace(c, stage=Stage.CONNECT)
            out = Outcome()
            out.note(c)
            out.broken = True
            out.settle(batch, c)
            return out

    async def _transact(
        self,
        lease: Lease,
        message: Message | bytes | str,
        envelope: Envelope,
        host: str,
        pending: list[str],
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData | None,
    ) -> Outcome:
        conn = lease.connection
        # What only this server reveals (no SMTPUTF8 for a non-ASCII local
        # part) is those recipients' result, not an exception; IDN domains
        # travel IDNA-encoded (see _envelope.wire_batch).
        wire = wire_batch(envelope.sender, pending, conn.supports("smtputf8"), host)
        if not wire.batch:
            out = Outcome()
            out.rejected.update(wire.refused)
            return out
        smtputf8 = wire.smtputf8
        if smtputf8 not in bodies:
            try:
                bodies[smtputf8] = dot_stuff(render_message(message, smtputf8=smtputf8))
            except InvalidMessageError as exc:
                out = Outcome()
                out.rejected.update(wire.refuse_all(pending, str(exc)))
                return out
        body = bodies[smtputf8]
        options = []
        if conn.supports("size"):
            options.append(f"SIZE={len(body)}")
        if smtputf8:
            options.append("SMTPUTF8")
        if conn.supports("8bitmime") and not body.isascii():
            options.append("BODY=8BITMIME")
        out = await run_transaction(
            conn,
            sender=wire.sender,
            batch=wire.batch,
            body=body,
            options=options,
            classify=self.classifier.classify,
            host=host,
            reused=lease.reused,
            resend_ambiguous=self.resend_ambiguous,
            before_end_of_data=wire.hook(hook),
            chunking=self.chunking,
            reactions=self.reactions,
            after=lease.after,
            pass_on=lease.pass_on if self.pipeline_messages else None,
        )
        return wire.restore(out)


# Health states in which nothing is sent to a destination.
_HELD = frozenset({"suspended", "paused"})


def _deadline_classification(dest: Destination, in_session: bool) -> Classification:
    if not in_session:
        return Classification.without_reply(
            Reason.RATE_LIMITED,
            transient=True,
            session_over=False,
            reply=Reply(None, None, f"deadline reached waiting for {dest}"),
            explanation=f"the send's deadline passed while waiting for a permit for {dest}",
        )
    return Classification.without_reply(
        Reason.CONNECTION_ERROR,
        transient=True,
        reply=Reply(None, None, f"deadline reached during the session with {dest}"),
        explanation=(
            f"the send's deadline passed during the session with {dest}; the connection was closed"
        ),
    )


def _require_dnspython() -> None:
    """``mx=True`` resolves with dnspython: missing, it fails here, not as
    a deferral of every recipient on every send."""
    try:
        import dns.asyncresolver  # noqa: F401
    except ImportError:
        raise ImportError(
            "mx=True needs dnspython: pip install 'resilient-smtp[mx]', "
            "or pass your own resolver as mx=..."
        ) from None


def _check_clock(name: str, part: object, clock: Clock) -> None:
    """A limiter or health object must run on the Mailer's clock: on a
    ``FakeClock`` Mailer, a part on the system clock would wait in real
    time (and a deadline measured on one clock would not bound the other)."""
    theirs = getattr(part, "clock", None)  # the built-in ones expose it
    if theirs is None or theirs is clock:
        return
    if isinstance(theirs, SystemClock) and isinstance(clock, SystemClock):
        return
    raise ValueError(
        f"the {name} runs on {theirs!r} but the Mailer on {clock!r}: "
        f"build the {name} with clock= the Mailer's clock"
    )
