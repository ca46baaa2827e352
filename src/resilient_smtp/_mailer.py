"""The Mailer: the loop that ties classifier, retry policy, limiter, health
and pool together.

For each send: the envelope is checked before any I/O; then, until every
recipient has a final state, one transaction is run on a pooled connection
to the first relay that destination health admits, under the limiter; its
replies feed the limiter and health; the retry policy decides whether the
recipients still pending are tried again, and after how long.  A recipient
the server accepted is never sent the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from email.message import Message
from types import TracebackType
from typing import Any

from ._classify.classifier import Classification, Classifier, default_classifier
from ._classify.reactions import REACTIONS, Reactions
from ._classify.reply import Reply
from ._classify.taxonomy import Reason, Scope
from ._clock import Clock, _Waits, system_clock
from ._envelope import Envelope, build_envelope, check_mx_envelope, render_message, wire_batch
from ._errors import InvalidMessageError
from ._events import Event, Hook, emit, logger
from ._health import DestinationHealth
from ._limits.limiter import Limiter
from ._mx import MXResolver, dns_resolver, mx_order, resolution_failure
from ._result import RecipientResult, SendResult, State
from ._retry.policy import RetryPolicy, RetryState
from ._transport.connection import AiosmtplibTransport, TLSMode, Transport, dot_stuff
from ._transport.pool import Lease, Pool, PoolLimits
from ._transport.transaction import NO_REPLY, BeforeEndOfData, Outcome, run_transaction
from ._verify import VerifyReport, verify_relays

__all__ = ["Mailer"]

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


def _parse_relay(relay: str | tuple[str, int], default_port: int) -> tuple[str, int]:
    if isinstance(relay, tuple):
        host, port = relay
    else:
        host, port, text = relay, default_port, ""
        if relay.startswith("["):  # [::1]:25
            host, _, rest = relay[1:].partition("]")
            text = rest[1:] if rest.startswith(":") else ""
        elif relay.count(":") == 1:
            host, _, text = relay.partition(":")
        if text:
            if not text.isdigit():
                raise ValueError(f"bad port in relay {relay!r}")
            port = int(text)
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad relay {relay!r}: give 'host', 'host:port' or (host, port)")
    return host, port


def _suspended(admission: Any, key: str) -> Classification:
    """A classification for a destination that health does not admit."""
    reason = admission.reason or Reason.SERVER_BUSY
    return Classification.without_reply(
        reason,
        transient=True,
        scope=Scope.DESTINATION,
        retry_after=admission.retry_in,
        reply=Reply(None, None, f"{key} is suspended"),
        explanation=(
            f"{key} is suspended after {reason.value}; nothing was sent "
            f"(retry in {admission.retry_in:.0f} s)"
        ),
    )


class Mailer:
    """Sends messages through one or more relays, resiliently.

    ``host`` is a relay (``"smtp.example.com"``, ``"host:2525"``; port 587
    unless given) or a list of them: the next is used while the previous one
    is suspended by destination health, or after it failed in this send.
    ``mx=True`` delivers straight to each recipient domain's MX hosts (port
    25, preference order, needs the ``mx`` extra: dnspython); ``mx=`` also
    takes an async resolver ``domain -> [(preference, host)]``.  ``tls`` is
    ``"starttls"`` (default: required, with certificate verification),
    ``"implicit"`` (port 465) or ``"none"``.

    ``retry``, ``limiter``, ``health``, ``classifier``, ``clock`` and
    ``transport`` all have defaults (the adaptive limiter is on) and can be
    swapped, for example in tests.  ``reactions`` is the table of what each
    reply does (:data:`~resilient_smtp.REACTIONS`, docs/reactions.md); it
    configures the parts the Mailer builds itself.  ``resend_ambiguous=True`` resends to
    recipients whose connection broke after the end of the data (they may
    get the message twice); by default they end ``ambiguous``.

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
        health: DestinationHealth | None = None,
        classifier: Classifier | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        pool: PoolLimits | None = None,
        resend_ambiguous: bool = False,
        hooks: Iterable[Hook] = (),
        reactions: Reactions = REACTIONS,
    ) -> None:
        self.mx: MXResolver | None = None
        self.mx_port = port or 25
        if mx:
            if host is not None:
                raise ValueError("give relay hosts or mx=..., not both")
            self.mx = dns_resolver if mx is True else mx
            self.relays: tuple[tuple[str, int], ...] = ()
        else:
            if host is None:
                raise ValueError("give a relay host (or mx=True for direct MX delivery)")
            relays = [host] if isinstance(host, (str, tuple)) else list(host)
            if not relays:
                raise ValueError("give at least one relay host")
            self.relays = tuple(_parse_relay(r, port or 587) for r in relays)
        self.clock = clock or system_clock
        if transport is None:
            transport = AiosmtplibTransport(
                tls=tls,
                username=username,
                password=password,
                tls_context=tls_context,
                timeout=timeout,
                local_hostname=local_hostname,
            )
        self.transport = transport
        self.hooks = tuple(hooks)
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
        self.health = health or DestinationHealth(
            clock=self.clock, hooks=self.hooks, reactions=reactions
        )
        self.classifier = classifier or default_classifier
        self.pool = Pool(transport, pool, clock=self.clock, reactions=reactions)
        self.resend_ambiguous = resend_ambiguous

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
        await self.pool.close()
        for part in (self.limiter, self.health):
            aclose = getattr(part, "aclose", None)
            if aclose is not None:
                await aclose()

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
        result = SendResult(
            tuple(final[a] for a in envelope.recipients),
            attempts=transactions,
            elapsed=self.clock.monotonic() - started,
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
                state = State.DEFERRED if c.transient else State.REJECTED
                retry_in = 300.0 if c.transient else None
                return {a: RecipientResult(a, state, c, 0, retry_in, domain) for a in rcpts}, 0
            relays = tuple((h, self.mx_port) for h in hosts)
            return await self._deliver(
                message, Envelope(envelope.sender, tuple(rcpts)), relays, bodies, hook
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
        relays: Sequence[tuple[str, int]],
        bodies: dict[bool, bytes],
        hook: BeforeEndOfData | None = None,
    ) -> tuple[dict[str, RecipientResult], int]:
        """Deliver to ``envelope``'s recipients through ``relays`` until each
        has a final state; returns the states and the transactions run."""
        state = self.retry.start(self.clock)
        pending = list(envelope.recipients)
        last: dict[str, Classification] = {}
        tries = dict.fromkeys(pending, 0)
        final: dict[str, RecipientResult] = {}
        where: dict[str, str] = {}
        failed: set[tuple[str, int]] = set()
        transactions = 0

        while pending:
            relay, admission = self._choose(relays, failed)
            key = f"{relay[0]}:{relay[1]}"
            if not admission.allowed:
                c = _suspended(admission, key)
                wait = admission.retry_in
                remaining = state.remaining
                if remaining is None or wait < remaining:
                    self._emit("wait", f"{key} suspended; waiting {wait:.1f} s", delay=wait)
                    await self.clock.sleep(wait)
                    continue
                for a in pending:
                    last[a] = c
                self._defer(pending, last, tries, final, where, key, wait)
                break

            out = await self._attempt(message, envelope, relay, key, pending, bodies, state, hook)
            transactions += 1
            if not out.stale:
                for a in pending:
                    if a not in out.split:
                        tries[a] += 1
                        where[a] = key
            self._feedback(relay, key, out)
            for a in out.delivered:
                final[a] = RecipientResult(
                    a, State.DELIVERED, last.get(a), tries[a], destination=key
                )
            for a, c in out.rejected.items():
                final[a] = RecipientResult(a, State.REJECTED, c, tries[a], destination=key)
            for a, c in out.ambiguous.items():
                final[a] = RecipientResult(a, State.AMBIGUOUS, c, tries[a], destination=key)
            last.update(out.pending)
            pending = [a for a in pending if a not in final]
            if out.delivered:
                state.record_success()
            if not pending:
                break
            if out.stale and not out.pending.keys() - set(pending):
                # A pooled connection the server had closed while idle: not
                # a failure of this send; go again on a fresh connection.
                self._emit("reconnect", f"{key}: idle connection was closed; reconnecting")
                continue
            if not out.pending:
                continue  # only a split remainder is left: send it at once
            c = out.failure or next(iter(out.pending.values()))
            if c.scope in (Scope.CONNECTION, Scope.DESTINATION):
                failed.add(relay)  # the next attempt prefers another relay or MX
            decision = state.decide(c, destination=key)
            if decision.retry:  # the policy has emitted the "retry" event
                await self.clock.sleep(decision.delay)
                continue
            self._defer(pending, last, tries, final, where, key, decision.retry_in)
            break
        return final, transactions

    def _choose(
        self, relays: Sequence[tuple[str, int]], failed: set[tuple[str, int]]
    ) -> tuple[tuple[str, int], Any]:
        """The first relay health admits, preferring ones that have not failed
        in this send (Postfix tries the next MX after a recoverable failure);
        else the relay whose suspension ends first, with its refusal."""
        fallback: Any = None
        first: Any = None
        for relay in relays:
            admission = self.health.admit(f"{relay[0]}:{relay[1]}")
            if admission.allowed:
                if relay not in failed:
                    return relay, admission
                fallback = fallback or (relay, admission)
            elif first is None or admission.retry_in < first[1].retry_in:
                first = (relay, admission)
        return fallback or first  # type: ignore[no-any-return]

    def _defer(
        self,
        pending: list[str],
        last: dict[str, Classification],
        tries: dict[str, int],
        final: dict[str, RecipientResult],
        where: dict[str, str],
        key: str,
        retry_in: float | None,
    ) -> None:
        for a in pending:
            c = last[a]
            if c.transient:
                final[a] = RecipientResult(
                    a, State.DEFERRED, c, tries[a], retry_in, where.get(a, key)
                )
            else:
                final[a] = RecipientResult(a, State.REJECTED, c, tries[a], None, where.get(a, key))

    def _feedback(self, relay: tuple[str, int], key: str, out: Outcome) -> None:
        """Tell the limiter (once per permit, as the adaptive limiter counts
        them), health and the pool how the attempt went.  ``None`` means the
        destination answered normally, even if some recipients were refused."""
        if not out.permitted:
            return
        c = out.failure
        self.limiter.feedback(key, c)
        if out.stale:
            return  # an idle connection the server had closed says nothing new
        self.health.record(key, c)
        self.pool.feedback(*relay, c)

    async def _attempt(
        self,
        message: Message | bytes | str,
        envelope: Envelope,
        relay: tuple[str, int],
        key: str,
        pending: list[str],
        bodies: dict[bool, bytes],
        state: RetryState,
        hook: BeforeEndOfData | None = None,
    ) -> Outcome:
        """One transaction to ``relay`` for the ``pending`` recipients."""
        host, port = relay
        permit = self.limiter.acquire(key)
        try:
            await self._take(permit, state)
        except _DeadlineReached:
            out = Outcome(permitted=False)
            out.settle(pending, _deadline_classification(key))
            return out
        connected = False
        try:
            async with self.pool.connection(host, port) as lease:
                connected = True
                out = await self._transact(lease, message, envelope, host, pending, bodies, hook)
                if out.broken:
                    lease.discard()
                return out
        except NO_REPLY as exc:
            if connected:
                raise
            # Connecting failed: no session at all.
            out = Outcome()
            c = self.classifier.classify(exc, host=host)
            out.note(c)
            out.broken = True
            out.settle(pending, c)
            return out
        finally:
            await permit.__aexit__(None, None, None)

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
        )
        return wire.restore(out)

    async def _take(self, permit: AbstractAsyncContextManager[None], state: RetryState) -> None:
        """Take a limiter permit, within the send's deadline.

        Only the permit wait is raced against the deadline on the clock; a
        connect is bounded by the transport's timeout.  (Racing I/O against
        a fake clock would let the fake clock jump while a real socket is
        busy.)  A waiter cancelled at the deadline holds no permit: the
        Limiter protocol promises that.
        """
        remaining = state.remaining
        # Under testing.no_waits() every clock sleep, the deadline timer's
        # too, ends at once: the race would always be lost, so skip it.
        if remaining is None or _Waits.skip:
            await permit.__aenter__()
        elif self.clock is system_clock and _timeout is not None:
            # The system clock is the loop's clock: a timeout handle on the
            # loop costs no task and no extra turn of the loop.
            try:
                async with _timeout(remaining):
                    await permit.__aenter__()
            except TimeoutError:
                raise _DeadlineReached from None
        else:
            task = asyncio.ensure_future(permit.__aenter__())
            await asyncio.sleep(0)  # an uncontended permit is granted in this turn
            if not task.done():
                timer = asyncio.ensure_future(self.clock.sleep(remaining))
                try:
                    await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if task.cancelled():
                    raise _DeadlineReached
            task.result()


class _DeadlineReached(Exception):
    """The send's deadline passed while waiting for a permit or a connection."""


def _deadline_classification(key: str) -> Classification:
    return Classification.without_reply(
        Reason.RATE_LIMITED,
        transient=True,
        session_over=False,
        reply=Reply(None, None, f"deadline reached waiting for {key}"),
        explanation=f"the send's deadline passed while waiting for a permit for {key}",
    )
