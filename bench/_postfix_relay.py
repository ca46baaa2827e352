"""A private Postfix instance on 127.0.0.1 that relays to a given host:port.

The bench's Postfix row: Postfix's own SMTP client (``smtp(8)``) delivering
through ``relayhost = [127.0.0.1]:<port>`` (a latency proxy in front of
smtp-sink), the way a company smarthost or an MTA in front of an
application relays mail.

:class:`PostfixRelay` writes its own ``config_directory`` and runs
``postfix -c DIR start``, with the queue and data directories under a
temporary directory; the system's Postfix is neither configured nor
started.  Its only listener is ``smtpd`` on ``127.0.0.1:<inject_port>``,
where the bench injects messages without latency.  Every message that
arrives there is put on **hold** (``smtpd_data_restrictions =
check_client_access static:HOLD``), so injecting does not overlap with
relaying; :meth:`PostfixRelay.release` then moves them all to the deferred
queue (``postsuper -H ALL``) and asks the queue manager to deliver them now
(``postqueue -f``).

Postfix's settings are its defaults except:

* ``relayhost = [127.0.0.1]:<port>`` (brackets: no MX lookup);
* ``concurrency``: ``None`` keeps Postfix's default destination concurrency
  (``default_destination_concurrency_limit = 20``, starting at
  ``initial_destination_concurrency = 5`` and growing by one per
  concurrency's worth of deliveries: its slow start).  An int sets
  ``smtp_destination_concurrency_limit`` to it (and the initial concurrency
  to at most it), e.g. 1 for a one-connection relay;
* ``in_flow_delay = 0`` (injection is not the subject);
* mail for the instance's own names is discarded, nothing else is local.

Connection caching is Postfix's default for this case,
``smtp_connection_cache_on_demand = yes``: with a backlog for the
destination in the active queue, ``smtp(8)`` keeps the session in
``scache(8)`` and the next delivery reuses it (``RSET`` first; see
postfix.org/CONNECTION_CACHE_README.html).  Postfix must run as root, with
its ``mail_owner`` (``postfix``).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
)
_SBIN = Path(POSTFIX).parent if POSTFIX else Path("/usr/sbin")

# The queues a message can sit in on its way through (hashed subdirectories).
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here, or ``None`` when it can."""
    if POSTFIX is None:
        return "postfix not installed (scripts/services/postfix-private.sh installs it as root)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons run as mail_owner postfix)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostfixRelay:
    """One relaying Postfix of our own; use as a context manager."""

    def __init__(
        self,
        relay_port: int,
        *,
        concurrency: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.relay_port = relay_port
        self.inject_port = _free_port()
        self.settings = {
            "compatibility_level": "3.6",
            "mail_owner": "postfix",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "relay.bench.test",
            "mydestination": "",
            "local_transport": "discard",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_data_restrictions": "check_client_access static:HOLD",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "in_flow_delay": "0",
            "smtp_tls_security_level": "none",
            "maillog_file": "",
            **(extra or {}),
        }
        if concurrency is not None:
            self.settings["smtp_destination_concurrency_limit"] = str(concurrency)
            self.settings["initial_destination_concurrency"] = str(min(5, concurrency))
        self.dir: Path | None = None

    @property
    def conf(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "etc"

    def _run(self, *cmd: str, stdin: bytes | None = None) -> str:
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        done = subprocess.run(
            cmd, input=stdin, check=True, env=env, capture_output=True, timeout=60
        )
        return done.stdout.decode(errors="replace")

    def start(self) -> PostfixRelay:
        reason = postfix_missing()
        if reason is not None:
            raise RuntimeError(reason)
        assert POSTFIX is not None
        root = self.dir = Path(tempfile.mkdtemp(prefix="resilient_smtp-relay-"))
        os.chmod(root, 0o755)
        conf = root / "etc"
        conf.mkdir()
        spool, data = root / "spool", root / "data"
        data.mkdir()
        spool.mkdir()
        shutil.chown(data, "postfix")
        settings = {**self.settings, "queue_directory": str(spool), "data_directory": str(data)}
        (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (conf / "master.cf").write_text(_master_cf(self.inject_port))
        # set-permissions makes the queue directories with the right owners.
        self._run(POSTFIX, "-c", str(conf), "set-permissions")
        self._run(POSTFIX, "-c", str(conf), "start")
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.inject_port), timeout=1.0) as s:
                    if s.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"private postfix did not answer on 127.0.0.1:{self.inject_port}")

    def inject(self, messages: Iterable[tuple[str, Sequence[str], bytes]]) -> int:
        """Hand ``(sender, recipients, message)`` to the local smtpd (no
        latency, one connection); each lands on hold.  Returns the count."""
        n = 0
        with smtplib.SMTP("127.0.0.1", self.inject_port, timeout=30) as s:
            for sender, rcpts, msg in messages:
                refused = s.sendmail(sender, list(rcpts), msg)
                if refused:
                    raise RuntimeError(f"postfix refused {refused!r}")
                n += 1
        return n

    def queued(self, *queues: str) -> int:
        """Messages in ``queues`` (default: all of them) right now."""
        assert self.dir is not None
        total = 0
        for q in queues or _QUEUES:
            for _dir, _subdirs, files in os.walk(self.dir / "spool" / q):
                total += len(files)
        return total

    def wait_held(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` messages sit on hold (cleanup writes them there)."""
        deadline = time.monotonic() + timeout
        while self.queued("hold") < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queued('hold')} of {n} messages on hold")
            time.sleep(0.01)

    def release(self) -> None:
        """Every held message to the deferred queue, then deliver them now."""
        self._run(str(_SBIN / "postsuper"), "-c", str(self.conf), "-H", "ALL")
        self._run(str(_SBIN / "postqueue"), "-c", str(self.conf), "-f")

    def wait_empty(self, timeout: float = 120.0) -> None:
        """Wait until no message is left in any queue (all delivered)."""
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queued()} messages still queued:\n{self.mailq()}")
            time.sleep(0.005)

    def mailq(self) -> str:
        return self._run(str(_SBIN / "postqueue"), "-c", str(self.conf), "-p")

    def stop(self) -> None:
        if self.dir is None:
            return
        assert POSTFIX is not None
        subprocess.run(
            [POSTFIX, "-c", str(self.conf), "stop"],
            env={**os.environ, "MAIL_CONFIG": str(self.conf)},
            capture_output=True,
            check=False,
        )
        # The master waits for its children; give it a moment before removing.
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        for _ in range(100):
            if not pid_file.exists():
                break
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PostfixRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _master_cf(port: int) -> str:
    """The services a relaying instance needs; smtpd on our port only."""
    # service type private unpriv chroot wakeup maxproc command
    rows = [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(rows) + "\n"
