"""Test doubles for code that uses resilient_smtp (and for its own tests).

:class:`FakeClock` advances instantly: ``await clock.sleep(300)`` returns at
once with ``clock.monotonic()`` 300 s later, and the sleep is recorded in
``clock.sleeps``.  Several tasks sleeping on one fake clock wake in the order
of their deadlines, as they would on the real clock: time jumps to the next
deadline only when every task on the event loop is waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass

__all__ = ["DROP", "FakeClock", "ReceivedMessage", "ScriptedSMTPServer"]


class FakeClock:
    """A :class:`~resilient_smtp.Clock` whose sleeps take no real time.

    ``start`` is the initial reading of :meth:`monotonic`.  :meth:`advance`
    moves time forward by hand (waking sleepers whose deadline has passed).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []
        """Every duration passed to :meth:`sleep`, in call order."""
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Handle | None = None

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (self._now + seconds, next(self._seq), fut))
        self._schedule(loop)
        try:
            await fut
        except asyncio.CancelledError:
            self._waiters = [w for w in self._waiters if w[2] is not fut]
            heapq.heapify(self._waiters)
            raise

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        self._wake_due()

    @property
    def total_slept(self) -> float:
        """The sum of every sleep requested so far."""
        return sum(self.sleeps)

    def _wake_due(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._driver is None:
            self._driver = loop.call_soon(self._drive, loop, 0)

    def _drive(self, loop: asyncio.AbstractEventLoop, idle_rounds: int) -> None:
        """Jump to the next deadline once nothing else on the loop can run."""
        self._driver = None
        if not self._waiters:
            return
        ready = getattr(loop, "_ready", None)
        busy = ready is not None and len(ready) > 0
        # Without access to the ready queue, wait a few loop turns instead.
        if busy or (ready is None and idle_rounds < 8):
            self._driver = loop.call_soon(self._drive, loop, idle_rounds + 1)
            return
        deadline = self._waiters[0][0]
        self._now = max(self._now, deadline)
        self._wake_due()
        if self._waiters:
            self._schedule(loop)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, sleeps={len(self.sleeps)})"


# --------------------------------------------------------------------------
# A real SMTP server on loopback, scripted per stage and per recipient.

DROP = "<drop>"
"""Use as a scripted reply: close the connection without answering."""

_STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "end_of_data")


@dataclass
class _ScriptRule:
    stage: str
    reply: str
    times: int | None
    recipient: str | None
    nth: int | None
    used: int = 0

    def fires(self, stage: str, recipient: str | None, nth: int) -> bool:
        if stage != self.stage or (self.times is not None and self.used >= self.times):
            return False
        if self.recipient is not None and recipient != self.recipient:
            return False
        return self.nth is None or self.nth == nth


@dataclass(frozen=True)
class ReceivedMessage:
    """A transaction the scripted server accepted (250 after the data)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class ScriptedSMTPServer:
    """A real aiosmtpd SMTP server on 127.0.0.1 (port 0: a free port),
    answering normally except where the script says otherwise.

    ::

        async with ScriptedSMTPServer() as server:
            server.on("rcpt", "421 4.7.0 Try again later", nth=3)       # 421 at the 3rd RCPT
            server.on("rcpt", "450 4.2.0 Greylisted", recipient="b@example.com", times=2)
            server.on("end_of_data", DROP)                              # drop after the final dot
            ... Mailer("127.0.0.1", server.port, tls="none") ...
        server.messages  # what was accepted

    Stages: ``connect`` (the greeting), ``ehlo``, ``mail``, ``rcpt``,
    ``data`` (the DATA command), ``end_of_data``.  A reply starting with 421
    is sent and the connection closed, as real servers do; :data:`DROP`
    closes without a reply.  ``times`` limits how often a rule fires (None:
    always), ``recipient`` and ``nth`` (1-based RCPT number within the
    transaction) narrow it.  Rules are tried in the order added.  A message
    dropped at ``end_of_data`` is recorded in :attr:`dropped_after_data`
    (the client cannot know whether it was delivered).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._rules: list[_ScriptRule] = []
        self.messages: list[ReceivedMessage] = []
        self.dropped_after_data: list[ReceivedMessage] = []
        self.connections = 0
        self.commands: list[str] = []
        self._server: asyncio.AbstractServer | None = None

    def on(
        self,
        stage: str,
        reply: str,
        *,
        times: int | None = 1,
        recipient: str | None = None,
        nth: int | None = None,
    ) -> ScriptedSMTPServer:
        """Script ``reply`` for ``stage``; returns the server, so calls chain."""
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {', '.join(_STAGES)}, not {stage!r}")
        if reply != DROP and not (len(reply) >= 3 and reply[:3].isdigit()):
            raise ValueError(f"reply must start with a 3-digit code or be DROP, not {reply!r}")
        self._rules.append(_ScriptRule(stage, reply, times, recipient, nth))
        return self

    def scripted(self, stage: str, recipient: str | None = None, nth: int = 0) -> str | None:
        for rule in self._rules:
            if rule.fires(stage, recipient, nth):
                rule.used += 1
                return rule.reply
        return None

    @property
    def delivered_to(self) -> list[str]:
        """Every recipient of every accepted message, repeats included."""
        return [r for m in self.messages for r in m.recipients]

    async def __aenter__(self) -> ScriptedSMTPServer:
        from ._scripted_server import make_protocol

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: make_protocol(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
