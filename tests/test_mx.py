"""Direct delivery to MX hosts, with a resolver that points domains at
loopback servers (127.0.0.1 and 127.0.0.2 on one port)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from email.message import EmailMessage

import pytest

from resilient_smtp import Mailer, Reason, State
from resilient_smtp._mx import DomainNotFound, mx_order
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer


def message(*to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(to)
    msg["Subject"] = "mx"
    msg.set_content("direct")
    return msg


def test_mx_order_sorts_by_preference_and_knows_null_and_implicit_mx() -> None:
    assert mx_order("x.test", [(20, "b.x.test."), (10, "A.x.test.")]) == ["a.x.test", "b.x.test"]
    assert mx_order("x.test", []) == ["x.test"]  # RFC 5321 §5.1: the implicit MX
    with pytest.raises(DomainNotFound, match="null MX"):
        mx_order("x.test", [(0, ".")])  # RFC 7505


def _port_free_on_both() -> int:
    for _ in range(20):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_each_domain_goes_to_its_own_mx_and_fails_over_to_the_next() -> None:
    port = _port_free_on_both()
    async with (
        ScriptedSMTPServer(host="127.0.0.1", port=port) as one,
        ScriptedSMTPServer(host="127.0.0.2", port=port) as two,
    ):
        two.on("connect", "421 4.3.2 All server ports are busy")

        async def resolver(domain: str) -> Sequence[tuple[int, str]]:
            return {
                "alpha.test": [(10, "127.0.0.1")],
                # beta's preferred MX is busy: the next one takes the mail.
                "beta.test": [(5, "127.0.0.2"), (10, "127.0.0.1")],
            }[domain]

        async with Mailer(mx=resolver, port=port, tls="none", clock=FakeClock()) as mailer:
            result = await mailer.send(message("a@alpha.test", "b@beta.test", "c@alpha.test"))
    assert result.ok
    assert result["b@beta.test"].destination == f"127.0.0.1:{port}"
    assert result["b@beta.test"].attempts == 2
    assert two.connections == 1
    assert sorted(one.delivered_to) == ["a@alpha.test", "b@beta.test", "c@alpha.test"]


async def test_dns_failures_become_final_states() -> None:
    async def resolver(domain: str) -> Sequence[tuple[int, str]]:
        if domain == "gone.test":
            raise DomainNotFound("gone.test does not exist (NXDOMAIN)")
        if domain == "null.test":
            return [(0, ".")]
        raise TimeoutError("the resolver timed out")

    async with Mailer(mx=resolver, tls="none", clock=FakeClock()) as mailer:
        result = await mailer.send(message("a@gone.test", "b@null.test", "c@slow.test"))
    for addr in ("a@gone.test", "b@null.test"):
        r = result[addr]
        assert r.state is State.REJECTED
        assert r.classification is not None
        assert r.classification.reason is Reason.DOMAIN_UNKNOWN
    slow = result["c@slow.test"]
    assert slow.state is State.DEFERRED
    assert slow.retry_in is not None
    assert slow.classification is not None
    assert slow.classification.reason is Reason.CONNECTION_ERROR


def test_mx_and_relays_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        Mailer("smtp.example.com", mx=True)
    with pytest.raises(ValueError, match="relay host"):
        Mailer()
