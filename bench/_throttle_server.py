"""A throttling SMTP server on loopback: at most ``rate`` messages a second.

The handler keeps a token bucket (``burst`` tokens, refilled at ``rate`` a
second, full at start) and spends one token per ``MAIL FROM``.  With no token
left it answers ``421 4.7.0 Try again later, closing connection`` and closes
the connection, as Gmail and Microsoft 365 do when a sender goes too fast.

Used by ``bench/bench_throttle.py``; importable by tests and other
benchmarks::

    controller, port = start_throttling_server(rate=50, burst=5)
    try:
        ...  # send to 127.0.0.1:port
    finally:
        controller.stop()

The server runs in its own thread (aiosmtpd's threaded ``Controller``), so
its clock is the real one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["THROTTLE_REPLY", "ThrottlingHandler", "start_throttling_server"]

THROTTLE_REPLY = "421 4.7.0 Try again later, closing connection"


class ThrottlingHandler:
    """aiosmtpd handler: a token bucket on ``MAIL FROM``; counts what it saw."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()
        self.mail_commands = 0
        """``MAIL FROM`` commands received (attempts)."""
        self.refused = 0
        """Attempts answered with the 421."""
        self.delivered = 0
        """Messages accepted after end of data."""
        self.delivery_times: list[float] = []
        """``clock()`` at each accepted message."""

    def _take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self.mail_commands += 1
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.refused += 1
            return False

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if not self._take():
            # The reply is written before this callback runs; close() flushes it.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return THROTTLE_REPLY
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.delivered += 1
            self.delivery_times.append(self._clock())
        return "250 OK: queued"


class _AnyPortController(Controller):
    """aiosmtpd's Controller, bound to port 0 (the OS picks a free port)."""

    def _trigger_server(self) -> None:
        # The readiness probe connects to self.port: learn the real one first.
        server = self.server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it untyped


def start_throttling_server(
    rate: float, burst: int = 5, *, hostname: str = "127.0.0.1"
) -> tuple[Any, int]:
    """Start a throttling server; return ``(controller, port)``.

    ``controller.handler`` is the :class:`ThrottlingHandler` (its counters);
    call ``controller.stop()`` when done.
    """
    handler = ThrottlingHandler(rate, burst)
    controller = _AnyPortController(handler, hostname=hostname, port=0)
    controller.start()
    return controller, int(controller.port)
