-- leave_queue: a user gives up their place (pre-queue, waiting or admitted).
--
-- KEYS[1] wait      zset: waiting user -> score (draw score < 1, or entry)
-- KEYS[2] poll      hash: waiting or admitted user -> last activity (ms)
-- KEYS[3] adm       zset: admitted user -> deadline (ms)
-- KEYS[4] adm_entry hash: admitted user -> entry
-- KEYS[5] stats     hash: left_total, ...
-- KEYS[6] pre_entry hash: pre-queue user -> entry
-- KEYS[7] draw      zset: the draw's entries (frozen at opens_at)
-- KEYS[8] cfg       hash: event config (open_ms)
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON): {"status":"left"} or {"status":"gone"} (nothing to do:
-- no live entry, or the user's live entry is another one). A freed
-- admitted slot goes to the next in line on the next tick. Leaving the
-- pre-queue before opens_at also leaves the draw.

local entry, user = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open_ms = tonumber(redis.call('HGET', KEYS[8], 'open_ms') or '0')

local score = tonumber(redis.call('ZSCORE', KEYS[1], user))
local mine = score
if score and score < 1 then mine = tonumber(redis.call('HGET', KEYS[6], user)) end
if score and mine == entry then
  redis.call('ZREM', KEYS[1], user)
  redis.call('HDEL', KEYS[2], user)
  if score < 1 then
    redis.call('HDEL', KEYS[6], user)
    if now < open_ms then redis.call('ZREM', KEYS[7], user) end
  end
elseif tonumber(redis.call('HGET', KEYS[4], user)) == entry then
  redis.call('ZREM', KEYS[3], user)
  redis.call('HDEL', KEYS[4], user)
  redis.call('HDEL', KEYS[2], user)
else
  return cjson.encode({ status = 'gone' })
end
redis.call('HINCRBY', KEYS[5], 'left_total', 1)
return cjson.encode({ status = 'left' })
