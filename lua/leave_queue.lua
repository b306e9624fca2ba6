-- leave_queue: a user gives up their place (waiting or admitted).
--
-- KEYS[1] wait     zset: waiting entry -> join sequence
-- KEYS[2] seen     zset: waiting entry -> last poll (ms)
-- KEYS[3] adm      zset: admitted entry -> deadline (ms)
-- KEYS[4] users    hash: user -> entry
-- KEYS[5] entries  hash: entry -> user
-- KEYS[6] stats    hash: left_total, ...
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON): {"status":"left"} or {"status":"gone"} (nothing to do).
-- A freed admitted slot goes to the next in line on the next tick.

local entry, user = ARGV[1], ARGV[2]
if redis.call('HGET', KEYS[5], entry) ~= user then
  return cjson.encode({ status = 'gone' })
end
redis.call('ZREM', KEYS[1], entry)
redis.call('ZREM', KEYS[2], entry)
redis.call('ZREM', KEYS[3], entry)
redis.call('HDEL', KEYS[5], entry)
if redis.call('HGET', KEYS[4], user) == entry then redis.call('HDEL', KEYS[4], user) end
redis.call('HINCRBY', KEYS[6], 'left_total', 1)
return cjson.encode({ status = 'left' })
