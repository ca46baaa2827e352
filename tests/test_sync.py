"""The synchronous Mailer: same arguments and results as the async one, one
background loop for the process, thread-safe, a clear error inside a loop,
a clean shutdown."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

import resilient_smtp
from _sync_server import server_in_thread
from resilient_smtp import (
    ConcurrencyLimiter,
    Connection,
    Event,
    Reason,
    Reply,
    RetryPolicy,
    SendResult,
    State,
    Transport,
    sync,
)
from resilient_smtp.testing import ScriptedTransport, no_waits

ROOT = Path(__file__).resolve().parent.parent


def message(to: str, subject: str = "hello") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "app@example.org"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{subject}@example.org>"
    m.set_content("Hi.\n")
    return m


QUICK = RetryPolicy(max_attempts=4, deadline=10.0, base=0.01, cap=0.05)


@pytest.fixture(autouse=True)
def _fresh_loop() -> Iterator[None]:
    # Each test starts without a background loop and leaves none behind.
    sync.shutdown()
    yield
    sync.shutdown()


class CountingTransport(Transport):
    """Wraps a transport; counts the connections it opened and closed."""

    def __init__(self, inner: resilient_smtp.Transport) -> None:
        self.inner = inner
        self.opened = 0
        self.closed = 0

    async def connect(self, host: str, port: int) -> Connection:
        conn = await self.inner.connect(host, port)
        self.opened += 1
        outer = self

        class Counted:
            host = conn.host
            created_at = conn.created_at

            @property
            def messages(self) -> int:
                return conn.messages

            @messages.setter
            def messages(self, value: int) -> None:
                conn.messages = value

            def supports(self, extension: str) -> bool:
                return conn.supports(extension)

            def is_open(self) -> bool:
                return conn.is_open()

            async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
                await conn.send(commands, payload)

            async def read_reply(self) -> Reply:
                return await conn.read_reply()

            def reply_waiting(self) -> bool:
                return conn.reply_waiting()

            async def reset(self) -> Reply:
                return await conn.reset()

            async def noop(self) -> Reply:
                return await conn.noop()

            async def close(self) -> None:
                outer.closed += 1
                await conn.close()

        return Counted()


def test_same_constructor_as_the_async_mailer() -> None:
    ours = list(inspect.signature(sync.Mailer).parameters.values())
    theirs = list(inspect.signature(resilient_smtp.Mailer).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [
        (p.name, p.kind, p.default) for p in theirs
    ]


def test_bad_arguments_raise_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="at least one relay"):
        sync.Mailer([])
    with pytest.raises(ValueError, match="bad port"):
        sync.Mailer("host:x")
    # ... without starting the background loop.
    assert sync._background.thread is None


def test_sends_to_a_real_server() -> None:
    with (
        server_in_thread() as server,
        sync.Mailer("127.0.0.1", server.port, tls="none", retry=QUICK) as mailer,
    ):
        result = mailer.send(message("alice@example.com"))
    assert isinstance(result, SendResult)
    assert result.ok
    assert result["alice@example.com"].state is State.DELIVERED
    assert [m.recipients for m in server.messages] == [("alice@example.com",)]


def test_retries_as_the_async_mailer_does() -> None:
    with server_in_thread() as server:
        server.on("rcpt", "421 4.3.2 Service not available, closing transmission channel")
        with sync.Mailer("127.0.0.1", server.port, tls="none", retry=QUICK) as mailer:
            result = mailer.send(message("bob@example.com"), sender="bounce@example.org")
    assert result.ok
    assert result["bob@example.com"].attempts == 2
    assert result["bob@example.com"].classification is not None
    assert server.messages[0].sender == "bounce@example.org"


def test_deferred_result_carries_retry_in() -> None:
    policy = RetryPolicy(max_attempts=1, deadline=10.0)
    with server_in_thread() as server:
        server.on("rcpt", "450 4.2.1 Mailbox busy, try again later", times=None)
        with sync.Mailer("127.0.0.1", server.port, tls="none", retry=policy) as mailer:
            result = mailer.send(message("carol@example.com"))
    assert result.deferred == ("carol@example.com",)
    assert result.retry_in is not None and result.retry_in > 0
    assert server.messages == []


def test_many_threads_share_one_mailer() -> None:
    threads, each = 12, 5
    results: list[SendResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with (
        server_in_thread() as server,
        sync.Mailer(
            "127.0.0.1",
            server.port,
            tls="none",
            retry=QUICK,
            limiter=ConcurrencyLimiter(8),
        ) as mailer,
    ):
        start = threading.Barrier(threads)

        def work(t: int) -> None:
            try:
                start.wait(5)
                for i in range(each):
                    r = mailer.send(message(f"u{t}-{i}@example.com", subject=f"m{t}-{i}"))
                    with lock:
                        results.append(r)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert len(results) == threads * each
    assert all(r.ok for r in results)
    sent = sorted(r for m in server.messages for r in m.recipients)
    assert sent == sorted(f"u{t}-{i}@example.com" for t in range(threads) for i in range(each))
    # One loop served every thread: its pool reused connections.
    assert server.connections <= 8 < threads * each


def test_inside_a_running_loop_is_refused_at_once() -> None:
    transport = ScriptedTransport()
    mailer = sync.Mailer("mx.test", tls="none", transport=transport)

    async def from_async_code() -> None:
        mailer.send(message("dave@example.com"))

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"running an event loop.*await"):
        asyncio.run(from_async_code())
    assert time.monotonic() - started < 2.0
    assert transport.messages == []
    # The same Mailer still works from a plain thread.
    assert mailer.send(message("dave@example.com")).ok
    with pytest.raises(RuntimeError, match="close"):
        asyncio.run(_call(mailer.close))
    mailer.close()


async def _call(fn: object) -> None:
    assert callable(fn)
    fn()


def test_a_hook_sending_on_the_background_loop_does_not_deadlock() -> None:
    # A hook runs on the background loop: a sync send from there would wait
    # for itself forever.  It must raise instead (the hook error is logged).
    seen: list[BaseException] = []
    inner = sync.Mailer("mx.test", tls="none", transport=ScriptedTransport())

    def hook(event: Event) -> None:
        if event.kind == "final" and not seen:
            try:
                inner.send(message("eve@example.com"))
            except RuntimeError as exc:
                seen.append(exc)

    outer = sync.Mailer("mx.test", tls="none", transport=ScriptedTransport(), hooks=[hook])
    assert outer.send(message("frank@example.com")).ok
    assert len(seen) == 1
    assert "event loop" in str(seen[0])


def test_send_after_close_is_an_error() -> None:
    mailer = sync.Mailer("mx.test", tls="none", transport=ScriptedTransport())
    assert mailer.send(message("gina@example.com")).ok
    mailer.close()
    mailer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        mailer.send(message("gina@example.com"))
    assert "closed" in repr(mailer)


def test_bad_input_raises_before_io() -> None:
    transport = ScriptedTransport()
    with sync.Mailer("mx.test", tls="none", transport=transport) as mailer:
        with pytest.raises(resilient_smtp.InvalidMessageError):
            mailer.send(message("not an address"))
        # A generator of recipients is read in the caller's thread.
        result = mailer.send(message("x@example.com"), recipients=(a for a in ["hal@example.com"]))
    assert result.delivered == ("hal@example.com",)
    assert transport.connections == 1


def test_one_loop_thread_for_every_mailer() -> None:
    a = sync.Mailer("mx.test", tls="none", transport=ScriptedTransport())
    b = sync.Mailer("mx.test", tls="none", transport=ScriptedTransport())
    a.send(message("i@example.com"))
    first = sync._background.thread
    b.send(message("j@example.com"))
    assert first is not None and first is sync._background.thread
    assert first.daemon and first.name == "resilient_smtp"
    a.close()
    b.close()


def test_shutdown_closes_open_mailers_and_stops_the_loop() -> None:
    transport = CountingTransport(ScriptedTransport())
    mailer = sync.Mailer("mx.test", tls="none", transport=transport)
    assert mailer.send(message("kim@example.com")).ok
    thread = sync._background.thread
    assert thread is not None and thread.is_alive()
    assert (transport.opened, transport.closed) == (1, 0)  # pooled, still open

    sync.shutdown()
    assert not thread.is_alive()
    assert transport.closed == 1

    # Used again: a new loop, and the Mailer rebuilt on it.
    assert mailer.send(message("kim@example.com")).ok
    assert sync._background.thread is not thread
    assert transport.opened == 2
    mailer.close()
    assert transport.closed == 2


def test_shutdown_cancels_a_send_still_waiting() -> None:
    # Greylisting keeps its floor (a rate limit the adaptive limiter took is
    # retried through the limiter instead, with no floor).
    policy = RetryPolicy(max_attempts=3, deadline=600.0, min_waits={Reason.GREYLISTED: 300.0})
    transport = ScriptedTransport().on("rcpt", "450 4.2.0 Greylisted, try again later")
    mailer = sync.Mailer("mx.test", tls="none", transport=transport, retry=policy)
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(mailer.send(message("lee@example.com")))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=send)
    worker.start()
    deadline = time.monotonic() + 5
    while transport.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # now in its 300 s back-off
    started = time.monotonic()
    sync.shutdown(timeout=2.0)
    worker.join(5)
    assert not worker.is_alive()
    assert time.monotonic() - started < 3.0
    assert len(outcome) == 1
    assert isinstance(outcome[0], BaseException)


def test_no_waits_reaches_the_background_loop() -> None:
    transport = ScriptedTransport().on("rcpt", "450 4.2.0 Greylisted, try later", times=2)
    policy = RetryPolicy(max_attempts=5, deadline=3600.0)
    started = time.monotonic()
    with (
        no_waits(),
        sync.Mailer("mx.test", tls="none", transport=transport, retry=policy) as mailer,
    ):
        result = mailer.send(message("max@example.com"))
    assert result.ok
    assert result["max@example.com"].attempts == 3
    assert time.monotonic() - started < 5.0


CHILD = textwrap.dedent(
    """
    import atexit, sys
    from email.message import EmailMessage
    from resilient_smtp import sync

    # Registered before the library's own handler: atexit runs it after.
    atexit.register(lambda: print("after shutdown:", sync._background.thread))

    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@example.org", "b@example.com", "exit"
    m.set_content("bye")
    mailer = sync.Mailer("127.0.0.1", int(sys.argv[1]), tls="none")
    print(mailer.send(m).delivered)
    # No close(): interpreter exit must close the pooled connection.
    """
)


def test_interpreter_exit_closes_connections_and_stops_the_loop() -> None:
    with server_in_thread() as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        # -X dev: ResourceWarnings for unclosed sockets and transports, and
        # asyncio's debug mode, print to stderr.
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-c", CHILD, str(server.port)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["('b@example.com',)", "after shutdown: None"]
    assert proc.stderr == ""
    assert len(server.messages) == 1
