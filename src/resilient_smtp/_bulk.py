"""Sending many messages: bounded concurrency, results as they finish.

Every bulk sender needs the same three things around :meth:`Mailer.send`:
a cap on the sends in flight, the results as they come (to requeue the
deferred ones, to log the rejected ones), and a running count.  Without
them each user writes a semaphore and a progress bar of their own.

:class:`BulkSend` is what :meth:`Mailer.send_many` returns.  A fixed number
of worker tasks pull the next message from the input and send it through
the one Mailer, so its pool, limiter and destination health see all the
traffic (the pool still caps connections per destination on top of the
concurrency).  The input is read lazily, one message a time, so a
generator over a million rows is never held in memory.

A progress display is optional: anything with the three methods of
:class:`BulkProgress`, or ``progress=True`` for :class:`RichProgress`,
which draws with `rich <https://rich.readthedocs.io>`_ (the ``progress``
extra), a well-kept library, rather than a bar of our own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import InvalidMessageError
from ._result import SendResult, State

if TYPE_CHECKING:
    from ._mailer import Mailer

__all__ = ["BulkProgress", "BulkSend", "BulkSummary", "RichProgress", "Sent", "SyncBulkSend"]

MessageLike = Message | bytes | str


@dataclass(frozen=True, slots=True)
class Sent:
    """One message of a bulk send, once it has a final state.

    ``index`` is its position in the input; ``result`` is what
    :meth:`Mailer.send` returned, or ``None`` when the message could not be
    sent as given (``error``: the :class:`InvalidMessageError`, raised
    before any network traffic; the other messages go on).
    """

    index: int
    message: MessageLike
    result: SendResult | None
    error: InvalidMessageError | None = None


@dataclass(frozen=True, slots=True)
class BulkSummary:
    """Counts so far: messages done, recipients per final state."""

    messages: int = 0
    invalid: int = 0
    delivered: int = 0
    rejected: int = 0
    deferred: int = 0
    ambiguous: int = 0
    elapsed: float = 0.0
    total: int | None = None
    """How many messages the input holds, when it has a length."""

    @property
    def recipients(self) -> int:
        return self.delivered + self.rejected + self.deferred + self.ambiguous

    def count(self, state: State) -> int:
        """Recipients in ``state``."""
        return int(getattr(self, state.value))

    def __str__(self) -> str:
        states = ", ".join(f"{self.count(s)} {s.value}" for s in State)
        invalid = f", {self.invalid} invalid" if self.invalid else ""
        return (
            f"{self.messages} messages{invalid}: {self.recipients} recipients "
            f"({states}) in {self.elapsed:.1f} s"
        )


class BulkProgress(Protocol):
    """A progress display for :meth:`Mailer.send_many`.

    Called from the event loop: keep each call quick (draw, do not wait).
    """

    def start(self, total: int | None) -> None:
        """Before the first send; ``total`` is None for an input without a length."""
        ...

    def update(self, sent: Sent, summary: BulkSummary) -> None:
        """A message has its final state; ``summary`` counts everything so far."""
        ...

    def finish(self, summary: BulkSummary) -> None:
        """Every message is done (or the send was stopped)."""
        ...


class RichProgress:
    """A progress bar drawn by ``rich`` (``pip install 'resilient-smtp[progress]'``).

    The bar counts messages; beside it, the recipients per final state; under
    it, an optional note (:meth:`note`), which a caller can use to say what
    the sends are waiting for.  On a terminal it redraws in place; written
    to a file or a pipe it prints the final bar once.  At the end it prints
    the summary line.  ``console`` is a ``rich.console.Console`` (default:
    standard output).
    """

    def __init__(self, console: Any = None, *, description: str = "sending") -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.text import Text
        except ImportError:  # pragma: no cover - depends on the install
            raise ImportError(
                "progress=True draws with rich: pip install 'resilient-smtp[progress]'"
            ) from None
        self.console = console or Console()
        self._note = ""
        owner = self

        class _WithNote(Progress):
            # rich's documented way to add lines to a progress display.
            def get_renderables(self) -> Iterator[Any]:
                yield self.make_tasks_table(self.tasks)
                if owner._note:
                    yield Text(owner._note, style="dim")

        self._progress = _WithNote(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._description = description
        self._task: Any = None

    def note(self, text: str) -> None:
        """Show ``text`` under the bar (an empty string hides it)."""
        self._note = text
        if self._task is not None:
            self._progress.refresh()

    def start(self, total: int | None) -> None:
        self._task = self._progress.add_task(self._description, total=total, states="")
        self._progress.start()

    def update(self, sent: Sent, summary: BulkSummary) -> None:
        states = " ".join(f"{s.value} {summary.count(s)}" for s in State if summary.count(s))
        self._progress.update(self._task, completed=summary.messages, states=states)

    def finish(self, summary: BulkSummary) -> None:
        self._progress.stop()
        self.console.print(str(summary), soft_wrap=True)


_DONE = object()


class BulkSend:
    """The sends of :meth:`Mailer.send_many`: an async iterator of
    :class:`Sent`, in the order they finish.

    Nothing is sent until it is iterated (or :meth:`wait` is awaited).
    Leaving the ``async with`` block, or :meth:`aclose`, stops the sends
    still running (cancelled: their recipients get no final state and are
    not yielded).  :attr:`summary` has the counts so far.
    """

    def __init__(
        self,
        mailer: Mailer,
        messages: Iterable[MessageLike],
        *,
        concurrency: int = 16,
        progress: BulkProgress | bool = False,
    ) -> None:
        if isinstance(messages, (Message, bytes, str)):
            raise TypeError("send_many() takes an iterable of messages; use send() for one")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, not {concurrency!r}")
        self._mailer = mailer
        self._total: int | None = None
        with contextlib.suppress(TypeError):
            self._total = len(messages)  # type: ignore[arg-type]
        self._input: Iterator[tuple[int, MessageLike]] = enumerate(messages)
        self.concurrency = concurrency
        if progress is True:
            progress = RichProgress()
        self._progress: BulkProgress | None = progress or None
        self._counts: Counter[str] = Counter()
        self._started: float | None = None
        self._finished: float | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._done = False

    @property
    def summary(self) -> BulkSummary:
        """The counts so far (final once the iteration has ended)."""
        clock = self._mailer.clock
        if self._started is None:
            elapsed = 0.0
        else:
            end = self._finished if self._finished is not None else clock.monotonic()
            elapsed = end - self._started
        c = self._counts
        return BulkSummary(
            messages=c["messages"],
            invalid=c["invalid"],
            delivered=c[State.DELIVERED.value],
            rejected=c[State.REJECTED.value],
            deferred=c[State.DEFERRED.value],
            ambiguous=c[State.AMBIGUOUS.value],
            elapsed=elapsed,
            total=self._total,
        )

    def __aiter__(self) -> AsyncIterator[Sent]:
        return self

    async def __anext__(self) -> Sent:
        if self._done:
            raise StopAsyncIteration
        if self._runner is None:
            self._start()
        item = await self._queue.get()
        if item is _DONE:
            self._done = True
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        assert isinstance(item, Sent)
        return item

    async def wait(self) -> BulkSummary:
        """Send everything, drop the per-message results, return the summary."""
        async for _ in self:
            pass
        return self.summary

    async def __aenter__(self) -> BulkSend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the sends still running; idempotent."""
        self._done = True
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def _start(self) -> None:
        self._started = self._mailer.clock.monotonic()
        if self._progress is not None:
            self._progress.start(self._total)
        self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    # A bug, not a delivery failure (those are in the
                    # results): stop everything and raise it to the reader.
                    self._error = task.exception()
                    break
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._finished = self._mailer.clock.monotonic()
            if self._progress is not None:
                self._progress.finish(self.summary)
            self._queue.put_nowait(_DONE)

    async def _worker(self) -> None:
        for index, message in self._input:  # shared: each worker takes the next
            try:
                result = await self._mailer.send(message)
            except InvalidMessageError as exc:
                sent = Sent(index, message, None, exc)
                self._counts["invalid"] += 1
            else:
                sent = Sent(index, message, result)
                for r in result:
                    self._counts[r.state.value] += 1
            self._counts["messages"] += 1
            if self._progress is not None:
                self._progress.update(sent, self.summary)
            self._queue.put_nowait(sent)


class SyncBulkSend:
    """:class:`BulkSend` for synchronous code (what
    :meth:`resilient_smtp.sync.Mailer.send_many` returns): a plain iterator
    of :class:`Sent`, each step run on the sync API's background loop."""

    def __init__(self, bulk: BulkSend, run: Any) -> None:
        self._bulk = bulk
        self._run = run  # runs a coroutine on the loop, blocking this thread

    @property
    def summary(self) -> BulkSummary:
        return self._bulk.summary

    def __iter__(self) -> Iterator[Sent]:
        return self

    def __next__(self) -> Sent:
        try:
            sent: Sent = self._run(self._bulk.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        return sent

    def wait(self) -> BulkSummary:
        """Send everything and return the summary."""
        summary: BulkSummary = self._run(self._bulk.wait())
        return summary

    def close(self) -> None:
        """Stop the sends still running; idempotent."""
        self._run(self._bulk.aclose())

    def __enter__(self) -> SyncBulkSend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
