-- leave_queue: a user gives up their place (pre-queue, waiting or admitted).
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg
--             (open_ms); writes wait, poll, adm, adm_entry, stats
--             (left_total), pre_entry, draw
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON): {"status":"left"} or {"status":"gone"} (nothing to do:
-- no live entry, or the user's live entry is another one). A freed
-- admitted slot goes to the next in line on the next tick. Leaving the
-- pre-queue before opens_at also leaves the draw.

local entry, user = tonumber(ARGV[1]), ARGV[2]
local Q = queue_keys(1)
local now = now_ms()
local open_ms = tonumber(redis.call('HGET', Q.cfg, 'open_ms') or '0')

local score = tonumber(redis.call('ZSCORE', Q.wait, user))
local mine = score
if score and score < 1 then mine = tonumber(redis.call('HGET', Q.pre_entry, user)) end
if score and mine == entry then
  drop_waiting(Q, user, score, now, open_ms)
elseif tonumber(redis.call('HGET', Q.adm_entry, user)) == entry then
  redis.call('ZREM', Q.adm, user)
  redis.call('HDEL', Q.adm_entry, user)
  redis.call('HDEL', Q.poll, user)
else
  return cjson.encode({ status = 'gone' })
end
redis.call('HINCRBY', Q.stats, 'left_total', 1)
return cjson.encode({ status = 'left' })
