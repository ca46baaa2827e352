"""Every exception the public modules export shares the one base class."""

from __future__ import annotations

import importlib

import pytest

import resilient_smtp

PUBLIC = (
    "resilient_smtp",
    "resilient_smtp.testing",
    "resilient_smtp.sync",
    "resilient_smtp.outbox",
    "resilient_smtp.redis",
)


@pytest.mark.parametrize("module_name", PUBLIC)
def test_exported_exceptions_share_the_base(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exceptions = [
        name
        for name in module.__all__
        if isinstance(value := getattr(module, name), type) and issubclass(value, BaseException)
    ]
    strays = [
        n
        for n in exceptions
        if not issubclass(getattr(module, n), resilient_smtp.ResilientSMTPError)
    ]
    assert strays == []


def test_the_exceptions_users_catch_are_where_they_look() -> None:
    from resilient_smtp.redis import RedisUnavailable

    for exc in (
        resilient_smtp.InvalidMessageError,
        resilient_smtp.SendFailed,
        resilient_smtp.DomainNotFound,
        resilient_smtp.BodyNotSent,
        RedisUnavailable,
    ):
        assert issubclass(exc, resilient_smtp.ResilientSMTPError)
    # They stay what code written before the base class caught.
    assert issubclass(resilient_smtp.DomainNotFound, LookupError)
    assert issubclass(resilient_smtp.InvalidMessageError, ValueError)
    import aiosmtplib

    assert issubclass(resilient_smtp.BodyNotSent, aiosmtplib.SMTPServerDisconnected)
