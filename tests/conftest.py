"""Shared fixtures: Postfix's smtp-sink on 127.0.0.1, in its fault modes.

``smtp_sink(*options)`` starts ``smtp-sink`` on a free loopback port with a
dump file (``-D``) that records every transaction it accepted, so tests can
check that nothing was lost and nothing was sent twice.  scripts/test
installs the binary (Debian's postfix package; the daemon is never started).
Under CI the binary must be there; elsewhere tests that need it are skipped
with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SMTP_SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    """A running smtp-sink and its dump file."""

    port: int
    dump: Path
    process: subprocess.Popen[bytes]
    options: tuple[str, ...] = field(default=())

    def dumped(self) -> str:
        return self.dump.read_text(errors="replace") if self.dump.exists() else ""

    def message_ids(self) -> list[str]:
        """Message-ID header values of every accepted message, repeats kept."""
        ids = []
        for line in self.dumped().splitlines():
            if line.lower().startswith("message-id:"):
                ids.append(line.split(":", 1)[1].strip())
        return ids

    def recipients(self) -> list[str]:
        """Every X-Rcpt-Args/RCPT recipient recorded in the dump."""
        out = []
        for line in self.dumped().splitlines():
            if line.startswith("X-Rcpt-Args:"):
                value = line.split(":", 1)[1].strip()
                out.append(value.split()[0].strip("<>"))
        return out


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink]]:
    if SMTP_SINK is None:
        if os.environ.get("CI"):
            pytest.fail("smtp-sink is not installed (scripts/test installs Debian's postfix)")
        pytest.skip(
            "smtp-sink not installed: run scripts/test as root, or apt-get install postfix"
        )
    started: list[Sink] = []
    workdir = Path(tempfile.mkdtemp(prefix="resilient-smtp-sink-"))
    workdir.chmod(0o777)  # smtp-sink drops to "nobody" and writes the dump here

    def start(*options: str) -> Sink:
        assert SMTP_SINK is not None
        port = _free_port()
        dump = workdir / f"dump-{port}"
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += ["-D", str(dump), *options, f"127.0.0.1:{port}", "64"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sink = Sink(port, dump, proc, tuple(options))
        started.append(sink)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"smtp-sink exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    # A probe connection (the CONNECT stage: fault modes that
                    # act there have already acted on it).
                    break
            except OSError:
                time.sleep(0.005)
        else:
            raise RuntimeError("smtp-sink did not start listening")
        return sink

    yield start
    for sink in started:
        sink.process.terminate()
        try:
            sink.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sink.process.kill()
            sink.process.wait()
        if sink.process.stderr is not None:
            sink.process.stderr.close()
    shutil.rmtree(workdir, ignore_errors=True)
