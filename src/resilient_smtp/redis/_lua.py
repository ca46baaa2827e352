"""The Lua scripts behind the Redis rate limiter and health (each runs atomically in Redis).

The adaptive limiter keeps its own compare-and-set script beside its state
(``_adaptive.py``): its law runs in Python (``_limits/control.py``).

All of them read the clock with Redis's ``TIME``, so workers on several
machines share one clock whatever their own say.  (Redis 5 and later
replicate a script's effects, not the script, so a script that reads the
time is allowed to write.)  Times are microseconds; numbers are stored and
returned as strings formatted with ``%.17g`` because Redis truncates a Lua
number to an integer when it returns it.

GCRA is the algorithm of :mod:`resilient_smtp._gcra` (ITU-T I.371): a
request conforms when ``TAT - now <= (burst - 1) * interval`` and then
moves ``TAT`` one interval on; one that does not conform is told how long
until it would, as redis-cell's ``CL.THROTTLE`` does, so it sleeps exactly
that long.  A key disappears once its bucket is full again.
"""

from __future__ import annotations

__all__ = [
    "GCRA",
    "HEALTH_SNAPSHOT",
    "HEALTH_WRITE",
]

# KEYS[1]: the key holding TAT.  ARGV: interval (us), burst.
# Returns {granted (1/0), wait (us)}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tolerance
if allowed_at <= now then
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.17g', tat),
             'PX', math.ceil((tat - now) / 1000) + 1)
  return {1, 0}
end
return {0, math.ceil(allowed_at - now)}
"""

# -- destination health (_health.py) --

# KEYS[1]: the state hash.  ARGV: op, ms, reason, suspensions, state, channel,
# message.  A suspension's end is stored on Redis time (us) so that a worker
# reading it later knows how much is left, whatever its own clock says.
HEALTH_WRITE = """
if ARGV[1] == 'resume' then
  redis.call('DEL', KEYS[1])
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local ms = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'until', string.format('%.17g', now + ms * 1000),
             'reason', ARGV[3], 'suspensions', ARGV[4], 'state', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ms)))
end
return redis.call('PUBLISH', ARGV[6], ARGV[7])
"""

# ARGV: cursor, match pattern.  One SCAN step; for each running suspension:
# key, state, reason, suspensions, ms left.
HEALTH_SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 500)
local out = {step[1]}
for _, k in ipairs(step[2]) do
  local h = redis.call('HMGET', k, 'until', 'reason', 'suspensions', 'state')
  local left = (tonumber(h[1]) or 0) - now
  if left > 0 then
    table.insert(out, k)
    table.insert(out, h[4] or 'suspended')
    table.insert(out, h[2] or '')
    table.insert(out, h[3] or '1')
    table.insert(out, tostring(math.floor(left / 1000)))
  end
end
return out
"""
