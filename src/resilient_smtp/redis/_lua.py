"""The Lua scripts behind the Redis limiters and health (each runs atomically in Redis).

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
    "ADAPTIVE_ACQUIRE",
    "ADAPTIVE_CUT",
    "ADAPTIVE_RATE",
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

# The adaptive limiter's state: one hash per destination with tat, born (first
# use), cut_at, w_max, beta, k, delivered (since the last cut).  The rate is
# the curve of resilient_smtp._adaptive (slow start until the first cut, then
# CUBIC, RFC 9438 section 4.2), here on Redis time since the cut.
_CURVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local initial, min_rate, max_rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local doubling, burst, idle_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local delta = tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'tat', 'born', 'cut_at', 'w_max', 'beta', 'k', 'delivered')
local tat = tonumber(h[1]) or now
local born = tonumber(h[2]) or now
local cut_at = tonumber(h[3])
local w_max, beta, k = tonumber(h[4]), tonumber(h[5]), tonumber(h[6])
local delivered = (tonumber(h[7]) or 0) + delta
local function curve()
  local r
  if cut_at == nil then
    r = initial * 2 ^ math.min((now - born) / 1000000 / doubling, 64)
  else
    local x = math.min((now - cut_at) / 1000000 / k - 1, 1000)
    r = w_max * (1 + (1 - beta) * x * x * x)
  end
  return math.max(min_rate, math.min(max_rate, r))
end
local function f(x) return string.format('%.17g', x) end
local rate = curve()
"""

# KEYS[1]: the hash.  ARGV: initial, min, max, doubling (s), burst, idle (ms),
# deliveries to add.  Returns {granted, wait (us), rate}.
ADAPTIVE_ACQUIRE = (
    _CURVE
    + """
local interval = 1000000 / rate
if tat < now then tat = now end
local allowed_at = tat - (burst - 1) * interval
local granted, wait = 0, math.ceil(allowed_at - now)
if allowed_at <= now then
  tat = tat + interval
  granted, wait = 1, 0
end
redis.call('HSET', KEYS[1], 'tat', f(tat), 'born', f(born), 'delivered', delivered)
redis.call('PEXPIRE', KEYS[1], idle_ms)
return {granted, wait, f(rate)}
"""
)

# KEYS[1]: the hash.  ARGV: as ADAPTIVE_ACQUIRE, then beta, recovery_time (s),
# recovery_messages.  A pushback: cut the rate unless a cut happened less than
# k/2 ago (the same congestion event, seen by another permit or worker).
# Returns {cut (1/0), old rate, new rate}.
ADAPTIVE_CUT = (
    _CURVE
    + """
local beta0, recovery_time = tonumber(ARGV[8]), tonumber(ARGV[9])
local recovery_messages = tonumber(ARGV[10])
if cut_at ~= nil and now - cut_at < k / 2 * 1000000 then
  redis.call('HSET', KEYS[1], 'born', f(born), 'delivered', delivered)
  redis.call('PEXPIRE', KEYS[1], idle_ms)
  return {0, f(rate), f(rate)}
end
local peak = rate
if cut_at ~= nil then
  -- What the server took since the last cut (+1, so one pushback right
  -- after a cut cannot read as 0/s), when well below our rate.
  local took = (delivered + 1) / ((now - cut_at) / 1000000)
  if took < beta0 * rate then peak = took end
end
peak = math.max(min_rate, peak)
local low = peak * beta0
if cut_at ~= nil and delivered == 0 then low = math.min(low, rate * 0.5) end
low = math.max(min_rate, low)
local new_k = math.max(recovery_time, recovery_messages / peak)
local interval = 1000000 / low
-- Empty the bucket, as the server's is: the next permit is one interval away.
local drained = now + burst * interval
if drained > tat then tat = drained end
redis.call('HSET', KEYS[1], 'tat', f(tat), 'born', f(born), 'cut_at', f(now),
           'w_max', f(peak), 'beta', f(low / peak), 'k', f(new_k), 'delivered', 0)
redis.call('PEXPIRE', KEYS[1], idle_ms)
return {1, f(rate), f(low)}
"""
)

# KEYS[1]: the hash.  ARGV: as ADAPTIVE_ACQUIRE.  The current rate; writes nothing.
ADAPTIVE_RATE = _CURVE + "return f(rate)\n"

# -- destination health (_redis_health.py) --

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
