"""Send from plain threads with resilient_smtp.sync.Mailer: no asyncio in sight.

Run it with ``python examples/sync_send.py``.  It starts a scripted SMTP
server on 127.0.0.1 (in a thread of its own) that greylists the first
recipient it sees and throttles one MAIL FROM with a 421, then eight worker
threads send five receipts each through ONE shared sync Mailer.  The Mailer
runs every send on one background event loop, so the threads share its
rate limit, destination health and pooled connections.  It finishes in
about a second and exits 0 when every receipt arrived exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

from resilient_smtp import AdaptiveLimiter, Reason, RetryPolicy, SendResult, sync
from resilient_smtp.testing import ScriptedSMTPServer

# Short waits so the example runs in a blink; start from RetryPolicy() in
# your application (greylisting really wants five minutes).
POLICY = RetryPolicy(
    max_attempts=4,
    deadline=10.0,
    base=0.05,
    cap=0.2,
    min_waits={Reason.GREYLISTED: 0.2, Reason.RATE_LIMITED: 0.1},
)


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


def receipt(worker: int, n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@example.org"
    message["To"] = f"customer{worker}-{n}@example.com"
    message["Subject"] = f"Your receipt #{worker}-{n}"
    message.set_content("Thank you for your order.\n")
    return message


def main() -> int:
    with server_in_thread() as server:
        server.on("rcpt", "450 4.2.0 Greylisted, please try again later")
        server.on("mail", "421 4.7.0 Try again later, closing connection")
        print(f"scripted SMTP server on 127.0.0.1:{server.port}")

        # tls="none" only because the loopback server has no TLS.
        # The default adaptive limiter starts at 10 messages/s per destination
        # and grows from there until the server pushes back; for a loopback
        # server, start higher.
        limiter = AdaptiveLimiter(initial_rate=100.0)
        with sync.Mailer(
            "127.0.0.1", server.port, tls="none", retry=POLICY, limiter=limiter
        ) as mailer:

            def work(worker: int) -> list[SendResult]:
                return [mailer.send(receipt(worker, n)) for n in range(5)]

            with ThreadPoolExecutor(max_workers=8) as pool:
                results = [r for batch in pool.map(work, range(8)) for r in batch]

        retried = [r for r in results if r.attempts > 1]
        print(f"{sum(r.ok for r in results)}/{len(results)} receipts delivered")
        for r in retried:
            (recipient,) = r
            print(f"  {recipient.address}: {r.attempts} attempts (first: {recipient.reason})")
        accepted, connections = len(server.messages), server.connections
        print(f"the server accepted {accepted} message(s) on {connections} connection(s)")
        once = len(set(server.delivered_to)) == len(server.delivered_to) == len(results)
        return 0 if all(r.ok for r in results) and once else 1


if __name__ == "__main__":
    raise SystemExit(main())
