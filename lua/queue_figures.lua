-- queue_figures: live figures of one event's waiting room (admin, metrics).
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg, wait,
--             adm, stats (totals and rate_ema)
-- ARGV: none
--
-- Returns (JSON): {"status":"no_event"} or {"status":"ok","waiting":w,
--   "admitted_now":a,"admitted_total":t,"joined_total":j,"evicted_total":e,
--   "expired_total":x,"left_total":l,"rate":r,"peak_active":p,
--   "prequeue":q}  (q: entries still in the pre-queue, scored below 1)
-- Read-only.

local Q = queue_keys(1)
if redis.call('EXISTS', Q.cfg) == 0 then
  return cjson.encode({ status = 'no_event' })
end
local now = now_ms()
local s = redis.call('HMGET', Q.stats, 'admitted_total', 'joined_total', 'evicted_total', 'expired_total', 'left_total', 'rate_ema', 'peak_active')
return cjson.encode({
  status = 'ok',
  waiting = redis.call('ZCARD', Q.wait),
  admitted_now = redis.call('ZCOUNT', Q.adm, '(' .. now, '+inf'),
  admitted_total = tonumber(s[1] or '0'),
  joined_total = tonumber(s[2] or '0'),
  evicted_total = tonumber(s[3] or '0'),
  expired_total = tonumber(s[4] or '0'),
  left_total = tonumber(s[5] or '0'),
  rate = tonumber(s[6] or '0'),
  peak_active = tonumber(s[7] or '0'),
  prequeue = redis.call('ZCOUNT', Q.wait, '-inf', '(1'),
})
