"""A Django email backend that sends through :class:`resilient_smtp.sync.Mailer`.

::

    # settings.py
    EMAIL_BACKEND = "resilient_smtp.contrib.django.EmailBackend"
    EMAIL_HOST = "smtp.example.com"
    EMAIL_PORT = 587
    EMAIL_USE_TLS = True
    EMAIL_HOST_USER = "app"
    EMAIL_HOST_PASSWORD = "..."
    EMAIL_TIMEOUT = 10                                     # bounds each send_mail()
    RESILIENT_SMTP = {                                     # optional
        "retry": {"max_attempts": 4, "deadline": 20.0},   # or a RetryPolicy
        "outbox": BASE_DIR / "outbox.db",                  # optional: queue, do not block
    }
    INSTALLED_APPS = [..., "resilient_smtp.contrib.django"]  # for the worker command

Django's own ``EMAIL_*`` settings mean what they mean for Django's SMTP
backend: ``EMAIL_USE_TLS`` is STARTTLS, ``EMAIL_USE_SSL`` is implicit TLS
(port 465), neither is plaintext; ``EMAIL_TIMEOUT`` bounds each network
operation and, here, each send as a whole (the retry policy's deadline is
capped by it).  ``RESILIENT_SMTP`` adds what Django has no setting for:
``retry`` (a :class:`~resilient_smtp.RetryPolicy` or its keyword
arguments), ``limiter``, ``health``, ``pool`` (:class:`~resilient_smtp.PoolLimits`
or its keyword arguments), ``hooks``, ``resend_ambiguous``,
``local_hostname`` and ``outbox``.

Why one Mailer per configuration for the whole process, not one per
backend: Django builds a new backend for every ``send_mail()``, and the
rate limit, destination health and pooled connections only help if they
outlive one request.  The Mailer is found by the effective settings, so
equal settings share one.

With ``outbox`` set (a SQLite path, or any object with an async
``put(message, *, sender, recipients)`` such as a
:class:`resilient_smtp.outbox.Outbox` over PostgreSQL), ``send_messages``
stores the messages durably and returns at once; ``python manage.py
resilient_smtp_worker`` (with this package in ``INSTALLED_APPS``) sends
them through a Mailer built from the same settings.
"""

from __future__ import annotations

from ._backend import EmailBackend, OpenConnection, SendStatus

__all__ = ["EmailBackend", "OpenConnection", "SendStatus"]
