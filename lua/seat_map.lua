-- seat_map: which seats of a schedule are held (or being paid) and sold.
-- Runs after lib/schedule.lua (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
--
-- Returns (JSON):
--   {"status":"no_schedule"}
--   {"status":"ok","seats_total":N,"row_size":r,"held":[..],"sold":[..],
--    "available":N-#held-#sold,"expired":x,"expired_paying":y}
--       held and sold are sorted seat numbers; a paying seat is held
--
-- Cost: one HGETALL, O(held + sold), never O(N): free seats are absent.
-- A script so that due holds expire before the read.

local K = sched_keys(1)
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end

local expired, expired_paying = expire_due(K, now_ms())

local all = redis.call('HGETALL', K.seats)
local held, sold = {}, {}
for i = 1, #all, 2 do
  local seat, kind = tonumber(all[i]), string.sub(all[i + 1], 1, 1)
  if kind == 's' then sold[#sold + 1] = seat else held[#held + 1] = seat end
end
table.sort(held)
table.sort(sold)

return json({ status = 'ok', seats_total = cfg.seats, row_size = cfg.row_size,
              held = held, sold = sold, available = cfg.seats - #held - #sold,
              expired = expired, expired_paying = expired_paying })
