-- seat_map: every seat's state of a schedule, as two bitmaps.
-- Runs after lib/schedule.lua (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken (held, paying or sold)
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
-- KEYS[8] sold      bitmap: bit i = seat i sold
-- KEYS[9] adm       zset: queue, admitted user -> deadline (ms)  } with a
-- KEYS[10] wait     zset: queue, waiting user -> entry           } buyer
-- KEYS[11] adm_entry hash: queue, admitted user -> entry         } only
-- KEYS[12] poll     hash: queue, user -> last activity (written)  }
-- KEYS[13] ready    string: the event's ready mark               }
-- ARGV[1] buyer's user id, or none (operators, the audit)
-- ARGV[2] buyer's queue entry (from the verified token)
--
-- Returns an array:
--   { '{"status":"restoring"}' }  (buyer only) the event is not ready in
--       Redis: its sold seats may not all be back, so no map is shown
--   { '{"status":"not_admitted","position":p}' } or { '{"status":"queue_gone"}' }
--       the buyer is not admitted right now (checked first, so a buyer's
--       read costs one round trip)
--   { '{"status":"no_schedule"}' }
--   { '{"status":"ok","seats_total":N,"row_size":r,"available":a,
--       "expired":x,"expired_paying":y}', <map bytes>, <sold bytes> }
--   Bit i (Redis' bit order: the high bit of byte 0 is bit 0) of map is
--   set for a seat held, being paid or sold; of sold, for a seat sold. A
--   bitmap shorter than the schedule reads as zeros beyond its end.
--
-- Cost: two GETs of N/8 bytes each (188 bytes for 1,500 seats), whatever
-- the number of holds and sales; the caller renders the seats. A script so
-- that due holds expire before the read.

if ARGV[1] then
  if restoring(KEYS[13]) then return { json({ status = 'restoring' }) } end
  local refused = admission(buyer_keys(9), ARGV[1], ARGV[2], now_ms())
  if refused then return { json(refused) } end
end

local K = sched_keys(1)
local cfg = load_cfg(K)
if not cfg then return { json({ status = 'no_schedule' }) } end

local expired, expired_paying = expire_due(K, now_ms())
cfg = load_cfg(K)

return {
  json({ status = 'ok', seats_total = cfg.seats, row_size = cfg.row_size,
         available = cfg.seats - cfg.held - cfg.sold,
         expired = expired, expired_paying = expired_paying }),
  redis.call('GET', K.map) or '',
  redis.call('GET', KEYS[8]) or '',
}
