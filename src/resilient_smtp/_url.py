"""Mail settings from one URL: ``Mailer.from_url(os.environ["EMAIL_URL"])``.

Twelve-factor apps keep a backing service's settings in one environment
variable (https://12factor.net/backing-services); Django users know the
``EMAIL_URL`` of dj-email-url and django-environ.  The schemes follow them,
and RFC 8314 for implicit TLS:

==============================================  ==========  ============
scheme                                          TLS         default port
==============================================  ==========  ============
``smtp://``                                     none        25
``submission://``, ``submit://``,               STARTTLS    587
``smtp+starttls://``, ``smtp+tls://``
``smtps://``, ``submissions://``, ``smtp+ssl://``  implicit    465
==============================================  ==========  ============

``smtps://`` is TLS from the first byte, as in curl and RFC 8314's port 465
("submissions").  django-environ once used it for STARTTLS; an ``smtps://``
URL that names port 587 or 25 is refused with a message saying which scheme
to write, instead of hanging in a TLS handshake the server never answers.

Query options: ``timeout`` (seconds), ``local_hostname``, and on plain
``smtp://`` dj-email-url's ``tls=true`` (STARTTLS; the port stays 25 unless
given) or ``ssl=true`` (implicit TLS; give the port), or
``tls=starttls|implicit|none``.  Options starting with ``_``
(dj-email-url's ``_server_email``, ``_default_from_email``) are Django
settings, not connection settings: they are ignored.  Any other option is
an error, so a typo does not silently fall back to a default.

The user name and password are percent-decoded (a password holding ``@``,
``:`` or ``/`` must be percent-encoded in the URL).  The password never
appears in a ``repr()``, a log line or an error message: errors quote the
URL with the password replaced by ``***``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ._transport.connection import TLSMode

__all__ = ["MailURL", "mailer_arguments", "parse_url"]

# scheme -> (TLS mode, default port).
SCHEMES: dict[str, tuple[TLSMode, int]] = {
    "smtp": ("none", 25),
    "submission": ("starttls", 587),
    "submit": ("starttls", 587),
    "smtp+starttls": ("starttls", 587),
    "smtp+tls": ("starttls", 587),
    "smtps": ("implicit", 465),
    "submissions": ("implicit", 465),
    "smtp+ssl": ("implicit", 465),
}
# What to_url() writes for each mode.
_CANONICAL: dict[TLSMode, str] = {"none": "smtp", "starttls": "submission", "implicit": "smtps"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class MailURL:
    """The connection settings a mail URL holds; :meth:`kwargs` are the
    :class:`~resilient_smtp.Mailer` keywords."""

    host: str
    port: int
    tls: TLSMode
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float | None = None
    local_hostname: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keywords for :class:`~resilient_smtp.Mailer` (the host and port
        included); options the URL did not set are left out."""
        out: dict[str, Any] = {"host": self.host, "port": self.port, "tls": self.tls}
        for name in ("username", "password", "timeout", "local_hostname"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_url(self, *, redact: bool = True) -> str:
        """The URL again (canonical scheme, credentials percent-encoded);
        the password is ``***`` unless ``redact=False``."""
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + ("***" if redact else quote(self.password, safe=""))
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = []
        if self.timeout is not None:
            query.append(f"timeout={self.timeout!r}")
        if self.local_hostname is not None:
            query.append(f"local_hostname={quote(self.local_hostname, safe='')}")
        tail = "?" + "&".join(query) if query else ""
        return f"{_CANONICAL[self.tls]}://{auth}{host}:{self.port}{tail}"

    def __str__(self) -> str:
        return self.to_url()


def _redact(url: str) -> str:
    """``url`` with anything between ``:`` and ``@`` in the authority
    replaced, for error messages (it may be malformed: no parsing)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<a URL without '://'>"
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}{at}{hostport}{slash}{path}"


def _flag(name: str, value: str, shown: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{shown}: {name}={value!r} is not a yes/no value (true or false)")


def parse_url(url: str) -> MailURL:
    """Parse a mail URL (see the module documentation); raises
    :class:`ValueError` saying what is wrong, never quoting the password."""
    if not isinstance(url, str):
        raise TypeError(f"a mail URL is a str, not {type(url).__name__}")
    shown = _redact(url.strip())
    try:
        parts = urlsplit(url.strip())
        port_given = parts.port
    except ValueError as exc:  # a bad port or a malformed [IPv6] literal
        raise ValueError(f"{shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ValueError(f"{shown}: unknown scheme {scheme + '://' if scheme else '(none)'}; "
                         f"use one of {known}")  # fmt: skip
    tls, port = SCHEMES[scheme]
    if parts.path not in ("", "/"):
        raise ValueError(f"{shown}: a mail URL has no path (got {parts.path!r})")
    if parts.fragment:
        raise ValueError(f"{shown}: a mail URL has no #fragment")
    host = unquote(parts.hostname or "")
    if not host:
        if scheme != "smtp":
            raise ValueError(f"{shown}: give the server's host name")
        host = "localhost"  # dj-email-url: bare smtp:// is the local MTA
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"{shown}: {host!r} is not a host name")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shown}: {host!r} is not an IPv6 address") from None
    if port_given is not None:
        if port_given == 0:
            raise ValueError(f"{shown}: port 0 is not a port")
        if tls == "implicit" and port_given in (25, 587):
            raise ValueError(
                f"{shown}: {scheme}:// is TLS from the first byte (port 465, RFC 8314), "
                f"but port {port_given} speaks STARTTLS: write submission://...:{port_given}"
            )
        port = port_given
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if (username is None) != (password is None) or username == "":
        raise ValueError(f"{shown}: give both a user name and a password (user:pass@), or neither")

    timeout: float | None = None
    local_hostname: str | None = None
    tls_option: TLSMode | None = None
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name.startswith("_"):
            continue  # dj-email-url's Django settings (_server_email, ...)
        if name in seen:
            raise ValueError(f"{shown}: {name} is given twice; say it once")
        seen.add(name)
        if name == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"{shown}: timeout={value!r} is not a number") from None
            if not 0 < timeout < float("inf"):
                raise ValueError(f"{shown}: timeout must be above 0 seconds, not {value!r}")
        elif name == "local_hostname":
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"{shown}: local_hostname={value!r} is not a host name")
            local_hostname = value
        elif name == "tls":
            if value.lower() in ("starttls", "implicit", "none"):
                asked: TLSMode = value.lower()  # type: ignore[assignment]
            else:
                asked = "starttls" if _flag(name, value, shown) else "none"
            if asked == "starttls" and tls_option == "implicit":
                raise ValueError(f"{shown}: tls and ssl are exclusive: give one")
            if asked != "none" or tls_option is None:
                tls_option = asked
        elif name == "ssl":
            if _flag(name, value, shown):
                if tls_option == "starttls":
                    # Django refuses EMAIL_USE_TLS with EMAIL_USE_SSL as well.
                    raise ValueError(f"{shown}: tls and ssl are exclusive: give one")
                tls_option = "implicit"
            elif tls_option is None:
                tls_option = "none"
        else:
            raise ValueError(
                f"{shown}: unknown option {name!r} (known: timeout, local_hostname, tls, ssl)"
            )
    if tls_option is not None and tls_option != tls:
        if scheme != "smtp":
            raise ValueError(
                f"{shown}: {scheme}:// already means tls={tls!r}; the query asks for "
                f"{tls_option!r}: say it once"
            )
        tls = tls_option
        if tls == "implicit" and port_given is None:
            # dj-email-url keeps port 25 for smtp://; TLS from the first
            # byte there never works.
            raise ValueError(f"{shown}: ssl=true needs the port (usually smtp://...:465)")
    return MailURL(host, port, tls, username, password, timeout, local_hostname)


def mailer_arguments(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Mailer's arguments for ``Mailer.from_url(url, **kwargs)`` (async
    and sync alike): the URL's settings plus the keywords, none given twice."""
    settings = parse_url(url).kwargs()
    both = sorted(settings.keys() & kwargs.keys())
    if both:
        raise TypeError(f"from_url(): {', '.join(both)} given in the URL and as a keyword")
    return {**settings, **kwargs}
