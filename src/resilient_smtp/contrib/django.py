"""A Django email backend that sends through :class:`resilient_smtp.sync.Mailer`.

::

    # settings.py
    EMAIL_BACKEND = "resilient_smtp.contrib.django.EmailBackend"
    EMAIL_HOST = "smtp.example.com"
    EMAIL_PORT = 587
    EMAIL_USE_TLS = True
    EMAIL_HOST_USER = "app"
    EMAIL_HOST_PASSWORD = "..."
    RESILIENT_SMTP = {
        "retry": {"max_attempts": 4, "deadline": 20.0},   # or a RetryPolicy
        "outbox": BASE_DIR / "outbox.db",                  # optional: queue, do not block
    }

Django's own ``EMAIL_*`` settings mean what they mean for Django's SMTP
backend: ``EMAIL_USE_TLS`` is STARTTLS, ``EMAIL_USE_SSL`` is implicit TLS
(port 465), neither is plaintext; ``EMAIL_TIMEOUT`` bounds each network
operation.  ``RESILIENT_SMTP`` adds what Django has no setting for:
``retry`` (a :class:`~resilient_smtp.RetryPolicy` or its keyword arguments),
``limiter``, ``health``, ``pool`` (:class:`~resilient_smtp.PoolLimits` or its
keyword arguments), ``hooks``, ``resend_ambiguous``, ``local_hostname`` and
``outbox``.

Why one Mailer per configuration for the whole process, not one per
backend: Django builds a new backend for every ``send_mail()``, and the
rate limit, destination health and pooled connections only help if they
outlive one request.

With ``outbox`` set (a SQLite path, or any object with an async
``put(message, *, sender, recipients)`` such as a
:class:`resilient_smtp.outbox.Outbox` over PostgreSQL), ``send_messages``
stores the messages durably and returns at once; a worker (``python -m
resilient_smtp worker``, or :meth:`Outbox.run`) sends them.
"""

from __future__ import annotations

import email.utils
import io
import logging
import os
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend

from .. import sync
from .._errors import ResilientSMTPError
from .._retry.policy import RetryPolicy
from .._transport.connection import TLSMode
from .._transport.pool import PoolLimits

__all__ = ["EmailBackend"]

log = logging.getLogger("resilient_smtp.django")

# The keys RESILIENT_SMTP may have.  Anything else is a typo, and a typo in
# a retry or outbox setting fails quietly in production: refuse it.
_KEYS = frozenset(
    {
        "retry",
        "limiter",
        "health",
        "pool",
        "hooks",
        "resend_ambiguous",
        "local_hostname",
        "outbox",
    }
)


def _options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Mailer's keyword arguments from the RESILIENT_SMTP dict."""
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"RESILIENT_SMTP must be a dict, not {type(config).__name__}")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"RESILIENT_SMTP has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(_KEYS))}"
        )
    options = {k: v for k, v in config.items() if k != "outbox"}
    for key, kind in (("retry", RetryPolicy), ("pool", PoolLimits)):
        value = options.get(key)
        if isinstance(value, Mapping):
            try:
                options[key] = kind(**value)
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(f"RESILIENT_SMTP[{key!r}]: {exc}") from exc
        elif value is not None and not isinstance(value, kind):
            raise ImproperlyConfigured(
                f"RESILIENT_SMTP[{key!r}] must be a {kind.__name__} or a dict of its "
                f"arguments, not {type(value).__name__}"
            )
    return options


@dataclass(eq=False)
class _Shared:
    """One configuration's Mailer (and outbox), shared by every backend."""

    config: Mapping[str, Any]  # kept so that its id() is not reused
    mailer: sync.Mailer
    outbox_setting: Any
    _outbox: Any = None
    _generation: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def outbox(self) -> Any:
        """The outbox, on the background loop (a path becomes an Outbox
        bound to the current loop, rebuilt after a fork or a shutdown)."""
        setting = self.outbox_setting
        if not isinstance(setting, (str, os.PathLike)):
            return setting
        generation = sync._background.generation
        with self._lock:
            if self._outbox is None or self._generation != generation:
                from ..outbox import Outbox

                self._outbox = Outbox(setting)
                self._generation = generation
                sync._background.register(id(self), self._outbox)
            return self._outbox


_shared: dict[tuple[Any, ...], _Shared] = {}
_shared_lock = threading.Lock()


def _forget_shared() -> None:
    # A forked child must not reuse its parent's outbox (an open SQLite
    # file); sync.Mailer rebuilds itself after a fork on its own.
    global _shared_lock
    _shared_lock = threading.Lock()
    for s in _shared.values():
        s._outbox, s._lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared)


def _address(value: str) -> str:
    """The bare address of ``"Name <user@example.com>"`` (the envelope
    takes addr-specs only; the headers keep the names)."""
    _, address = email.utils.parseaddr(value)
    return address or value  # unparsable: the Mailer names what is wrong


def _render(message: Message) -> bytes:
    """Django's message as wire bytes (CRLF).  Django's MIME classes have
    their own ``as_bytes(linesep=...)`` without ``policy``, so this uses
    the generator directly, as Django's SMTP backend does in effect."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False).flatten(message, linesep="\r\n")
    return out.getvalue()


class EmailBackend(BaseEmailBackend):
    """Django's ``EMAIL_BACKEND`` that retries, limits and classifies.

    Arguments override the settings, as for Django's SMTP backend;
    ``resilient`` overrides ``settings.RESILIENT_SMTP``.
    :meth:`send_messages` returns the number of messages delivered to every
    recipient (or, with an outbox, queued).  Without ``fail_silently`` the
    first message not delivered to every recipient raises
    :class:`~resilient_smtp.SendFailed` (its ``result`` says who and why);
    with it, failures are logged on ``resilient_smtp.django`` and not
    counted.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | None = None,
        ssl_certfile: str | None = None,
        resilient: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.host: str = host or settings.EMAIL_HOST
        self.port: int = port or settings.EMAIL_PORT
        self.username: str = settings.EMAIL_HOST_USER if username is None else username
        self._password: str = settings.EMAIL_HOST_PASSWORD if password is None else password
        self.use_tls: bool = settings.EMAIL_USE_TLS if use_tls is None else use_tls
        self.use_ssl: bool = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
        self.timeout: float | None = settings.EMAIL_TIMEOUT if timeout is None else timeout
        self.ssl_keyfile = settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile
        self.ssl_certfile = settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile
        if self.use_ssl and self.use_tls:
            # The same rule, and nearly the same words, as Django's backend.
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
                "one of those settings to True."
            )
        self.resilient: Mapping[str, Any] = (
            getattr(settings, "RESILIENT_SMTP", {}) if resilient is None else resilient
        )
        self._options = _options(self.resilient)  # ImproperlyConfigured early
        self._shared: _Shared | None = None

    def __repr__(self) -> str:
        return (
            f"<resilient_smtp EmailBackend {self.host}:{self.port} tls={self._tls()} "
            f"user={self.username or None!r}>"
        )

    def _tls(self) -> TLSMode:
        # Django's EMAIL_USE_TLS is STARTTLS, EMAIL_USE_SSL implicit TLS;
        # neither means plaintext, as in Django's SMTP backend.
        if self.use_ssl:
            return "implicit"
        return "starttls" if self.use_tls else "none"

    def _key(self) -> tuple[Any, ...]:
        return (
            self.host,
            self.port,
            self._tls(),
            self.username,
            self._password,
            self.timeout,
            self.ssl_keyfile,
            self.ssl_certfile,
            id(self.resilient),
        )

    def _build(self) -> _Shared:
        tls_context = None
        if self.ssl_certfile or self.ssl_keyfile:
            tls_context = ssl.create_default_context()
            tls_context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        mailer = sync.Mailer(
            self.host,
            self.port,
            tls=self._tls(),
            username=self.username or None,
            password=self._password or None,
            tls_context=tls_context,
            timeout=60.0 if self.timeout is None else float(self.timeout),
            **self._options,
        )
        return _Shared(self.resilient, mailer, self.resilient.get("outbox"))

    def open(self) -> bool | None:
        """Take this configuration's shared Mailer (built on first use).

        Returns True when this backend took it now, False when it had it,
        None when building it failed silently.  No connection is opened
        here: the Mailer connects (and reconnects) when it sends.
        """
        if self._shared is not None:
            return False
        try:
            key = self._key()
            with _shared_lock:
                shared = _shared.get(key)
                if shared is None:
                    shared = _shared[key] = self._build()
        except Exception:
            if not self.fail_silently:
                raise
            log.exception("could not set up the resilient_smtp Mailer")
            return None
        self._shared = shared
        return True

    def close(self) -> None:
        """Let go of the shared Mailer; it stays open for the next request
        (it is closed at interpreter exit, see :func:`resilient_smtp.sync.shutdown`)."""
        self._shared = None

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        if not email_messages:
            return 0
        opened = self.open()
        shared = self._shared
        if opened is None or shared is None:
            return 0
        try:
            if shared.outbox_setting is not None:
                return self._queue(shared, email_messages)
            return self._send(shared.mailer, email_messages)
        finally:
            if opened:
                self.close()

    def _envelope(self, email_message: Any) -> tuple[bytes, str, list[str]] | None:
        recipients = [_address(r) for r in email_message.recipients()]
        if not recipients:
            return None  # Django's backends skip these too
        sender = _address(email_message.from_email)
        return _render(email_message.message()), sender, recipients

    def _send(self, mailer: sync.Mailer, email_messages: Iterable[Any]) -> int:
        delivered = 0
        for email_message in email_messages:
            try:
                prepared = self._envelope(email_message)
                if prepared is None:
                    continue
                body, sender, recipients = prepared
                result = mailer.send(body, sender=sender, recipients=recipients)
                if not result.ok:
                    result.raise_for_failures()
            except (ResilientSMTPError, OSError, ValueError, RuntimeError) as exc:
                if not self.fail_silently:
                    raise
                log.warning("message not delivered: %s", exc)
                continue
            delivered += 1
        return delivered

    def _queue(self, shared: _Shared, email_messages: Iterable[Any]) -> int:
        queued = 0
        for email_message in email_messages:
            try:
                prepared = self._envelope(email_message)
                if prepared is None:
                    continue
                body, sender, recipients = prepared

                async def put(
                    body: bytes = body, sender: str = sender, recipients: list[str] = recipients
                ) -> Any:
                    return await shared.outbox().put(body, sender=sender, recipients=recipients)

                sync._call(
                    put,
                    what="resilient_smtp.contrib.django.EmailBackend.send_messages",
                    instead="resilient_smtp.outbox.Outbox.put",
                )
            except (ResilientSMTPError, OSError, ValueError, RuntimeError) as exc:
                if not self.fail_silently:
                    raise
                log.warning("message not queued: %s", exc)
                continue
            queued += 1
        return queued
