-- admit_tick: one admission step for one event. Safe to run from every
-- instance at once: the script decides from Redis TIME whether this slot
-- was already used, and the admission budget is a sliding window in Redis.
--
-- KEYS[1] cfg      hash: admit_per_second, max_active, active_ttl_ms,
--                  idle_timeout_ms, paused
-- KEYS[2] wait      zset: waiting user -> entry (join sequence)
-- KEYS[3] poll      hash: waiting user -> last poll (ms)
-- KEYS[4] adm       zset: admitted user -> deadline (ms)
-- KEYS[5] adm_entry hash: admitted user -> entry
-- KEYS[6] win       zset: entry -> admission time (ms), last second
-- KEYS[7] stats     hash: last_tick_ms, rate_ema, admitted_total,
--                   evicted_total, expired_total, peak_active, sweep_after
-- ARGV[1] minimum interval between two ticks (ms)
-- ARGV[2] maximum entries evicted, expired or admitted per step
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"skipped","waiting":w,"active":n,"rate":r}
--                          another instance ticked less than ARGV[1] ago
--   {"status":"ticked","admitted":a,"evicted":e,"expired":x,
--    "waiting":w,"active":n,"rate":r}
--
-- Order per step: sweep the next ARGV[2] waiting entries (in line order,
-- from where the last step stopped, wrapping at the tail) and drop those
-- not polled within idle_timeout_ms; expire admitted entries past their
-- own deadline (each member carries its deadline as its score: no TTL on
-- the whole set); then admit from the head while admitted < max_active and
-- fewer than admit_per_second were admitted in the last 1000 ms, dropping
-- instead of admitting any idle entry that reaches the head. ZPOPMIN and
-- the grant happen in this one script, so a popped entry can never be lost.
--
-- The last poll is a hash field, not a second sorted set (half the memory
-- per waiting user), so idle entries are found by this sweep rather than a
-- range query: the head is always exact (nobody idle is admitted); deeper
-- in a long line an idle entry may outlive its timeout by one sweep of the
-- line (line length / ARGV[2] steps) and, until then, counts in the
-- positions behind it.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'max_active', 'active_ttl_ms', 'idle_timeout_ms', 'paused')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local min_interval = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[7], 'last_tick_ms') or '0')
if now - last < min_interval then
  -- Still report the figures so every instance's gauges stay fresh.
  return cjson.encode({ status = 'skipped', waiting = redis.call('ZCARD', KEYS[2]),
                        active = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf'),
                        rate = tonumber(redis.call('HGET', KEYS[7], 'rate_ema') or '0') })
end
redis.call('HSET', KEYS[7], 'last_tick_ms', now)

local admit_per_second = tonumber(cfg[1])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'

local function idle(seen)
  return not seen or now - tonumber(seen) > idle_timeout_ms
end

-- 1. Sweep for idle waiting entries.
local evicted = 0
local after = redis.call('HGET', KEYS[7], 'sweep_after') or '0'
local swept = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
if #swept > 0 then
  local users = {}
  for i = 1, #swept, 2 do users[#users + 1] = swept[i] end
  local seen = redis.call('HMGET', KEYS[3], unpack(users))
  for i, user in ipairs(users) do
    if idle(seen[i]) then
      redis.call('ZREM', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      evicted = evicted + 1
    end
  end
end
redis.call('HSET', KEYS[7], 'sweep_after', #swept < 2 * batch and '0' or swept[#swept])

-- 2. Admitted entries past their deadline.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
for _, user in ipairs(expired) do
  redis.call('ZREM', KEYS[4], user)
  redis.call('HDEL', KEYS[5], user)
end
if #expired > 0 then redis.call('HINCRBY', KEYS[7], 'expired_total', #expired) end

-- 3. Admit from the head; an idle entry there is dropped, not admitted.
local admitted = 0
if not paused then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - 1000)
  local budget = admit_per_second - redis.call('ZCARD', KEYS[6])
  local capacity = max_active - redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
  local n = math.min(budget, capacity, batch)
  local deadline = now + active_ttl_ms
  local popped = 0
  while admitted < n and popped < 2 * batch do
    local head = redis.call('ZPOPMIN', KEYS[2], n - admitted)
    if #head == 0 then break end
    popped = popped + #head / 2
    local users = {}
    for i = 1, #head, 2 do users[#users + 1] = head[i] end
    local seen = redis.call('HMGET', KEYS[3], unpack(users))
    redis.call('HDEL', KEYS[3], unpack(users))
    for i, user in ipairs(users) do
      if idle(seen[i]) then
        evicted = evicted + 1
      else
        local entry = head[2 * i]
        redis.call('ZADD', KEYS[4], deadline, user)
        redis.call('HSET', KEYS[5], user, entry)
        redis.call('ZADD', KEYS[6], now, entry)
        admitted = admitted + 1
      end
    end
  end
  if admitted > 0 then redis.call('HINCRBY', KEYS[7], 'admitted_total', admitted) end
end
if evicted > 0 then redis.call('HINCRBY', KEYS[7], 'evicted_total', evicted) end

-- Observed admission rate: exponential moving average over ~10 s, in
-- admissions per second, for ETAs. It counts every admission since the
-- last tick (admitted_total), including joins admitted at once.
-- The average starts from the configured rate (a prior that adapts down
-- when capacity, not the rate, is the bottleneck) and is frozen while
-- paused, so ETAs are sensible from the first second of a sale.
local stats = redis.call('HMGET', KEYS[7], 'rate_ema', 'admitted_total', 'rate_total_seen')
local rate = tonumber(stats[1] or admit_per_second)
local total = tonumber(stats[2] or '0')
local delta = total - tonumber(stats[3] or total)
local dt = now - last
if not paused and last > 0 and dt > 0 and dt < 60000 then
  local alpha = 1 - math.exp(-dt / 10000)
  rate = rate + alpha * (delta * 1000 / dt - rate)
end
redis.call('HSET', KEYS[7], 'rate_ema', tostring(rate), 'rate_total_seen', total)

-- The highest admitted count ever seen, so an audit can prove after the
-- fact that max_active was never exceeded.
local active = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
if active > tonumber(redis.call('HGET', KEYS[7], 'peak_active') or '0') then
  redis.call('HSET', KEYS[7], 'peak_active', active)
end

return cjson.encode({ status = 'ticked', admitted = admitted, evicted = evicted, expired = #expired,
                      waiting = redis.call('ZCARD', KEYS[2]), active = active, rate = rate })
