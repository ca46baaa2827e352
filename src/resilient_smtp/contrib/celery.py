"""What a task queue should do with a :class:`~resilient_smtp.SendResult`.

A mail-sending task (Celery, RQ, Dramatiq, a home-made worker) should not
hold its worker for the minutes a greylisting or a rate limit asks for, and
should not retry what cannot succeed.  The Mailer already knows both: a
``deferred`` recipient comes with ``retry_in``, the wait its
:class:`~resilient_smtp.RetryPolicy` chose (a server's stated wait, the
five minutes greylisting needs, a growing back-off after a reputation
deferral); a ``rejected`` one will never succeed; an ``ambiguous`` one may
already have the message, and sending it again would duplicate it.

So a task sends with a short policy (one or two attempts), then::

    @app.task(bind=True, max_retries=10)
    def send_receipt(self, order_id, recipients=None):
        message = build_receipt(order_id)
        result = mailer.send(message, recipients=recipients)
        raise_for_task(self, result)

:func:`raise_for_task` hands the deferred recipients back to the queue with
the policy's countdown, and only them (the delivered ones are never sent
the message twice); it raises :class:`~resilient_smtp.SendFailed` for a
permanent failure, so the task fails instead of retrying.  Nothing here
imports Celery: any object with ``retry(countdown=..., kwargs=...)`` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .._errors import SendFailed
from .._events import logger
from .._result import SendResult, State

__all__ = ["RetryableTask", "raise_for_task", "retry_countdown"]

DEFAULT_COUNTDOWN = 60.0
"""The countdown when the result names no wait (the policy gave up without
one).  A minute: long enough not to hammer, short enough for a transient
fault."""


_NO_RETRY = (State.REJECTED, State.AMBIGUOUS)


class RetryableTask(Protocol):
    """What :func:`raise_for_task` needs of a task: Celery's ``Task.retry``
    shape (it raises, or returns the exception to raise)."""

    def retry(self, *, countdown: float, kwargs: Any = None, **options: Any) -> Any: ...


def retry_countdown(result: SendResult, *, default: float = DEFAULT_COUNTDOWN) -> float | None:
    """The seconds to wait before trying the deferred recipients again, or
    ``None`` when no recipient is deferred (all delivered, or every failure
    is permanent or ambiguous: retrying cannot help, or would duplicate)."""
    if not result.deferred:
        return None
    waits = [
        r.retry_in
        for r in result.recipients
        if r.state is State.DEFERRED and r.retry_in is not None
    ]
    return max(0.0, min(waits)) if waits else default


def raise_for_task(
    task: RetryableTask,
    result: SendResult,
    *,
    kwargs: Mapping[str, Any] | None = None,
    recipients_argument: str = "recipients",
    default_countdown: float = DEFAULT_COUNTDOWN,
    **options: Any,
) -> None:
    """Tell the task queue what ``result`` calls for.

    - every recipient delivered: return;
    - some deferred: ``task.retry(countdown=<the policy's wait>, kwargs=...)``
      where the keyword arguments are ``kwargs``, else the task's own
      (Celery's ``task.request.kwargs``), with ``recipients_argument`` set
      to the deferred addresses when other recipients already have a final
      state (or when the arguments name recipients already).  Narrowing
      with neither is a :class:`ValueError`: retrying everyone would send
      duplicates.  The task must accept ``recipients_argument`` and send to
      those addresses when it is given;
    - none deferred but some rejected or ambiguous: raise
      :class:`~resilient_smtp.SendFailed`: no retry.

    ``options`` go to ``task.retry`` as they are (``max_retries=``...).
    Celery's ``retry`` raises its ``Retry`` exception; a ``retry`` that
    returns an exception has it raised here.
    """
    if result.ok:
        return
    countdown = retry_countdown(result, default=default_countdown)
    if countdown is None:
        raise SendFailed(result)
    deferred = list(result.deferred)
    base = kwargs
    if base is None:
        base = getattr(getattr(task, "request", None), "kwargs", None)
    retry_kwargs: dict[str, Any] | None = None if base is None else dict(base)
    if len(deferred) < len(result):
        if retry_kwargs is None:
            raise ValueError(
                "some recipients already have a final state: pass kwargs= (the task's "
                f"keyword arguments) so that the retry's {recipients_argument!r} names "
                "only the deferred recipients"
            )
        retry_kwargs[recipients_argument] = deferred
        lost = [f"{r.address}: {r.state.value}" for r in result if r.state in _NO_RETRY]
        if lost:
            logger.warning("not retried (%s); retrying the deferred ones", "; ".join(lost))
    elif retry_kwargs is not None and recipients_argument in retry_kwargs:
        # Everyone is still to do, but keep the argument exact (a task that
        # was itself a narrowed retry already names them).
        retry_kwargs[recipients_argument] = deferred
    outcome = task.retry(countdown=countdown, kwargs=retry_kwargs, **options)
    if isinstance(outcome, BaseException):
        raise outcome
