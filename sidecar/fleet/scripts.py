"""The Lua scripts that make each fleet step atomic in Redis. Times are Redis's own (TIME), so the
sidecars' clocks never have to agree; results carry durations ("remaining ms"), not instants.

Breaker record (hash `breaker:<endpoint>`): state open|closed, timeout (ms, the current open
period), until (ms, when the open period ends), gen (bumped on every change), by (instance), at,
cause (of the last open: `evidence` the fleet's pooled failures, see `EVIDENCE`; `probe` the prober's
probe failed; `breaker` a sidecar that reconnected after Redis was lost found its own breaker open),
class (the error class of the failures that opened it, sidecar/fleet/view.py `encode_class`: members
that never saw a failure count their held requests as that class, for severity escalation), rate (the
fleet's request rate when the evidence opened it, see `EVIDENCE`).
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
local function open_record(breaker, evidence, timeout, gen, by, cause, now, channel, endpoint, class)
  gen = gen + 1
  redis.call('HSET', breaker, 'state', 'open', 'timeout', timeout, 'until', now + timeout, 'gen', gen, 'by', by,
             'at', now, 'cause', cause)
  if class and class ~= '' then redis.call('HSET', breaker, 'class', class) end
  redis.call('PEXPIRE', breaker, 86400000)
  if evidence then redis.call('DEL', evidence) end
  redis.call('PUBLISH', channel, endpoint .. '\\n' .. 'open' .. '\\n' .. gen .. '\\n' .. timeout .. '\\n' .. timeout)
  return {'open', timeout, timeout, gen}
end
"""

# KEYS: breaker, lease, evidence. ARGV: base_ms, max_ms, reopen (1: the lease holder's probe failed),
# instance, channel, endpoint, class ('' unknown). Opening an open record changes nothing, except a failed
# probe of the lease holder, which starts the next, longer open period (doubling up to max). In fleet mode
# that period no longer delays recovery (the holder probes every probe_interval); it is kept for status.
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
if ARGV[3] == '1' and state ~= 'open' then
  -- A failed probe of a holder that has not yet seen the fleet close (the CLOSE freed its lease): the
  -- fleet is closed, and one sidecar's failed call must not open it for everyone (bench/fleet_scale.py
  -- saw 6 such opens in 60 s of 1 % scattered failures at 1,000 members).
  return {'closed', 0, timeout, gen}
end
local cause = 'breaker'
if state == 'open' then
  timeout = math.min(maxt, math.max(base, timeout * 2))
  cause = 'probe'
else
  timeout = base
end
return open_record(KEYS[1], KEYS[3], timeout, gen, ARGV[4], cause, now, ARGV[5], ARGV[6], ARGV[7])
"""

# KEYS: breaker, evidence, endpoint members, budget. ARGV: instance, seq (this sidecar's report number),
# failures (since its last report), calls (its calls since its last report, at most CALLS_LOOKBACK back),
# failure_ratio, minimum_calls, min_window_ms, max_window_ms, batch_ms, base_ms, channel, endpoint, class,
# calls_long (its calls since its last report, at most LONG_CALLS_LOOKBACK back), repeated (REPEATED_FAILURES),
# wait_ms (how long its first failure waited in the batch), min_wait_ms (MIN_SPAN_WAIT).
# -> state, remaining ms, timeout ms, gen, tripped (0/1), failures in the window, failures needed.
#
# One member's batch of failures (sidecar/fleet/breaker.py sends one at most every EVIDENCE_BATCH =
# batch_ms). The rule is sidecar/fleet/view.py `EvidenceRule` (tests/unit/test_fleet_redis.py checks they
# agree), computed in seconds in the same order: the fleet's request rate is read from the retry budget's
# per-second counts of first attempts (`n:<s>`: the average of the last two whole seconds, unknown (0) while
# the second before last counted none, `fleet_rate`); failures are summed over the reports that arrived
# within the window, which carry failures of up to window + their mean wait (the failures' average of their
# reports' waits, each at most batch: `EvidenceRule.tally`), and the record opens when they reach
# failure_ratio of the calls of that span, and of the calls the reports in the window carry (those of
# LONG_CALLS_LOOKBACK for the longest window), reported by at least two members (when the endpoint has two).
# With an unknown rate only the failures of members that reported at least `repeated` in the window count
# (`EvidenceRule.tally`). For 3 s after a close the rate is at least the one the record kept when the
# evidence opened it (field `rate`): a hold makes no first attempts, so the counts of the seconds it covered
# undercount the traffic coming back. Reports live in a sorted set scored by Redis time, as
# `instance\nseq:wait_ms/calls_long\ncalls\nfailures` (`encode_report`; `instance\nseq/calls_long\ncalls\nfailures`,
# `instance\nseq\ncalls\nfailures` and `instance\nseq\nfailures` from older versions: their wait is a batch).
EVIDENCE = _NOW + _OPEN_RECORD + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if state == 'open' then
  return {state, math.max(0, untl - now), timeout, gen, 0, 0, 0}
end
local ratio = tonumber(ARGV[5])
local minimum = tonumber(ARGV[6])
local min_window = tonumber(ARGV[7]) / 1000
local max_window_ms = tonumber(ARGV[8])
local max_window = max_window_ms / 1000
local batch = tonumber(ARGV[9]) / 1000
local second = math.floor(now / 1000)
local rate = 0
local before = tonumber(redis.call('HGET', KEYS[4], 'n:' .. (second - 2)) or '0')
if before > 0 then rate = (tonumber(redis.call('HGET', KEYS[4], 'n:' .. (second - 1)) or '0') + before) / 2 end
local settling = state == 'closed' and now - tonumber(redis.call('HGET', KEYS[1], 'at') or '0') < 3000
if settling then
  -- Closed less than 3 s ago: the last two seconds' counts still hold the hold's silence; the rate the fleet
  -- had when it opened is the better estimate (its held data is coming now, in a burst).
  rate = math.max(rate, tonumber(redis.call('HGET', KEYS[1], 'rate') or '0'))
end
local window = max_window
if rate > 0 then window = math.min(max_window, math.max(min_window, minimum / rate - batch)) end
local calls_long = ARGV[14] or ARGV[4]
local repeated = tonumber(ARGV[15] or '1')
local seq = ARGV[2]
if ARGV[16] then seq = seq .. ':' .. ARGV[16] end
redis.call('ZADD', KEYS[2], now,
           ARGV[1] .. '\\n' .. seq .. '/' .. calls_long .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - max_window_ms))
redis.call('PEXPIRE', KEYS[2], max_window_ms * 2)
local long = window >= max_window
local by_instance = {}
local waited = {}
local calls_reported = 0
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now - window * 1000, '+inf')) do
  local instance, field, made, count = string.match(entry, '^(.*)\\n([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)$')
  if instance == nil then  -- an older sidecar's report, without its calls
    instance, field, count = string.match(entry, '^(.*)\\n([^\\n]*)\\n([^\\n]*)$')
    made = count
  end
  if long then made = string.match(field, '/(%d+)$') or made end
  local wait_ms = string.match(field, '^[^:/]*:(%d+)')
  local wait = batch  -- an older sidecar's report says no wait: the longest, a whole batch
  if wait_ms then wait = math.min(batch, tonumber(wait_ms) / 1000) end
  count = tonumber(count)
  by_instance[instance] = (by_instance[instance] or 0) + count
  waited[instance] = (waited[instance] or 0) + count * wait
  calls_reported = calls_reported + tonumber(made)
end
local failures = 0
local reporters = 0
local failures_waited = 0
for instance, count in pairs(by_instance) do
  if rate > 0 or count >= repeated then
    failures = failures + count
    failures_waited = failures_waited + waited[instance]
    reporters = reporters + 1
  end
end
local wait = batch
if failures > 0 and not settling then  -- just after a close the held data's burst bunches reports: a whole batch
  wait = math.max(tonumber(ARGV[17] or batch * 1000) / 1000, failures_waited / failures)
end
local limit = ratio * math.max(minimum, rate * (window + wait))
if rate > 0 and window < max_window then limit = math.min(limit, rate * window) end
limit = math.max(limit, ratio * calls_reported)
local needed = math.max(1, math.floor(limit + 1e-9))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local members = redis.call('ZCARD', KEYS[3])
local wanted = 1
if members >= 2 then wanted = 2 end
if failures >= needed and reporters >= wanted then
  local record = open_record(KEYS[1], KEYS[2], tonumber(ARGV[10]), gen, ARGV[1], 'evidence', now, ARGV[11], ARGV[12],
                             ARGV[13])
  redis.call('HSET', KEYS[1], 'rate', tostring(rate))
  return {record[1], record[2], record[3], record[4], 1, failures, needed}
end
return {state, 0, timeout, gen, 0, failures, needed}
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

# KEYS: breaker, lease. -> state, remaining ms, timeout ms, gen, lease holder ('' none), lease pttl ms, class.
READ = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '0')
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local holder = redis.call('GET', KEYS[2]) or ''
local pttl = redis.call('PTTL', KEYS[2])
local class = redis.call('HGET', KEYS[1], 'class') or ''
return {state, math.max(0, untl - now), timeout, gen, holder, pttl, class}
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
# The first attempts themselves are counted per second too (`n:<s>`): the fleet's request rate, which
# the EVIDENCE script reads (no extra command: deposits are sent anyway).
BUDGET = _NOW + """
local slot = math.floor(now / 1000)
local ttl = tonumber(ARGV[5])
local balance = 0
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  local kind = string.sub(f, 1, 2)
  if kind == 'n:' then
    if tonumber(string.sub(f, 3)) <= slot - 3 then redis.call('HDEL', KEYS[1], f) end
  elseif kind == 'd:' then
    local s = tonumber(string.sub(f, 3))
    if s <= slot - ttl then
      redis.call('HDEL', KEYS[1], f)
    else
      balance = balance + tonumber(redis.call('HGET', KEYS[1], f))
    end
  end
end
local deposit = tonumber(ARGV[1]) * tonumber(ARGV[3])
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], 'n:' .. slot, ARGV[1]) end
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
