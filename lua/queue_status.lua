-- queue_status: where is this entry now? Each call is also a heartbeat.
--
-- KEYS[1] cfg      hash: event config
-- KEYS[2] wait     zset: waiting entry -> join sequence
-- KEYS[3] seen     zset: waiting entry -> last poll (ms)
-- KEYS[4] adm      zset: admitted entry -> deadline (ms)
-- KEYS[5] users    hash: user -> entry
-- KEYS[6] entries  hash: entry -> user
-- KEYS[7] stats    hash: rate_ema, ...
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"gone"}      left, evicted as idle, admission window over,
--                          completed by payment, or not this user's entry
--   {"status":"ok","state":"waiting","position":p, rate fields...}
--   {"status":"ok","state":"admitted","admitted_until":ms, rate fields...}
--
-- An idle entry is dropped here too, not only by admit_tick, so the
-- idle timeout holds even when no tick runs.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'idle_timeout_ms', 'paused')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local entry, user = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[6], entry) ~= user then
  return cjson.encode({ status = 'gone' })
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle_timeout_ms = tonumber(cfg[2])
local rate = tonumber(redis.call('HGET', KEYS[7], 'rate_ema') or '0')
local function reply(extra)
  local r = { status = 'ok', rate = rate, admit_per_second = tonumber(cfg[1]),
              paused = cfg[3] == '1' and 1 or 0, idle_timeout_ms = idle_timeout_ms, now_ms = now }
  for k, v in pairs(extra) do r[k] = v end
  return cjson.encode(r)
end

local function drop(counter)
  redis.call('ZREM', KEYS[2], entry)
  redis.call('ZREM', KEYS[3], entry)
  redis.call('ZREM', KEYS[4], entry)
  redis.call('HDEL', KEYS[6], entry)
  if redis.call('HGET', KEYS[5], user) == entry then redis.call('HDEL', KEYS[5], user) end
  redis.call('HINCRBY', KEYS[7], counter, 1)
  return cjson.encode({ status = 'gone' })
end

local deadline = redis.call('ZSCORE', KEYS[4], entry)
if deadline then
  if tonumber(deadline) > now then
    return reply({ state = 'admitted', admitted_until = tonumber(deadline) })
  end
  return drop('expired_total')
end

local rank = redis.call('ZRANK', KEYS[2], entry)
if rank then
  local seen = tonumber(redis.call('ZSCORE', KEYS[3], entry) or '0')
  if now - seen > idle_timeout_ms then
    return drop('evicted_total')
  end
  redis.call('ZADD', KEYS[3], now, entry)
  return reply({ state = 'waiting', position = rank + 1 })
end
return cjson.encode({ status = 'gone' })
