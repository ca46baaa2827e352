"""Mailer.from_url: mail URLs as dj-email-url and django-environ write them."""

from __future__ import annotations

import logging
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_smtp import Mailer
from resilient_smtp import sync as sync_api
from resilient_smtp._url import MailURL, parse_url
from resilient_smtp.testing import ScriptedTransport


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("smtp://", "localhost", 25, "none"),
        ("smtp://relay.internal", "relay.internal", 25, "none"),
        ("smtp://127.0.0.1:2525", "127.0.0.1", 2525, "none"),
        ("submission://smtp.example.com", "smtp.example.com", 587, "starttls"),
        ("submit://smtp.example.com", "smtp.example.com", 587, "starttls"),
        ("smtp+starttls://smtp.example.com", "smtp.example.com", 587, "starttls"),
        ("smtp+tls://smtp.example.com:2587", "smtp.example.com", 2587, "starttls"),
        ("smtps://smtp.example.com", "smtp.example.com", 465, "implicit"),
        ("submissions://smtp.example.com", "smtp.example.com", 465, "implicit"),
        ("smtp+ssl://smtp.example.com", "smtp.example.com", 465, "implicit"),
        ("SMTPS://[2001:db8::1]:4465", "2001:db8::1", 4465, "implicit"),
        # dj-email-url's flags on plain smtp://
        ("smtp://relay?tls=True", "relay", 25, "starttls"),
        ("smtp://relay:465/?ssl=True", "relay", 465, "implicit"),
        ("smtp://relay:587?tls=starttls", "relay", 587, "starttls"),
        ("smtp://relay?ssl=false", "relay", 25, "none"),
        # dj-email-url writes both flags; the false one does not undo the true one.
        ("smtp://relay:465?ssl=True&tls=False", "relay", 465, "implicit"),
        ("smtp://relay:587?tls=True&ssl=False", "relay", 587, "starttls"),
    ],
)
def test_schemes_ports_and_tls(url: str, host: str, port: int, tls: str) -> None:
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.tls) == (host, port, tls)
    assert parsed.username is None and parsed.password is None


def test_credentials_are_percent_decoded_and_options_read() -> None:
    url = (
        "submission://app%40example.com:p%40ss%3Aw%2Fo%25rd@smtp.example.com:587/"
        "?timeout=12.5&local_hostname=app.example.com&_server_email=root@example.com"
    )
    parsed = parse_url(url)
    assert parsed.username == "app@example.com"
    assert parsed.password == "p@ss:w/o%rd"
    assert parsed.timeout == 12.5
    assert parsed.local_hostname == "app.example.com"
    assert parsed.kwargs() == {
        "host": "smtp.example.com",
        "port": 587,
        "tls": "starttls",
        "username": "app@example.com",
        "password": "p@ss:w/o%rd",
        "timeout": 12.5,
        "local_hostname": "app.example.com",
    }


def test_from_url_builds_the_mailer_and_hides_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    mailer = Mailer.from_url("smtps://app:s3cr%3At@smtp.example.com?timeout=5")
    assert mailer.relays == (("smtp.example.com", 465),)
    shown = repr(mailer) + repr(mailer.transport) + repr(parse_url("smtps://a:s3cr%3At@h"))
    assert "s3cr" not in shown
    assert "s3cr" not in caplog.text
    assert "s3cr" not in str(parse_url("smtps://a:s3cr%3At@h"))
    # Other keywords pass through; one the URL also sets is an error.
    transport = ScriptedTransport()
    assert Mailer.from_url("smtp://h", transport=transport).transport is transport
    with pytest.raises(TypeError, match="timeout given in the URL and as a keyword"):
        Mailer.from_url("smtp://h?timeout=3", timeout=4)


def test_the_sync_mailer_from_url() -> None:
    mailer = sync_api.Mailer.from_url("submission://u:pw@smtp.example.com:2587")
    assert mailer.async_mailer.relays == (("smtp.example.com", 2587),)
    mailer.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:hunter2@h", "unknown scheme http://"),
        ("smtp.example.com:587", "unknown scheme"),
        ("submission://", "give the server's host name"),
        ("smtps://u:hunter2@h:587", "write submission://...:587"),
        ("smtp://u:hunter2@h:99999", "Port out of range"),
        ("smtp://u:hunter2@h:abc", "Port could not be cast"),
        ("smtp://u:hunter2@h:0", "port 0"),
        ("smtp://u:hunter2@h/some/path", "has no path"),
        ("smtp://u:hunter2@h#frag", "no #fragment"),
        ("smtp://u:hunter2@h?tiemout=3", "unknown option 'tiemout'"),
        ("smtp://u:hunter2@h?timeout=soon", "timeout='soon' is not a number"),
        ("smtp://u:hunter2@h?timeout=-1", "above 0"),
        ("smtp://u:hunter2@h?tls=maybe", "not a yes/no value"),
        ("smtp://u:hunter2@h?ssl=true", "ssl=true needs the port"),
        ("smtps://u:hunter2@h?tls=none", "already means tls='implicit'"),
        ("smtp://u:hunter2@h?timeout=5&timeout=6", "timeout is given twice"),
        ("smtp://u:hunter2@h:465?tls=true&tls=false", "tls is given twice"),
        ("smtp://u:hunter2@h:465?tls=true&ssl=true", "tls and ssl are exclusive"),
        ("smtp://u:hunter2@h:465?ssl=true&tls=true", "tls and ssl are exclusive"),
        ("submission://user@h", "give both a user name and a password"),
        ("submission://:hunter2@h", "give both a user name and a password"),
        ("smtp://u:hunter2@[not-ipv6]", "does not appear to be an IPv4 or IPv6 address"),
        ("smtp://u:hunter2@[::1", "Invalid IPv6 URL"),
    ],
)
def test_bad_urls_say_what_is_wrong_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_url(url)
    assert "hunter2" not in str(info.value)


def test_a_url_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="a mail URL is a str"):
        parse_url(b"smtp://h")  # type: ignore[arg-type]


_hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_secrets = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from("@:/?#%&= "),
    min_size=1,
    max_size=30,
)


@given(
    host=_hosts,
    port=st.integers(1, 65535),
    tls=st.sampled_from(["none", "starttls", "implicit"]),
    creds=st.none() | st.tuples(_secrets, _secrets),
    timeout=st.none() | st.floats(0.001, 1e6, allow_nan=False),
    local_hostname=st.none() | st.text(string.ascii_letters + string.digits + ".-", min_size=1),
)
def test_round_trip(
    host: str,
    port: int,
    tls: str,
    creds: tuple[str, str] | None,
    timeout: float | None,
    local_hostname: str | None,
) -> None:
    if tls == "implicit" and port in (25, 587):
        port = 465  # refused on purpose (see the bad-URL test)
    username, password = creds or (None, None)
    settings = MailURL(host, port, tls, username, password, timeout, local_hostname)  # type: ignore[arg-type]
    url = settings.to_url(redact=False)
    assert parse_url(url) == settings
    if password is not None:
        assert settings.to_url().split("@")[0].endswith(":***")
