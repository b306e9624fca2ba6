-- admit_tick: one admission step for one event. Safe to run from every
-- instance at once: the script decides from Redis TIME whether this slot
-- was already used, and the admission budget is a sliding window in Redis.
--
-- KEYS[1] cfg      hash: admit_per_second, max_active, active_ttl_ms,
--                  idle_timeout_ms, paused
-- KEYS[2] wait     zset: waiting entry -> join sequence
-- KEYS[3] seen     zset: waiting entry -> last poll (ms)
-- KEYS[4] adm      zset: admitted entry -> deadline (ms)
-- KEYS[5] users    hash: user -> entry
-- KEYS[6] entries  hash: entry -> user
-- KEYS[7] win      zset: entry -> admission time (ms), last second
-- KEYS[8] stats    hash: last_tick_ms, rate_ema, admitted_total,
--                  evicted_total, expired_total, peak_active
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
-- Order per step: drop idle waiting entries (not polled within
-- idle_timeout_ms), expire admitted entries past their own deadline (each
-- member carries its deadline as its score: no TTL on the whole set), then
-- admit from the head while admitted < max_active and fewer than
-- admit_per_second were admitted in the last 1000 ms. ZPOPMIN and the
-- grant happen in this one script, so a popped entry can never be lost.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'max_active', 'active_ttl_ms', 'idle_timeout_ms', 'paused')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local min_interval = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[8], 'last_tick_ms') or '0')
if now - last < min_interval then
  -- Still report the figures so every instance's gauges stay fresh.
  return cjson.encode({ status = 'skipped', waiting = redis.call('ZCARD', KEYS[2]),
                        active = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf'),
                        rate = tonumber(redis.call('HGET', KEYS[8], 'rate_ema') or '0') })
end
redis.call('HSET', KEYS[8], 'last_tick_ms', now)

local admit_per_second = tonumber(cfg[1])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'

local function forget_user(entry)
  local user = redis.call('HGET', KEYS[6], entry)
  redis.call('HDEL', KEYS[6], entry)
  if user and redis.call('HGET', KEYS[5], user) == entry then
    redis.call('HDEL', KEYS[5], user)
  end
end

-- 1. Idle waiting entries.
local idle = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - idle_timeout_ms - 1, 'LIMIT', 0, batch)
for _, entry in ipairs(idle) do
  redis.call('ZREM', KEYS[2], entry)
  redis.call('ZREM', KEYS[3], entry)
  forget_user(entry)
end
if #idle > 0 then redis.call('HINCRBY', KEYS[8], 'evicted_total', #idle) end

-- 2. Admitted entries past their deadline.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
for _, entry in ipairs(expired) do
  redis.call('ZREM', KEYS[4], entry)
  forget_user(entry)
end
if #expired > 0 then redis.call('HINCRBY', KEYS[8], 'expired_total', #expired) end

-- 3. Admit from the head.
local admitted = 0
if not paused then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 1000)
  local budget = admit_per_second - redis.call('ZCARD', KEYS[7])
  local capacity = max_active - redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
  local n = math.min(budget, capacity, batch)
  if n > 0 then
    local head = redis.call('ZPOPMIN', KEYS[2], n)
    local deadline = now + active_ttl_ms
    for i = 1, #head, 2 do
      local entry = head[i]
      redis.call('ZREM', KEYS[3], entry)
      redis.call('ZADD', KEYS[4], deadline, entry)
      redis.call('ZADD', KEYS[7], now, entry)
      admitted = admitted + 1
    end
    if admitted > 0 then redis.call('HINCRBY', KEYS[8], 'admitted_total', admitted) end
  end
end

-- Observed admission rate: exponential moving average over ~10 s, in
-- admissions per second, for ETAs. It counts every admission since the
-- last tick (admitted_total), including joins admitted at once.
-- The average starts from the configured rate (a prior that adapts down
-- when capacity, not the rate, is the bottleneck) and is frozen while
-- paused, so ETAs are sensible from the first second of a sale.
local stats = redis.call('HMGET', KEYS[8], 'rate_ema', 'admitted_total', 'rate_total_seen')
local rate = tonumber(stats[1] or admit_per_second)
local total = tonumber(stats[2] or '0')
local delta = total - tonumber(stats[3] or total)
local dt = now - last
if not paused and last > 0 and dt > 0 and dt < 60000 then
  local alpha = 1 - math.exp(-dt / 10000)
  rate = rate + alpha * (delta * 1000 / dt - rate)
end
redis.call('HSET', KEYS[8], 'rate_ema', tostring(rate), 'rate_total_seen', total)

-- The highest admitted count ever seen, so an audit can prove after the
-- fact that max_active was never exceeded.
local active = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
if active > tonumber(redis.call('HGET', KEYS[8], 'peak_active') or '0') then
  redis.call('HSET', KEYS[8], 'peak_active', active)
end

return cjson.encode({ status = 'ticked', admitted = admitted, evicted = #idle, expired = #expired,
                      waiting = redis.call('ZCARD', KEYS[2]), active = active, rate = rate })
