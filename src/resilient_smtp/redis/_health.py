"""Destination health shared by every worker through Redis.

:class:`RedisHealth` implements :class:`~resilient_smtp.Health` around a
:class:`~resilient_smtp.DestinationHealth` (same rules, same code: it asks
that one) whose suspensions and relay pauses are also written to Redis and
broadcast to the other workers, which apply them to their own breakers at
once.  It hears the decisions through the events the breakers emit, and
hands the other workers' decisions to :meth:`DestinationHealth.adopt` and
:meth:`DestinationHealth.resume`.  ``admit`` stays synchronous and answers
from local state, so asking costs no round trip; a background task keeps
that state in step:

* every suspension, pause and resumption decided here is written to a hash
  per destination (with its end, on Redis time, and the key's expiry) and
  published on ``{prefix}:health``, in one script;
* a worker that starts, or that gets Redis back after losing it, reads the
  hashes (so it learns suspensions decided while it was away) and writes its
  own running suspensions (those others missed).

While Redis is unavailable each worker keeps its own breakers, which is what
:class:`~resilient_smtp.DestinationHealth` alone does.  Failure counts
(``failure_threshold``) stay per worker; only decisions are shared.
Every worker half-opens a shared suspension when it ends, so up to one probe
per worker goes to the destination, not one in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from .._classify.taxonomy import Reason
from .._clock import Clock, system_clock
from .._events import Event, Hook
from .._health import Admission, DestinationHealth, Health, HealthStatus
from ._link import _FAILURES, RedisUnavailable, _Link, _OnLink
from ._lua import HEALTH_SNAPSHOT, HEALTH_WRITE

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["RedisHealth"]

_SNAPSHOT_STEPS = 1000  # SCAN steps per snapshot at most (500 keys each)
_LISTEN_POLL = 1.0  # seconds a pub/sub read waits before looking again
_READY_WAIT = 5.0  # seconds start() waits for the first snapshot at most


class RedisHealth(_OnLink, Health):
    """:class:`~resilient_smtp.DestinationHealth` with suspensions shared through Redis.

    ``redis`` is a ``redis://`` URL or a ``redis.asyncio.Redis``; the other
    parameters are :class:`~resilient_smtp.DestinationHealth`'s.  Sharing
    starts with the first ``admit``/``record`` inside an event loop, or with
    ``await health.start()`` (or ``async with``), which also waits for the
    suspensions already in Redis.  Close it with ``await health.aclose()``.
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        prefix: str = "resilient_smtp",
        timeout: float = 0.1,
        retry_base: float = 0.5,
        retry_cap: float = 5.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
        **rules: Any,
    ) -> None:
        self._hooks = tuple(hooks)
        self._clock = clock
        self.local = DestinationHealth(clock=clock, hooks=(*self._hooks, self._heard), **rules)
        """The breakers in this process, which decide; this object shares."""
        self._link = _Link(
            redis,
            what="RedisHealth",
            prefix=prefix,
            timeout=timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            clock=clock,
            hooks=self._hooks,
        )
        self.prefix = self._link.prefix
        client = self._link.client
        self._write = client.register_script(HEALTH_WRITE)
        self._snapshot = client.register_script(HEALTH_SNAPSHOT)
        self._channel = f"{prefix}:health"
        self._origin = uuid.uuid4().hex
        self._listener: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def keys_held(self) -> int:
        """Destinations the local breakers hold state for right now."""
        return self.local.keys_held

    # -- the Health protocol, plus starting the sync -----------------------------

    def admit(self, key: str) -> Admission:
        self._start_soon()
        return self.local.admit(key)

    def record(self, key: str, classification: Classification | None) -> None:
        self._start_soon()
        self.local.record(key, classification)

    def status(self, key: str) -> HealthStatus:
        return self.local.status(key)

    async def start(self) -> None:
        """Start sharing, and wait (at most 5 s) for the suspensions already in Redis."""
        self._start_soon()
        assert self._ready is not None
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._ready.wait(), _READY_WAIT)

    async def __aenter__(self) -> RedisHealth:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop sharing; wait for the writes in flight; close a client made from a URL."""
        self._closed = True
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._link.aclose()

    # -- the decisions, shared --------------------------------------------------

    def _heard(self, event: Event) -> None:
        """The local breakers decided something: share it (not what they
        adopted from another worker, which that worker shares)."""
        data = event.data
        if data.get("shared"):
            return
        if event.kind == "suspended":
            key = data["destination"]
            self._share(
                "suspend", key, "suspended", data["reason"], data["until"], data["suspensions"]
            )
        elif event.kind == "paused":
            self._share("suspend", None, "paused", data["reason"], data["until"], data["pauses"])
        elif event.kind == "resumed":
            self._share("resume", data["destination"], "healthy", "", None, 0)

    def _redis_key(self, key: str | None) -> str:
        return f"{self.prefix}:health:relay" if key is None else f"{self.prefix}:health:dest:{key}"

    def _share(
        self,
        op: str,
        key: str | None,
        state: str,
        reason: str,
        until: float | None,
        suspensions: int,
    ) -> None:
        """Write and publish a decision; ``until`` is its end on our clock."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside an event loop: local only (pushed on the next start)
            return
        if self._closed or not self._link.usable():
            return  # pushed again when Redis is back (see _push_local)
        rkey = self._redis_key(key)

        async def write() -> None:
            # What is left is measured when the write goes out, not when the
            # decision was made: a busy loop may run this task late, and the
            # key's expiry and the other workers' suspensions must end with ours.
            left = 0.0 if until is None else until - self._clock.monotonic()
            if until is not None and left <= 0:
                return  # over already: nothing to share
            ms = left * 1000
            message = json.dumps(
                {
                    "origin": self._origin,
                    "op": op,
                    "key": key,
                    "state": state,
                    "reason": reason,
                    "ms": ms,
                    "suspensions": suspensions,
                }
            )
            args = (op, f"{ms:.3f}", reason, suspensions, state, self._channel, message)
            with contextlib.suppress(RedisUnavailable):
                await self._link.call(lambda: self._write(keys=[rkey], args=args))

        task = loop.create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _apply(self, op: str, key: str | None, reason: str, ms: float, suspensions: int) -> None:
        """Take another worker's decision into our breakers."""
        if op == "resume":
            self.local.resume(key)
        else:
            self.local.adopt(
                key,
                seconds=ms / 1000.0,
                reason=Reason(reason) if reason else None,
                suspensions=suspensions,
            )

    # -- the background sync --------------------------------------------------------

    def _start_soon(self) -> None:
        if self._listener is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._ready = asyncio.Event()
        self._listener = loop.create_task(self._listen())

    async def _listen(self) -> None:
        """Follow the channel until closed; reconnect after the link's back-off."""
        link = self._link
        while not self._closed:
            pubsub = link.client.pubsub()
            try:
                await link.call(lambda p=pubsub: p.subscribe(self._channel))  # type: ignore[misc]
                await self._load()
                await self._push_local()
                assert self._ready is not None
                self._ready.set()
                while not self._closed:
                    try:
                        msg = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=_LISTEN_POLL
                        )
                    except _FAILURES as exc:
                        link.failed(exc)
                        break
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(msg["data"])
            except RedisUnavailable:
                pass
            finally:
                with contextlib.suppress(*_FAILURES):
                    await asyncio.wait_for(pubsub.aclose(), link.timeout)  # type: ignore[no-untyped-call]
            if self._closed:
                return
            assert self._ready is not None
            self._ready.set()  # start() waits for Redis only once
            await self._clock.sleep(max(0.01, link.retry_at - self._clock.monotonic()))

    def _on_message(self, data: bytes | str) -> None:
        try:
            m = json.loads(data)
            if m.get("origin") == self._origin:
                return
            if m.get("op") not in ("suspend", "resume") or not isinstance(
                m.get("key"), (str, type(None))
            ):
                return
            self._apply(
                str(m["op"]),
                m["key"],
                str(m["reason"]),
                float(m["ms"]),
                int(m["suspensions"]),
            )
        except (ValueError, KeyError, TypeError):  # not ours, or from another version
            return

    async def _load(self) -> None:
        """Apply every running suspension stored in Redis."""
        cursor: bytes | str | int = 0
        pattern = f"{self.prefix}:health:*"
        relay_key = self._redis_key(None).encode()
        dest = f"{self.prefix}:health:dest:".encode()
        for _ in range(_SNAPSHOT_STEPS):
            step = await self._link.call(
                lambda c=cursor: self._snapshot(keys=[], args=[c, pattern])  # type: ignore[misc]
            )
            cursor, rest = step[0], step[1:]
            for i in range(0, len(rest), 5):
                rkey, _state, reason, suspensions, left = rest[i : i + 5]
                rkey = rkey if isinstance(rkey, bytes) else str(rkey).encode()
                key = None if rkey == relay_key else rkey[len(dest) :].decode()
                if key is not None and not rkey.startswith(dest):
                    continue
                self._apply("suspend", key, _text(reason), float(left), int(suspensions))
            if int(cursor) == 0:
                return

    async def _push_local(self) -> None:
        """Write our running suspensions (decided while Redis was away)."""
        for key, st in self.local.suspended().items():
            assert st.until is not None
            self._share(
                "suspend",
                key,
                st.state,
                "" if st.reason is None else str(st.reason),
                st.until,
                st.suspensions,
            )

    def __repr__(self) -> str:
        return (
            f"RedisHealth(keys={self.local.keys_held}, prefix={self.prefix!r}, "
            f"redis={'up' if self._link.up else 'down'})"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
