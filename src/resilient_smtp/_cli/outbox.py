"""The outbox's commands: ``worker`` and ``outbox status|retry|purge``.

:mod:`resilient_smtp.__main__` adds the parsers; the work is done here, so
the command line imports the outbox only when one of its commands runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any, TextIO

from .._mailer import Mailer
from ..outbox import Outbox, OutboxPolicy, open_store, run_worker
from ..outbox._records import FINAL_STATES, OutboxState, OutboxStatus

__all__ = ["outbox_command", "worker_command"]


class UsageError(Exception):
    """Bad input on the command line (the caller reports it, status 2)."""


def worker_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.relay:
        raise UsageError("give at least one --relay HOST[:PORT]")
    password = None
    if args.username is not None:
        if not args.password_env or args.password_env not in os.environ:
            raise UsageError("--username needs --password-env VAR with the password in $VAR")
        password = os.environ[args.password_env]
    try:
        policy = OutboxPolicy(lease=args.lease, poll=args.poll, batch=args.batch)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return asyncio.run(_work(args, policy, password, out))


async def _work(
    args: argparse.Namespace, policy: OutboxPolicy, password: str | None, out: TextIO
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    default_port = 465 if args.tls == "implicit" else 587
    try:
        mailer = Mailer(
            args.relay,
            default_port,
            tls=args.tls,
            username=args.username,
            password=password,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.until_idle:
        async with mailer:
            await run_worker(mailer, args.db, stop=stop, policy=policy)
        return 0
    async with Outbox(open_store(args.db), policy=policy) as outbox, mailer:
        sent = 0
        # Bounded by the queue: each pass handles at least one message
        # or finds nothing to do; --max-passes caps it anyway.
        for _ in range(args.max_passes):
            if stop.is_set():
                break
            n = await outbox.run_once(mailer)
            sent += n
            if n:
                continue
            if await _idle(outbox):
                break
            await asyncio.sleep(policy.poll)
        out.write(f"handled {sent} message(s); nothing left due\n")
    return 0


async def _idle(outbox: Outbox) -> bool:
    """Nothing due now and nothing being sent (by a live or a dead worker)."""
    status = await outbox.status()
    if status.counts.get(OutboxState.SENDING.value, 0):
        return False
    due = await outbox.store.next_due()
    return due is None or due > time.time()


def outbox_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return asyncio.run(_operate(args, out))


async def _operate(args: argparse.Namespace, out: TextIO) -> int:
    async with Outbox(open_store(args.db)) as outbox:
        if args.action == "status":
            status = await outbox.status()
            out.write(_status_json(status) if args.json else _status_text(status))
            out.write("\n")
            return 0
        try:
            if args.action == "retry":
                n = await outbox.retry(message=args.id, states=args.state or ["deferred"])
                out.write(f"{n} recipient(s) due now\n")
            else:
                states = args.state or sorted(s.value for s in FINAL_STATES)
                n = await outbox.purge(message=args.id, states=states)
                out.write(f"{n} recipient(s) deleted\n")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return 0


def _status_json(s: OutboxStatus) -> str:
    data: dict[str, Any] = {
        "messages": s.messages,
        "recipients": dict(s.counts),
        "oldest_deferred": None
        if s.oldest_deferred_id is None
        else {
            "id": s.oldest_deferred_id,
            "created": s.oldest_deferred_created,
            "reason": s.oldest_deferred_reason,
        },
        "destinations": [
            {
                "destination": d.destination,
                "deferred": d.deferred,
                "suspended": d.suspended,
                "last_reason": d.last_reason,
            }
            for d in s.destinations
        ],
    }
    return json.dumps(data)


def _status_text(s: OutboxStatus) -> str:
    lines = [f"messages: {s.messages}", "recipients:"]
    lines += [f"  {state:<10} {n}" for state, n in s.counts.items()]
    if s.oldest_deferred_id is None:
        lines.append("oldest deferred: none")
    else:
        age = time.time() - (s.oldest_deferred_created or 0.0)
        lines.append(
            f"oldest deferred: {s.oldest_deferred_id}, queued {age / 3600:.1f} h ago "
            f"({s.oldest_deferred_reason})"
        )
    if s.destinations:
        lines.append("deferred per destination:")
        for d in s.destinations:
            lines.append(
                f"  {d.destination or '(none)'}: {d.deferred} deferred, "
                f"{d.suspended} while suspended, last reason {d.last_reason}"
            )
    return "\n".join(lines)
