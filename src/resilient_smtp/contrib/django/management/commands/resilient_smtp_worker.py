"""``python manage.py resilient_smtp_worker``: send what the outbox holds.

The worker of ``RESILIENT_SMTP["outbox"]``, with a Mailer built from the
project's own ``EMAIL_*`` and ``RESILIENT_SMTP`` settings (the same
arguments the email backend uses), so a Django project configures its
relay once.  Runs until SIGTERM or Ctrl-C; ``--once`` makes one pass (for
cron, or a test).  ``EMAIL_TIMEOUT`` bounds each network operation here,
not each send: a worker is not answering a request.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilient_smtp._mailer import Mailer
from resilient_smtp.contrib.django._backend import EmailBackend, mailer_arguments


class Command(BaseCommand):
    help = (
        "Send the messages of RESILIENT_SMTP['outbox'] through the relay of the EMAIL_* "
        "settings, retrying deferred ones until they expire.  Stops on SIGTERM or Ctrl-C."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--once", action="store_true", help="make one pass over what is due, then exit"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backend = EmailBackend()
        setting = backend.resilient.get("outbox")
        if setting is None:
            raise CommandError(
                "RESILIENT_SMTP['outbox'] is not set: there is no outbox to send from "
                "(set it to a SQLite path or a postgresql:// URL)"
            )
        arguments = mailer_arguments(backend, bound_by_timeout=False)
        handled = asyncio.run(_work(setting, arguments, once=bool(options["once"])))
        if options["once"]:
            self.stdout.write(f"handled {handled} message(s)")


async def _work(setting: Any, arguments: dict[str, Any], *, once: bool) -> int:
    from resilient_smtp.outbox import Outbox

    if isinstance(setting, Outbox):
        outbox = setting
    elif isinstance(setting, (str, os.PathLike)):
        from resilient_smtp._cli.outbox import open_store

        outbox = Outbox(open_store(os.fspath(setting)))
    else:
        raise CommandError(
            f"RESILIENT_SMTP['outbox'] is a {type(setting).__name__}: the worker needs a "
            "path, a postgresql:// URL or a resilient_smtp.outbox.Outbox"
        )
    async with outbox, Mailer(**arguments) as mailer:
        if once:
            return await outbox.run_once(mailer)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await outbox.run(mailer, stop=stop)
    return 0
