"""A synchronous Mailer, for code that does not run asyncio.

Django views, Flask handlers, scripts and Celery tasks send mail from plain
threads.  :class:`Mailer` here takes the same arguments as
:class:`resilient_smtp.Mailer` and returns the same :class:`SendResult`;
each call runs the async Mailer's ``send`` on one background event loop and
blocks the calling thread until it is done.

Why one loop for the whole process, on one daemon thread, rather than
``asyncio.run()`` per call: the limiter, destination health and the
connection pool only help if they outlive a single send, and they belong to
the loop they run on.  With one shared loop, many threads sending at once
share one rate, one set of breakers and one pool per destination, exactly
as concurrent tasks of an async application do.

The loop starts on first use.  At interpreter exit (:mod:`atexit`) the
Mailers still open are closed politely (QUIT), the loop is stopped and its
thread joined, all within a bounded time.  A process forked while the loop
runs (gunicorn, Celery's prefork pool) starts its own loop on first use, and
each Mailer rebuilds its async Mailer from its arguments there: sockets and
loop state are never shared across a fork.

Calling :meth:`Mailer.send` from a thread that is running an event loop
would block that loop (or, on the background loop itself, deadlock), so it
raises :class:`RuntimeError` at once: await :meth:`resilient_smtp.Mailer.send`
there instead.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from email.message import Message
from types import TracebackType
from typing import Any, Protocol, TypeVar

from . import _mailer
from ._bulk import BulkProgress, MessageLike, SyncBulkSend
from ._classify.classifier import Classifier
from ._classify.reactions import REACTIONS, Reactions
from ._clock import Clock
from ._events import Hook, logger
from ._health import Health
from ._limits.limiter import Limiter
from ._mx import MXResolver
from ._result import SendResult
from ._retry.policy import RetryPolicy
from ._transport.connection import TLSMode, TokenProvider, Transport
from ._transport.pool import PoolLimits
from ._verify import VerifyReport

__all__ = ["Mailer", "shutdown"]

_T = TypeVar("_T")

# How long interpreter exit may wait for the Mailers to say QUIT and for the
# loop's thread to stop.  A server that does not answer must not hang exit.
_SHUTDOWN_TIMEOUT = 5.0


def _refuse_inside_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what}() was called from a thread that is running an event loop; blocking "
        f"here would stall that loop.  In async code use `await {instead}(...)`, or run "
        "the sync call in a worker thread (`await asyncio.to_thread(...)`)."
    )


class _Closeable(Protocol):
    async def close(self) -> None: ...


class _Background:
    """The process's one background event loop and the Mailers open on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[int, _Closeable] = {}
        self.generation = 0
        """Bumped each time a new loop starts (first use, after a shutdown,
        in a forked child): a Mailer opened on an older generation rebuilds."""

    def loop(self) -> tuple[asyncio.AbstractEventLoop, int]:
        """The running loop and its generation, starting it if needed."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=_run_loop, args=(loop, ready), name="resilient_smtp", daemon=True
                )
                thread.start()
                if not ready.wait(_SHUTDOWN_TIMEOUT):  # pragma: no cover - a stuck machine
                    raise RuntimeError("the resilient_smtp background loop did not start")
                self._loop, self._thread = loop, thread
                self.generation += 1
                atexit.register(shutdown)
            return self._loop, self.generation

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def register(self, key: int, thing: _Closeable) -> None:
        """Close ``thing`` (on the loop) when the loop shuts down."""
        with self._lock:
            self._open[key] = thing

    def unregister(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)

    def current(self) -> tuple[asyncio.AbstractEventLoop | None, int]:
        """The running loop (``None`` if none) and its generation."""
        with self._lock:
            return self._loop, self.generation

    def run(self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(work, loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller, or the loop shut down: do not
            # leave the send running unobserved.
            future.cancel()
            raise

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            mailers = list(self._open.values())
            self._loop = self._thread = None
            self._open.clear()
        atexit.unregister(shutdown)
        if loop is None or thread is None:
            return
        if mailers and thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(_close_all(mailers, timeout), loop)
            try:
                closing.result(timeout + 1.0)
            except (Exception, concurrent.futures.CancelledError) as exc:
                logger.warning("closing Mailers at shutdown failed: %r", exc)
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if thread.is_alive():  # pragma: no cover - a stuck coroutine
            logger.warning("the resilient_smtp loop did not stop within %.1f s", timeout)

    def forget(self) -> None:
        """In a forked child: the parent's loop and thread are not ours."""
        self._lock = threading.Lock()
        self._loop = self._thread = None
        self._open.clear()
        self.generation += 1


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
        # Stopped: cancel what is left (sends of threads still waiting get
        # CancelledError), then close.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


async def _close_all(mailers: list[_Closeable], timeout: float) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(m.close() for m in mailers), return_exceptions=True), timeout
    )
    for r in results:
        if isinstance(r, Exception):
            logger.warning("closing a Mailer at shutdown failed: %r", r)


_background = _Background()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_background.forget)


def shutdown(timeout: float = _SHUTDOWN_TIMEOUT) -> None:
    """Close every open sync Mailer (QUIT) and stop the background loop.

    Runs by itself at interpreter exit; call it earlier where a framework
    has its own shutdown hook (a worker's exit handler).  Sends still
    waiting end with :class:`asyncio.CancelledError`.  Using a Mailer again
    afterwards starts a new loop.
    """
    _background.shutdown(timeout)


def _call(work: Callable[[], Coroutine[Any, Any, _T]], *, what: str, instead: str) -> _T:
    """Run ``work()`` on the background loop from a plain thread (for the
    integrations in :mod:`resilient_smtp.contrib`).  Async objects kept
    across calls belong to the loop: compare ``_background.generation``
    (read on the loop) with the one they were built on."""
    _refuse_inside_loop(what, instead)
    loop, _ = _background.loop()
    return _background.run(loop, work())


class Mailer:
    """:class:`resilient_smtp.Mailer` for synchronous code; thread-safe.

    Same arguments, same :class:`~resilient_smtp.SendResult`.  Build one per
    relay configuration and share it between threads: the rate limit,
    destination health and connections are shared with it.  Use it as a
    context manager or call :meth:`close` (at exit, open Mailers are closed
    anyway).
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
        hooks = tuple(hooks)

        def build() -> _mailer.Mailer:
            return _mailer.Mailer(
                host,
                port,
                mx=mx,
                tls=tls,
                username=username,
                password=password,
                tls_context=tls_context,
                timeout=timeout,
                local_hostname=local_hostname,
                retry=retry,
                limiter=limiter,
                health=health,
                classifier=classifier,
                clock=clock,
                transport=transport,
                pool=pool,
                resend_ambiguous=resend_ambiguous,
                hooks=hooks,
                reactions=reactions,
                oauth_token=oauth_token,
                chunking=chunking,
                pipeline_messages=pipeline_messages,
            )

        # Built here, in the caller's thread, so bad arguments raise here.
        # Nothing in the async Mailer's constructor touches an event loop.
        self._build: Callable[[], _mailer.Mailer] = build
        self._async = build()
        self._generation: int | None = None  # the loop it was opened on
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Mailer:
        """As :meth:`resilient_smtp.Mailer.from_url`."""
        from ._url import mailer_arguments

        return cls(**mailer_arguments(url, kwargs))

    @property
    def async_mailer(self) -> _mailer.Mailer:
        """The :class:`resilient_smtp.Mailer` behind this one (its limiter,
        health and retry policy are there)."""
        return self._async

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<sync {self._async!r}{state}>"

    def __enter__(self) -> Mailer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _opened(self) -> tuple[asyncio.AbstractEventLoop, _mailer.Mailer]:
        loop, generation = _background.loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("this Mailer is closed")
            if self._generation != generation:
                if self._generation is not None:
                    # The loop it ran on is gone (a fork, or shutdown()):
                    # its pool and waiters belonged to that loop.
                    self._async = self._build()
                self._generation = generation
                _background.register(id(self), self._async)
            return loop, self._async

    def send(
        self,
        message: Message | bytes | str,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | str | None = None,
    ) -> SendResult:
        """Send ``message``; block until every recipient has a final state.

        As :meth:`resilient_smtp.Mailer.send`: bad input raises
        :class:`~resilient_smtp.InvalidMessageError` before any I/O; failures
        to deliver are in the result.  Raises :class:`RuntimeError` when
        called from a thread running an event loop, or after :meth:`close`.
        """
        _refuse_inside_loop("resilient_smtp.sync.Mailer.send", "resilient_smtp.Mailer.send")
        if isinstance(recipients, Iterable) and not isinstance(recipients, str):
            recipients = list(recipients)  # a generator must be read in this thread
        loop, mailer = self._opened()
        return _background.run(loop, mailer.send(message, sender=sender, recipients=recipients))

    def send_many(
        self,
        messages: Iterable[MessageLike],
        *,
        concurrency: int = 16,
        progress: BulkProgress | bool = False,
    ) -> SyncBulkSend:
        """As :meth:`resilient_smtp.Mailer.send_many`: iterate the result for
        each message's outcome as it finishes, or call ``.wait()``.  The
        messages are read here, in the calling thread, first."""
        _refuse_inside_loop(
            "resilient_smtp.sync.Mailer.send_many", "resilient_smtp.Mailer.send_many"
        )
        messages = list(messages)
        loop, mailer = self._opened()
        bulk = mailer.send_many(messages, concurrency=concurrency, progress=progress)
        return SyncBulkSend(bulk, lambda work: _background.run(loop, work))

    def verify(self, *, domains: Iterable[str] = ()) -> VerifyReport:
        """As :meth:`resilient_smtp.Mailer.verify`: connect, EHLO, STARTTLS
        and AUTH to each relay, blocking until done; never raises for a
        server's answer (see ``report.ok`` and ``report.error``)."""
        _refuse_inside_loop("resilient_smtp.sync.Mailer.verify", "resilient_smtp.Mailer.verify")
        domains = list(domains)
        loop, mailer = self._opened()
        return _background.run(loop, mailer.verify(domains=domains))

    def close(self) -> None:
        """Close the pooled connections (QUIT).  Idempotent."""
        with self._lock:
            if self._closed:
                return
            opened = self._generation
            if opened is not None:
                _refuse_inside_loop(
                    "resilient_smtp.sync.Mailer.close", "resilient_smtp.Mailer.close"
                )
            self._closed = True
            self._generation = None
        if opened is None:
            return  # never sent anything: nothing is open
        _background.unregister(id(self))
        loop, generation = _background.current()
        if loop is None or generation != opened:
            return  # that loop was shut down, and this Mailer closed with it
        _background.run(loop, self._async.close())
