"""The command line: ``python -m resilient_smtp <command> ...``.

Each subcommand is one function that adds its parser to the subparsers and
sets ``handler`` on it; :func:`main` parses and calls the handler.  Adding a
command is adding one ``_add_<name>`` function to ``_COMMANDS``.

``classify`` tells what a server's reply means::

    $ python -m resilient_smtp classify "421 4.7.0 Try again later"
    $ python -m resilient_smtp classify --json --host mx.qq.com "550 Ip frequency limited"
    $ tail -f mail.log | cut -d: -f4- | python -m resilient_smtp classify --json

The ``resilient-smtp`` script installed with the package runs the same
:func:`main`; usage and errors name the program as it was started.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from resilient_smtp._classify.classifier import Classification, classify
from resilient_smtp._classify.taxonomy import Stage

__all__ = ["main"]

_Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]

# RFC 5321 §4.2.1: every line but the last of a multi-line reply has a
# hyphen after the code ("421-4.7.28 ..."), the last a space.
_CONTINUATION = re.compile(r"^\s*[2-5][0-9][0-9]-")


class _UsageError(Exception):
    """Bad command-line input: reported on stderr, exit status 2."""


def _add_classify(commands: Any) -> None:
    p = commands.add_parser(
        "classify",
        help="tell what an SMTP reply (or several) means",
        description=(
            "Classify SMTP replies: print the reason, whether a later try may "
            "succeed, what to do, and which rule decided."
        ),
    )
    p.add_argument(
        "replies",
        nargs="*",
        metavar="REPLY",
        help='a reply such as "421 4.7.0 Try again later"; "-", or no REPLY with stdin '
        "not a terminal, reads replies from stdin, one a line (the lines of a multi-line "
        "421-... reply are joined)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object a line")
    p.add_argument("--host", help="the remote server's name (provider rules match on it)")
    p.add_argument(
        "--stage",
        choices=[s.value for s in Stage],
        help="the SMTP step the reply answered",
    )
    p.set_defaults(handler=_classify_command)


def _classify_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    replies = args.replies
    if not replies:
        # `echo "421 ..." | resilient-smtp classify` reads the pipe, as
        # filters do; at a terminal, waiting for typed input would look hung.
        if sys.stdin is None or sys.stdin.isatty():
            raise _UsageError('give at least one reply, or pipe replies in (or "-" for stdin)')
        replies = ["-"]
    for reply in _inputs(replies, sys.stdin):
        c = classify(reply, host=args.host, stage=args.stage)
        out.write(_as_json(reply, c) if args.json else _as_text(c))
        out.write("\n")
    return 0


def _inputs(replies: Sequence[str], stdin: TextIO) -> Iterator[str]:
    for reply in replies:
        if reply == "-":
            yield from _read_replies(stdin)
        else:
            yield reply


def _read_replies(lines: Iterable[str]) -> Iterator[str]:
    """Replies from lines of text: blank lines skipped, the lines of a
    multi-line reply joined into one reply."""
    pending: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        pending.append(line)
        if not _CONTINUATION.match(line):
            yield "\n".join(pending)
            pending = []
    if pending:
        yield "\n".join(pending)


def _as_text(c: Classification) -> str:
    transient = "transient" if c.transient else "permanent"
    extras = [f"scope: {c.scope}"]
    if c.session_over:
        extras.append("session over")
    if c.retry_after is not None:
        extras.append(f"retry after {c.retry_after:g} s")
    reply = str(c.reply) or "(no reply)"
    return (
        f"{c.reason}: {transient}, {c.action} ({'; '.join(extras)})\n"
        f"  reply: {reply}\n"
        f"  why:   {c.explanation}"
    )


def _as_json(given: str, c: Classification) -> str:
    return json.dumps(
        {
            "input": given,
            "reason": c.reason.value,
            "transient": c.transient,
            "action": c.action.value,
            "scope": c.scope.value,
            "session_over": c.session_over,
            "retry_after": c.retry_after,
            "reply": {"code": c.reply.code, "enhanced": c.reply.enhanced, "text": c.reply.text},
            "stage": None if c.stage is None else c.stage.value,
            "rule": c.rule,
            "explanation": c.explanation,
        },
        ensure_ascii=False,
    )


def _add_demo(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="send a few hundred messages to an embedded difficult server on loopback",
        description=(
            "Start an SMTP server on 127.0.0.1 that throttles with 421s, greylists, "
            "refuses some connections and knows one recipient less, then send "
            "messages through the Mailer with its defaults and show what happened."
        ),
    )
    p.add_argument("--messages", type=int, default=300, help="how many (default 300)")
    p.add_argument(
        "--rate", type=float, default=40.0, help="the server's limit, messages/s (default 40)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="only run the difficult server, on 127.0.0.1:PORT, until Ctrl-C: "
        "aim your own code at it",
    )
    p.add_argument("--port", type=int, default=2525, help="the port for --serve (default 2525)")
    p.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio

    from resilient_smtp._cli.demo import run_demo

    if not 1 <= args.messages <= 100_000:
        raise _UsageError("--messages must be between 1 and 100000")
    if not 0 < args.rate <= 10_000:
        raise _UsageError("--rate must be above 0 and at most 10000")
    if args.serve:
        from resilient_smtp._cli.demo import serve_demo

        if not 0 < args.port < 65536:
            raise _UsageError("--port must be between 1 and 65535")
        try:
            return asyncio.run(serve_demo(args.port, args.rate, out=out))
        except KeyboardInterrupt:  # Ctrl-C is how it stops; serve_demo has said so
            return 0
    return asyncio.run(run_demo(args.messages, args.rate, out=out))


def _add_check(commands: Any) -> None:
    p = commands.add_parser(
        "check",
        help="verify a server: connect, EHLO, STARTTLS with certificate check, AUTH",
        description=(
            "Connect to HOST[:PORT], report what EHLO offers, try STARTTLS and verify "
            "the certificate, optionally log in, and explain any failure."
        ),
    )
    p.add_argument("server", metavar="HOST[:PORT]", help="the relay, e.g. smtp.example.com:587")
    p.add_argument(
        "--tls",
        choices=["starttls", "implicit", "none"],
        default="starttls",
        help="starttls (default, port 587), implicit (port 465) or none",
    )
    p.add_argument("--username", help="log in as this user")
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from this environment variable (never from the command line)",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per step (default 15)")
    p.set_defaults(handler=_check_command)


def _check_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio
    import os

    from resilient_smtp._cli.check import check_server, render
    from resilient_smtp._destination import parse_destination

    try:
        host, port = parse_destination(args.server, 465 if args.tls == "implicit" else 587)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    password = None
    if args.username is not None:
        if not args.password_env or args.password_env not in os.environ:
            raise _UsageError("--username needs --password-env VAR with the password in $VAR")
        password = os.environ[args.password_env]
    report = asyncio.run(
        check_server(
            host,
            port,
            tls=args.tls,
            username=args.username,
            password=password,
            timeout=args.timeout,
        )
    )
    out.write(render(report) + "\n")
    return 0 if report.ok else 1


def _add_worker(commands: Any) -> None:
    p = commands.add_parser(
        "worker",
        help="send what the outbox holds, durably (see docs/outbox.md)",
        description=(
            "Send the outbox's messages through the relay(s) as they fall due, store each "
            "recipient's final state and retry deferred ones until they expire.  Stops on "
            "SIGTERM or Ctrl-C."
        ),
    )
    p.add_argument("--db", required=True, help="the outbox: a SQLite file or a postgresql:// URL")
    p.add_argument(
        "--relay",
        action="append",
        metavar="HOST[:PORT]",
        help="a relay (repeat for fallbacks used while the first is suspended)",
    )
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="starttls")
    p.add_argument("--username", help="log in as this user")
    p.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
    p.add_argument("--lease", type=float, default=300.0, help="claim lease, seconds (300)")
    p.add_argument("--poll", type=float, default=5.0, help="longest idle sleep, seconds (5)")
    p.add_argument("--batch", type=int, default=32, help="messages sent at once (32)")
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once nothing is due and nothing is being sent",
    )
    p.add_argument("--max-passes", type=int, default=1_000_000, help=argparse.SUPPRESS)

    def handler(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        from resilient_smtp._cli.outbox import UsageError, worker_command

        try:
            return worker_command(args, out, err)
        except UsageError as exc:
            raise _UsageError(str(exc)) from None

    p.set_defaults(handler=handler)


def _add_outbox(commands: Any) -> None:
    p = commands.add_parser(
        "outbox",
        help="look at the outbox and act on it: status, retry, purge",
        description="Monitor and operate the durable outbox (see docs/outbox.md).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    states = [
        "queued",
        "deferred",
        "delivered",
        "rejected",
        "ambiguous",
        "expired",
        "quarantined",
    ]
    status = actions.add_parser(
        "status", help="recipients per state, destination and reason; suspensions; oldest"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    retry = actions.add_parser("retry", help="make recipients due now (default: deferred)")
    purge = actions.add_parser("purge", help="delete records now (default: final states)")
    for q in (retry, purge):
        q.add_argument("--id", help="only this message (the id put() returned)")
        q.add_argument(
            "--state", action="append", choices=states, help="states to act on (repeatable)"
        )
    for q in (status, retry, purge):
        q.add_argument("--db", required=True, help="a SQLite file or a postgresql:// URL")

    def handler(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        from resilient_smtp._cli.outbox import UsageError, outbox_command

        try:
            return outbox_command(args, out, err)
        except UsageError as exc:
            raise _UsageError(str(exc)) from None

    p.set_defaults(handler=handler)


_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_classify,
    _add_demo,
    _add_check,
    _add_worker,
    _add_outbox,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resilient-smtp")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def _parser(prog: str = "resilient-smtp") -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser, and the names of its commands."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Send email over SMTP and keep sending when servers push back.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser, sorted(commands.choices)


def main(argv: Sequence[str] | None = None, *, prog: str = "resilient-smtp") -> int:
    """Run the command line; return the exit status (0 ok, 2 bad usage).

    ``prog`` is the name usage and errors give the program: the installed
    script's (``resilient-smtp``, the default, as the entry point calls
    ``main()``), or ``python -m resilient_smtp`` when run as a module."""
    parser, names = _parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    handler: _Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: give a command, one of: {', '.join(names)}\n")
        return 2
    try:
        return handler(args, sys.stdout, sys.stderr)
    except _UsageError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
    except BrokenPipeError:  # `... | head -1`: the reader has gone, and that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m resilient_smtp"))
