"""Direct delivery: the MX hosts of a recipient's domain, in preference order.

RFC 5321 §5.1: deliver to the domain's MX hosts, lowest preference first;
a domain with no MX record but an address record is its own implicit MX.
RFC 7505: a single MX of "." ("null MX") means the domain accepts no mail.
Resolving uses dnspython (the ``mx`` extra) unless a resolver is given, which
is how tests point a domain at 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ._classify.classifier import Classification
from ._classify.reply import Reply
from ._classify.taxonomy import Reason, Scope
from ._errors import DomainNotFound

__all__ = ["DomainNotFound", "MXResolver", "dns_resolver", "mx_order", "resolution_failure"]

MXResolver = Callable[[str], Awaitable[Sequence[tuple[int, str]]]]
"""An async function from a domain to its MX records, (preference, host)
pairs; it raises :class:`DomainNotFound` for a domain that does not exist."""


def mx_order(domain: str, records: Sequence[tuple[int, str]]) -> list[str]:
    """The hosts to try, in order.  Pure: raises :class:`DomainNotFound` for a
    null MX (RFC 7505), returns ``[domain]`` when there is no MX (§5.1)."""
    hosts = [(pref, host.rstrip(".").lower()) for pref, host in records]
    if any(host == "" for _, host in hosts):
        raise DomainNotFound(f"{domain} publishes a null MX (RFC 7505): it accepts no mail")
    if not hosts:
        return [domain]
    return [host for _, host in sorted(hosts, key=lambda h: h[0])]


async def dns_resolver(domain: str) -> Sequence[tuple[int, str]]:
    """MX records from DNS through dnspython (``pip install resilient-smtp[mx]``)."""
    try:
        import dns.asyncresolver
        import dns.resolver
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "direct MX delivery needs dnspython: pip install 'resilient-smtp[mx]', "
            "or pass resolver=..."
        ) from None
    try:
        answer = await dns.asyncresolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise DomainNotFound(f"{domain} does not exist (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        return []
    return [(int(r.preference), str(r.exchange)) for r in answer]


def resolution_failure(domain: str, exc: BaseException) -> Classification:
    """What a failed MX look-up means for the domain's recipients."""
    if isinstance(exc, DomainNotFound):
        return Classification.without_reply(
            Reason.DOMAIN_UNKNOWN,
            transient=False,
            reply=Reply(None, None, str(exc)[:200]),
            explanation=f"{exc}: every recipient at {domain} is rejected",
        )
    return Classification.without_reply(
        Reason.CONNECTION_ERROR,
        transient=True,
        scope=Scope.DESTINATION,
        reply=Reply(None, None, str(exc)[:200]),
        explanation=(
            f"the MX look-up for {domain} failed ({type(exc).__name__}: {exc}): try again later"
        ),
    )
