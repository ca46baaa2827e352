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

# open_store is re-exported: the Django worker command imports it from here.
__all__ = ["open_store", "outbox_command", "worker_command"]


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
        "oldest": {
            state: {"id": o.id, "created": o.created, "reason": o.reason}
            for state, o in s.oldest.items()
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
        "reasons": [
            {
                "state": r.state,
                "destination": r.destination,
                "reason": r.reason,
                "count": r.count,
                "last_detail": r.last_detail,
                "last_updated": r.last_updated,
            }
            for r in s.reasons
        ],
        "suspensions": [
            {
                "destination": u.destination,
                "until": u.until,
                "reason": u.reason,
                "deferred": u.deferred,
            }
            for u in s.suspensions
        ],
    }
    return json.dumps(data)


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "?"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _status_text(s: OutboxStatus) -> str:
    now = time.time()
    lines = [f"messages: {s.messages}", "recipients:"]
    for state, n in s.counts.items():
        line = f"  {state:<10} {n}"
        oldest = s.oldest.get(state)
        if oldest is not None and n:
            line += f"  (oldest {oldest.id}, queued {_ago(oldest.created, now)} ago)"
        lines.append(line)
    if s.oldest_deferred_id is None:
        lines.append("oldest deferred: none")
    else:
        lines.append(
            f"oldest deferred: {s.oldest_deferred_id}, queued "
            f"{_ago(s.oldest_deferred_created, now)} ago ({s.oldest_deferred_reason})"
        )
    if s.suspensions:
        lines.append("suspended destinations:")
        for u in s.suspensions:
            end = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.until))
            lines.append(
                f"  {u.destination or '(none)'}: until {end} "
                f"(in {_ago(now, u.until)}), {u.reason}, {u.deferred} deferred"
            )
    if s.destinations:
        lines.append("deferred per destination:")
        for d in s.destinations:
            lines.append(
                f"  {d.destination or '(none)'}: {d.deferred} deferred, "
                f"{d.suspended} while suspended, last reason {d.last_reason}"
            )
    why = [r for r in s.reasons if r.reason is not None]
    if why:
        lines.append("per state, destination and reason (latest explanation):")
        for r in why:
            lines.append(
                f"  {r.state} {r.destination or '(none)'} {r.reason}: {r.count}, "
                f"last {_ago(r.last_updated, now)} ago: {r.last_detail or '-'}"
            )
    return "\n".join(lines)
