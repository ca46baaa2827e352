"""The demo (the README's main job) runs end to end and accounts for every message."""

from __future__ import annotations

import io
import re

from resilient_smtp._cli.demo import run_demo
from resilient_smtp.testing import no_waits


async def test_demo_gives_every_message_a_final_state() -> None:
    out = io.StringIO()
    # A fast server and no real waits keep the test quick; the greylisting,
    # the busy greeting, the unknown recipient and the drop still happen.
    with no_waits():
        status = await run_demo(count=60, rate=10_000.0, out=out)
    text = out.getvalue()
    assert status == 0
    assert re.search(r"total\s+60\s+\(sent 60\)", text)
    assert re.search(r"rejected\s+1\s+recipient_unknown 1", text)
    assert re.search(r"ambiguous\s+1\s+connection_error 1", text)
    assert re.search(r"deferred\s+3\s+greylisted 3", text)
    assert re.search(r"busy 421 at greeting\s+[1-9]", text)
    assert "server_busy" in text  # the busy greeting was retried
