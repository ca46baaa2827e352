"""Django's send_mail() through resilient_smtp's email backend.

Run it with ``python examples/django_send.py`` (needs Django: the
``django`` extra).  It configures Django in-process, as a settings.py would
(``EMAIL_BACKEND``, Django's ``EMAIL_*`` settings and ``RESILIENT_SMTP``),
and starts a scripted SMTP server on 127.0.0.1 that throttles the first
MAIL FROM with ``421 4.7.0 Try again later`` and refuses one unknown
mailbox.  ``send_mail`` retries through the throttle;
``send_mass_mail(fail_silently=True)`` reports how many messages reached
every recipient.  About a second; exits 0 when the counts are right.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import django
from django.conf import settings

from resilient_smtp import Event
from resilient_smtp.testing import ScriptedSMTPServer


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
        # Going down, close the clients' sessions too (a client's QUIT gets
        # an answer instead of waiting for its timeout).
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


def show(event: Event) -> None:
    if event.kind in ("retry", "give_up"):
        print(f"  {event}")


def main() -> int:
    with server_in_thread() as server:
        server.on("mail", "421 4.7.0 Try again later, closing connection")
        server.on("rcpt", "550 5.1.1 User unknown", recipient="nobody@example.com", times=None)

        # What settings.py would say.  EMAIL_USE_TLS = True in production
        # (STARTTLS); this loopback server speaks plain SMTP.
        settings.configure(
            EMAIL_BACKEND="resilient_smtp.contrib.django.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=server.port,
            EMAIL_USE_TLS=False,
            DEFAULT_FROM_EMAIL="Shop <shop@example.org>",
            RESILIENT_SMTP={
                # Short waits for the example; the defaults suit production.
                "retry": {
                    "max_attempts": 4,
                    "deadline": 10.0,
                    "base": 0.05,
                    "cap": 0.2,
                    "min_waits": {"rate_limited": 0.1},
                },
                "hooks": [show],
            },
        )
        django.setup()
        from django.core.mail import send_mail, send_mass_mail

        print(f"scripted SMTP server on 127.0.0.1:{server.port}")
        print("send_mail:")
        one = send_mail("Your receipt", "Thank you.\n", None, ["alice@example.com"])
        print(f"  sent {one}")

        print("send_mass_mail (fail_silently=True):")
        batch = [
            ("Newsletter", "News.\n", None, ["bob@example.com"]),
            ("Newsletter", "News.\n", None, ["nobody@example.com"]),
            ("Newsletter", "News.\n", None, ["carol@example.com"]),
        ]
        many = send_mass_mail(batch, fail_silently=True)
        print(f"  sent {many} of {len(batch)} (nobody@example.com does not exist)")
        print(f"the server accepted {len(server.messages)} message(s)")
        expected = ["alice@example.com", "bob@example.com", "carol@example.com"]
        return 0 if (one, many) == (1, 2) and server.delivered_to == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
