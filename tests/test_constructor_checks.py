"""Public constructors refuse a wrong argument at once, naming it.

Without these checks each of them was taken and failed only at the first
send (an ``AttributeError`` deep inside), or never: ``port=0`` became the
default port, ``resend_ambiguous="no"`` meant yes, and ``Outbox("")`` was a
temporary database that forgot the queue when it closed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from resilient_smtp import Event, Mailer, PoolLimits, RetryPolicy, sync
from resilient_smtp.outbox import Outbox, OutboxPolicy, PostgresStore
from resilient_smtp.testing import FakeClock


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"port": 0}, ValueError, "port must be from 1 to 65535, not 0"),
        ({"port": 70000}, ValueError, "port must be from 1 to 65535, not 70000"),
        ({"port": "25"}, TypeError, "port must be an int, not str"),
        ({"port": True}, TypeError, "port must be an int, not bool"),
        ({"retry": 5}, TypeError, "retry must be a RetryPolicy or None, not int"),
        ({"limiter": object()}, TypeError, "limiter must be a Limiter or None, not object"),
        ({"health": "yes"}, TypeError, "health must be a Health or None, not str"),
        ({"classifier": 1}, TypeError, "classifier must be a Classifier or None, not int"),
        ({"clock": 1.0}, TypeError, "clock must be a Clock or None, not float"),
        ({"pool": {"max_connections": 2}}, TypeError, "pool must be a PoolLimits or None"),
        ({"reactions": {}}, TypeError, "reactions must be a Reactions table, not dict"),
        ({"resend_ambiguous": "no"}, TypeError, "resend_ambiguous must be True or False"),
        ({"chunking": 1}, TypeError, "chunking must be True or False, not 1"),
        (
            {"pipeline_messages": "yes"},
            TypeError,
            "pipeline_messages must be True or False, not 'yes'",
        ),
        ({"hooks": print.__name__}, TypeError, "hooks must be a sequence of callables"),
        ({"hooks": 5}, TypeError, "hooks must be a sequence of callables, not int"),
        ({"hooks": [5]}, TypeError, "hooks must be callables, not int"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a positive, finite number"),
        ({"timeout": "30"}, TypeError, "timeout must be a number, not str"),
        ({"timeout": 0}, ValueError, "timeout must be a positive, finite number, got 0"),
    ],
)
def test_mailer_names_the_bad_argument(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Mailer("smtp.example.com", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_connections": 0}, ValueError, "max_connections must be at least 1, got 0"),
        ({"max_connections": 2.5}, TypeError, "max_connections must be an int, not float"),
        ({"max_messages": True}, TypeError, "max_messages must be an int, not bool"),
        ({"max_age": -1}, ValueError, "max_age must be >= 0 seconds, got -1"),
        ({"idle_timeout": float("nan")}, ValueError, "idle_timeout must be >= 0 seconds, got nan"),
        ({"noop_after": "10"}, TypeError, "noop_after must be a number of seconds, not str"),
    ],
)
def test_pool_limits_name_the_bad_argument(
    kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        PoolLimits(**kwargs)


def test_pool_limits_take_infinity_as_never() -> None:
    assert PoolLimits(max_age=math.inf).max_age == math.inf


def test_mx_delivery_port_is_checked_too() -> None:
    with pytest.raises(ValueError, match="port must be from 1 to 65535, not -25"):
        Mailer(mx=lambda domain: [], port=-25)  # type: ignore[arg-type,return-value]


def test_the_sync_mailer_checks_the_same() -> None:
    with pytest.raises(TypeError, match="resend_ambiguous must be True or False"):
        sync.Mailer("smtp.example.com", resend_ambiguous="false")  # type: ignore[arg-type]


def test_good_arguments_still_pass() -> None:
    seen: list[Event] = []
    mailer = Mailer(
        "smtp.example.com",
        465,
        tls="implicit",
        retry=RetryPolicy(),
        clock=FakeClock(),
        resend_ambiguous=False,
        chunking=True,
        hooks=(hook for hook in [seen.append]),  # read once, by the Mailer
    )
    assert mailer.relays[0].port == 465
    assert mailer.hooks == (seen.append,)


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_an_outbox_is_never_a_temporary_database(path: str) -> None:
    with pytest.raises(ValueError, match="the outbox needs a file to be durable"):
        Outbox(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": {"lease": 60}}, "policy must be an OutboxPolicy or None, not dict"),
        ({"clock": 0}, "clock must be a Clock or None, not int"),
        ({"wall": 1700000000.0}, "wall must return the time in seconds, not be float"),
        ({"hooks": 5}, "hooks must be a sequence of callables, not int"),
        ({"hooks": ["outbox_queued"]}, "hooks must be callables, not str"),
    ],
)
def test_outbox_names_the_bad_argument_before_opening_the_store(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    db = tmp_path / "outbox.db"
    with pytest.raises(TypeError, match=message):
        Outbox(db, **kwargs)
    assert not db.exists()  # nothing was opened (and left open)


def test_outbox_good_arguments_still_pass(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(
        tmp_path / "outbox.db",
        policy=OutboxPolicy(lease=60),
        clock=clock,
        wall=clock.monotonic,
        hooks=[print],
    )
    assert outbox.hooks == (print,)


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (2.5, TypeError)])
def test_postgres_store_pool_size_is_checked(value: object, error: type) -> None:
    with pytest.raises(error, match="max_connections"):
        PostgresStore("postgresql://u@127.0.0.1:1/db", max_connections=value)


@pytest.mark.parametrize("concurrency", [0, True, 2.0])
def test_send_many_concurrency_is_a_positive_int(concurrency: Any) -> None:
    mailer = Mailer("smtp.example.com")
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        mailer.send_many([], concurrency=concurrency)
