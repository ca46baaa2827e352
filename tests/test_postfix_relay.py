"""The bench's Postfix relay harness (bench/_postfix_relay.py) still works.

bench/bench_transport.py compares the Mailer with a real Postfix relay: a
private instance whose ``relayhost`` is a latency proxy in front of
smtp-sink, with messages injected on hold and released at once.  This runs
that harness on a few messages so it cannot rot: every message reaches
smtp-sink exactly once, through the proxy, and the queue ends empty.  No
figures are asserted here (speed targets live in bench/).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Sink

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _latency_proxy import LatencyProxy
from _postfix_relay import PostfixRelay, postfix_missing


def _require_postfix() -> None:
    reason = postfix_missing()
    if reason is None:
        return
    if os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail(reason)  # as root, scripts/services/postfix-private.sh installs it
    pytest.skip(reason)


def _message(i: int) -> bytes:
    return (
        f"From: bench@example.org\r\nTo: a@example.com\r\nSubject: relay {i}\r\n"
        f"Message-ID: <relay-{i}@resilient-smtp.test>\r\n\r\nbody {i}\r\n"
    ).encode()


@pytest.mark.parametrize("concurrency", [1, None], ids=["one-connection", "postfix-default"])
async def test_relay_delivers_each_message_once(
    smtp_sink: Callable[..., Sink], concurrency: int | None
) -> None:
    _require_postfix()
    sink = smtp_sink()
    n = 5
    rcpts = ["a@example.com", "b@example.com"]
    async with LatencyProxy(0.002, ("127.0.0.1", sink.port)) as proxy:
        # Postfix's commands block; the proxy runs on this loop meanwhile.
        relay = PostfixRelay(proxy.port, concurrency=concurrency)
        await asyncio.to_thread(relay.start)
        try:
            batch = [("bench@example.org", rcpts, _message(i)) for i in range(n)]
            injected = await asyncio.to_thread(relay.inject, batch)
            await asyncio.to_thread(relay.wait_held, n, 30.0)
            # Held: nothing reaches the relayhost before the release.
            assert proxy.connections == 0
            assert sink.message_ids() == []
            await asyncio.to_thread(relay.release)
            await asyncio.to_thread(relay.wait_empty, 60.0)
        finally:
            await asyncio.to_thread(relay.stop)
        assert proxy.flights > 0
    assert injected == n
    ids = sink.message_ids()
    assert sorted(ids) == sorted(f"<relay-{i}@resilient-smtp.test>" for i in range(n))
    assert sorted(sink.recipients()) == sorted(rcpts * n)
