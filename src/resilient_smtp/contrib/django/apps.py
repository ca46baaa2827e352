"""The Django app, for the ``resilient_smtp_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class ResilientSMTPConfig(AppConfig):
    name = "resilient_smtp.contrib.django"
    label = "resilient_smtp"
    verbose_name = "resilient_smtp"
