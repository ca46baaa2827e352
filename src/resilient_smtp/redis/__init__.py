"""Limits and destination health shared by many workers through Redis.

Needs the ``redis`` extra (``pip install 'resilient-smtp[redis]'``, which
brings redis-py and its asyncio client).  Each class plugs in where its
in-process counterpart does::

    from resilient_smtp import Mailer
    from resilient_smtp.redis import RedisHealth, RedisRateLimiter

    url = "redis://127.0.0.1:6379/0"
    async with Mailer(
        "email-smtp.eu-west-1.amazonaws.com",
        limiter=RedisRateLimiter(url, rate=14, burst=14, workers=8),
        health=RedisHealth(url),
    ) as mailer:
        ...

* :class:`RedisRateLimiter`: one GCRA bucket per destination in Redis,
  decided by one atomic Lua script on Redis time;
* :class:`RedisAdaptiveLimiter`: the adaptive limiter, each destination's
  rate shared;
* :class:`RedisHealth`: suspensions and relay pauses seen by every worker.

Redis down or slow never fails or stalls a send: every Redis call is
bounded by ``timeout`` (0.1 s by default); the limiters fall back to a local
share (``rate / workers``) and health to local breakers, with a
``"redis_unavailable"`` event, until Redis answers again
(``"redis_recovered"``).  See ``docs/scale.md``.
"""

from __future__ import annotations

from .._errors import RedisUnavailable
from ._adaptive import RedisAdaptiveLimiter
from ._health import RedisHealth
from ._limit import RedisRateLimiter

__all__ = ["RedisAdaptiveLimiter", "RedisHealth", "RedisRateLimiter", "RedisUnavailable"]
