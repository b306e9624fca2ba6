-- leave_queue: a user gives up their place (waiting or admitted).
--
-- KEYS[1] wait      zset: waiting user -> entry
-- KEYS[2] poll      hash: waiting user -> last poll (ms)
-- KEYS[3] adm       zset: admitted user -> deadline (ms)
-- KEYS[4] adm_entry hash: admitted user -> entry
-- KEYS[5] stats     hash: left_total, ...
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON): {"status":"left"} or {"status":"gone"} (nothing to do:
-- no live entry, or the user's live entry is another one). A freed
-- admitted slot goes to the next in line on the next tick.

local entry, user = tonumber(ARGV[1]), ARGV[2]
if tonumber(redis.call('ZSCORE', KEYS[1], user)) == entry then
  redis.call('ZREM', KEYS[1], user)
  redis.call('HDEL', KEYS[2], user)
elseif tonumber(redis.call('HGET', KEYS[4], user)) == entry then
  redis.call('ZREM', KEYS[3], user)
  redis.call('HDEL', KEYS[4], user)
else
  return cjson.encode({ status = 'gone' })
end
redis.call('HINCRBY', KEYS[5], 'left_total', 1)
return cjson.encode({ status = 'left' })
