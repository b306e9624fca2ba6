-- join_queue: put a user in an event's waiting room, or return their place.
--
-- KEYS[1] cfg       hash: event config (admit_per_second, max_active,
--                   active_ttl_ms, idle_timeout_ms, paused)
-- KEYS[2] seq       counter: join order
-- KEYS[3] wait      zset: waiting user -> entry (join sequence)
-- KEYS[4] poll      hash: waiting user -> last poll (ms)
-- KEYS[5] adm       zset: admitted user -> deadline (ms)
-- KEYS[6] adm_entry hash: admitted user -> entry
-- KEYS[7] win       zset: entry -> admission time (ms), the last second only
-- KEYS[8] stats     hash: rate_ema, admitted_total, joined_total, peak_active, ...
-- ARGV[1] user id
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"created"|"existing", "entry":n, "state":"waiting", "position":p,
--    "rate":r, "admit_per_second":a, "paused":0|1, "idle_timeout_ms":i, "now_ms":t}
--   {"status":"created"|"existing", "entry":n, "state":"admitted",
--    "admitted_until":ms, ...same rate fields}
--
-- Why one script: "is there a live entry for this user?", "append at the
-- tail", and "admit at once when nobody waits and capacity is free" must
-- be one step, or two joins of one user both append, or a newcomer
-- overtakes someone who joined a microsecond earlier. MULTI/EXEC cannot
-- branch on what it reads; a lock would serialize every join through a
-- network round trip. The order is an INCR here, never a client or server
-- clock, so FIFO holds across any number of instances.
--
-- Layout: a waiting user costs one sorted-set member (user -> entry: the
-- place by ZRANK and the entry by ZSCORE from one member) and one hash
-- field (last poll); the admitted, at most max_active, carry their entry
-- in a small hash beside their deadline.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'max_active', 'active_ttl_ms', 'idle_timeout_ms', 'paused')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local admit_per_second = tonumber(cfg[1])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'
local user = ARGV[1]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(redis.call('HGET', KEYS[8], 'rate_ema') or '0')

local function reply(status, entry, state, extra)
  local r = { status = status, entry = tonumber(entry), state = state, rate = rate,
              admit_per_second = admit_per_second, paused = paused and 1 or 0,
              idle_timeout_ms = idle_timeout_ms, now_ms = now }
  for k, v in pairs(extra) do r[k] = v end
  return cjson.encode(r)
end

-- An existing live entry: same place, fresh token (the caller signs it).
local deadline = redis.call('ZSCORE', KEYS[5], user)
if deadline then
  if tonumber(deadline) > now then
    return reply('existing', redis.call('HGET', KEYS[6], user), 'admitted',
                 { admitted_until = tonumber(deadline) })
  end
  -- Admission window over: that entry is gone.
  redis.call('ZREM', KEYS[5], user)
  redis.call('HDEL', KEYS[6], user)
end
local existing = redis.call('ZSCORE', KEYS[3], user)
if existing then
  local seen = redis.call('HGET', KEYS[4], user)
  if seen and now - tonumber(seen) <= idle_timeout_ms then
    redis.call('HSET', KEYS[4], user, now)
    return reply('existing', existing, 'waiting', { position = redis.call('ZRANK', KEYS[3], user) + 1 })
  end
  -- Idle past the timeout: that entry is gone.
  redis.call('ZREM', KEYS[3], user)
  redis.call('HDEL', KEYS[4], user)
  redis.call('HINCRBY', KEYS[8], 'evicted_total', 1)
end

local entry = redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[8], 'joined_total', 1)

-- Admit at once only if nobody waits, capacity is free and this second's
-- admission budget is not spent (the same sliding window admit_tick uses).
if not paused and redis.call('ZCARD', KEYS[3]) == 0 then
  local active = redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf')
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 1000)
  if active < max_active and redis.call('ZCARD', KEYS[7]) < admit_per_second then
    local until_ms = now + active_ttl_ms
    redis.call('ZADD', KEYS[5], until_ms, user)
    redis.call('HSET', KEYS[6], user, entry)
    redis.call('ZADD', KEYS[7], now, entry)
    redis.call('HINCRBY', KEYS[8], 'admitted_total', 1)
    if active + 1 > tonumber(redis.call('HGET', KEYS[8], 'peak_active') or '0') then
      redis.call('HSET', KEYS[8], 'peak_active', active + 1)
    end
    return reply('created', entry, 'admitted', { admitted_until = until_ms })
  end
end

redis.call('ZADD', KEYS[3], entry, user)
redis.call('HSET', KEYS[4], user, now)
return reply('created', entry, 'waiting', { position = redis.call('ZRANK', KEYS[3], user) + 1 })
