"""A durable outbox: messages survive the process that queued them.

A deferral can last hours (greylisting, a reputation back-off, a suspended
destination); a message held only in memory dies with its process.
:meth:`Outbox.put` returns once the message is stored durably; a worker
(:meth:`Outbox.run`, or ``python -m resilient_smtp worker``) sends what is
due through a :class:`~resilient_smtp.Mailer`, stores every recipient's
final state, and tries deferred recipients again at their retry time until
the message's lifetime (5 days, as Postfix) runs out.

Crash safety: a recipient is stored as ``sending`` just before the final
dot of its transaction leaves (the Mailer's ``before_end_of_data`` hook).
A worker killed at any point therefore loses nothing, and sends nobody a
message twice: a recipient it was sending when it died becomes
``ambiguous`` (it may have been delivered) once the dead worker's claim
lapses, and is not resent unless an operator says so (``outbox retry
--state ambiguous``); one killed before the dot is simply sent again.

Claims are leases, renewed by a heartbeat and fenced by a token: a worker
that cannot renew its lease stops before the next final dot, and the
store refuses its writes once another worker holds the recipients.  A row
the worker cannot decode is ``quarantined``, not fatal.

::

    async with Outbox("outbox.db") as outbox:
        await outbox.put(message)          # durable when it returns

    async with Outbox("outbox.db") as outbox, Mailer("smtp.example.com") as mailer:
        await outbox.run(mailer, stop=stop_event)

    # or, restarted after errors (a database away for a moment):
    await run_worker(mailer, "postgresql://mail@db/mail", stop=stop_event)

``SQLiteStore`` (one file) is the default store; for many workers on many
machines, ``PostgresStore`` (the ``postgres`` extra, imported from this
module on first use) implements the same :class:`Store` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from email.message import Message
from types import TracebackType
from typing import Any

from .._checks import callables, optional
from .._clock import Clock, system_clock
from .._envelope import build_envelope, check_address, render_message
from .._errors import InvalidMessageError
from .._events import Event, Hook, emit, logger
from .._mailer import Mailer
from .._result import State
from ._policy import OutboxPolicy, next_try, update_for
from ._records import (
    FINAL_STATES,
    Claimed,
    DestinationStatus,
    NewMessage,
    OldestMessage,
    OutboxState,
    OutboxStatus,
    Quarantined,
    ReasonStatus,
    RecipientUpdate,
    Store,
    SuspensionStatus,
)
from ._sqlite import SQLiteStore

__all__ = [
    "FINAL_STATES",
    "Claimed",
    "DestinationStatus",
    "NewMessage",
    "OldestMessage",
    "Outbox",
    "OutboxPolicy",
    "OutboxState",
    "OutboxStatus",
    "Quarantined",
    "ReasonStatus",
    "RecipientUpdate",
    "SQLiteStore",
    "Store",
    "SuspensionStatus",
    "open_store",
    "run_worker",
]

_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*([^\r\n]*)")
# How often a worker deletes records older than the policy's ``keep`` and
# looks for rows it cannot decode.
_PRUNE_EVERY = 60.0


def open_store(target: str | os.PathLike[str]) -> Store:
    """The store ``target`` names: a ``postgresql://`` (or ``postgres://``)
    URL opens a :class:`PostgresStore` (the ``postgres`` extra), anything
    else is the path of a SQLite file."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        store: Store = PostgresStore(target)
        return store
    return SQLiteStore(target)


def _with_message_id(body: bytes, sender: str) -> tuple[bytes, str]:
    """``body`` with a Message-ID header (added if missing, as an MTA's
    cleanup does, RFC 5322 §3.6.4 says it SHOULD be there), and its value:
    it is how a message is traced through the queue and at the receiver."""
    end = re.search(rb"\r?\n\r?\n", body)
    head = body if end is None else body[: end.start() + 1]
    found = _MESSAGE_ID.search(head)
    if found:
        return body, found.group(1).decode("ascii", "replace").strip()
    domain = sender.rpartition("@")[2] or "localhost"
    value = email.utils.make_msgid(domain=domain)
    newline = b"\r\n" if b"\r\n" in head or not head else b"\n"
    header = b"Message-ID: " + value.encode("ascii", "replace") + newline
    return header + body, value


class Outbox:
    """A queue of messages in a durable :class:`Store`, and its worker.

    ``store`` is a :class:`Store`, a ``postgresql://`` URL or the path of
    a SQLite file (:func:`open_store`).  ``policy``
    sets the lifetime, back-off, retention and size limit
    (:class:`OutboxPolicy`).  ``clock`` is for waiting (a
    :class:`~resilient_smtp.testing.FakeClock` in tests); ``wall`` returns
    the wall-clock time stored in the queue (default :func:`time.time`;
    tests pass the fake clock's ``monotonic``).  ``hooks`` receive an
    :class:`~resilient_smtp.Event` for every state change, kinds
    ``outbox_queued``, ``outbox_sending``, ``outbox_delivered``,
    ``outbox_rejected``, ``outbox_deferred``, ``outbox_ambiguous``,
    ``outbox_expired``, ``outbox_retry``, ``outbox_purged``,
    ``outbox_quarantined`` and ``outbox_lease_lost``.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        *,
        policy: OutboxPolicy | None = None,
        clock: Clock | None = None,
        wall: Callable[[], float] | None = None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        # Checked before a store is opened, so a mistake leaves nothing open.
        optional("policy", policy, OutboxPolicy, "an OutboxPolicy")
        optional("clock", clock, Clock, "a Clock")
        if wall is not None and not callable(wall):
            raise TypeError(f"wall must return the time in seconds, not be {type(wall).__name__}")
        self.hooks = callables("hooks", hooks)
        if isinstance(store, (str, os.PathLike)):
            store = open_store(store)
        if not isinstance(store, Store):
            raise TypeError(f"store must be a Store or a path, not {type(store).__name__}")
        self.store = store
        self.policy = policy or OutboxPolicy()
        self.clock = clock or system_clock
        self._wall = wall or time.time
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._pruned: float | None = None

    def __repr__(self) -> str:
        return f"Outbox({self.store!r})"

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()

    def _emit(self, kind: str, message: str, **data: object) -> None:
        emit(Event(kind, message, dict(data)), self.hooks)

    # -- queueing ---------------------------------------------------------------

    async def put(
        self,
        message: Message | bytes | str,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | str | None = None,
    ) -> str:
        """Store ``message`` for sending; return its queue id once it is
        durable.

        The envelope is taken and checked as :meth:`Mailer.send` does
        (headers, or ``sender``/``recipients``); a message with no
        recipients, a bad address or more than ``policy.max_size`` bytes
        raises :class:`~resilient_smtp.InvalidMessageError` and nothing is
        stored.  A Message-ID header is added if missing.
        """
        envelope = build_envelope(message, sender=sender, recipients=recipients)
        body = render_message(message, smtputf8=envelope.needs_smtputf8)
        if len(body) > self.policy.max_size:
            raise InvalidMessageError(
                f"message is {len(body)} bytes, more than the outbox's "
                f"max_size of {self.policy.max_size}"
            )
        body, message_id = _with_message_id(body, envelope.sender)
        now = self._wall()
        new = NewMessage(
            id=uuid.uuid4().hex,
            message_id=message_id,
            sender=envelope.sender,
            recipients=envelope.recipients,
            body=body,
            created=now,
            expires=now + self.policy.lifetime,
        )
        await self.store.add(new)
        self._emit(
            "outbox_queued",
            f"{new.id} queued for {len(new.recipients)} recipient(s)",
            id=new.id,
            message_id=message_id,
            recipients=len(new.recipients),
            size=len(body),
        )
        self._wake.set()
        return new.id

    # -- working ----------------------------------------------------------------

    async def run_once(self, mailer: Mailer) -> int:
        """One pass: recover what dead workers left, set bad rows aside,
        delete old records, claim what is due and send it.  Returns the
        messages handled.

        If a send fails (the store refuses a write, a bug), the batch's
        other sends are stopped before their final dot, those past it are
        awaited (within the lease) and what they reached is recorded; then
        the error is raised.  No claim is released while its send may still
        be running, so calling this again never sends a message twice.
        """
        now = self._wall()
        for mid, address in await self.store.recover(now=now):
            self._emit(
                "outbox_ambiguous",
                f"{mid} to {address}: its worker stopped while sending; not resent",
                id=mid,
                recipient=address,
                state=OutboxState.AMBIGUOUS.value,
                reason="worker_lost",
            )
        tick = self.clock.monotonic()
        if self._pruned is None or tick - self._pruned >= _PRUNE_EVERY:
            for q in await self.store.quarantine(now=now):
                self._quarantined(q.message, q.address, q.error)
            self._pruned = tick
            pruned = await self.store.prune(before=now - self.policy.keep)
            if pruned:
                self._emit("outbox_purged", f"{pruned} old record(s) deleted", count=pruned)
        lease = _Lease(uuid.uuid4().hex, now + self.policy.lease)
        claimed = await self.store.claim(
            worker=self.worker,
            token=lease.token,
            now=now,
            until=lease.until,
            limit=self.policy.batch,
        )
        if claimed:
            await self._send_batch(mailer, claimed, lease)
        return len(claimed)

    async def run(self, mailer: Mailer, *, stop: asyncio.Event | None = None) -> None:
        """Send what is due, then wait for more, until ``stop`` is set.

        A heartbeat keeps the claims of the batch being sent alive; a batch
        started finishes before this returns.  An error (the store away)
        is raised once the batch's sends are settled (see
        :meth:`run_once`): calling ``run`` again is safe, and
        :func:`run_worker` does it with a back-off.
        """
        stop = stop or asyncio.Event()
        while not stop.is_set():
            if await self.run_once(mailer):
                continue
            due = await self.store.next_due()
            wait = self.policy.poll
            if due is not None:
                # Not below 50 ms: a due recipient another worker holds
                # must not make this one spin.
                wait = min(wait, max(0.05, due - self._wall()))
            self._wake.clear()
            await _first(self.clock.sleep(wait), stop.wait(), self._wake.wait())

    async def _send_batch(self, mailer: Mailer, claimed: Sequence[Claimed], lease: _Lease) -> None:
        flights = [_Flight(c) for c in claimed]
        tasks = [asyncio.ensure_future(self._send(mailer, f, lease)) for f in flights]

        def stop_waiting_sends() -> None:
            # The lease is lost: no new transaction is worth starting.  A
            # send already past a final dot goes on to its verdict.
            for t, f in zip(tasks, flights, strict=True):
                if not f.in_dot:
                    t.cancel()

        lease.on_lost = stop_waiting_sends
        heartbeat = asyncio.ensure_future(self._keep(lease))
        try:
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:
                await self._settle(tasks, flights, lease, grace=False)
                raise
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                await self._settle(tasks, flights, lease, grace=True)
                error = failed[0].exception()
                assert error is not None
                raise error
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if any(len(f.done) < len(f.claim.attempts) for f in flights):
                try:
                    # Only recipients not being sent: their sends have ended.
                    await self.store.release(token=lease.token)
                except Exception:
                    logger.warning("outbox: could not release a claim; it lapses", exc_info=True)

    async def _settle(
        self,
        tasks: Sequence[asyncio.Future[None]],
        flights: Sequence[_Flight],
        lease: _Lease,
        *,
        grace: bool,
    ) -> None:
        """Stop a batch after an error: no further final dot goes out; a
        send past its dot is given until the lease ends for its verdict
        (``grace``); the rest are cancelled; then what each reached is
        recorded, as far as the store lets us."""
        lease.stopping = True
        running = {t: f for t, f in zip(tasks, flights, strict=True) if not t.done()}
        for t, f in running.items():
            if not (grace and f.in_dot):
                t.cancel()
        if grace and any(f.in_dot for f in running.values()):
            # On the loop's timer, as the heartbeat: the lease is real time.
            await asyncio.wait(list(running), timeout=max(0.0, lease.until - self._wall()))
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for t, f in zip(tasks, flights, strict=True):
            updates = list(f.unrecorded)
            if t in running and t.cancelled():
                # Stopped mid-send: the recipients past their final dot may
                # have the message; those stopped while being marked never
                # had it and are due again; the rest never left "waiting".
                done = {u.address for u in updates}
                now = self._wall()
                updates += [
                    RecipientUpdate(
                        address=a,
                        state=OutboxState.DEFERRED,
                        attempts=f.claim.attempts[a],
                        due=now,
                        reason="cancelled",
                        detail="the worker stopped this send before its final dot",
                    )
                    if a in f.unsent
                    else RecipientUpdate(
                        address=a,
                        state=OutboxState.AMBIGUOUS,
                        attempts=f.claim.attempts[a] + 1,
                        reason="cancelled",
                        detail="the worker stopped this send after its final dot",
                    )
                    for a in f.marked
                    if a not in done
                ]
            if updates:
                try:
                    await self._record(f.claim, updates)
                    f.done.update(u.address for u in updates)
                except Exception:
                    logger.warning(
                        "outbox: could not record %s; its claim lapses",
                        f.claim.id,
                        exc_info=True,
                    )

    async def _keep(self, lease: _Lease) -> None:
        """The heartbeat: renew the lease every third of it; a failed
        renewal is retried with a growing pause until the lease would
        lapse, and then the lease is lost (the sends stop before their
        final dot).

        It runs on the event loop's own timer, not on ``clock``: a lease is
        real time passing for the other workers (on other machines too),
        and a test's fake clock, which jumps whenever the loop waits for a
        database, would renew it at random."""
        while not lease.lost:
            await asyncio.sleep(self.policy.lease / 3)
            pause = min(0.5, self.policy.lease / 20)
            while not lease.lost:
                now = self._wall()
                left = lease.until - now
                if left <= 0:
                    self._lease_lost(lease, "the heartbeat could not renew it in time")
                    return
                try:
                    held = await self.store.extend(
                        token=lease.token, now=now, until=now + self.policy.lease
                    )
                except Exception as exc:
                    logger.warning(
                        "outbox: the heartbeat failed (%s: %s); trying again in %.2f s",
                        type(exc).__name__,
                        exc,
                        min(pause, left),
                    )
                    await asyncio.sleep(min(pause, left))
                    pause = min(pause * 2, self.policy.lease / 10)
                    continue
                if held:
                    lease.until = now + self.policy.lease
                else:
                    self._lease_lost(lease, "the store holds none of its recipients any more")
                break

    def _lease_lost(self, lease: _Lease, why: str) -> None:
        if not lease.lost:
            lease.lost = True
            if lease.on_lost is not None:
                lease.on_lost()
            self._emit(
                "outbox_lease_lost",
                f"claim {lease.token[:8]} lost: {why}; no final dot goes out under it",
                token=lease.token,
            )

    def _quarantined(self, mid: str, address: str, error: str) -> None:
        logger.warning("outbox: %s to %s quarantined: %s", mid, address, error)
        self._emit(
            "outbox_quarantined",
            f"{mid} to {address}: quarantined ({error})",
            id=mid,
            recipient=address,
            state=OutboxState.QUARANTINED.value,
            reason="bad_row",
            error=error,
        )

    async def _send(self, mailer: Mailer, f: _Flight, lease: _Lease) -> None:
        c = f.claim
        now = self._wall()
        if now >= c.expires:
            expired = [
                RecipientUpdate(
                    address=a,
                    state=OutboxState.EXPIRED,
                    attempts=n,
                    reason="expired",
                    detail=f"still not delivered after the message's lifetime "
                    f"({self.policy.lifetime:.0f} s)",
                )
                for a, n in c.attempts.items()
            ]
            await self._record_for(f, expired)
            return
        bad = _bad_addresses(c)
        if bad:
            await self._record_for(
                f,
                [
                    RecipientUpdate(
                        address=a,
                        state=OutboxState.QUARANTINED,
                        attempts=c.attempts[a],
                        reason="bad_row",
                        detail=error,
                    )
                    for a, error in bad.items()
                ],
            )
        addresses = [a for a in c.recipients if a not in bad]
        if not addresses:
            return

        async def at_final_dot(accepted: list[str]) -> None:
            # The fencing point: the dot goes out only under a live claim,
            # and the recipients are stored as "sending" first.  A worker
            # killed from here on leaves them "sending", which recovery
            # turns into ambiguous (never resent).  Stopped any earlier,
            # the recipients are still waiting and are sent again: nothing
            # of the message reached the server.
            if lease.stopping:
                raise _Stopped("the worker is stopping this batch")
            at = self._wall()
            if lease.lost or at >= lease.until:
                self._lease_lost(lease, "it lapsed before the final dot")
                raise _Stopped("the claim's lease lapsed")
            # From here the send is past the point of no return: a batch
            # stopped after an error lets it reach its verdict.
            f.in_dot = True
            marking = asyncio.ensure_future(
                self.store.mark_sending(c.id, accepted, token=lease.token, now=at)
            )
            try:
                marked = await asyncio.shield(marking)
            except asyncio.CancelledError:
                # Cancelled before the dot: whatever the store did, the
                # message did not leave; the clean-up puts them back.
                with contextlib.suppress(Exception):
                    if await marking:
                        f.marked.update(accepted)
                        f.unsent.update(accepted)
                raise
            if not marked:
                self._lease_lost(lease, "the store refused to mark the recipients sending")
                raise _Stopped("the store no longer holds the claim")
            f.marked.update(accepted)
            for a in accepted:
                self._emit(
                    "outbox_sending",
                    f"{c.id} to {a}",
                    id=c.id,
                    recipient=a,
                    state=OutboxState.SENDING.value,
                    attempt=c.attempts[a] + 1,
                )

        updates: list[RecipientUpdate]
        try:
            result = await mailer.send(
                c.body, sender=c.sender, recipients=addresses, before_end_of_data=at_final_dot
            )
        except InvalidMessageError as exc:
            # Raised before MAIL FROM (SMTPUTF8 the server lacks): nothing sent.
            updates = [
                RecipientUpdate(
                    address=a,
                    state=OutboxState.REJECTED,
                    attempts=c.attempts[a] + 1,
                    reason="invalid_message",
                    detail=str(exc),
                )
                for a in addresses
                if a not in f.marked
            ]
            updates += self._unknown(f, "error", f"{type(exc).__name__}: {exc}")
        except _Stopped as exc:
            # Stopped before a final dot: only what passed an earlier dot
            # of this send is in doubt; the rest stays due.
            updates = self._unknown(f, "stopped", str(exc))
        except Exception as exc:
            # A bug, not a reply.  The recipients past a final dot may have
            # the message; the others never had it and are tried again
            # after the back-off (a bug that repeats ends at the expiry).
            logger.exception("the Mailer raised while sending %s", c.id)
            detail = f"{type(exc).__name__}: {exc}"
            now = self._wall()
            updates = self._unknown(f, "error", detail)
            updates += [
                RecipientUpdate(
                    address=a,
                    state=OutboxState.DEFERRED,
                    attempts=c.attempts[a] + 1,
                    due=min(c.expires, next_try(self.policy, now=now, tries=1, retry_in=None)),
                    reason="error",
                    detail=detail,
                )
                for a in addresses
                if a not in f.marked
            ]
        else:
            now = self._wall()
            updates = []
            for r in result:
                suspended, until = False, None
                if r.state is State.DEFERRED and r.destination is not None:
                    health = mailer.health.status(r.destination)
                    suspended = health.state in ("suspended", "paused")
                    if suspended and health.until is not None:
                        # Health keeps the Mailer's monotonic time; the store
                        # keeps wall-clock time.
                        until = now + (health.until - mailer.clock.monotonic())
                updates.append(
                    update_for(
                        self.policy,
                        r,
                        now=now,
                        tries=c.attempts[r.address] + 1,
                        expires=c.expires,
                        suspended=suspended,
                        suspended_until=until,
                    )
                )
        await self._record_for(f, updates)

    def _unknown(self, f: _Flight, reason: str, detail: str) -> list[RecipientUpdate]:
        """Recipients of ``f`` past a final dot whose verdict never came."""
        return [
            RecipientUpdate(
                address=a,
                state=OutboxState.AMBIGUOUS,
                attempts=f.claim.attempts[a] + 1,
                reason=reason,
                detail=detail,
            )
            for a in f.marked
        ]

    async def _record_for(self, f: _Flight, updates: Sequence[RecipientUpdate]) -> None:
        """Record ``updates``; if the store fails, keep them on ``f`` so the
        batch's clean-up can try once more."""
        f.unrecorded = list(updates)
        await self._record(f.claim, updates)
        f.unrecorded = []
        f.done.update(u.address for u in updates)

    async def _record(self, c: Claimed, updates: Sequence[RecipientUpdate]) -> None:
        if not updates:
            return
        written = await self.store.record(c.id, updates, token=c.token, now=self._wall())
        if written < len(updates):
            # Fenced: another worker holds these recipients now.
            self._emit(
                "outbox_lease_lost",
                f"{c.id}: {len(updates) - written} update(s) refused, the claim was lost",
                id=c.id,
                token=c.token,
                refused=len(updates) - written,
            )
            if written == 0:
                return
        for u in updates:
            if u.state is OutboxState.QUARANTINED:
                self._quarantined(c.id, u.address, u.detail or "")
                continue
            extra = "" if u.due is None else f", due in {u.due - self._wall():.0f} s"
            self._emit(
                f"outbox_{u.state.value}",
                f"{c.id} to {u.address}: {u.state.value}"
                + ("" if u.reason is None else f" ({u.reason})")
                + extra,
                id=c.id,
                message_id=c.message_id,
                recipient=u.address,
                state=u.state.value,
                reason=u.reason,
                destination=u.destination,
                attempt=u.attempts,
                due=u.due,
            )

    # -- operating --------------------------------------------------------------

    async def status(self) -> OutboxStatus:
        """Recipients per state, the oldest message per state, the
        deferrals per destination, the counts per state, destination and
        reason with the latest explanation, and the running suspensions."""
        return await self.store.status(now=self._wall())

    async def retry(
        self,
        *,
        message: str | None = None,
        states: Sequence[OutboxState | str] = (OutboxState.DEFERRED,),
    ) -> int:
        """Make recipients in ``states`` (of ``message``, or every message)
        due now; return how many.  Retrying ``ambiguous`` recipients may
        send them the message twice; ``sending`` cannot be retried."""
        chosen = _states("states", states)
        if OutboxState.SENDING in chosen or OutboxState.QUEUED in chosen:
            raise ValueError("states: only deferred, quarantined or final states can be retried")
        n = await self.store.retry(now=self._wall(), states=chosen, message=message)
        self._emit(
            "outbox_retry",
            f"{n} recipient(s) due now",
            count=n,
            id=message,
            states=[s.value for s in chosen],
        )
        self._wake.set()
        return n

    async def purge(
        self,
        *,
        message: str | None = None,
        states: Sequence[OutboxState | str] = tuple(FINAL_STATES),
    ) -> int:
        """Delete recipients in ``states`` (of ``message``, or every
        message) now, whatever the retention; return how many."""
        chosen = _states("states", states)
        if OutboxState.SENDING in chosen:
            raise ValueError("states: recipients being sent cannot be purged")
        n = await self.store.purge(states=chosen, message=message)
        self._emit(
            "outbox_purged",
            f"{n} recipient(s) deleted",
            count=n,
            id=message,
            states=[s.value for s in chosen],
        )
        return n


class _Stopped(Exception):
    """Raised by the final-dot hook to stop a send before its dot."""


class _Lease:
    """A batch's claim: its token, when it lapses (renewed by the
    heartbeat), and whether it is lost or being stopped."""

    __slots__ = ("lost", "on_lost", "stopping", "token", "until")

    def __init__(self, token: str, until: float) -> None:
        self.token = token
        self.until = until
        self.lost = False
        self.stopping = False
        self.on_lost: Callable[[], None] | None = None


class _Flight:
    """One claimed message being sent: the recipients marked ``sending``
    (and those of them stopped before their dot left), those recorded, and
    updates the store failed to take."""

    __slots__ = ("claim", "done", "in_dot", "marked", "unrecorded", "unsent")

    def __init__(self, claim: Claimed) -> None:
        self.claim = claim
        self.done: set[str] = set()
        self.marked: set[str] = set()
        self.unsent: set[str] = set()
        self.in_dot = False
        self.unrecorded: list[RecipientUpdate] = []


def _bad_addresses(c: Claimed) -> dict[str, str]:
    """Recipients of ``c`` no SMTP server could be given (an address edited
    by hand, or every one when the sender is bad), with the error."""
    try:
        check_address(c.sender, "sender")
    except InvalidMessageError as exc:
        return dict.fromkeys(c.recipients, str(exc))
    bad = {}
    for a in c.recipients:
        try:
            check_address(a, "recipient")
        except InvalidMessageError as exc:
            bad[a] = str(exc)
    return bad


async def run_worker(
    mailer: Mailer,
    store: Store | str | os.PathLike[str],
    *,
    stop: asyncio.Event | None = None,
    policy: OutboxPolicy | None = None,
    hooks: Iterable[Hook] = (),
    clock: Clock | None = None,
    max_pause: float = 60.0,
) -> None:
    """Run an outbox worker on ``store`` (a :class:`Store`, a
    ``postgresql://`` URL or a SQLite path) through ``mailer`` until
    ``stop`` is set; the store is closed at the end.

    This is what ``python -m resilient_smtp worker`` and framework
    integrations run.  An error from :meth:`Outbox.run` (the database
    restarting, a disk full) is logged and the worker starts again after a
    pause that doubles from 1 s up to ``max_pause``, instead of ending the
    process: :meth:`Outbox.run_once` settles a batch before it raises, so
    starting again sends nothing twice.
    """
    stop = stop or asyncio.Event()
    clock = clock or system_clock
    pause = 1.0
    async with Outbox(store, policy=policy, clock=clock, hooks=hooks) as outbox:
        while not stop.is_set():
            try:
                await outbox.run(mailer, stop=stop)
            except Exception as exc:
                logger.warning(
                    "outbox worker: %s: %s; starting again in %.0f s",
                    type(exc).__name__,
                    exc,
                    pause,
                    exc_info=True,
                )
                await _first(clock.sleep(pause), stop.wait())
                pause = min(max_pause, pause * 2)
            else:
                pause = 1.0


def _states(name: str, states: Sequence[OutboxState | str]) -> tuple[OutboxState, ...]:
    if isinstance(states, str):
        states = [states]
    out = []
    for s in states:
        try:
            out.append(OutboxState(s))
        except ValueError:
            choices = ", ".join(x.value for x in OutboxState)
            raise ValueError(f"{name}: {s!r} is not a state ({choices})") from None
    if not out:
        raise ValueError(f"{name}: give at least one state")
    return tuple(out)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` ends; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def __getattr__(name: str) -> Any:
    # PostgresStore needs asyncpg (the "postgres" extra): imported on use,
    # so the SQLite outbox works without it.
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
