"""Where a transaction goes: one value for the limiter, health and the pool.

A destination is a host and a port.  The limiter and destination health key
their state by its text form (``"host:port"``, :attr:`Destination.key`), the
pool by the pair itself; both come from the one value, so the three can
never disagree about which server a reply was about.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Destination", "parse_destination"]


class Destination(NamedTuple):
    """A relay or MX host and the port to connect to."""

    host: str
    port: int

    @property
    def key(self) -> str:
        """The limiter's and health's key: ``"host:port"``."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.key


def parse_destination(relay: str | tuple[str, int], default_port: int) -> Destination:
    """``"host"``, ``"host:port"``, ``"[::1]:25"`` or ``(host, port)``."""
    if isinstance(relay, tuple):
        host, port = relay
    else:
        host, port, text = relay, default_port, ""
        if relay.startswith("["):  # [::1]:25
            host, _, rest = relay[1:].partition("]")
            text = rest[1:] if rest.startswith(":") else ""
        elif relay.count(":") == 1:
            host, _, text = relay.partition(":")
        if text:
            if not text.isdigit():
                raise ValueError(f"bad port in relay {relay!r}")
            port = int(text)
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad relay {relay!r}: give 'host', 'host:port' or (host, port)")
    return Destination(host, port)
