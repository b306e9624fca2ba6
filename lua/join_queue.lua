-- join_queue: put users in an event's waiting room (or its pre-queue), or
-- return their places. One call carries every join of one event that one
-- instance gathered while its previous call was in flight
-- (src/queue/coalesce.rs); each is decided as if alone, in the order
-- given, so two joins of one user in one call make one entry.
--
-- KEYS[1..10]    Q, the queue (prelude lib/queue.lua): all ten
--                (cfg's auto_admit_per_second, the autopilot's rate,
--                replaces admit_per_second when set)
-- KEYS[10+i]     join i's pow_used string: its challenge, once used (any
--                key name when its challenge id is empty; then it is not
--                touched), i = 1..n
-- KEYS[11+n..]   the event's schedule cfg hashes (seats, held, sold): sold
--                out?
-- ARGV[1]        n, the number of joins
-- ARGV[2+5(i-1)..6+5(i-1)], join i:
--                user id;
--                the user's draw score, HMAC-SHA256(seed, user) scaled to
--                [0, 1);
--                difficulty the caller's proof of work meets (0 = no
--                proof);
--                the challenge's expiry (Redis ms; 0 = no proof);
--                the challenge's id ("" = no proof)
--
-- Returns (JSON), for the whole call:
--   {"status":"no_event"}
--   {"status":"sale_not_open","opens_at":ms,"prequeue_opens_at":ms|0}
--   {"status":"sale_closed"}
--   {"status":"ok", "sold_out":null|"final"|"for_now", "rate":r,
--    "rate_var":v, "admit_per_second":a, "paused":0|1,
--    "idle_timeout_ms":i, "now_ms":t, "joins":[join, ...]}  in ARGV order,
-- each join one of
--   {"status":"challenge_failed","reason":"missing"|"expired"|"reused"}
--   {"status":"sold_out"}         final: no free seat and none held
--   {"status":"created"|"existing", "entry":n,
--    "state":"prequeue"|"waiting"|"admitted", "position":p (waiting),
--    "admitted_until":ms (admitted)}
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
  return '{"status":"no_event"}'
end
local admit_per_second = rate_in_use(cfg[1], cfg[10])
local max_active = tonumber(cfg[2])
local active_ttl_ms = tonumber(cfg[3])
local idle_timeout_ms = tonumber(cfg[4])
local paused = cfg[5] == '1'
local pre_ms, open_ms, close_ms = tonumber(cfg[6] or '0'), tonumber(cfg[7] or '0'), tonumber(cfg[8] or '0')
local pow_bits = tonumber(cfg[9] or '0')
local n = tonumber(ARGV[1])
if not n or n < 1 or #ARGV ~= 1 + 5 * n then
  return redis.error_reply('ERR boxoffice script: bad argument: join count')
end
for i = 1, n do
  local draw_score = tonumber(ARGV[3 + 5 * (i - 1)])
  if not draw_score or draw_score < 0 or draw_score >= 1 then
    return redis.error_reply('ERR boxoffice script: bad argument: draw score')
  end
end

local now = now_ms()

-- The sale window, by Redis time.
local first_open = (pre_ms > 0 and pre_ms) or open_ms
if first_open > 0 and now < first_open then
  return cjson.encode({ status = 'sale_not_open', opens_at = open_ms, prequeue_opens_at = pre_ms })
end
if close_ms > 0 and now >= close_ms then
  return '{"status":"sale_closed"}'
end
local in_prequeue = pre_ms > 0 and now < open_ms

-- Sold out: no free seat in any schedule; final when none is held either.
-- (Joins change no seat: one answer for the whole call.)
local soldout = sold_out(11 + n)

-- Figures the joins of this call share, read once and then kept up to
-- date here (nothing but this call writes these keys while it runs): the
-- waiting count, the admitted count and this second's admissions (the
-- window, trimmed once: one clock for the call); the counters and the
-- heartbeats are written once, at the end of the call (a later join of
-- the same user in this call reads its heartbeat from `beats`).
local wait_n, active_n, win_n
local joined_n, admitted_n = 0, 0
local beats = new_beats(now)
-- Numbers written as arguments, as text made once (int(): not Redis
-- 7.0's %.17g of a Lua number).
local now_s = int(now)
local function waiting_count()
  if not wait_n then wait_n = redis.call('ZCARD', Q.wait) end
  return wait_n
end
local function added_waiting()
  if wait_n then wait_n = wait_n + 1 end
end

-- One join, decided as if alone (a JSON object).
local function join(user, draw_score, proven_bits, pow_expires, pow_id, pow_key)
  -- Proof of work: the caller checked the signature and the hash; expiry
  -- (by Redis time) and single use are decided here.
  if pow_bits > 0 then
    if pow_id == '' or proven_bits < pow_bits then
      return '{"status":"challenge_failed","reason":"missing"}'
    end
    if pow_expires <= now then
      return '{"status":"challenge_failed","reason":"expired"}'
    end
    if redis.call('EXISTS', pow_key) == 1 then
      return '{"status":"challenge_failed","reason":"reused"}'
    end
  end

  -- `state` is the entry's place as JSON members (',"state":...'); the
  -- challenge is spent with the join it paid for.
  local function reply(status, entry, state)
    if pow_bits > 0 then
      redis.call('SET', pow_key, '1', 'PX', math.max(pow_expires - now, 1))
    end
    return '{"status":"' .. status .. '","entry":' .. int(tonumber(entry)) .. state .. '}'
  end

  -- An existing live entry: same place, fresh token (the caller signs it).
  local deadline = redis.call('ZSCORE', Q.adm, user)
  if deadline then
    if tonumber(deadline) > now then
      beat(beats, user)
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
    local last = beats.seen[user] and now or redis.call('HGET', Q.poll, user)
    if last and now - tonumber(last) <= idle_timeout_ms then
      beat(beats, user)
      if score < 1 and now < open_ms then
        return reply('existing', entry, ',"state":"prequeue"')
      end
      return reply('existing', entry, ',"state":"waiting","position":' .. int(redis.call('ZRANK', Q.wait, user) + 1))
    end
    -- Idle past the timeout: that entry is gone (and, before the draw, out
    -- of the draw too).
    drop_waiting(Q, user, score, now, open_ms)
    wait_n = nil
    redis.call('HINCRBY', Q.stats, 'evicted_total', 1)
  end

  if soldout == 'final' then
    return '{"status":"sold_out"}'
  end

  local entry = redis.call('INCR', Q.seq)
  local entry_s = int(entry)
  joined_n = joined_n + 1

  if in_prequeue then
    redis.call('ZADD', Q.wait, draw_score, user)
    redis.call('HSET', Q.pre_entry, user, entry_s)
    redis.call('ZADD', Q.draw, draw_score, user)
    added_waiting()
    beat(beats, user)
    return reply('created', entry, ',"state":"prequeue"')
  end

  -- Admit at once only if nobody waits, capacity is free and this second's
  -- admission budget is not spent (the same sliding window admit_tick uses).
  if not paused and waiting_count() == 0 then
    if not active_n then
      active_n = redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf')
      redis.call('ZREMRANGEBYSCORE', Q.win, '-inf', now - 1000)
      win_n = redis.call('ZCARD', Q.win)
    end
    if active_n < max_active and win_n < admit_per_second then
      local until_ms = now + active_ttl_ms
      redis.call('ZADD', Q.adm, int(until_ms), user)
      redis.call('HSET', Q.adm_entry, user, entry_s)
      beat(beats, user)
      redis.call('ZADD', Q.win, now_s, entry_s)
      active_n, win_n, admitted_n = active_n + 1, win_n + 1, admitted_n + 1
      return reply('created', entry, ',"state":"admitted","admitted_until":' .. int(until_ms))
    end
  end

  redis.call('ZADD', Q.wait, entry_s, user)
  added_waiting()
  beat(beats, user)
  return reply('created', entry, ',"state":"waiting","position":' .. int(redis.call('ZRANK', Q.wait, user) + 1))
end

local joins = {}
for i = 1, n do
  local a = 1 + 5 * (i - 1)
  joins[i] = join(ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]) or 0, tonumber(ARGV[a + 4]) or 0,
                  ARGV[a + 5] or '', KEYS[10 + i])
end

write_beats(beats, Q.poll)
if joined_n > 0 then redis.call('HINCRBY', Q.stats, 'joined_total', joined_n) end
if admitted_n > 0 then
  redis.call('HINCRBY', Q.stats, 'admitted_total', admitted_n)
  -- active_n only grew in this call: its last value is the call's peak.
  if active_n > tonumber(redis.call('HGET', Q.stats, 'peak_active') or '0') then
    redis.call('HSET', Q.stats, 'peak_active', active_n)
  end
end
local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'rate_var')
return '{"status":"ok",' .. pace_json(admit_per_second, paused, idle_timeout_ms, now, stats, soldout)
  .. ',"joins":[' .. table.concat(joins, ',') .. ']}'
