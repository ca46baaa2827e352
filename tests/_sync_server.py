"""A ScriptedSMTPServer for synchronous tests: it runs on its own event loop
in its own thread, so the code under test can block the test's thread.

(ScriptedSMTPServer binds in the loop that enters it; the sync Mailer runs
its sends on a different loop, in a different thread.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from resilient_smtp.testing import ScriptedSMTPServer

__all__ = ["server_in_thread"]


@contextlib.contextmanager
def server_in_thread(timeout: float = 5.0) -> Iterator[ScriptedSMTPServer]:
    """A running ScriptedSMTPServer on 127.0.0.1, served by a thread.

    Script it (``server.on(...)``) before traffic reaches it; read
    ``server.messages`` after the sends returned.
    """
    server = ScriptedSMTPServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        try:
            async with server:
                ready.set()
                await stop.wait()
            # A server going down closes its clients' connections (a client
            # saying QUIT must not wait for a reply that never comes):
            # cancelling aiosmtpd's session tasks closes their sockets.
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
            await asyncio.sleep(0)
        except BaseException as exc:  # reported to the test's thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout):
            raise RuntimeError("the scripted server did not start")
        if failure:
            raise failure[0]
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        loop.close()
