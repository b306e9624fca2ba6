-- join_queue: put a user in an event's waiting room (or its pre-queue),
-- or return their place.
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): all ten
--                (cfg's auto_admit_per_second, the autopilot's rate, replaces
--                admit_per_second when set)
-- KEYS[11] pow_used string: this join's challenge, once used (any key
--                   name when ARGV[5] is empty; then it is not touched)
-- KEYS[12..] the event's schedule cfg hashes (seats, held, sold): sold out?
-- ARGV[1] user id
-- ARGV[2] the user's draw score, HMAC-SHA256(seed, user) scaled to [0, 1)
-- ARGV[3] difficulty the caller's proof of work meets (0 = no proof)
-- ARGV[4] the challenge's expiry (Redis ms; 0 = no proof)
-- ARGV[5] the challenge's id ("" = no proof)
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"sale_not_open","opens_at":ms,"prequeue_opens_at":ms|0}
--   {"status":"sale_closed"}
--   {"status":"challenge_failed","reason":"missing"|"expired"|"reused"}
--   {"status":"sold_out"}         final: no free seat and none held
--   {"status":"created"|"existing", "entry":n,
--    "state":"prequeue"|"waiting"|"admitted", "position":p (waiting),
--    "admitted_until":ms (admitted), "sold_out":null|"final"|"for_now",
--    "rate":r, "rate_var":v, "admit_per_second":a, "paused":0|1,
--    "idle_timeout_ms":i, "now_ms":t}
--
-- Why one script: "is there a live entry for this user?", "append at the
-- tail", and "admit at once when nobody waits and capacity is free" must
-- be one step, or two joins of one user both append, or a newcomer
-- overtakes someone who joined a microsecond earlier. MULTI/EXEC cannot
-- branch on what it reads; a lock would serialize every join through a
-- network round trip. The order is an INCR here, never a client or server
-- clock, so FIFO holds across any number of instances. The sale window is
-- decided here by Redis TIME, so every instance agrees when the pre-queue
-- ends; the challenge is spent here, with the join it paid for.
--
-- Fair start: a pre-queue entry's score is its draw score (< 1), a later
-- entry's its join sequence (>= 1), so the pre-queue sorts ahead of
-- everyone who joins after opens_at in the one sorted set, in draw order,
-- without anything moving at opens_at. Re-joining finds the same member.

local Q = queue_keys(1)
local cfg = redis.call('HMGET', Q.cfg, 'admit_per_second', 'max_active', 'active_ttl_ms',
                       'idle_timeout_ms', 'paused', 'pre_ms', 'open_ms', 'close_ms', 'pow_bits',
                       'auto_admit_per_second')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local admit_per_second = rate_in_use(cfg[1], cfg[10])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'
local pre_ms, open_ms, close_ms = tonumber(cfg[6] or '0'), tonumber(cfg[7] or '0'), tonumber(cfg[8] or '0')
local pow_bits = tonumber(cfg[9] or '0')
local user = ARGV[1]
local draw_score = tonumber(ARGV[2])
local proven_bits, pow_expires, pow_id = tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0, ARGV[5] or ''
if not draw_score or draw_score < 0 or draw_score >= 1 then
  return redis.error_reply('ERR boxoffice script: bad argument: draw score')
end

local now = now_ms()

-- The sale window, by Redis time.
local first_open = (pre_ms > 0 and pre_ms) or open_ms
if first_open > 0 and now < first_open then
  return cjson.encode({ status = 'sale_not_open', opens_at = open_ms, prequeue_opens_at = pre_ms })
end
if close_ms > 0 and now >= close_ms then
  return cjson.encode({ status = 'sale_closed' })
end
local in_prequeue = pre_ms > 0 and now < open_ms

-- Proof of work: the caller checked the signature and the hash; expiry
-- (by Redis time) and single use are decided here.
if pow_bits > 0 then
  if pow_id == '' or proven_bits < pow_bits then
    return cjson.encode({ status = 'challenge_failed', reason = 'missing' })
  end
  if pow_expires <= now then
    return cjson.encode({ status = 'challenge_failed', reason = 'expired' })
  end
  if redis.call('EXISTS', KEYS[11]) == 1 then
    return cjson.encode({ status = 'challenge_failed', reason = 'reused' })
  end
end

-- Sold out: no free seat in any schedule; final when none is held either.
local soldout = sold_out(12)

local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'rate_var')

-- `state` is the entry's place as JSON members (',"state":...').
local function reply(status, entry, state)
  if pow_bits > 0 then
    redis.call('SET', KEYS[11], '1', 'PX', math.max(pow_expires - now, 1))
  end
  return '{"status":"' .. status .. '","entry":' .. int(tonumber(entry)) .. ','
    .. pace_json(admit_per_second, paused, idle_timeout_ms, now, stats, soldout) .. state .. '}'
end

-- An existing live entry: same place, fresh token (the caller signs it).
local deadline = redis.call('ZSCORE', Q.adm, user)
if deadline then
  if tonumber(deadline) > now then
    redis.call('HSET', Q.poll, user, now)
    return reply('existing', redis.call('HGET', Q.adm_entry, user),
                 ',"state":"admitted","admitted_until":' .. int(tonumber(deadline)))
  end
  -- Admission window over: that entry is gone.
  redis.call('ZREM', Q.adm, user)
  redis.call('HDEL', Q.adm_entry, user)
  redis.call('HDEL', Q.poll, user)
end
local score = redis.call('ZSCORE', Q.wait, user)
if score then
  score = tonumber(score)
  local entry = score
  if score < 1 then entry = redis.call('HGET', Q.pre_entry, user) end
  local seen = redis.call('HGET', Q.poll, user)
  if seen and now - tonumber(seen) <= idle_timeout_ms then
    redis.call('HSET', Q.poll, user, now)
    if score < 1 and now < open_ms then
      return reply('existing', entry, ',"state":"prequeue"')
    end
    return reply('existing', entry, ',"state":"waiting","position":' .. int(redis.call('ZRANK', Q.wait, user) + 1))
  end
  -- Idle past the timeout: that entry is gone (and, before the draw, out
  -- of the draw too).
  redis.call('ZREM', Q.wait, user)
  redis.call('HDEL', Q.poll, user)
  if score < 1 then
    redis.call('HDEL', Q.pre_entry, user)
    if now < open_ms then redis.call('ZREM', Q.draw, user) end
  end
  redis.call('HINCRBY', Q.stats, 'evicted_total', 1)
end

if soldout == 'final' then
  return cjson.encode({ status = 'sold_out' })
end

local entry = redis.call('INCR', Q.seq)
redis.call('HINCRBY', Q.stats, 'joined_total', 1)

if in_prequeue then
  redis.call('ZADD', Q.wait, draw_score, user)
  redis.call('HSET', Q.pre_entry, user, entry)
  redis.call('ZADD', Q.draw, draw_score, user)
  redis.call('HSET', Q.poll, user, now)
  return reply('created', entry, ',"state":"prequeue"')
end

-- Admit at once only if nobody waits, capacity is free and this second's
-- admission budget is not spent (the same sliding window admit_tick uses).
if not paused and redis.call('ZCARD', Q.wait) == 0 then
  local active = redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf')
  redis.call('ZREMRANGEBYSCORE', Q.win, '-inf', now - 1000)
  if active < max_active and redis.call('ZCARD', Q.win) < admit_per_second then
    local until_ms = now + active_ttl_ms
    redis.call('ZADD', Q.adm, until_ms, user)
    redis.call('HSET', Q.adm_entry, user, entry)
    redis.call('HSET', Q.poll, user, now)
    redis.call('ZADD', Q.win, now, entry)
    redis.call('HINCRBY', Q.stats, 'admitted_total', 1)
    if active + 1 > tonumber(redis.call('HGET', Q.stats, 'peak_active') or '0') then
      redis.call('HSET', Q.stats, 'peak_active', active + 1)
    end
    return reply('created', entry, ',"state":"admitted","admitted_until":' .. int(until_ms))
  end
end

redis.call('ZADD', Q.wait, entry, user)
redis.call('HSET', Q.poll, user, now)
return reply('created', entry, ',"state":"waiting","position":' .. int(redis.call('ZRANK', Q.wait, user) + 1))
