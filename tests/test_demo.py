"""The demo (the README's main job) runs end to end and accounts for every
message; ``demo --serve`` keeps its difficult server up for other code."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from email.message import EmailMessage

from resilient_smtp import Mailer, RetryPolicy, State
from resilient_smtp._cli.demo import UNKNOWN, run_demo, serve_demo
from resilient_smtp.testing import no_waits


async def test_demo_gives_every_message_a_final_state() -> None:
    out = io.StringIO()
    # A fast server and no real waits keep the test quick; the greylisting,
    # the busy greeting, the unknown recipient and the drop still happen.
    with no_waits():
        status = await run_demo(count=60, rate=10_000.0, out=out)
    text = out.getvalue()
    assert status == 0
    # The code it runs is shown first, with the server's real port.
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
    assert port is not None
    assert f'Mailer("127.0.0.1", {port.group(1)}, tls="none"' in text
    assert "mailer.send_many(messages, concurrency=20" in text
    # send_many's summary, then the table with what each number means.
    assert "60 messages: 60 recipients (55 delivered, 1 rejected, 3 deferred, 1 ambiguous)" in text
    assert re.search(r"total\s+60\s+\(sent 60\)", text)
    assert re.search(r"rejected\s+1\s+recipient_unknown 1: permanent", text)
    assert re.search(r"ambiguous\s+1\s+connection_error 1: the connection broke", text)
    assert re.search(r"deferred\s+3\s+greylisted 3: still transient", text)
    # The deferred recipients, each with its retry_in (greylisting's floor).
    listed = re.findall(r"(user\d+@greylist\.demo\.test)\s+greylisted\s+retry_in (\d+) s", text)
    assert len(listed) == 3
    assert all(int(seconds) >= 60 for _, seconds in listed)
    assert re.search(r"busy 421 at greeting\s+[1-9]", text)
    assert "server_busy" in text  # the busy greeting was retried
    assert re.search(r"s  sending: \d+ messages delivered at their first try", text)
    assert "retries after the last first-try delivery" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_keeps_the_difficult_server_on_the_given_port() -> None:
    port = _free_port()
    out = io.StringIO()
    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve_demo(port, rate=10_000.0, out=out, stop=stop))
    for _ in range(200):  # until it listens (bounded)
        if f"127.0.0.1:{port}" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    assert f'Mailer("127.0.0.1", {port}, tls="none")' in out.getvalue()
    msg = EmailMessage()
    msg["From"] = "me@example.org"
    msg["To"] = f"friend@example.org, {UNKNOWN}"
    msg["Subject"] = "aimed at the demo server"
    msg.set_content("hi\n")
    with no_waits():
        async with Mailer("127.0.0.1", port, tls="none", retry=RetryPolicy(deadline=60)) as m:
            result = await m.send(msg)
    # Its rules hold for any client: the unknown recipient is refused.
    assert result[UNKNOWN].state is State.REJECTED
    assert result["friend@example.org"].state in (State.DELIVERED, State.AMBIGUOUS)
    stop.set()
    assert await asyncio.wait_for(serving, 10) == 0
    assert "stopped; it accepted" in out.getvalue()


async def test_serve_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = io.StringIO()
        assert await serve_demo(taken.getsockname()[1], out=out) == 1
    assert "cannot listen on 127.0.0.1:" in out.getvalue()
