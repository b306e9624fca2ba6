-- queue_figures: live figures of one event's waiting room (admin, metrics).
--
-- KEYS[1] cfg    hash: event config
-- KEYS[2] wait   zset: waiting entries
-- KEYS[3] adm    zset: admitted entry -> deadline (ms)
-- KEYS[4] stats  hash: totals and rate_ema
-- ARGV: none
--
-- Returns (JSON): {"status":"no_event"} or {"status":"ok","waiting":w,
--   "admitted_now":a,"admitted_total":t,"joined_total":j,"evicted_total":e,
--   "expired_total":x,"left_total":l,"rate":r,"peak_active":p,
--   "prequeue":q}  (q: entries still in the pre-queue, scored below 1)
-- Read-only.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return cjson.encode({ status = 'no_event' })
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[4], 'admitted_total', 'joined_total', 'evicted_total', 'expired_total', 'left_total', 'rate_ema', 'peak_active')
return cjson.encode({
  status = 'ok',
  waiting = redis.call('ZCARD', KEYS[2]),
  admitted_now = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf'),
  admitted_total = tonumber(s[1] or '0'),
  joined_total = tonumber(s[2] or '0'),
  evicted_total = tonumber(s[3] or '0'),
  expired_total = tonumber(s[4] or '0'),
  left_total = tonumber(s[5] or '0'),
  rate = tonumber(s[6] or '0'),
  peak_active = tonumber(s[7] or '0'),
  prequeue = redis.call('ZCOUNT', KEYS[2], '-inf', '(1'),
})
