"""A mail task in a task queue: deferred recipients come back later, with the
wait the retry policy chose; permanent failures do not.

Run it with ``python examples/task_queue.py``.  A tiny in-process task
runner stands in for Celery (the task's ``retry(countdown=..., kwargs=...)``
has Celery's shape, so the task body is what a Celery task would be); it
jumps its clock to the next due task instead of sleeping.  A scripted SMTP
server on 127.0.0.1 greylists bob twice and does not know nobody@.  The
task sends once per run (``max_attempts=1``: the worker is never held for
a greylisting wait) and hands the rest to :func:`raise_for_task`:

- alice is delivered at once;
- nobody@ is rejected (550): not retried, never sent again;
- bob is greylisted: the task is retried for bob only, 300 s later (the
  policy's greylisting wait), twice, then delivered.

Exits 0 when alice and bob got the message exactly once.  About a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

from resilient_smtp import RetryPolicy, SendFailed, sync
from resilient_smtp.contrib.celery import raise_for_task
from resilient_smtp.testing import ScriptedSMTPServer

# --------------------------------------------------------------------------
# A task runner with Celery's retry shape, in a few lines.


class Retry(Exception):
    """Raised by Task.retry, as Celery's is: the runner reschedules."""

    def __init__(self, countdown: float, kwargs: dict[str, Any]) -> None:
        super().__init__(f"retry in {countdown:g} s")
        self.countdown, self.kwargs = countdown, kwargs


class Task:
    def __init__(self, fn: Callable[..., None], kwargs: dict[str, Any]) -> None:
        self.fn, self.kwargs = fn, kwargs

    def retry(self, *, countdown: float, kwargs: Any = None, **options: Any) -> Any:
        raise Retry(countdown, self.kwargs if kwargs is None else kwargs)


class Runner:
    def __init__(self) -> None:
        self.now = 0.0
        self.queue: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()

    def delay(self, fn: Callable[..., None], countdown: float = 0.0, **kwargs: Any) -> None:
        heapq.heappush(self.queue, (self.now + countdown, next(self._seq), Task(fn, kwargs)))

    def run(self, max_runs: int = 20) -> None:
        for _ in range(max_runs):  # bounded, as every loop should be
            if not self.queue:
                return
            due, _, task = heapq.heappop(self.queue)
            self.now = max(self.now, due)  # jump the clock, do not sleep
            try:
                task.fn(task, **task.kwargs)
                print(f"t={self.now:5.0f}s  {task.kwargs}: done")
            except Retry as r:
                print(f"t={self.now:5.0f}s  {task.kwargs}: {r}")
                self.delay(task.fn, r.countdown, **r.kwargs)
            except SendFailed as exc:
                print(f"t={self.now:5.0f}s  {task.kwargs}: failed, no retry: {exc}")


# --------------------------------------------------------------------------
# The application's task: what you would write under @app.task(bind=True).

ORDERS = {7: ["alice@example.com", "bob@example.com", "nobody@example.com"]}
mailer: sync.Mailer  # set up in main(); in an app, at import time


def send_shipping_notice(self: Task, order_id: int, recipients: list[str] | None = None) -> None:
    message = EmailMessage()
    message["From"] = "shop@example.org"
    message["To"] = ", ".join(ORDERS[order_id])
    message["Subject"] = f"Order {order_id} has shipped"
    message.set_content("It is on its way.\n")
    result = mailer.send(message, recipients=recipients)
    # A Celery task may leave kwargs out: task.request.kwargs is used.
    raise_for_task(self, result, kwargs={"order_id": order_id, "recipients": recipients})


@contextlib.contextmanager
def server_in_thread() -> Iterator[ScriptedSMTPServer]:
    """A loopback SMTP server on its own event loop, in its own thread."""
    server = ScriptedSMTPServer()
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        async with server:
            ready.set()
            await stop.wait()
        sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)


def main() -> int:
    global mailer
    # raise_for_task logs the recipients it does not retry.
    logging.basicConfig(level=logging.WARNING, format="         %(message)s")
    with server_in_thread() as server:
        server.on("rcpt", "450 4.2.0 Greylisted, see http://postgrey.example/",
                  recipient="bob@example.com", times=2)  # fmt: skip
        server.on("rcpt", "550 5.1.1 User unknown", recipient="nobody@example.com", times=None)
        # One attempt per task run: the queue does the waiting.
        with sync.Mailer(
            "127.0.0.1", server.port, tls="none", retry=RetryPolicy(max_attempts=1)
        ) as mailer:
            runner = Runner()
            runner.delay(send_shipping_notice, order_id=7)
            runner.run()
        got = sorted(server.delivered_to)
        print(f"delivered: {got}")
        return 0 if got == ["alice@example.com", "bob@example.com"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
