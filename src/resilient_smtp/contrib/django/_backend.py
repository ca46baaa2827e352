"""The Django email backend (see the package docstring for the settings)."""

from __future__ import annotations

import io
import logging
import math
import os
import smtplib
import ssl
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from typing import Any

import aiosmtplib
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend

from ... import sync
from ..._envelope import parse_mailbox
from ..._errors import InvalidMessageError, ResilientSMTPError, SendFailed
from ..._result import RecipientResult, SendResult
from ..._retry.policy import RetryPolicy
from ..._transport.connection import TLSMode
from ..._transport.pool import PoolLimits
from ..._verify import RelayCheck, VerifyReport

__all__ = ["EmailBackend", "OpenConnection", "SendStatus", "mailer_arguments"]

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
    if "hooks" in options:
        options["hooks"] = tuple(options["hooks"])
    return options


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a setting's value, equal for equal settings.

    The shared Mailer is found by the effective configuration, never by
    ``id()`` of a dict: Django hands out a fresh ``{}`` for a missing
    setting, and keying on its ``id()`` built a new Mailer (holding an open
    connection) for every ``send_mail()``.  Objects (a limiter, a hook)
    stand for themselves; plain data is compared by value.
    """
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_frozen(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    try:
        hash(value)
    except TypeError:
        return ("unhashable", type(value).__qualname__, id(value))
    return value  # type: ignore[no-any-return]


@dataclass(eq=False)
class _Shared:
    """One configuration's Mailer (and outbox), shared by every backend."""

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
                from ...outbox import Outbox

                self._outbox = Outbox(setting)
                self._generation = generation
                sync._background.register(id(self), self._outbox)
            return self._outbox


_shared: dict[Hashable, _Shared] = {}
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


def _render(message: Message) -> bytes:
    """Django's message as wire bytes (CRLF).  Django's MIME classes have
    their own ``as_bytes(linesep=...)`` without ``policy``, so this uses
    the generator directly, as Django's SMTP backend does in effect."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False).flatten(message, linesep="\r\n")
    return out.getvalue()


def _text(value: Any) -> Any:
    """Django allows lazy strings (``gettext_lazy``) as addresses (#24416)."""
    from django.utils.functional import Promise

    return str(value) if isinstance(value, Promise) else value


@dataclass(frozen=True)
class SendStatus:
    """What happened to one sent message, per recipient, attached to it as
    ``message.resilient_status`` (like django-anymail's ``anymail_status``),
    with or without ``fail_silently``.

    ``recipients[address]`` is the :class:`~resilient_smtp.RecipientResult`
    of each envelope address (its ``state``: delivered, rejected, deferred
    or ambiguous; its ``classification`` says why; ``retry_in`` when to try
    again); ``status`` is the set of states; ``result`` the whole
    :class:`~resilient_smtp.SendResult`.
    """

    result: SendResult

    @property
    def recipients(self) -> dict[str, RecipientResult]:
        return {r.address: r for r in self.result}

    @property
    def status(self) -> set[str]:
        return {r.state.value for r in self.result}


@dataclass(frozen=True)
class OpenConnection:
    """What :meth:`EmailBackend.open` opened: the shared Mailer, after a
    check that every relay accepts the connect sequence (``report``)."""

    mailer: sync.Mailer
    timeout: float | None
    report: VerifyReport | None
    """``None`` when the check was skipped (see :meth:`EmailBackend.open`)."""


def _as_smtplib_error(relay: RelayCheck) -> BaseException:
    """The exception Django's SMTP backend (smtplib) raises for the same
    failure, so ``except SMTPException`` and Django's own checks read it.
    Connection errors, timeouts and TLS errors are raised as they are."""
    error = relay.error
    assert error is not None
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    stage = relay.steps[-1].stage if relay.steps else "connect"
    if isinstance(error, aiosmtplib.SMTPNotSupported):
        # smtplib's own words for these two.
        if stage == "starttls":
            return smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
        if stage == "auth":
            return smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        return smtplib.SMTPNotSupportedError(str(error))
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return smtplib.SMTPAuthenticationError(error.code, error.message)
    if isinstance(error, (OSError, TimeoutError)):
        return error
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return smtplib.SMTPConnectError(error.code, error.message)
    return smtplib.SMTPException(str(error))


def mailer_arguments(backend: EmailBackend, *, bound_by_timeout: bool) -> dict[str, Any]:
    """The :class:`~resilient_smtp.Mailer` arguments for ``backend``'s
    settings (the management command builds its worker's Mailer from them).

    ``bound_by_timeout``: ``EMAIL_TIMEOUT`` also caps the retry policy's
    deadline, so a ``send_mail()`` in a request ends within it as with
    Django's backend (one timeout against a silent server, not one per
    attempt).  A queue worker is not bound that way.
    """
    tls_context = None
    if backend.ssl_certfile or backend.ssl_keyfile:
        tls_context = ssl.create_default_context()
        tls_context.load_cert_chain(backend.ssl_certfile, backend.ssl_keyfile)
    options = dict(backend._options)
    timeout = backend.timeout
    if bound_by_timeout and timeout is not None:
        retry: RetryPolicy = options.get("retry") or RetryPolicy()
        deadline = min(retry.deadline or math.inf, float(timeout))
        options["retry"] = retry.replace(deadline=deadline)
    return {
        "host": backend.host,
        "port": backend.port,
        "tls": backend._tls(),
        "username": backend.username or None,
        "password": backend.password or None,
        "tls_context": tls_context,
        "timeout": 60.0 if timeout is None else float(timeout),
        **options,
    }


class EmailBackend(BaseEmailBackend):
    """Django's ``EMAIL_BACKEND`` that retries, limits and classifies.

    Arguments override the settings, as for Django's SMTP backend, and are
    kept as the same public attributes (``host``, ``port``, ``username``,
    ``password``, ``use_tls``, ``use_ssl``, ``timeout``, ``ssl_keyfile``,
    ``ssl_certfile``); ``resilient`` overrides ``settings.RESILIENT_SMTP``.

    :meth:`send_messages` returns the number of messages sent, counted as
    Django counts them: a message delivered to at least one recipient is
    sent.  Every message sent (or refused by the server) carries
    ``message.resilient_status`` with each recipient's state.  A message
    delivered to nobody raises :class:`~resilient_smtp.SendFailed` (an
    ``smtplib.SMTPException``), unless ``fail_silently``.  An address that
    does not parse exactly raises ``ValueError`` (as Django's
    ``sanitize_address`` does) before anything is sent.
    """

    _partial_connection = None
    """Django's SMTP backend keeps a connection whose set-up failed half-way
    here, for :meth:`close`.  This one never keeps one: the check in
    :meth:`open` closes its connection whatever happens."""

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
        self.password: str = settings.EMAIL_HOST_PASSWORD if password is None else password
        self.use_tls: bool = settings.EMAIL_USE_TLS if use_tls is None else use_tls
        self.use_ssl: bool = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
        self.timeout: float | None = settings.EMAIL_TIMEOUT if timeout is None else timeout
        self.ssl_keyfile = settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile
        self.ssl_certfile = settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile
        if self.use_ssl and self.use_tls:
            # The same rule, and the same words, as Django's backend.
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
                "one of those settings to True."
            )
        self.resilient: Mapping[str, Any] = (
            getattr(settings, "RESILIENT_SMTP", {}) if resilient is None else resilient
        )
        self._options = _options(self.resilient)  # ImproperlyConfigured early
        self._for_sending = False
        self.connection: Any = None
        """After :meth:`open`: an :class:`OpenConnection` (``None`` before,
        and after :meth:`close`), as Django's backend keeps its SMTP object."""

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

    def _key(self) -> Hashable:
        return (
            self.host,
            self.port,
            self._tls(),
            self.username,
            self.password,
            self.timeout,
            self.ssl_keyfile,
            self.ssl_certfile,
            _frozen(self.resilient),
        )

    def _shared(self) -> _Shared:
        key = self._key()
        with _shared_lock:
            shared = _shared.get(key)
            if shared is None:
                mailer = sync.Mailer(**mailer_arguments(self, bound_by_timeout=True))
                shared = _shared[key] = _Shared(mailer, self.resilient.get("outbox"))
            return shared

    @property
    def mailer(self) -> sync.Mailer:
        """The Mailer this configuration shares (built on first use, without
        connecting): its limiter, health and pool serve every backend with
        the same settings in the process."""
        return self._shared().mailer

    def open(self) -> bool | None:
        """Check the relays (connect, EHLO, STARTTLS, AUTH), as Django's
        backend does by connecting, so ``get_connection().open()`` tells a
        wrong setting at once.

        Returns True when this backend opened now, False when it was open,
        None when the check failed with ``fail_silently``; otherwise a
        failure raises what Django's backend raises for it (an
        ``SMTPException``, ``ConnectionError``, ``SSLError`` or timeout).

        The check is skipped when :meth:`send_messages` opens (the Mailer
        connects as it sends, and retries a failed connect under its policy
        rather than failing at once; a ``send_mail()`` per request costs no
        extra connection), while the shared Mailer holds an idle pooled
        connection (the relay took us moments ago), and with an outbox
        (sending is the worker's business).
        """
        if self.connection:
            return False
        try:
            shared = self._shared()
            report = None
            pooled = shared.mailer.async_mailer.pool.idle_count() > 0
            if not (self._for_sending or pooled or shared.outbox_setting is not None):
                report = shared.mailer.verify()
                failed = next((r for r in report.relays if not r.ok), None)
                if failed is not None:
                    raise _as_smtplib_error(failed) from failed.error
        except (OSError, smtplib.SMTPException, ResilientSMTPError, RuntimeError):
            if not self.fail_silently:
                raise
            log.warning("could not open the resilient_smtp connection", exc_info=True)
            return None
        self.connection = OpenConnection(shared.mailer, self.timeout, report)
        return True

    def close(self) -> None:
        """Let go of the shared Mailer; it stays open for the next request
        (closed at interpreter exit, see :func:`resilient_smtp.sync.shutdown`).
        Never raises."""
        self.connection = None

    def send_messages(self, email_messages: Iterable[Any]) -> int:
        email_messages = list(email_messages)
        if not email_messages:
            return 0
        self._for_sending = True
        try:
            new_connection = self.open()
        finally:
            self._for_sending = False
        if not self.connection or new_connection is None:
            return 0  # open() failed silently: trying to send is pointless
        try:
            shared = self._shared()
            if shared.outbox_setting is not None:
                return self._queue(shared, email_messages)
            return sum(self._send(shared.mailer, m) for m in email_messages)
        finally:
            if new_connection:
                self.close()

    def _envelope(self, email_message: Any) -> tuple[bytes, str, list[str]] | None:
        """Wire bytes and the exact addr-specs; ``ValueError`` (with
        "Invalid address", as Django's ``sanitize_address``) for anything
        that does not parse exactly, CR/LF included, before any traffic."""
        recipients = [parse_mailbox(_text(r), "recipient") for r in email_message.recipients()]
        if not recipients:
            return None  # Django's backends skip these too
        sender = parse_mailbox(_text(email_message.from_email), "sender")
        return _render(email_message.message()), sender, recipients

    def _send(self, mailer: sync.Mailer, email_message: Any) -> bool:
        prepared = self._envelope(email_message)
        if prepared is None:
            return False
        body, sender, recipients = prepared
        try:
            result = mailer.send(body, sender=sender, recipients=recipients)
        except InvalidMessageError:
            raise  # input errors are never silent, as in Django
        except (ResilientSMTPError, OSError, RuntimeError) as exc:
            if not self.fail_silently:
                raise
            log.warning("message not sent: %s", exc)
            return False
        email_message.resilient_status = SendStatus(result)
        if result.delivered:
            # Django counts a message as sent when the server took it for
            # at least one recipient (smtplib's sendmail() returns the
            # refused ones); the others are in resilient_status.
            if not result.ok:
                log.warning("message partly sent: %r", result)
            return True
        if not self.fail_silently:
            raise SendFailed(result)
        log.warning("message not delivered: %r", result)
        return False

    def _queue(self, shared: _Shared, email_messages: Sequence[Any]) -> int:
        queued = 0
        for email_message in email_messages:
            prepared = self._envelope(email_message)
            if prepared is None:
                continue
            body, sender, recipients = prepared

            async def put(
                body: bytes = body, sender: str = sender, recipients: list[str] = recipients
            ) -> Any:
                return await shared.outbox().put(body, sender=sender, recipients=recipients)

            try:
                sync._call(
                    put,
                    what="resilient_smtp.contrib.django.EmailBackend.send_messages",
                    instead="resilient_smtp.outbox.Outbox.put",
                )
            except InvalidMessageError:
                raise
            except (ResilientSMTPError, OSError, RuntimeError) as exc:
                if not self.fail_silently:
                    raise
                log.warning("message not queued: %s", exc)
                continue
            queued += 1
        return queued
