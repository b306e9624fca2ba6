-- server_time: the one clock every instance agrees on. Runs after
-- lib/queue.lua (prelude: now_ms).
--
-- KEYS: none
-- ARGV: none
-- Returns (JSON): {"now_ms": <Redis TIME in milliseconds>}
--
-- Deadlines and admission ticks are decided by Redis TIME read inside the
-- scripts; this script lets Rust code (readiness, tests) read the same clock.
return cjson.encode({ now_ms = now_ms() })
