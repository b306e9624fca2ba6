-- queue_status: where is this entry now? Each call is also a heartbeat.
--
-- KEYS[1] cfg       hash: event config (idle_timeout_ms, open_ms, close_ms, ...)
-- KEYS[2] wait      zset: waiting user -> score (draw score < 1, or entry)
-- KEYS[3] poll      hash: waiting or admitted user -> last activity (ms)
-- KEYS[4] adm       zset: admitted user -> deadline (ms)
-- KEYS[5] adm_entry hash: admitted user -> entry
-- KEYS[6] stats     hash: rate_ema, rate_var, ...
-- KEYS[7] pre_entry hash: pre-queue user -> entry
-- KEYS[8] draw      zset: the draw's entries (frozen at opens_at)
-- KEYS[9..] the event's schedule cfg hashes (seats, held, sold)
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"gone"}      left, evicted or released as idle, admission
--                          window over, sale closed while waiting,
--                          completed by payment, or not this user's entry
--   {"status":"ok","state":"prequeue", sold_out, rate fields...}
--   {"status":"ok","state":"waiting","position":p, sold_out, rate fields...}
--   {"status":"ok","state":"admitted","admitted_until":ms, sold_out, rate fields...}
--
-- An idle entry is dropped here too, not only by admit_tick, so the
-- idle timeout holds even when no tick runs; the same goes for an
-- admitted user silent for idle_timeout_ms (released: the slot goes to
-- the next in line).

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'idle_timeout_ms', 'paused', 'open_ms', 'close_ms')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local entry, user = tonumber(ARGV[1]), ARGV[2]
local idle_timeout_ms = tonumber(cfg[2])
local open_ms, close_ms = tonumber(cfg[4] or '0'), tonumber(cfg[5] or '0')

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function sold_out()
  local held = 0
  for i = 9, #KEYS do
    local s = redis.call('HMGET', KEYS[i], 'seats', 'held', 'sold')
    local seats, h, sold = tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0')
    if seats - h - sold > 0 then return nil end
    held = held + h
  end
  if #KEYS < 9 then return nil end
  return held > 0 and 'for_now' or 'final'
end

local function reply(extra)
  local s = redis.call('HMGET', KEYS[6], 'rate_ema', 'rate_var')
  local r = { status = 'ok', rate = tonumber(s[1] or '0'), rate_var = tonumber(s[2] or '0'),
              admit_per_second = tonumber(cfg[1]), paused = cfg[3] == '1' and 1 or 0,
              idle_timeout_ms = idle_timeout_ms, now_ms = now, sold_out = sold_out() or cjson.null }
  for k, v in pairs(extra) do r[k] = v end
  return cjson.encode(r)
end
local function gone(counter)
  redis.call('HINCRBY', KEYS[6], counter, 1)
  return cjson.encode({ status = 'gone' })
end

local deadline = redis.call('ZSCORE', KEYS[4], user)
if deadline and tonumber(redis.call('HGET', KEYS[5], user)) == entry then
  local seen = tonumber(redis.call('HGET', KEYS[3], user) or now)
  if tonumber(deadline) <= now or now - seen > idle_timeout_ms then
    redis.call('ZREM', KEYS[4], user)
    redis.call('HDEL', KEYS[5], user)
    redis.call('HDEL', KEYS[3], user)
    return gone(tonumber(deadline) <= now and 'expired_total' or 'released_total')
  end
  redis.call('HSET', KEYS[3], user, now)
  return reply({ state = 'admitted', admitted_until = tonumber(deadline) })
end

local score = tonumber(redis.call('ZSCORE', KEYS[2], user))
if score then
  local mine = score
  if score < 1 then mine = tonumber(redis.call('HGET', KEYS[7], user)) end
  if mine == entry then
    local seen = tonumber(redis.call('HGET', KEYS[3], user) or '0')
    local closed = close_ms > 0 and now >= close_ms
    if closed or now - seen > idle_timeout_ms then
      redis.call('ZREM', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      if score < 1 then
        redis.call('HDEL', KEYS[7], user)
        if now < open_ms then redis.call('ZREM', KEYS[8], user) end
      end
      return gone(closed and 'closed_total' or 'evicted_total')
    end
    redis.call('HSET', KEYS[3], user, now)
    if score < 1 and now < open_ms then
      return reply({ state = 'prequeue' })
    end
    return reply({ state = 'waiting', position = redis.call('ZRANK', KEYS[2], user) + 1 })
  end
end
return cjson.encode({ status = 'gone' })
