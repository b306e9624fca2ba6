-- server_time: the one clock every instance agrees on.
--
-- KEYS: none
-- ARGV: none
-- Returns (JSON): {"now_ms": <Redis TIME in milliseconds>}
--
-- Deadlines and admission ticks are decided by Redis TIME read inside the
-- scripts; this script lets Rust code (readiness, tests) read the same clock.
local t = redis.call('TIME')
return cjson.encode({ now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) })
