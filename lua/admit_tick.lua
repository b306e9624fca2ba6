-- admit_tick: one admission step for one event. Safe to run from every
-- instance at once: the script decides from Redis TIME whether this slot
-- was already used, and the admission budget is a sliding window in Redis.
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg
--             (admit_per_second, max_active, active_ttl_ms,
--             idle_timeout_ms, paused, open_ms, close_ms,
--             auto_admit_per_second: the autopilot's rate, set only in
--             auto mode, replacing admit_per_second); writes wait,
--             poll, adm, adm_entry, win, stats (last_tick_ms, rate_ema,
--             rate_var, the totals, peak_active, sweep_after, adm_sweep),
--             pre_entry, draw
-- ARGV[1] minimum interval between two ticks (ms)
-- ARGV[2] maximum entries evicted, expired or admitted per step
-- ARGV[3] entries each of the two sweeps (waiting, admitted) looks at per
--         step (default ARGV[2]): the script blocks Redis while it runs,
--         and with a long line the sweep is most of a step's time
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"skipped","waiting":w,"active":n,"rate":r}
--                          another instance ticked less than ARGV[1] ago
--   {"status":"ticked","admitted":a,"evicted":e,"expired":x,"released":l,
--    "waiting":w,"active":n,"rate":r}
--
-- Order per step: sweep the next ARGV[3] waiting entries (in line order,
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
-- it); a step also sweeps ARGV[3] admitted entries, from where the last
-- step stopped, and releases those silent for idle_timeout_ms, before
-- admitting, so a freed slot is refilled in the same step.
--
-- The last poll is a hash field, not a second sorted set (half the memory
-- per waiting user), so idle entries are found by this sweep rather than a
-- range query: the head is always exact (nobody idle is admitted); deeper
-- in a long line an idle entry may outlive its timeout by one sweep of the
-- line (line length / ARGV[3] steps) and, until then, counts in the
-- positions behind it.

local Q = queue_keys(1)
local cfg = redis.call('HMGET', Q.cfg, 'admit_per_second', 'max_active', 'active_ttl_ms', 'idle_timeout_ms', 'paused', 'open_ms', 'close_ms', 'auto_admit_per_second')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local min_interval = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])
local sweep = tonumber(ARGV[3] or ARGV[2])

local now = now_ms()
local last = tonumber(redis.call('HGET', Q.stats, 'last_tick_ms') or '0')
if now - last < min_interval then
  -- Still report the figures so every instance's gauges stay fresh.
  return cjson.encode({ status = 'skipped', waiting = redis.call('ZCARD', Q.wait),
                        active = redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf'),
                        rate = tonumber(redis.call('HGET', Q.stats, 'rate_ema') or '0') })
end
redis.call('HSET', Q.stats, 'last_tick_ms', now)

local admit_per_second = rate_in_use(cfg[1], cfg[8])
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
  redis.call('HDEL', Q.poll, user)
  if tonumber(score) < 1 then
    redis.call('HDEL', Q.pre_entry, user)
    if before_open then redis.call('ZREM', Q.draw, user) end
  end
end

-- 1. Sweep for idle waiting entries.
local evicted = 0
local after = redis.call('HGET', Q.stats, 'sweep_after') or '-inf'
local from = after == '-inf' and '-inf' or '(' .. after
local swept = redis.call('ZRANGEBYSCORE', Q.wait, from, '+inf', 'WITHSCORES', 'LIMIT', 0, sweep)
if #swept > 0 then
  local users = {}
  for i = 1, #swept, 2 do users[#users + 1] = swept[i] end
  local seen = redis.call('HMGET', Q.poll, unpack(users))
  for i, user in ipairs(users) do
    if idle(seen[i]) then
      redis.call('ZREM', Q.wait, user)
      forget_waiting(user, swept[2 * i])
      evicted = evicted + 1
    end
  end
end
redis.call('HSET', Q.stats, 'sweep_after', #swept < 2 * sweep and '-inf' or swept[#swept])

-- 1b. After closes_at nobody waiting can be admitted any more: drop them.
local dropped = 0
if closed then
  local gone = redis.call('ZPOPMIN', Q.wait, batch)
  for i = 1, #gone, 2 do forget_waiting(gone[i], gone[i + 1]) end
  dropped = #gone / 2
  if dropped > 0 then redis.call('HINCRBY', Q.stats, 'closed_total', dropped) end
end

-- 2. Admitted entries past their deadline.
local expired = redis.call('ZRANGEBYSCORE', Q.adm, '-inf', now, 'LIMIT', 0, batch)
for _, user in ipairs(expired) do
  redis.call('ZREM', Q.adm, user)
  redis.call('HDEL', Q.adm_entry, user)
  redis.call('HDEL', Q.poll, user)
end
if #expired > 0 then redis.call('HINCRBY', Q.stats, 'expired_total', #expired) end

-- 2b. Admitted users silent for idle_timeout_ms are released.
local released = 0
local cursor = tonumber(redis.call('HGET', Q.stats, 'adm_sweep') or '0')
local adm = redis.call('ZRANGE', Q.adm, cursor, cursor + sweep - 1)
if #adm > 0 then
  local seen = redis.call('HMGET', Q.poll, unpack(adm))
  for i, user in ipairs(adm) do
    if seen[i] and now - tonumber(seen[i]) > idle_timeout_ms then
      redis.call('ZREM', Q.adm, user)
      redis.call('HDEL', Q.adm_entry, user)
      redis.call('HDEL', Q.poll, user)
      released = released + 1
    elseif not seen[i] then
      -- Admitted before activity was recorded: its clock starts now.
      redis.call('HSET', Q.poll, user, now)
    end
  end
end
redis.call('HSET', Q.stats, 'adm_sweep', #adm < sweep and 0 or cursor + #adm - released)
if released > 0 then redis.call('HINCRBY', Q.stats, 'released_total', released) end

-- 3. Admit from the head; an idle entry there is dropped, not admitted.
local admitted = 0
if not paused and not before_open and not closed then
  redis.call('ZREMRANGEBYSCORE', Q.win, '-inf', now - 1000)
  local budget = admit_per_second - redis.call('ZCARD', Q.win)
  local capacity = max_active - redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf')
  local n = math.min(budget, capacity, batch)
  local deadline = now + active_ttl_ms
  local popped = 0
  while admitted < n and popped < 2 * batch do
    local head = redis.call('ZPOPMIN', Q.wait, n - admitted)
    if #head == 0 then break end
    popped = popped + #head / 2
    local users = {}
    for i = 1, #head, 2 do users[#users + 1] = head[i] end
    local seen = redis.call('HMGET', Q.poll, unpack(users))
    for i, user in ipairs(users) do
      local score = head[2 * i]
      local entry = score
      if tonumber(score) < 1 then
        entry = redis.call('HGET', Q.pre_entry, user)
        redis.call('HDEL', Q.pre_entry, user)
      end
      if idle(seen[i]) then
        redis.call('HDEL', Q.poll, user)
        evicted = evicted + 1
      else
        redis.call('ZADD', Q.adm, deadline, user)
        redis.call('HSET', Q.adm_entry, user, entry)
        -- Admission starts the idle clock of the admitted user.
        redis.call('HSET', Q.poll, user, now)
        redis.call('ZADD', Q.win, now, entry)
        admitted = admitted + 1
      end
    end
  end
  if admitted > 0 then redis.call('HINCRBY', Q.stats, 'admitted_total', admitted) end
end
if evicted > 0 then redis.call('HINCRBY', Q.stats, 'evicted_total', evicted) end

-- Observed admission rate: exponential moving average over ~10 s, in
-- admissions per second, for ETAs. It counts every admission since the
-- last tick (admitted_total), including joins admitted at once.
-- The average starts from the configured rate (a prior that adapts down
-- when capacity, not the rate, is the bottleneck) and is frozen while
-- paused, so ETAs are sensible from the first second of a sale.
local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'admitted_total', 'rate_total_seen', 'rate_var')
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
  local last_second = redis.call('ZCOUNT', Q.win, now - 1000, '+inf')
  rate_var = rate_var + alpha * ((last_second - rate) ^ 2 - rate_var)
end
redis.call('HSET', Q.stats, 'rate_ema', tostring(rate), 'rate_total_seen', total, 'rate_var', tostring(rate_var))

-- The highest admitted count ever seen, so an audit can prove after the
-- fact that max_active was never exceeded.
local active = redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf')
if active > tonumber(redis.call('HGET', Q.stats, 'peak_active') or '0') then
  redis.call('HSET', Q.stats, 'peak_active', active)
end

return cjson.encode({ status = 'ticked', admitted = admitted, evicted = evicted + dropped,
                      expired = #expired, released = released,
                      waiting = redis.call('ZCARD', Q.wait), active = active, rate = rate })
