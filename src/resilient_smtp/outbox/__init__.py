"""A durable outbox: messages survive the process that queued them.

A deferral can last hours (greylisting, a reputation back-off, a suspended
destination); a message held only in memory dies with its process.
:meth:`Outbox.put` returns once the message is stored durably; a worker
(:meth:`Outbox.run`, or ``python -m resilient_smtp worker``) sends what is
due through a :class:`~resilient_smtp.Mailer`, stores every recipient's
final state, and tries deferred recipients again at their retry time until
the message's lifetime (5 days, as Postfix) runs out.

Crash safety: before the Mailer is given a recipient, the recipient is
stored as ``sending``.  A worker killed at any point therefore loses
nothing, and sends nobody a message twice: a recipient it was sending when
it died becomes ``ambiguous`` (it may have been delivered) once the dead
worker's claim lapses, and is not resent unless an operator says so
(``outbox retry --state ambiguous``).  This is conservative: a recipient
whose transaction had not reached the end of the data is also called
ambiguous.

::

    async with Outbox("outbox.db") as outbox:
        await outbox.put(message)          # durable when it returns

    async with Outbox("outbox.db") as outbox, Mailer("smtp.example.com") as mailer:
        await outbox.run(mailer, stop=stop_event)

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

from .._clock import Clock, system_clock
from .._envelope import build_envelope, render_message
from .._errors import InvalidMessageError
from .._events import Event, Hook, emit, logger
from .._mailer import Mailer
from .._result import State
from ._policy import OutboxPolicy, update_for
from ._records import (
    FINAL_STATES,
    Claimed,
    DestinationStatus,
    NewMessage,
    OutboxState,
    OutboxStatus,
    RecipientUpdate,
    Store,
)
from ._sqlite import SQLiteStore

__all__ = [
    "FINAL_STATES",
    "Claimed",
    "DestinationStatus",
    "NewMessage",
    "Outbox",
    "OutboxPolicy",
    "OutboxState",
    "OutboxStatus",
    "RecipientUpdate",
    "SQLiteStore",
    "Store",
]

_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*([^\r\n]*)")
# How often a worker deletes records older than the policy's ``keep``.
_PRUNE_EVERY = 60.0


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

    ``store`` is a :class:`Store` or the path of a SQLite file.  ``policy``
    sets the lifetime, back-off, retention and size limit
    (:class:`OutboxPolicy`).  ``clock`` is for waiting (a
    :class:`~resilient_smtp.testing.FakeClock` in tests); ``wall`` returns
    the wall-clock time stored in the queue (default :func:`time.time`;
    tests pass the fake clock's ``monotonic``).  ``hooks`` receive an
    :class:`~resilient_smtp.Event` for every state change, kinds
    ``outbox_queued``, ``outbox_sending``, ``outbox_delivered``,
    ``outbox_rejected``, ``outbox_deferred``, ``outbox_ambiguous``,
    ``outbox_expired``, ``outbox_retry`` and ``outbox_purged``.
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
        if isinstance(store, (str, os.PathLike)):
            store = SQLiteStore(store)
        if not isinstance(store, Store):
            raise TypeError(f"store must be a Store or a path, not {type(store).__name__}")
        self.store = store
        self.policy = policy or OutboxPolicy()
        self.clock = clock or system_clock
        self._wall = wall or time.time
        self.hooks = tuple(hooks)
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
        """One pass: recover what dead workers left, delete old records,
        claim what is due and send it.  Returns the messages handled."""
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
            self._pruned = tick
            pruned = await self.store.prune(before=now - self.policy.keep)
            if pruned:
                self._emit("outbox_purged", f"{pruned} old record(s) deleted", count=pruned)
        claimed = await self.store.claim(
            worker=self.worker,
            now=now,
            until=now + self.policy.lease,
            limit=self.policy.batch,
        )
        if claimed:
            await asyncio.gather(*(self._send(mailer, c) for c in claimed))
        return len(claimed)

    async def run(self, mailer: Mailer, *, stop: asyncio.Event | None = None) -> None:
        """Send what is due, then wait for more, until ``stop`` is set.

        A heartbeat keeps this worker's claims alive while it runs; on the
        way out the claims it has not started sending are released.
        Sends already handed to the Mailer finish before it returns.
        """
        stop = stop or asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
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
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.store.release(worker=self.worker)

    async def _heartbeat(self) -> None:
        while True:
            await self.clock.sleep(self.policy.lease / 3)
            await self.store.extend(worker=self.worker, until=self._wall() + self.policy.lease)

    async def _send(self, mailer: Mailer, c: Claimed) -> None:
        now = self._wall()
        if now >= c.expires:
            updates = [
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
            await self._record(c, updates)
            return
        addresses = list(c.recipients)

        async def at_final_dot(accepted: list[str]) -> None:
            # Recorded durably before the final dot leaves: a worker killed
            # from here on leaves these recipients "sending", which recovery
            # turns into ambiguous (never resent).  Killed any earlier, the
            # recipients are still waiting and are sent again: nothing of
            # the message reached the server.
            await self.store.mark_sending(c.id, accepted, now=self._wall())
            for a in accepted:
                self._emit(
                    "outbox_sending",
                    f"{c.id} to {a}",
                    id=c.id,
                    recipient=a,
                    state=OutboxState.SENDING.value,
                    attempt=c.attempts[a] + 1,
                )

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
            ]
        except Exception as exc:
            # A bug, not a reply: whether anything went out is unknown.
            logger.exception("the Mailer raised while sending %s", c.id)
            updates = [
                RecipientUpdate(
                    address=a,
                    state=OutboxState.AMBIGUOUS,
                    attempts=c.attempts[a] + 1,
                    reason="error",
                    detail=f"{type(exc).__name__}: {exc}",
                )
                for a in addresses
            ]
        else:
            now = self._wall()
            updates = []
            for r in result:
                suspended = False
                if r.state is State.DEFERRED and r.destination is not None:
                    health = mailer.health.status(r.destination).state
                    suspended = health in ("suspended", "paused")
                updates.append(
                    update_for(
                        self.policy,
                        r,
                        now=now,
                        tries=c.attempts[r.address] + 1,
                        expires=c.expires,
                        suspended=suspended,
                    )
                )
        await self._record(c, updates)

    async def _record(self, c: Claimed, updates: Sequence[RecipientUpdate]) -> None:
        await self.store.record(c.id, updates, now=self._wall())
        for u in updates:
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
        """Recipients per state, the oldest deferred message, and the
        deferrals per destination."""
        return await self.store.status()

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
            raise ValueError("states: only deferred or final states can be retried")
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
