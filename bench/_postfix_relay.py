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
import smtplib
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _postfix_server import PrivatePostfix, postfix_missing

__all__ = ["PostfixRelay", "postfix_missing"]

_SBIN = Path("/usr/sbin")

# The queues a message can sit in on its way through (hashed subdirectories).
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# What relaying adds to the services every private instance runs.
_RELAY_SERVICES = (
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "postlog unix-dgram n - n - 1 postlogd",
)


class PostfixRelay(PrivatePostfix):
    """One relaying Postfix of our own; use as a context manager.  Its
    smtpd (``inject_port``) takes messages in; ``smtp(8)`` relays them to
    ``127.0.0.1:relay_port``."""

    def __init__(
        self,
        relay_port: int,
        *,
        concurrency: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        settings = {
            "myhostname": "relay.bench.test",
            "local_transport": "discard",
            "default_transport": "smtp",
            "relay_transport": "relay",
            "smtpd_data_restrictions": "check_client_access static:HOLD",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "in_flow_delay": "0",
            "smtp_tls_security_level": "none",
        }
        if concurrency is not None:
            settings["smtp_destination_concurrency_limit"] = str(concurrency)
            settings["initial_destination_concurrency"] = str(min(5, concurrency))
        super().__init__(extra={**settings, **(extra or {})}, services=_RELAY_SERVICES)
        self.relay_port = relay_port

    @property
    def inject_port(self) -> int:
        return self.port

    def start(self) -> PostfixRelay:
        super().start()
        return self

    def __enter__(self) -> PostfixRelay:
        return self.start()

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
        self.run(str(_SBIN / "postsuper"), "-c", str(self.conf), "-H", "ALL")
        self.run(str(_SBIN / "postqueue"), "-c", str(self.conf), "-f")

    def wait_empty(self, timeout: float = 120.0) -> None:
        """Wait until no message is left in any queue (all delivered)."""
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queued()} messages still queued:\n{self.mailq()}")
            time.sleep(0.005)

    def mailq(self) -> str:
        return self.run(str(_SBIN / "postqueue"), "-c", str(self.conf), "-p")
