"""Fault tests for the Mailer's decisions (issue 12): one recipient's 421,
a refused greeting with another relay or MX host, no STARTTLS, replies
trickled against a deadline, and the cause kept in the result.

Real loopback servers (ScriptedSMTPServer, raw asyncio) where a user meets
them; the fake clock wherever time is only waited on.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from email.message import EmailMessage

import pytest

from resilient_smtp import (
    AdaptiveLimiter,
    AiosmtplibTransport,
    Classification,
    Connection,
    DestinationHealth,
    Event,
    Limiter,
    Mailer,
    Reason,
    RetryPolicy,
    SendFailed,
    State,
    Transport,
)
from resilient_smtp._deadline import GRACE
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer

SENDER = "sender@example.org"


def make_message(*to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = "hello"
    msg.set_content("Hi there.\n")
    return msg


def policy(**kw: object) -> RetryPolicy:
    defaults: dict[str, object] = {"max_attempts": 4, "deadline": 3600.0}
    defaults.update(kw)
    return RetryPolicy(**defaults)  # type: ignore[arg-type]


# -- a 421 to one of several recipients ---------------------------------------

# Postfix's answer from an access table with a 421 action (access(5)).
POSTFIX_421 = "421 4.7.0 <b@example.com>: Recipient address rejected: Access denied"


async def test_a_421_to_one_recipient_rejects_no_one() -> None:
    async with ScriptedSMTPServer() as server:
        server.on("rcpt", POSTFIX_421, recipient="b@example.com")
        async with Mailer(
            "127.0.0.1", server.port, tls="none", clock=FakeClock(), retry=policy()
        ) as mailer:
            result = await mailer.send(
                make_message("a@example.com", "b@example.com", "c@example.com")
            )
    # The 421 ended the session: a (accepted) and c (untried) waited for a
    # new connection with b, and the next session took all three.
    assert result.ok, result
    assert result.rejected == ()
    assert server.connections == 2
    assert sorted(server.delivered_to) == ["a@example.com", "b@example.com", "c@example.com"]


async def test_a_421_every_time_defers_everyone_and_rejects_no_one() -> None:
    async with ScriptedSMTPServer() as server:
        server.on("rcpt", POSTFIX_421, recipient="b@example.com", times=None)
        async with Mailer(
            "127.0.0.1", server.port, tls="none", clock=FakeClock(), retry=policy()
        ) as mailer:
            result = await mailer.send(
                make_message("a@example.com", "b@example.com", "c@example.com")
            )
    assert result.rejected == ()
    assert set(result.deferred) == {"a@example.com", "b@example.com", "c@example.com"}
    b = result["b@example.com"]
    assert b.classification is not None and b.classification.transient
    assert "421" in (b.explanation or "")


# -- a refused greeting, with a second relay or a second MX host ---------------

GREETING_554 = "554 5.3.2 mx1.example.net: Service currently unavailable"


async def test_a_554_greeting_moves_to_the_second_relay() -> None:
    async with ScriptedSMTPServer() as first, ScriptedSMTPServer() as second:
        first.on("connect", GREETING_554, times=None)
        relays = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
        async with Mailer(relays, tls="none", clock=FakeClock(), retry=policy()) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    assert result.ok
    assert result["a@example.com"].destination == f"127.0.0.1:{second.port}"
    assert first.connections == 1
    assert second.delivered_to == ["a@example.com"]


async def test_a_554_greeting_from_the_only_relay_defers_with_the_cause() -> None:
    async with ScriptedSMTPServer() as only:
        only.on("connect", GREETING_554, times=None)
        async with Mailer(
            "127.0.0.1", only.port, tls="none", clock=FakeClock(), retry=policy()
        ) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    rec = result["a@example.com"]
    assert rec.state is State.DEFERRED
    assert rec.retry_in is not None and rec.retry_in > 0
    assert "554" in (rec.explanation or "")
    assert "Service currently unavailable" in (rec.explanation or "")
    assert only.connections == 1  # not hammered within the send


class _MXTransport(Transport):
    """Connects MX host names to loopback ports (the test's DNS)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.inner = AiosmtplibTransport(tls="none", timeout=5.0)

    async def connect(self, host: str, port: int) -> Connection:
        return await self.inner.connect("127.0.0.1", self.ports[host])


async def test_a_554_greeting_from_mx_10_moves_to_mx_20() -> None:
    async with ScriptedSMTPServer() as mx10, ScriptedSMTPServer() as mx20:
        mx10.on("connect", GREETING_554, times=None)

        async def resolve(domain: str) -> Sequence[tuple[int, str]]:
            return [(20, "mx20.example.com"), (10, "mx10.example.com")]

        transport = _MXTransport({"mx10.example.com": mx10.port, "mx20.example.com": mx20.port})
        async with Mailer(
            mx=resolve, transport=transport, clock=FakeClock(), retry=policy()
        ) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    assert result.ok, result
    assert result["a@example.com"].destination == "mx20.example.com:25"
    assert mx10.connections == 1
    assert mx20.delivered_to == ["a@example.com"]


# -- no STARTTLS under the default tls="starttls" -----------------------------


async def test_no_starttls_is_a_loud_configuration_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    async with (
        ScriptedSMTPServer() as plain,
        Mailer(
            "127.0.0.1", plain.port, clock=FakeClock(), retry=policy(), hooks=[events.append]
        ) as mailer,
    ):
        with caplog.at_level(logging.WARNING, logger="resilient_smtp"):
            result = await mailer.send(make_message("a@example.com", "b@example.com"))
    assert result.rejected == ()
    assert set(result.deferred) == {"a@example.com", "b@example.com"}
    assert len(result.configuration_errors) == 1
    assert "STARTTLS" in result.configuration_errors[0]
    assert "configuration_error" in [e.kind for e in events]
    assert any(
        r.levelno == logging.WARNING and "configuration error" in r.getMessage()
        for r in caplog.records
    )
    assert plain.commands.count("MAIL") == 0


async def test_no_starttls_on_the_first_relay_moves_to_the_second() -> None:
    async with ScriptedSMTPServer() as plain, ScriptedSMTPServer() as second:

        class _FirstPlain(Transport):
            """The first relay as a plaintext-only server under tls=starttls;
            the second reached in plaintext (the test cannot offer TLS)."""

            def __init__(self) -> None:
                self.strict = AiosmtplibTransport(tls="starttls", timeout=5.0)
                self.plain = AiosmtplibTransport(tls="none", timeout=5.0)

            async def connect(self, host: str, port: int) -> Connection:
                if port == plain.port:
                    return await self.strict.connect(host, port)
                return await self.plain.connect(host, port)

        relays = [("127.0.0.1", plain.port), ("127.0.0.1", second.port)]
        async with Mailer(
            relays, transport=_FirstPlain(), clock=FakeClock(), retry=policy()
        ) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    assert result.ok
    assert second.delivered_to == ["a@example.com"]


# -- replies trickled just inside the per-command timeout ---------------------


@asynccontextmanager
async def trickling_server(delay: float, dot_delay: float | None = None) -> AsyncIterator[int]:
    """An SMTP server that answers every line correctly, each after
    ``delay`` seconds (the end of the data after ``dot_delay``, if given):
    never slow enough for a per-command timeout."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await asyncio.sleep(delay)
            writer.write(b"220 trickle.test ESMTP\r\n")
            await writer.drain()
            in_data = False
            while line := await reader.readline():
                if in_data:
                    if line != b".\r\n":
                        continue
                    in_data = False
                    reply = b"250 2.0.0 queued"
                    if dot_delay is not None:
                        await asyncio.sleep(dot_delay - delay)
                else:
                    verb = line[:4].upper()
                    reply = {b"DATA": b"354 go ahead", b"QUIT": b"221 bye"}.get(verb, b"250 ok")
                    in_data = verb == b"DATA"
                await asyncio.sleep(delay)
                writer.write(reply + b"\r\n")
                await writer.drain()
                if verb == b"QUIT":
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(handlers):
            t.cancel()
        await server.wait_closed()


async def test_a_trickling_server_cannot_stretch_a_send_past_its_deadline() -> None:
    # 0.4 s per reply, a 1 s per-command timeout: no command ever times
    # out, and a whole transaction (greeting, EHLO, MAIL, RCPT, DATA, dot)
    # takes 2.4 s.  The send's deadline is 1 s.
    deadline = 1.0
    async with trickling_server(0.4) as port:
        mailer = Mailer(
            "127.0.0.1",
            port,
            tls="none",
            timeout=1.0,
            retry=RetryPolicy(deadline=deadline),
        )
        started = time.monotonic()
        result = await mailer.send(make_message("a@example.com"))
        took = time.monotonic() - started
        await mailer.close()
    rec = result["a@example.com"]
    assert rec.state is State.DEFERRED, rec
    assert "deadline" in (rec.explanation or "")
    # Bounded by the deadline plus the grace for unwinding, not by
    # 2.4 s (one transaction) or 5 x 2.4 s (the attempts).
    assert took < deadline + GRACE + 0.5, took


async def test_a_deadline_after_the_final_dot_leaves_the_recipient_ambiguous() -> None:
    async with (
        trickling_server(0.0, dot_delay=0.9) as port,
        Mailer(
            "127.0.0.1", port, tls="none", timeout=1.0, retry=RetryPolicy(deadline=0.5)
        ) as mailer,
    ):
        result = await mailer.send(make_message("a@example.com"))
    # The message may have arrived: not resent, not called deferred.
    assert result.ambiguous == ("a@example.com",)


async def test_a_caller_timeout_inside_the_deadline_still_raises() -> None:
    async with (
        trickling_server(0.3) as port,
        Mailer(
            "127.0.0.1", port, tls="none", timeout=1.0, retry=RetryPolicy(deadline=30.0)
        ) as mailer,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(mailer.send(make_message("a@example.com")), 0.5)


async def test_the_deadline_bounds_the_permit_wait_on_a_fake_clock() -> None:
    clock = FakeClock()

    class _Never(Limiter):
        def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
            @asynccontextmanager
            async def wait() -> AsyncIterator[None]:
                await clock.sleep(10_000)
                yield

            return wait()

        def feedback(self, key: str, classification: Classification | None) -> None:
            return None

    async with Mailer(
        "127.0.0.1",
        1,
        tls="none",
        clock=clock,
        limiter=_Never(),
        retry=RetryPolicy(deadline=30.0),
    ) as mailer:
        result = await mailer.send(make_message("a@example.com"))
    assert result.deferred == ("a@example.com",)
    assert clock.monotonic() == pytest.approx(30.0)


# -- the cause is kept ----------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_cause_reaches_the_result_sendfailed_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _closed_port()
    clock = FakeClock()
    health = DestinationHealth(clock=clock, failure_threshold=1)
    async with Mailer(
        "127.0.0.1",
        port,
        tls="none",
        clock=clock,
        health=health,
        retry=RetryPolicy(max_attempts=1),
    ) as mailer:
        with caplog.at_level(logging.WARNING, logger="resilient_smtp"):
            first = await mailer.send(make_message("a@example.com"))
            second = await mailer.send(make_message("a@example.com"))
    text = first["a@example.com"].explanation or ""
    assert "Connect call failed" in text or "Errno" in text, text
    with pytest.raises(SendFailed) as failed:
        first.raise_for_failures()
    assert "Connect call failed" in str(failed.value) or "Errno" in str(failed.value)
    # The destination is suspended now; the explanation still names why.
    again = second["a@example.com"].explanation or ""
    assert "suspended" in again and ("Connect call failed" in again or "Errno" in again), again
    warnings = [r for r in caplog.records if r.getMessage().startswith(f"127.0.0.1:{port}: ")]
    assert len(warnings) == 1  # the first failure of the destination, once


# -- construction -----------------------------------------------------------------


def test_mx_true_without_dnspython_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.asyncresolver", None)
    with pytest.raises(ImportError, match="dnspython"):
        Mailer(mx=True)


def test_implicit_tls_defaults_to_port_465() -> None:
    assert Mailer("smtp.example.com", tls="implicit").relays[0].port == 465
    assert Mailer("smtp.example.com").relays[0].port == 587
    assert Mailer("smtp.example.com", 2465, tls="implicit").relays[0].port == 2465


def test_parts_on_another_clock_are_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="limiter"):
        Mailer("smtp.example.com", clock=clock, limiter=AdaptiveLimiter())
    with pytest.raises(ValueError, match="health"):
        Mailer("smtp.example.com", clock=clock, health=DestinationHealth())
    Mailer(
        "smtp.example.com",
        clock=clock,
        limiter=AdaptiveLimiter(clock=clock),
        health=DestinationHealth(clock=clock),
    )
    Mailer("smtp.example.com", limiter=AdaptiveLimiter(), health=DestinationHealth())


# -- refused messages go back through a limiter that took the pushback ----------


class _Pacing(Limiter):
    """A limiter that says it took the pushback (as the adaptive one does)."""

    def __init__(self, took: bool | None) -> None:
        self.took = took

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def permit() -> AsyncIterator[None]:
            yield

        return permit()

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        return self.took if classification is not None else None


@pytest.mark.parametrize(("took", "floor"), [(True, 0.0), (None, 10.0)])
async def test_a_paced_rate_limit_skips_the_floor(took: bool | None, floor: float) -> None:
    clock = FakeClock()
    async with ScriptedSMTPServer() as server:
        server.on("mail", "450 4.7.1 Error: too much mail from 127.0.0.1, rate limit exceeded")
        async with Mailer(
            "127.0.0.1",
            server.port,
            tls="none",
            clock=clock,
            limiter=_Pacing(took),
            retry=policy(jitter="none"),
        ) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    assert result.ok
    assert result["a@example.com"].classification is not None
    assert result["a@example.com"].classification.reason is Reason.RATE_LIMITED
    # Only the retry's wait is slept on the clock: the floor, or nothing.
    assert [s for s in clock.sleeps if s > 0] == ([floor] if floor else [])


# -- the pure rules behind a recipient's fate -----------------------------------


def test_the_rules_of_a_recipients_fate() -> None:
    from resilient_smtp import REACTIONS, Stage, classify
    from resilient_smtp._delivery import never_permanent, settles_recipient

    unknown = classify("550 5.1.1 <x@example.com>: Recipient address rejected", stage="rcpt")
    assert settles_recipient(unknown, REACTIONS)
    greeting = classify("554 5.3.2 Service currently unavailable", stage=Stage.CONNECT)
    assert not greeting.transient and not settles_recipient(greeting, REACTIONS)
    no_tls = classify("530 5.7.0 Must issue a STARTTLS command first", stage="mail")
    assert no_tls.reason is Reason.TLS_REQUIRED  # a configuration error: held
    assert not settles_recipient(no_tls, REACTIONS)
    c421 = classify(POSTFIX_421, stage="rcpt")
    assert never_permanent(c421).transient
    assert never_permanent(unknown) is unknown


# -- AUTH refused ------------------------------------------------------------------


class _RefusingAuth(Transport):
    """Refuses AUTH on ``port`` as aiosmtplib reports it; connects for real
    elsewhere."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = AiosmtplibTransport(tls="none", timeout=5.0)

    async def connect(self, host: str, port: int) -> Connection:
        if port == self.port:
            import aiosmtplib

            raise aiosmtplib.SMTPAuthenticationError(
                535, "5.7.8 Error: authentication failed: authentication failure"
            )
        return await self.inner.connect(host, port)


async def test_refused_auth_moves_to_the_second_relay() -> None:
    events: list[Event] = []
    async with ScriptedSMTPServer() as second:
        relays = [("127.0.0.1", 1), ("127.0.0.1", second.port)]
        async with Mailer(
            relays,
            transport=_RefusingAuth(1),
            clock=FakeClock(),
            retry=policy(),
            hooks=[events.append],
        ) as mailer:
            result = await mailer.send(make_message("a@example.com"))
    assert result.ok
    assert second.delivered_to == ["a@example.com"]
    assert "configuration_error" in [e.kind for e in events]


async def test_refused_auth_alone_defers_and_does_not_pause_the_relay() -> None:
    clock = FakeClock()
    async with Mailer(
        "127.0.0.1", 1, transport=_RefusingAuth(1), clock=clock, retry=policy()
    ) as mailer:
        result = await mailer.send(make_message("a@example.com"))
        assert mailer.health.status("127.0.0.1:1").state == "healthy"
    rec = result["a@example.com"]
    assert rec.state is State.DEFERRED
    assert rec.classification is not None
    assert rec.classification.reason is Reason.AUTH_CREDENTIALS
    assert "535" in (rec.explanation or "")
    assert len(result.configuration_errors) == 1
