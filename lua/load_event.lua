-- load_event: write an event's catalog into its Redis working copy.
-- Used on create, on every admission-settings change, and by the
-- reconciler after a Redis loss; idempotent, and it never touches the
-- live counters (held, sold) or any queue or seat state.
--
-- KEYS[1]          cfg: event config hash
-- KEYS[2 + 2i]     schedule i cfg hash       (i = 0 .. #schedules-1)
-- KEYS[3 + 2i]     schedule i seat bitmap
-- ARGV[1]          event JSON: {name, admit_per_second, max_active,
--                  active_ttl_ms, idle_timeout_ms, paused (0|1),
--                  schedules: "id,id,...", public: "<public JSON>",
--                  pre_ms, open_ms, close_ms (sale window, Redis ms, 0 = none),
--                  pow_bits (proof-of-work difficulty, 0 = off),
--                  seed (the draw's seed, hex; never changes),
--                  admission_mode ("fixed"|"auto"), target_p99_ms,
--                  min_admit_per_second, max_admit_per_second,
--                  auto_start (the autopilot's first rate)}
-- ARGV[2 + i]      schedule i JSON: {starts_at, seats, row_size, price,
--                  hold_ms, max_per_user} (the admin view of the schedule,
--                  whose other fields are not read)
--
-- Returns (JSON): {"status":"ok"} or {"status":"invalid","reason":...}
-- (the key and argument counts do not match; nothing written).

local n = #ARGV - 1
if #KEYS ~= 1 + 2 * n then
  return cjson.encode({ status = 'invalid', reason = 'keys and schedules do not match' })
end
local ev = cjson.decode(ARGV[1])
local schedules = {}
for i = 1, n do schedules[i] = cjson.decode(ARGV[1 + i]) end

redis.call('HSET', KEYS[1],
  'name', ev.name,
  'admit_per_second', ev.admit_per_second,
  'max_active', ev.max_active,
  'active_ttl_ms', ev.active_ttl_ms,
  'idle_timeout_ms', ev.idle_timeout_ms,
  'paused', ev.paused,
  'schedules', ev.schedules,
  'public', ev.public,
  'pre_ms', ev.pre_ms or 0,
  'open_ms', ev.open_ms or 0,
  'close_ms', ev.close_ms or 0,
  'pow_bits', ev.pow_bits or 0,
  'admission_mode', ev.admission_mode or 'fixed',
  'target_p99_ms', ev.target_p99_ms or 50,
  'min_admit_per_second', ev.min_admit_per_second or 1,
  'max_admit_per_second', ev.max_admit_per_second or ev.admit_per_second)
-- The autopilot's rate (src/queue/autopilot.rs) exists only in auto mode:
-- admit_tick and join_queue use it instead of admit_per_second when set.
-- Switching auto on starts it at auto_start; it keeps its value across
-- other changes; switching auto off removes it.
if ev.admission_mode == 'auto' then
  redis.call('HSETNX', KEYS[1], 'auto_admit_per_second', ev.auto_start or ev.admit_per_second)
else
  redis.call('HDEL', KEYS[1], 'auto_admit_per_second')
end
-- The seed never changes once set: it is what the commitment names.
if ev.seed then redis.call('HSETNX', KEYS[1], 'seed', ev.seed) end
for i = 1, n do
  local s = schedules[i]
  local key = KEYS[2 * i]
  redis.call('HSET', key,
    'starts_at', s.starts_at, 'seats', s.seats, 'row_size', s.row_size,
    'price', s.price, 'hold_ms', s.hold_ms, 'max_per_user', s.max_per_user,
    -- The same five as one field, for place_hold's one read (static_cfg
    -- in lib/schedule.lua).
    'static', cjson.encode({ seats = s.seats, row_size = s.row_size, price = s.price,
                             hold_ms = s.hold_ms, max_per_user = s.max_per_user }))
  redis.call('HSETNX', key, 'held', 0)
  redis.call('HSETNX', key, 'sold', 0)
  -- Bit 0 is never a seat; keeping it set lets BITPOS find real seats only.
  redis.call('SETBIT', KEYS[2 * i + 1], 0, 1)
end
return cjson.encode({ status = 'ok' })
