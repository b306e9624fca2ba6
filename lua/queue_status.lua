-- queue_status: where is this entry now? Each call is also a heartbeat.
--
-- KEYS[1] cfg       hash: event config
-- KEYS[2] wait      zset: waiting user -> entry
-- KEYS[3] poll      hash: waiting user -> last poll (ms)
-- KEYS[4] adm       zset: admitted user -> deadline (ms)
-- KEYS[5] adm_entry hash: admitted user -> entry
-- KEYS[6] stats     hash: rate_ema, ...
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
local entry, user = tonumber(ARGV[1]), ARGV[2]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(redis.call('HGET', KEYS[6], 'rate_ema') or '0')
local function reply(extra)
  local r = { status = 'ok', rate = rate, admit_per_second = tonumber(cfg[1]),
              paused = cfg[3] == '1' and 1 or 0, idle_timeout_ms = tonumber(cfg[2]), now_ms = now }
  for k, v in pairs(extra) do r[k] = v end
  return cjson.encode(r)
end
local function gone(counter)
  redis.call('HINCRBY', KEYS[6], counter, 1)
  return cjson.encode({ status = 'gone' })
end

local deadline = redis.call('ZSCORE', KEYS[4], user)
if deadline and tonumber(redis.call('HGET', KEYS[5], user)) == entry then
  if tonumber(deadline) > now then
    return reply({ state = 'admitted', admitted_until = tonumber(deadline) })
  end
  redis.call('ZREM', KEYS[4], user)
  redis.call('HDEL', KEYS[5], user)
  return gone('expired_total')
end

if tonumber(redis.call('ZSCORE', KEYS[2], user)) == entry then
  local seen = tonumber(redis.call('HGET', KEYS[3], user) or '0')
  if now - seen > tonumber(cfg[2]) then
    redis.call('ZREM', KEYS[2], user)
    redis.call('HDEL', KEYS[3], user)
    return gone('evicted_total')
  end
  redis.call('HSET', KEYS[3], user, now)
  return reply({ state = 'waiting', position = redis.call('ZRANK', KEYS[2], user) + 1 })
end
return cjson.encode({ status = 'gone' })
