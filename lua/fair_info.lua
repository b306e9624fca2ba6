-- fair_info: an event's fair-start state by Redis time, for the draw and
-- challenge endpoints. Read-only.
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg
--             (pre_ms, open_ms, close_ms, pow_bits, seed) and draw
-- ARGV: none
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"ok","now_ms":t,"pre_ms":p,"open_ms":o,"close_ms":c,
--    "pow_bits":b,"seed":hex,"entries":n}
-- `entries` is the draw's size (final once now_ms >= open_ms). The caller
-- decides what to publish: the seed only after open_ms.

local Q = queue_keys(1)
local v = redis.call('HMGET', Q.cfg, 'pre_ms', 'open_ms', 'close_ms', 'pow_bits', 'seed', 'admit_per_second')
if not v[6] then
  return cjson.encode({ status = 'no_event' })
end
return cjson.encode({
  status = 'ok',
  now_ms = now_ms(),
  pre_ms = tonumber(v[1] or '0'), open_ms = tonumber(v[2] or '0'), close_ms = tonumber(v[3] or '0'),
  pow_bits = tonumber(v[4] or '0'), seed = v[5] or '',
  entries = redis.call('ZCARD', Q.draw),
})
