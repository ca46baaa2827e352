"""A real redis-server on 127.0.0.1 for the tests of ``resilient_smtp.redis``.

:class:`RedisServer` starts ``redis-server`` on a free loopback port (no
persistence, no daemonizing, so the test owns the process), and can stop and
start it again on the same port: that is how the tests take Redis away from
a running limiter and give it back.

The binary comes from Debian's ``redis-server`` package
(``scripts/services/redis.sh`` installs it).  :func:`require_redis_server`
skips a test when the binary is missing, except under CI, where it fails.

Test modules import the fixtures (``redis_url``: a Redis to share,
``own_redis``: one to stop and start, ``prefix``: fresh key names) by their
function names: ``from _redis_server import prefix_fixture``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

REDIS_SERVER = shutil.which("redis-server")


def require_redis_server() -> str:
    """The redis-server binary; skip without it (fail under CI=true)."""
    if REDIS_SERVER is None:
        message = "redis-server not found (Debian package redis-server; scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_SERVER


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    """Does a Redis on ``port`` answer PING (raw RESP, no client library)?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``, started and stopped at will."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait (at most ``timeout`` s) until it answers PING."""
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"redis-server exited at start (port {self.port})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s) and wait until it is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session", name="redis_url")
def redis_url_fixture() -> Iterator[str]:
    """The URL of a Redis to share: scripts/services/redis.sh's, else our own.

    Tests isolate themselves with a fresh ``prefix`` (see :func:`prefix`),
    so they never need to flush it.
    """
    url = os.environ.get("RESILIENT_SMTP_REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(name="own_redis")
def own_redis_fixture() -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and start (never the shared one)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(name="prefix")
def prefix_fixture() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
