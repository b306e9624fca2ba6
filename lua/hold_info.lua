-- hold_info: a user's view of one of their holds. Runs after
-- lib/schedule.lua (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
-- KEYS[8] adm       zset: queue, admitted user -> deadline (ms)
-- KEYS[9] wait      zset: queue, waiting user -> entry
-- KEYS[10] adm_entry hash: queue, admitted user -> entry
-- KEYS[11] poll     hash: queue, user -> last activity (ms); written
-- ARGV[1] hold number
-- ARGV[2] user id (from the verified token)
-- ARGV[3] the user's queue entry (from the verified token)
--
-- Returns (JSON), every reply but no_schedule with "expired":x,
-- "expired_paying":y:
--   {"status":"no_schedule"}
--   {"status":"not_admitted","position":p} | {"status":"queue_gone"}
--       the token's queue entry is not admitted and live (checked first)
--   {"status":"gone"}        no such hold (never existed, expired, sold)
--   {"status":"forbidden"}   the hold belongs to another user
--   {"status":"ok","seats":[..],"deadline":ms,"state":"held"|"paying",
--    "price":"..","adjacent":true|false,"created":ms}
--       deadline: the hold deadline while held, the payment deadline
--       while paying
--
-- A script (not a plain HGET) because the read must expire due holds
-- first, or a dead hold would still be shown as alive.

local h, stop = open_hold(function(_, _, user, now)
  local refused = admission(buyer_keys(8), user, ARGV[3], now)
  return refused and json(refused)
end)
if not h then return stop end
local K, cfg, rec, reply = h.K, h.cfg, h.rec, h.reply

return reply({ status = 'ok', seats = sorted(rec.seats), deadline = rec.deadline,
               state = rec.state, price = cfg.price,
               adjacent = is_adjacent(cfg, rec.seats), created = rec.created })
