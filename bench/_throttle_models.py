"""Throttling SMTP servers on loopback, one per way real servers limit a sender.

A small SMTP server (raw asyncio, in its own thread and event loop, bound to
127.0.0.1) asks a :class:`Throttle` what to do at each connection and each
``MAIL FROM``; everything else it accepts.  The models:

* :class:`TokenBucket`: ``rate`` a second with a small ``burst``; over it,
  ``421 4.7.0 Try again later, closing connection`` and close (Gmail and
  Microsoft 365 answer sudden bursts this way).
* :class:`FixedWindow`: at most ``limit`` ``MAIL`` commands per window of
  ``window`` seconds (per second, per minute...), counted like Postfix's
  anvil (refused commands count too).  Over it, ``450 4.7.1 Error: too much
  mail from 127.0.0.1`` after a ``pause`` (Postfix sleeps
  ``smtpd_error_sleep_time``, 1 s by default, before answering a client in
  error), the connection left open: refusals arrive late and together.
  ``aligned=True`` starts windows on multiples of ``window`` (a per-second
  counter); ``False`` starts one at the first command after the last one
  ended (anvil's ``anvil_rate_time_unit``).
* :class:`ConnectionCount`: more than ``limit`` connections open at once are
  greeted with ``421 4.7.0 Error: too many connections from 127.0.0.1`` and
  closed (Postfix's ``smtpd_client_connection_count_limit``).
* :class:`HourlyQuota`: ``limit`` messages an hour, then ``451 4.7.1 hourly
  sending quota exceeded, try again later`` at ``MAIL`` (an ESP's account
  quota: not something a faster or slower pace fixes).

    server = ThrottleServer(FixedWindow(limit=100, window=1.0)).start()
    try:
        ...  # send to 127.0.0.1:server.port
    finally:
        server.stop()
    server.delivered, server.refused, server.mail_commands, server.delivery_times
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from typing import Protocol

__all__ = [
    "ConnectionCount",
    "FixedWindow",
    "HourlyQuota",
    "ThrottleServer",
    "TokenBucket",
    "Verdict",
]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A refusal: the reply, how long to sit on it, and whether to hang up."""

    reply: str
    pause: float = 0.0
    close: bool = False


class Throttle(Protocol):
    def connect(self, now: float, open_connections: int) -> Verdict | None: ...

    def mail(self, now: float) -> Verdict | None: ...


class TokenBucket:
    """``rate`` messages a second, ``burst`` at once; 421 and close over it."""

    def __init__(self, rate: float, burst: int = 5) -> None:
        self.rate, self.burst = float(rate), burst
        self._tokens, self._last = float(burst), -math.inf

    def connect(self, now: float, open_connections: int) -> Verdict | None:
        return None

    def mail(self, now: float) -> Verdict | None:
        if self._last == -math.inf:
            self._last = now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return Verdict("421 4.7.0 Try again later, closing connection", close=True)


class FixedWindow:
    """``limit`` MAILs per ``window`` seconds; late 450s over it."""

    def __init__(
        self, limit: int, window: float = 1.0, *, pause: float = 1.0, aligned: bool = True
    ) -> None:
        self.limit, self.window, self.pause, self.aligned = limit, window, pause, aligned
        self._start, self._count = -math.inf, 0

    @property
    def sustainable(self) -> float:
        return self.limit / self.window

    def connect(self, now: float, open_connections: int) -> Verdict | None:
        return None

    def mail(self, now: float) -> Verdict | None:
        if now >= self._start + self.window:
            self._start = (now // self.window) * self.window if self.aligned else now
            self._count = 0
        self._count += 1  # anvil counts refused commands too
        if self._count <= self.limit:
            return None
        return Verdict("450 4.7.1 Error: too much mail from 127.0.0.1", pause=self.pause)


class ConnectionCount:
    """At most ``limit`` connections at once: 421 at the greeting beyond."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connect(self, now: float, open_connections: int) -> Verdict | None:
        if open_connections <= self.limit:
            return None
        return Verdict(
            "421 4.7.0 throttle.test Error: too many connections from 127.0.0.1", close=True
        )

    def mail(self, now: float) -> Verdict | None:
        return None


class HourlyQuota:
    """``limit`` messages an hour (from the first), then 451 at MAIL."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._start, self._count = -math.inf, 0

    def connect(self, now: float, open_connections: int) -> Verdict | None:
        return None

    def mail(self, now: float) -> Verdict | None:
        if now >= self._start + 3600.0:
            self._start, self._count = now, 0
        if self._count < self.limit:
            self._count += 1
            return None
        return Verdict("451 4.7.1 Hourly sending quota exceeded, try again later")


class ThrottleServer:
    """A minimal SMTP server on 127.0.0.1 that a :class:`Throttle` governs."""

    def __init__(self, throttle: Throttle, *, host: str = "127.0.0.1") -> None:
        self.throttle = throttle
        self.host = host
        self.port = 0
        self.connections = 0
        self.refused_connections = 0
        self.mail_commands = 0
        self.refused = 0
        self.delivered = 0
        self.delivery_times: list[float] = []
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> ThrottleServer:
        self._thread = threading.Thread(target=self._run, name="throttle-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("the throttle server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10.0)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._client, self.host, 0, backlog=512)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        self.connections += 1
        try:
            verdict = self.throttle.connect(time.monotonic(), self._open)
            if verdict is not None:
                self.refused_connections += 1
                await asyncio.sleep(verdict.pause)
                writer.write(verdict.reply.encode() + b"\r\n")
                await writer.drain()
                return
            writer.write(b"220 throttle.test ESMTP\r\n")
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_mail = False
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(
                    b"250-throttle.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n"
                )
            elif verb == b"HELO":
                writer.write(b"250 throttle.test\r\n")
            elif verb == b"MAIL":
                self.mail_commands += 1
                verdict = self.throttle.mail(time.monotonic())
                if verdict is None:
                    in_mail = True
                    writer.write(b"250 2.1.0 Ok\r\n")
                else:
                    self.refused += 1
                    if verdict.pause:
                        await writer.drain()
                        await asyncio.sleep(verdict.pause)
                    writer.write(verdict.reply.encode() + b"\r\n")
                    if verdict.close:
                        await writer.drain()
                        return
            elif verb == b"RCPT":
                writer.write(b"250 2.1.5 Ok\r\n" if in_mail else b"503 5.5.1 Error: need MAIL\r\n")
            elif verb == b"DATA":
                if not in_mail:
                    writer.write(b"503 5.5.1 Error: need RCPT command\r\n")
                    continue
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                while (chunk := await reader.readline()) not in (b".\r\n", b".\n"):
                    if not chunk:
                        return
                self.delivered += 1
                self.delivery_times.append(time.monotonic())
                in_mail = False
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"RSET":
                in_mail = False
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"NOOP":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()
