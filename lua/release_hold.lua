-- release_hold: a user gives back a hold that is not being paid. Runs
-- after lib/schedule.lua (prelude).
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
--   {"status":"forbidden"}   the hold belongs to another user; untouched
--   {"status":"paying"}      a payment is running; abort_payment or
--                            confirm_sale ends it, not the user
--   {"status":"released","seats":[..]}  the seats freed by this call

local h, stop = open_hold(function(_, _, user, now)
  local refused = admission(buyer_keys(8), user, ARGV[3], now)
  return refused and json(refused)
end)
if not h then return stop end
if h.rec.state == 'paying' then return h.reply({ status = 'paying' }) end

return h.reply({ status = 'released', seats = drop_hold(h.K, h.n, h.rec) })
