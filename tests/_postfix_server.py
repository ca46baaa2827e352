"""A private Postfix instance on 127.0.0.1, for its real rate limits.

:class:`PrivatePostfix` writes its own ``config_directory`` (``main.cf`` and
a ``master.cf`` whose only listener is ``127.0.0.1:<port>``), with the queue
and data directories under a temporary directory, and runs ``postfix -c DIR
start``: nothing of the system's Postfix is configured or started.  Mail is
relayed for ``127.0.0.0/8`` and handed to the ``discard`` transport, so
nothing leaves the machine.  The limits are smtpd's own, counted by anvil:

* ``smtpd_client_message_rate_limit`` MAIL commands per
  ``anvil_rate_time_unit`` (``450 4.7.1 Error: too much mail from
  127.0.0.1`` at MAIL; the window starts at the first command after the
  previous one ended);
* ``smtpd_client_connection_count_limit`` connections at once (``421 4.7.0
  ... Error: too many connections from 127.0.0.1`` as the greeting).

``smtpd_client_event_limit_exceptions`` is emptied: by default it exempts
``$mynetworks``, loopback included (``postconf -d``, Postfix 3.7).  Postfix
must run as root with its ``mail_owner`` (``postfix``);
``scripts/services/postfix-private.sh`` installs the package.
:func:`postfix_missing` says why an instance cannot run, or ``None``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
)


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


class PrivatePostfix:
    """One Postfix instance of our own; use as a context manager."""

    def __init__(
        self,
        *,
        message_rate_limit: int = 0,
        rate_time_unit: str = "60s",
        connection_count_limit: int = 50,
        extra: dict[str, str] | None = None,
        services: Sequence[str] = (),
    ) -> None:
        self.port = _free_port()
        self.services = tuple(services)
        """master.cf rows beyond the ones every instance needs."""
        self.settings = {
            "compatibility_level": "3.6",
            "mail_owner": "postfix",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "throttle.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "default_transport": "discard",
            "relay_transport": "discard",
            "smtpd_client_event_limit_exceptions": "",
            "smtpd_client_message_rate_limit": str(message_rate_limit),
            "anvil_rate_time_unit": rate_time_unit,
            "smtpd_client_connection_count_limit": str(connection_count_limit),
            "maillog_file": "",
            **(extra or {}),
        }
        self.dir: Path | None = None

    def start(self) -> PrivatePostfix:
        reason = postfix_missing()
        if reason is not None:
            raise RuntimeError(reason)
        assert POSTFIX is not None
        root = self.dir = Path(tempfile.mkdtemp(prefix="resilient_smtp-postfix-"))
        os.chmod(root, 0o755)
        conf = root / "etc"
        conf.mkdir()
        spool, data = root / "spool", root / "data"
        data.mkdir()
        spool.mkdir()
        shutil.chown(data, "postfix")
        settings = {**self.settings, "queue_directory": str(spool), "data_directory": str(data)}
        (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (conf / "master.cf").write_text(_master_cf(self.port, self.services))
        # set-permissions makes the queue directories with the right owners.
        self.run(POSTFIX, "-c", str(conf), "set-permissions")
        self.run(POSTFIX, "-c", str(conf), "start")
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"private postfix did not answer on 127.0.0.1:{self.port}")

    @property
    def conf(self) -> Path:
        """The instance's config_directory."""
        assert self.dir is not None, "not started"
        return self.dir / "etc"

    def run(self, *cmd: str) -> str:
        """Run a Postfix command on this instance; its standard output."""
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        done = subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=60)
        return done.stdout.decode(errors="replace")

    def stop(self) -> None:
        if self.dir is None:
            return
        conf = self.dir / "etc"
        assert POSTFIX is not None
        subprocess.run(
            [POSTFIX, "-c", str(conf), "stop"],
            env={**os.environ, "MAIL_CONFIG": str(conf)},
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

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _master_cf(port: int, services: Sequence[str] = ()) -> str:
    """The services a relay-and-discard instance needs; smtpd on our port only."""
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
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "discard unix - - n - - discard",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "showq unix n - n - - showq",
        *services,
    ]
    return "\n".join(rows) + "\n"
