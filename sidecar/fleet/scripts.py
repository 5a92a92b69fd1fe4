"""The Lua scripts that make each fleet step atomic in Redis. Times are Redis's own (TIME), so the
sidecars' clocks never have to agree; results carry durations ("remaining ms"), not instants.

Breaker record (hash `breaker:<endpoint>`): state open|closed, timeout (ms, the current open
period), until (ms, when the open period ends), gen (bumped on every change), by (instance), at,
cause (of the last open: `breaker` a sidecar's own breaker tripped, `probe` the prober's probe
failed, `quorum` enough members reported failure streaks).
Every change is published on the breaker channel as ``endpoint\\nstate\\ngen\\nremaining\\ntimeout``.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Opens the record (from closed: the base period; from open: the given one), forgets the failure
# evidence gathered while closed, and publishes the change.
_OPEN_RECORD = """
local function open_record(breaker, evidence, timeout, gen, by, cause, now, channel, endpoint)
  gen = gen + 1
  redis.call('HSET', breaker, 'state', 'open', 'timeout', timeout, 'until', now + timeout, 'gen', gen, 'by', by,
             'at', now, 'cause', cause)
  redis.call('PEXPIRE', breaker, 86400000)
  if evidence then redis.call('DEL', evidence) end
  redis.call('PUBLISH', channel, endpoint .. '\\n' .. 'open' .. '\\n' .. gen .. '\\n' .. timeout .. '\\n' .. timeout)
  return {'open', timeout, timeout, gen}
end
"""

# KEYS: breaker, lease, evidence. ARGV: base_ms, max_ms, reopen (1: the lease holder's probe failed),
# instance, channel, endpoint. Opening an open record changes nothing, except a failed probe of the lease
# holder, which starts the next, longer open period (doubling up to max): the fleet-wide growing timeout.
OPEN = _NOW + _OPEN_RECORD + """
local state = redis.call('HGET', KEYS[1], 'state')
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local base = tonumber(ARGV[1])
local maxt = tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[2])
local reopen = ARGV[3] == '1' and holder == ARGV[4]
if state == 'open' and not reopen then
  return {state, math.max(0, untl - now), timeout, gen}
end
local cause = 'breaker'
if state == 'open' then
  timeout = math.min(maxt, math.max(base, timeout * 2))
  cause = 'probe'
else
  timeout = base
end
return open_record(KEYS[1], KEYS[3], timeout, gen, ARGV[4], cause, now, ARGV[5], ARGV[6])
"""

# KEYS: breaker, evidence, endpoint members. ARGV: instance, window_ms, quorum fraction, base_ms,
# channel, endpoint. -> state, remaining ms, timeout ms, gen, tripped (0/1), failing members, members.
#
# One member reports a failure streak (sidecar/fleet/view.py: `evidence_streak`). The record opens
# fleet-wide, before any single breaker trips, when at least `failure_quorum(members)` members of the
# endpoint have a streak reported within the window: max(2, ceil(fraction x members)), so one
# sidecar alone never decides for the fleet and scattered errors over a large fleet never add up.
EVIDENCE = _NOW + _OPEN_RECORD + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if state == 'open' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return {state, math.max(0, untl - now), timeout, gen, 0, 0, 0}
end
local window = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('PEXPIRE', KEYS[2], window * 2)
local failing = 0
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if tonumber(seen[i + 1]) < now - window then
    redis.call('HDEL', KEYS[2], seen[i])
  else
    failing = failing + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local members = redis.call('ZCARD', KEYS[3])
local quorum = math.max(2, math.ceil(members * tonumber(ARGV[3]) - 1e-9))
if failing >= quorum then
  local record = open_record(KEYS[1], KEYS[2], tonumber(ARGV[4]), gen, ARGV[1], 'quorum', now, ARGV[5], ARGV[6])
  return {record[1], record[2], record[3], record[4], 1, failing, members}
end
return {state, 0, timeout, gen, 0, failing, members}
"""

# KEYS: breaker, lease, evidence. ARGV: instance, channel, endpoint. A success closes the record for
# everyone, frees the lease and forgets any failure evidence.
CLOSE = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state')
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if state ~= 'open' then
  return {'closed', 0, timeout, gen}
end
gen = gen + 1
redis.call('HSET', KEYS[1], 'state', 'closed', 'until', now, 'gen', gen, 'by', ARGV[1], 'at', now)
redis.call('DEL', KEYS[2])
if KEYS[3] then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\\n' .. 'closed' .. '\\n' .. gen .. '\\n' .. 0 .. '\\n' .. timeout)
return {'closed', 0, timeout, gen}
"""

# KEYS: breaker, lease. -> state, remaining ms, timeout ms, gen, lease holder ('' none), lease pttl ms.
READ = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local holder = redis.call('GET', KEYS[2]) or ''
local pttl = redis.call('PTTL', KEYS[2])
return {state, math.max(0, untl - now), timeout, gen, holder, pttl}
"""

# KEYS: lease. ARGV: instance, ttl_ms. Extend the lease only if this instance holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: instance. Give the lease up only if this instance holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: budget. ARGV: deposits (first attempts since the last call), want (1: take a token for a
# retry), ratio, min_per_second, ttl_s. -> 0 refused (or nothing wanted), 1 paid by deposits,
# 2 paid by the floor.
#
# Finagle's leaky bucket, fleet-wide: each first attempt deposits `ratio` tokens in the bucket of the
# current second; a retry withdraws 1 there; buckets older than ttl are forgotten. When they cannot
# pay, a floor bucket refilled at min_per_second (holding at most max(1, min_per_second)) may. So over
# any ttl window, fleet retries <= ratio x fleet first attempts + min_per_second x seconds (+ capacity).
BUDGET = _NOW + """
local slot = math.floor(now / 1000)
local ttl = tonumber(ARGV[5])
local balance = 0
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'd:' then
    local s = tonumber(string.sub(f, 3))
    if s <= slot - ttl then
      redis.call('HDEL', KEYS[1], f)
    else
      balance = balance + tonumber(redis.call('HGET', KEYS[1], f))
    end
  end
end
local deposit = tonumber(ARGV[1]) * tonumber(ARGV[3])
if deposit > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'd:' .. slot, deposit)
  balance = balance + deposit
end
local granted = 0
if ARGV[2] == '1' then
  if balance >= 1 - 1e-9 then
    redis.call('HINCRBYFLOAT', KEYS[1], 'd:' .. slot, -1)
    granted = 1
  else
    local mps = tonumber(ARGV[4])
    local cap = 0
    if mps > 0 then cap = math.max(1, mps) end
    local ft = tonumber(redis.call('HGET', KEYS[1], 'ft') or cap)
    local fa = tonumber(redis.call('HGET', KEYS[1], 'fa') or now)
    ft = math.min(cap, ft + math.max(0, now - fa) / 1000 * mps)
    if ft >= 1 - 1e-9 then
      ft = ft - 1
      granted = 2
    end
    redis.call('HSET', KEYS[1], 'ft', tostring(ft), 'fa', now)
  end
end
redis.call('PEXPIRE', KEYS[1], (ttl + 2) * 1000)
return granted
"""

# KEYS: member, members (one slot: keys.py). ARGV: instance, payload (JSON), ttl_ms. -> live members.
HEARTBEAT = _NOW + """
local expiry = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'payload', ARGV[2], 'at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], 86400000)
return redis.call('ZCARD', KEYS[2])
"""

# KEYS: the member set of one endpoint this sidecar sends to (in that endpoint's slot, beside the
# breaker record EVIDENCE reads it with). ARGV: instance, ttl_ms. A separate call per endpoint, since
# in a cluster the endpoints' slots are on different nodes.
ENDPOINT_HEARTBEAT = _NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
"""

# KEYS: member, members. ARGV: instance. A clean stop leaves at once (each endpoint's set: ZREM).
LEAVE = """
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""
