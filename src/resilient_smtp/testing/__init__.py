"""Test doubles for code that uses resilient_smtp (and for its own tests).

:class:`FakeClock` advances instantly: ``await clock.sleep(300)`` returns at
once with ``clock.monotonic()`` 300 s later, and the sleep is recorded in
``clock.sleeps``.  Several tasks sleeping on one fake clock wake in the order
of their deadlines, as they would on the real clock: time jumps to the next
deadline only when every task on the event loop is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Iterator
from typing import Any

from .._clock import _Waits
from ._script import DROP, ReceivedMessage, Script
from ._transport import ScriptedTransport

__all__ = [
    "DROP",
    "FakeClock",
    "ReceivedMessage",
    "Script",
    "ScriptedSMTPServer",
    "ScriptedTransport",
    "classifications",
    "no_waits",
    "replies",
]


@contextlib.contextmanager
def no_waits() -> Iterator[None]:
    """Turn every wait on the system clock off inside the ``with`` block.

    For tests of application code that builds its Mailer with the default
    clock: retry back-offs, limiter waits and suspensions take no real time,
    and the clock jumps forward by what they would have taken, so deadlines
    and rates behave as they would.  The previous setting is restored on
    exit.  (Code that takes a ``clock=`` is better served by
    :class:`FakeClock`.)
    """
    previous = _Waits.skip
    _Waits.skip = True
    try:
        yield
    finally:
        _Waits.skip = previous


class FakeClock:
    """A :class:`~resilient_smtp.Clock` whose sleeps take no real time.

    ``start`` is the initial reading of :meth:`monotonic`.  :meth:`advance`
    moves time forward by hand (waking sleepers whose deadline has passed).
    Without it, time jumps to the next sleeper's deadline once the event
    loop has turned :attr:`IDLE_TURNS` times with nothing woken: work that
    is under way (a reply on a loopback socket, a chain of callbacks) runs
    first, and waiting costs no real time.
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

    # Loop turns with a sleeper waiting before time jumps: enough for the
    # callbacks a wake-up sets off (a future's done callbacks, the task
    # steps they schedule, a transport's writes) to run first.
    IDLE_TURNS = 32

    def _drive(self, loop: asyncio.AbstractEventLoop, idle_rounds: int) -> None:
        """Jump to the next deadline once the loop has turned a few times
        with nothing but sleepers left (public API only: no peeking into
        the loop's ready queue)."""
        self._driver = None
        if not self._waiters:
            return
        if idle_rounds < self.IDLE_TURNS:
            self._driver = loop.call_soon(self._drive, loop, idle_rounds + 1)
            return
        deadline = self._waiters[0][0]
        self._now = max(self._now, deadline)
        self._wake_due()
        if self._waiters:
            self._schedule(loop)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, sleeps={len(self.sleeps)})"


class ScriptedSMTPServer(Script):
    """A real aiosmtpd SMTP server on 127.0.0.1 (port 0: a free port),
    answering normally except where the script says otherwise.

    ::

        async with ScriptedSMTPServer() as server:
            server.on("rcpt", "421 4.7.0 Try again later", nth=3)   # 421 at the 3rd RCPT
            server.on("rcpt", "450 4.2.0 Greylisted", recipient="b@example.com", times=2)
            server.on("end_of_data", DROP)                          # drop after the final dot
            ... Mailer("127.0.0.1", server.port, tls="none") ...
        server.messages  # what was accepted

    Stages: ``connect`` (the greeting), ``ehlo``, ``mail``, ``rcpt``,
    ``data`` (the DATA command), ``end_of_data``; see :class:`Script` for
    the rules.  Needs aiosmtpd (the ``testing`` extra).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> ScriptedSMTPServer:
        from ._server import make_protocol

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: make_protocol(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# --------------------------------------------------------------------------
# Hypothesis strategies (hypothesis is a test dependency: imported on use).

_TEXTS = (
    "Try again later",
    "Service not available, closing transmission channel",
    "Greylisted, see http://postgrey.example/",
    "Error: too many connections from 192.0.2.1",
    "Mailbox full",
    "User unknown",
    "Relay access denied",
    "Message size exceeds fixed maximum message size",
    "[TSS04] Messages from 192.0.2.1 temporarily deferred",
    "Ip frequency limited",
    "Too many messages. Try again in 92 seconds.",
    "Ok",
)


def replies() -> Any:
    """A hypothesis strategy of SMTP reply strings: real-looking ones
    (a code, maybe an enhanced status, a known text) and arbitrary text."""
    from hypothesis import strategies as st

    code = st.integers(min_value=200, max_value=599)
    status = st.one_of(
        st.none(),
        st.tuples(st.sampled_from("245"), st.integers(0, 7), st.integers(0, 999)).map(
            lambda t: f"{t[0]}.{t[1]}.{t[2]}"
        ),
    )
    text = st.one_of(st.sampled_from(_TEXTS), st.text(max_size=200))
    built = st.builds(lambda c, s, t: " ".join(str(p) for p in (c, s, t) if p), code, status, text)
    return st.one_of(built, st.text(max_size=300))


def classifications() -> Any:
    """A hypothesis strategy of :class:`~resilient_smtp.Classification`
    objects, from :func:`replies` through the default classifier."""
    from .._classify.classifier import classify

    return replies().map(classify)
