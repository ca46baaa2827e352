"""Input safety: addresses parsed exactly, header injection refused for every
message type, every input error raised before the first byte, and what the
server receives is byte-for-byte what was checked.

The sends go to a real aiosmtpd server on 127.0.0.1 (one per module, in its
own thread) through the sync Mailer; "before any traffic" is read off the
server: no new connection and no new command.
"""

from __future__ import annotations

import asyncio
import email
import email.headerregistry
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage, Message
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from _sync_server import server_in_thread
from resilient_smtp import InvalidMessageError, Mailer, Reason, RetryPolicy, State, sync
from resilient_smtp._envelope import (
    build_envelope,
    idna_address,
    parse_address_list,
    parse_mailbox,
    render_message,
)
from resilient_smtp.testing import FakeClock, ScriptedSMTPServer

SENDER = "app@example.org"
KINDS = ("email", "compat32", "bytes", "str")
# Our refusals (InvalidMessageError) and EmailMessage's own ValueError.
REFUSED = r"(?i)invalid address|header|line|NUL|CR"
QUICK = RetryPolicy(max_attempts=1, deadline=5.0)
EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedSMTPServer]:
    with server_in_thread() as s:
        yield s


@pytest.fixture(scope="module")
def mailer(server: ScriptedSMTPServer) -> Iterator[sync.Mailer]:
    with sync.Mailer("127.0.0.1", server.port, tls="none", retry=QUICK) as m:
        yield m


def traffic(server: ScriptedSMTPServer) -> tuple[int, int]:
    return server.connections, len(server.commands)


def build(kind: str, *, to: str = "a@example.com", subject: str = "hi") -> Any:
    """A message of ``kind`` with ``to`` in its To header and ``subject``
    (inserted as is, without validation of our own)."""
    if kind == "email":
        m = EmailMessage()
        m["From"] = SENDER
        m["To"] = to
        m["Subject"] = subject
        m.set_content("body\n")
        return m
    if kind == "compat32":
        c = Message()
        c["From"] = SENDER
        c["To"] = to
        c["Subject"] = subject
        c.set_payload("body\n")
        return c
    raw = f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n"
    return raw.encode("utf-8", "surrogatepass") if kind == "bytes" else raw


def send(mailer: sync.Mailer, kind: str, message: Any, to: str = "a@example.com") -> Any:
    if kind in ("bytes", "str"):
        return mailer.send(message, sender=SENDER, recipients=[to])
    return mailer.send(message)


# -- addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        # Django's own list (tests/mail/tests.py, test_avoids_sending_to_invalid_addresses)
        "to@other.com@example.com",
        "to@other.com <to@example.com>",
        "@",
        "to@",
        "@example.com",
        '"evil@example.com\r\nto"@example.com',
        "to\nevil@example.com",
        # and a few more a repairing parser would have "fixed"
        "django",
        "a@b.com (comment)",
        "<a@b.com",
        "a@b.com>",
        "a b@example.com",
        "a@exa mple.com",
        "a@@example.com",
        "a..b@example.com",
        ".a@example.com",
        "a@example.com\x00",
        "a@-example.com",
    ],
)
def test_addresses_that_do_not_parse_exactly_are_refused(address: str) -> None:
    with pytest.raises(InvalidMessageError, match="Invalid address"):
        parse_mailbox(address)
    with pytest.raises(InvalidMessageError, match="Invalid address"):
        build_envelope(b"x", sender=SENDER, recipients=[address])


@pytest.mark.parametrize(
    ("value", "addr_spec"),
    [
        ("a@example.com", "a@example.com"),
        ("Alice <alice@example.com>", "alice@example.com"),
        ('"to@other.com" <to@example.com>', "to@example.com"),
        ('"Doe, John" <j@example.com>', "j@example.com"),
        ("J. Smith <j@example.com>", "j@example.com"),
        ("=?utf-8?q?S=C3=BCrname?= <s@example.com>", "s@example.com"),
        ("Sürname <s@bücher.de>", "s@bücher.de"),
        ('"a b"@example.com', '"a b"@example.com'),
        ("postmaster@[192.0.2.1]", "postmaster@[192.0.2.1]"),
    ],
)
def test_a_display_name_resolves_to_the_real_addr_spec(value: str, addr_spec: str) -> None:
    assert parse_mailbox(value) == addr_spec


def test_address_lists_with_groups() -> None:
    assert parse_address_list("undisclosed-recipients:;") == []
    assert parse_address_list('"A, B" <a@b.com>, team: x@y.z, w@v.u;, k@l.m') == [
        "a@b.com",
        "x@y.z",
        "w@v.u",
        "k@l.m",
    ]
    for bad in ("a@b.com,", ",a@b.com", "a@b.com,,c@d.com", "team: a@b.com"):
        with pytest.raises(InvalidMessageError):
            parse_address_list(bad)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    atom = st.text(st.sampled_from("abcxyz0189!#$%&'*+-/=?^_`{|}~"), min_size=1, max_size=8)
    local = ".".join(draw(st.lists(atom, min_size=1, max_size=3)))
    label = st.text(st.sampled_from("abcdefghijk0123456789äöü漢"), min_size=1, max_size=10)
    domain = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    return f"{local}@{domain}"


@EXAMPLES
@given(address=addresses(), kind=st.sampled_from(KINDS))
def test_a_valid_address_reaches_the_server_as_given(
    server: ScriptedSMTPServer, mailer: sync.Mailer, address: str, kind: str
) -> None:
    server.messages.clear()
    result = send(mailer, kind, build(kind, to=address), to=address)
    assert result.delivered == (address,)
    (got,) = server.messages
    # Domains travel IDNA-encoded (A-labels); the local part as given.
    assert got.recipients == (idna_address(address),)


@EXAMPLES
@given(
    address=addresses(),
    at=st.integers(min_value=0, max_value=40),
    bad=st.sampled_from(["\r", "\n", "\r\n", "\x00", "\r\nRCPT TO:<x@evil.test>"]),
    kind=st.sampled_from(KINDS),
)
def test_cr_lf_or_nul_in_an_address_is_refused_before_any_traffic(
    server: ScriptedSMTPServer, mailer: sync.Mailer, address: str, at: int, bad: str, kind: str
) -> None:
    # EmailMessage itself drops a trailing line break on assignment (it
    # splits the value into lines): nothing of it is left to send.
    assume(kind != "email" or at < len(address))
    address = address[:at] + bad + address[at:]
    before = traffic(server)
    with pytest.raises(ValueError, match=REFUSED):
        send(mailer, kind, build(kind, to=address) if kind != "bytes" else b"x", to=address)
    assert traffic(server) == before


_STDLIB_INVALID = (email.errors.HeaderParseError, email.errors.InvalidHeaderDefect)


def stdlib_addr_specs(value: str) -> list[str] | None:
    """The stdlib's strict (policy.default) reading of a To value, or None
    if it finds it invalid."""
    try:
        header = email.policy.default.header_factory("To", value)
    except Exception:  # its parser raises IndexError on some garbage
        return None
    if any(isinstance(d, _STDLIB_INVALID) for d in header.defects):
        return None
    return [a.addr_spec for a in header.addresses]


@settings(max_examples=400, deadline=None)
@given(
    value=st.text(st.sampled_from('ab.@<>" ,:;\\()[]xyz'), min_size=1, max_size=24).filter(
        lambda v: "@" in v
    )
)
def test_what_we_accept_the_stdlib_strict_parser_reads_the_same(value: str) -> None:
    """Garbage around addresses: either refused, or read exactly as the
    standard library's strict parser reads it, each address a verbatim
    piece of the input (nothing repaired)."""
    try:
        ours = parse_address_list(value)
    except InvalidMessageError:
        return
    assert all(a in value for a in ours)
    theirs = stdlib_addr_specs(value)
    assume(theirs is not None or "(" in value)  # we refuse comments, it keeps them
    assert theirs == ours


_GARBAGE = st.text(st.sampled_from('ab.@<>" ,:;\\()[]xyz'), min_size=1, max_size=24).filter(
    lambda v: "@" in v
)


def stdlib_addr_spec(value: str) -> str | None:
    """The stdlib's strict reading of a bare addr-spec, or None."""
    try:
        return email.headerregistry.Address(addr_spec=value).addr_spec
    except Exception:
        return None


@EXAMPLES
@given(value=_GARBAGE, kind=st.sampled_from(KINDS))
@example(value="a@ a", kind="email").via("found by hypothesis")
@example(value="a@ a", kind="compat32").via("found by hypothesis")
def test_an_address_that_does_not_parse_exactly_is_refused_before_any_traffic(
    server: ScriptedSMTPServer, mailer: sync.Mailer, value: str, kind: str
) -> None:
    """For every input type: what the standard library's strict parser
    finds invalid is refused before any traffic; what is accepted has the
    addresses that parser reads, character for character."""
    raw = kind in ("bytes", "str")
    if raw:
        theirs = stdlib_addr_spec(value)
        expected = None if theirs is None else [theirs]
    else:
        expected = stdlib_addr_specs(value)
    try:
        message = build(kind, to="a@example.com" if raw else value)
    except Exception:  # EmailMessage's parser raises ValueError, and worse
        assert kind == "email"
        return  # refused by EmailMessage itself, before any of our code
    try:
        envelope = build_envelope(
            message, sender=SENDER if raw else None, recipients=[value] if raw else None
        )
    except InvalidMessageError:
        before = traffic(server)
        with pytest.raises(InvalidMessageError):
            send(mailer, kind, message, to=value)
        assert traffic(server) == before
        return
    assert expected is not None, f"accepted {value!r}, which the stdlib finds invalid"
    assert list(envelope.recipients) == list(dict.fromkeys(expected))
    # EmailMessage holds its own reading of what was assigned (it folds
    # "a@ a" to "a@a" itself); nothing is repaired after that.
    held = str(message["To"]) if kind == "email" else value
    assert all(a in held for a in envelope.recipients)


# -- header injection ---------------------------------------------------------

# Line breaks as the email package's generator sees them (str.splitlines()).
_BREAKS = ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
_TEXT = st.text(st.sampled_from("abc XYZ:<>@.é-"), max_size=12)


@EXAMPLES
@given(
    head=_TEXT,
    brk=st.sampled_from(_BREAKS),
    tail=st.sampled_from(["Bcc: victim@example.net", "", "\r\nfake body", "X-Evil: 1"]),
    kind=st.sampled_from(["email", "compat32"]),
)
def test_header_injection_is_refused_for_message_objects(
    server: ScriptedSMTPServer, mailer: sync.Mailer, head: str, brk: str, tail: str, kind: str
) -> None:
    before = traffic(server)
    with pytest.raises(ValueError, match=REFUSED):
        send(mailer, kind, build(kind, subject=head + brk + tail))
    assert traffic(server) == before


@EXAMPLES
@given(
    head=_TEXT,
    brk=st.sampled_from(["\r", "\n", "\x00", "\r\n\r\n", "\r\nnot a header"]),
    tail=_TEXT,
    kind=st.sampled_from(KINDS),
)
def test_nul_and_stray_line_breaks_are_refused_for_every_message_type(
    server: ScriptedSMTPServer, mailer: sync.Mailer, head: str, brk: str, tail: str, kind: str
) -> None:
    """For raw bytes and str, a CRLF followed by a well-formed header line is
    a header the caller wrote; everything else that would change the header
    structure on the wire is refused."""
    subject = head + brk + tail
    assume(tail[:1] not in (" ", "\t"))  # that would be a fold
    # For raw messages an empty line is the end of the headers, as written.
    assume(kind not in ("bytes", "str") or brk != "\r\n\r\n")
    before = traffic(server)
    with pytest.raises(ValueError, match=REFUSED):
        send(mailer, kind, build(kind, subject=subject))
    assert traffic(server) == before


@EXAMPLES
@given(
    words=st.lists(
        st.text(st.sampled_from("abcXYZ09:<>@.-é"), min_size=1, max_size=10),
        min_size=1,
        max_size=4,
    ),
    fold=st.booleans(),
    kind=st.sampled_from(KINDS),
)
def test_what_the_server_receives_is_byte_for_byte_what_was_checked(
    server: ScriptedSMTPServer, mailer: sync.Mailer, words: list[str], fold: bool, kind: str
) -> None:
    joiner = "\r\n " if fold and kind != "email" else " "
    message = build(kind, subject=joiner.join(words))
    server.messages.clear()
    if kind == "compat32" and not all(w.isascii() for w in words):
        # A compat32 header is written as stored: raw UTF-8 cannot go out
        # without SMTPUTF8 (the addresses are ASCII, so it is not used), and
        # the message is refused when rendered, before any traffic.
        before = traffic(server)
        with pytest.raises(InvalidMessageError, match="cannot be rendered"):
            send(mailer, kind, message)
        assert traffic(server) == before
        return
    result = send(mailer, kind, message)
    assert result.ok, result
    (got,) = server.messages
    if isinstance(message, Message):
        expected = render_message(message, smtputf8=False)
    else:
        expected = message.encode() if isinstance(message, str) else message
    assert got.data == expected


def test_a_lone_surrogate_in_a_str_message_is_refused_before_connecting(
    server: ScriptedSMTPServer, mailer: sync.Mailer
) -> None:
    before = traffic(server)
    with pytest.raises(InvalidMessageError, match="not valid Unicode"):
        mailer.send("Subject: x\r\n\r\nbad \udc80 here\r\n", sender=SENDER, recipients=["a@b.com"])
    with pytest.raises(InvalidMessageError, match="lone surrogate"):
        mailer.send(b"x", sender=SENDER, recipients=["a\udc80@b.com"])
    assert traffic(server) == before


def test_a_bad_header_in_a_nested_part_is_refused(
    server: ScriptedSMTPServer, mailer: sync.Mailer
) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, "a@example.com", "parts"
    msg.set_content("text")
    part = Message()
    part["Content-Disposition"] = 'attachment; filename="x"\r\nBcc: victim@example.net'
    msg.add_attachment(part)
    before = traffic(server)
    with pytest.raises(InvalidMessageError, match="Content-Disposition"):
        mailer.send(msg)
    assert traffic(server) == before


def test_a_parsed_message_with_folded_headers_is_sent_unchanged(
    server: ScriptedSMTPServer, mailer: sync.Mailer
) -> None:
    raw = (
        f"From: {SENDER}\r\nTo: a@example.com,\r\n b@example.com\r\n"
        "Subject: a long subject\r\n\tfolded once\r\n\r\nbody\r\n"
    ).encode()
    parsed = email.message_from_bytes(raw)  # compat32
    server.messages.clear()
    result = mailer.send(parsed)
    assert result.delivered == ("a@example.com", "b@example.com")
    assert server.messages[0].data == render_message(parsed)


# -- what only the server reveals -----------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, ...]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(tuple(envelope.rcpt_tos))
        return "250 2.0.0 OK"


async def _mx(domain: str) -> list[tuple[int, str]]:
    return [(10, "127.0.0.1")]


async def test_a_non_ascii_local_part_without_smtputf8_is_that_recipients_result() -> None:
    sink = _Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="ascii.test", enable_SMTPUTF8=False), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    msg = EmailMessage()
    msg["From"], msg["Subject"] = SENDER, "mixed"
    msg["To"] = "ascii@example.com, jörg@example.com, z@bücher.de"
    msg.set_content("hi")
    try:
        async with Mailer("127.0.0.1", port, tls="none", clock=FakeClock()) as mailer:
            result = await mailer.send(msg)
    finally:
        server.close()
        await server.wait_closed()
    assert result["ascii@example.com"].state is State.DELIVERED
    assert result["z@bücher.de"].state is State.DELIVERED
    r = result["jörg@example.com"]
    assert r.state is State.REJECTED
    assert r.classification is not None
    assert r.classification.reason is Reason.POLICY_REJECTED
    assert "SMTPUTF8" in r.classification.explanation
    assert sink.received == [("ascii@example.com", "z@xn--bcher-kva.de")]


async def test_with_mx_a_server_without_smtputf8_fails_only_its_own_domain() -> None:
    """Two domains, two MX servers (127.0.0.1 without SMTPUTF8, ::1 with
    it, on one port number): the non-ASCII local part at the first domain
    is that recipient's result; the other domain's delivery completes."""
    loop = asyncio.get_running_loop()
    ascii_sink, utf8_sink = _Sink(), _Sink()
    servers: list[asyncio.AbstractServer] = []
    for _ in range(20):  # find a port number free on both loopbacks
        first = await loop.create_server(
            lambda: SMTP(ascii_sink, enable_SMTPUTF8=False), "127.0.0.1", 0
        )
        port = first.sockets[0].getsockname()[1]
        try:
            second = await loop.create_server(
                lambda: SMTP(utf8_sink, enable_SMTPUTF8=True), "::1", port
            )
        except OSError:
            first.close()
            continue
        servers = [first, second]
        break
    assert servers, "no port number free on both 127.0.0.1 and ::1"

    async def resolve(domain: str) -> list[tuple[int, str]]:
        return [(10, "127.0.0.1" if domain == "one.test" else "::1")]

    msg = build("email", to="jörg@one.test, ok@one.test, jörg@two.test")
    try:
        async with Mailer(mx=resolve, port=port, tls="none", clock=FakeClock()) as mailer:
            result = await mailer.send(msg)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    assert result["jörg@one.test"].state is State.REJECTED
    assert result["ok@one.test"].state is State.DELIVERED
    assert result["jörg@two.test"].state is State.DELIVERED
    assert ascii_sink.received == [("ok@one.test",)]
    assert utf8_sink.received == [("jörg@two.test",)]


async def test_mx_delivery_does_not_leave_a_domain_running_after_an_error() -> None:
    """The hook of one domain's transaction raises: the send stops, and the
    other domain's delivery is cancelled with it, not left as an orphan that
    would deliver after the caller saw the error."""
    gate = asyncio.Event()

    async def hook(accepted: list[str]) -> None:
        if accepted == ["a@one.test"]:
            raise RuntimeError("outbox down")
        await gate.wait()  # b@two.test waits here until cancelled

    async with (
        ScriptedSMTPServer() as server,
        Mailer(mx=_mx, port=server.port, tls="none", clock=FakeClock()) as mailer,
    ):
        with pytest.raises(RuntimeError, match="outbox down"):
            await mailer.send(build("email", to="a@one.test, b@two.test"), before_end_of_data=hook)
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.sleep(0.05)
    assert server.messages == []


def test_mx_refuses_an_address_literal_before_any_traffic() -> None:
    async def run() -> None:
        async with Mailer(mx=_mx, tls="none", clock=FakeClock()) as mailer:
            with pytest.raises(InvalidMessageError, match="address literal"):
                await mailer.send(build("email", to="a@[127.0.0.1]"))

    asyncio.run(run())


def test_the_envelope_has_one_rcpt_per_mailbox() -> None:
    env = build_envelope(b"x", sender=SENDER, recipients=["a@bücher.de", "a@xn--bcher-kva.de"])
    assert env.recipients == ("a@bücher.de",)
    assert re.fullmatch(r"a@xn--bcher-kva\.de", idna_address(env.recipients[0]))
