-- admit_tick: one admission step for one event. Safe to run from every
-- instance at once: the script decides from Redis TIME whether this slot
-- was already used, and the admission budget is a sliding window in Redis.
--
-- KEYS[1] cfg      hash: admit_per_second, max_active, active_ttl_ms,
--                  idle_timeout_ms, paused, open_ms, close_ms,
--                  auto_admit_per_second (the autopilot's rate, set only
--                  in auto mode: it replaces admit_per_second)
-- KEYS[2] wait      zset: waiting user -> score (draw score < 1 for a
--                   pre-queue entry, else the entry: join sequence)
-- KEYS[3] poll      hash: waiting or admitted user -> last activity (ms)
-- KEYS[4] adm       zset: admitted user -> deadline (ms)
-- KEYS[5] adm_entry hash: admitted user -> entry
-- KEYS[6] win       zset: entry -> admission time (ms), last second
-- KEYS[7] stats     hash: last_tick_ms, rate_ema, rate_var, admitted_total,
--                   evicted_total, expired_total, released_total,
--                   closed_total, peak_active, sweep_after, adm_sweep
-- KEYS[8] pre_entry hash: pre-queue user -> entry
-- KEYS[9] draw      zset: the draw's entries (frozen at opens_at)
-- ARGV[1] minimum interval between two ticks (ms)
-- ARGV[2] maximum entries evicted, expired or admitted per step
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"skipped","waiting":w,"active":n,"rate":r}
--                          another instance ticked less than ARGV[1] ago
--   {"status":"ticked","admitted":a,"evicted":e,"expired":x,"released":l,
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
-- Fair start: nothing is admitted before opens_at (Redis time); the
-- pre-queue already sorts ahead of later joiners in draw order, so the
-- draw needs no step here. After closes_at nothing is admitted and the
-- waiting entries are dropped, ARGV[2] per step. Admitted users carry
-- their last activity in `poll` too (every request by their token writes
-- it); a step also sweeps ARGV[2] admitted entries, from where the last
-- step stopped, and releases those silent for idle_timeout_ms, before
-- admitting, so a freed slot is refilled in the same step.
--
-- The last poll is a hash field, not a second sorted set (half the memory
-- per waiting user), so idle entries are found by this sweep rather than a
-- range query: the head is always exact (nobody idle is admitted); deeper
-- in a long line an idle entry may outlive its timeout by one sweep of the
-- line (line length / ARGV[2] steps) and, until then, counts in the
-- positions behind it.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'max_active', 'active_ttl_ms', 'idle_timeout_ms', 'paused', 'open_ms', 'close_ms', 'auto_admit_per_second')
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

local admit_per_second = tonumber(cfg[8] or cfg[1])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'
local open_ms, close_ms = tonumber(cfg[6] or '0'), tonumber(cfg[7] or '0')
local before_open = open_ms > 0 and now < open_ms
local closed = close_ms > 0 and now >= close_ms

local function idle(seen)
  return not seen or now - tonumber(seen) > idle_timeout_ms
end

-- Drops a waiting member's side records (its score tells a pre-queue
-- entry; before the draw it also leaves the draw).
local function forget_waiting(user, score)
  redis.call('HDEL', KEYS[3], user)
  if tonumber(score) < 1 then
    redis.call('HDEL', KEYS[8], user)
    if before_open then redis.call('ZREM', KEYS[9], user) end
  end
end

-- 1. Sweep for idle waiting entries.
local evicted = 0
local after = redis.call('HGET', KEYS[7], 'sweep_after') or '-inf'
local from = after == '-inf' and '-inf' or '(' .. after
local swept = redis.call('ZRANGEBYSCORE', KEYS[2], from, '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
if #swept > 0 then
  local users = {}
  for i = 1, #swept, 2 do users[#users + 1] = swept[i] end
  local seen = redis.call('HMGET', KEYS[3], unpack(users))
  for i, user in ipairs(users) do
    if idle(seen[i]) then
      redis.call('ZREM', KEYS[2], user)
      forget_waiting(user, swept[2 * i])
      evicted = evicted + 1
    end
  end
end
redis.call('HSET', KEYS[7], 'sweep_after', #swept < 2 * batch and '-inf' or swept[#swept])

-- 1b. After closes_at nobody waiting can be admitted any more: drop them.
local dropped = 0
if closed then
  local gone = redis.call('ZPOPMIN', KEYS[2], batch)
  for i = 1, #gone, 2 do forget_waiting(gone[i], gone[i + 1]) end
  dropped = #gone / 2
  if dropped > 0 then redis.call('HINCRBY', KEYS[7], 'closed_total', dropped) end
end

-- 2. Admitted entries past their deadline.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
for _, user in ipairs(expired) do
  redis.call('ZREM', KEYS[4], user)
  redis.call('HDEL', KEYS[5], user)
  redis.call('HDEL', KEYS[3], user)
end
if #expired > 0 then redis.call('HINCRBY', KEYS[7], 'expired_total', #expired) end

-- 2b. Admitted users silent for idle_timeout_ms are released.
local released = 0
local cursor = tonumber(redis.call('HGET', KEYS[7], 'adm_sweep') or '0')
local adm = redis.call('ZRANGE', KEYS[4], cursor, cursor + batch - 1)
if #adm > 0 then
  local seen = redis.call('HMGET', KEYS[3], unpack(adm))
  for i, user in ipairs(adm) do
    if seen[i] and now - tonumber(seen[i]) > idle_timeout_ms then
      redis.call('ZREM', KEYS[4], user)
      redis.call('HDEL', KEYS[5], user)
      redis.call('HDEL', KEYS[3], user)
      released = released + 1
    elseif not seen[i] then
      -- Admitted before activity was recorded: its clock starts now.
      redis.call('HSET', KEYS[3], user, now)
    end
  end
end
redis.call('HSET', KEYS[7], 'adm_sweep', #adm < batch and 0 or cursor + #adm - released)
if released > 0 then redis.call('HINCRBY', KEYS[7], 'released_total', released) end

-- 3. Admit from the head; an idle entry there is dropped, not admitted.
local admitted = 0
if not paused and not before_open and not closed then
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
    for i, user in ipairs(users) do
      local score = head[2 * i]
      local entry = score
      if tonumber(score) < 1 then
        entry = redis.call('HGET', KEYS[8], user)
        redis.call('HDEL', KEYS[8], user)
      end
      if idle(seen[i]) then
        redis.call('HDEL', KEYS[3], user)
        evicted = evicted + 1
      else
        redis.call('ZADD', KEYS[4], deadline, user)
        redis.call('HSET', KEYS[5], user, entry)
        -- Admission starts the idle clock of the admitted user.
        redis.call('HSET', KEYS[3], user, now)
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
local stats = redis.call('HMGET', KEYS[7], 'rate_ema', 'admitted_total', 'rate_total_seen', 'rate_var')
local rate = tonumber(stats[1] or admit_per_second)
local rate_var = tonumber(stats[4] or '0')
local total = tonumber(stats[2] or '0')
local delta = total - tonumber(stats[3] or total)
local dt = now - last
if not paused and not before_open and last > 0 and dt > 0 and dt < 60000 then
  local alpha = 1 - math.exp(-dt / 10000)
  rate = rate + alpha * (delta * 1000 / dt - rate)
  -- The spread: variance of the admissions counted in the last second
  -- (the sliding window) around the average, for eta_p90_seconds.
  local last_second = redis.call('ZCOUNT', KEYS[6], now - 1000, '+inf')
  rate_var = rate_var + alpha * ((last_second - rate) ^ 2 - rate_var)
end
redis.call('HSET', KEYS[7], 'rate_ema', tostring(rate), 'rate_total_seen', total, 'rate_var', tostring(rate_var))

-- The highest admitted count ever seen, so an audit can prove after the
-- fact that max_active was never exceeded.
local active = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
if active > tonumber(redis.call('HGET', KEYS[7], 'peak_active') or '0') then
  redis.call('HSET', KEYS[7], 'peak_active', active)
end

return cjson.encode({ status = 'ticked', admitted = admitted, evicted = evicted + dropped,
                      expired = #expired, released = released,
                      waiting = redis.call('ZCARD', KEYS[2]), active = active, rate = rate })
