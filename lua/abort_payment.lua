-- abort_payment: a payment failed (insufficient funds, database error):
-- the paying hold goes back to held with its original hold deadline, or
-- ends at once if that deadline has passed. Runs after lib/schedule.lua
-- (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
-- ARGV[1] hold number
-- ARGV[2] user id (the hold's owner)
-- ARGV[3] the payment attempt (begin_payment's ARGV[5]): only a hold
--         paying for this attempt goes back to held
-- ARGV[4] optional, '1': bar the attempt. Its begin_payment call got no
--         answer and may still be on its way; a hold not paying for it
--         records it (the hold's "barred" list, at most BARRED_MAX, the
--         oldest dropped first), and begin_payment refuses that attempt
--         from then on. So one answer settles a lost call for good.
--
-- Returns (JSON), every reply but no_schedule with "expired":x,
-- "expired_paying":y:
--   {"status":"no_schedule"}
--   {"status":"restored","deadline":ms}  held again until ms
--   {"status":"expired"}     the original hold deadline had passed: the
--                            hold is dropped and its seats freed now
--   {"status":"gone"}        no such hold (the payment deadline passed
--                            and it expired, or it was sold)
--   {"status":"not_paying"}  the hold is held, not paying (or paying for
--                            another attempt than ARGV[3]); untouched
--   {"status":"barred"}      (ARGV[4] = '1') the same, and the attempt is
--                            now barred: its begin_payment can never
--                            take effect
--   {"status":"forbidden"}   the hold belongs to another user; untouched
--                            (a caller bug: the owner comes from the hold)

local attempt, bar = ARGV[3], ARGV[4] == '1'
if not attempt or attempt == '' then return bad_arg('attempt') end
local h, stop = open_hold()
if not h then return stop end
local K, n, now, rec, reply = h.K, h.n, h.now, h.rec, h.reply
if rec.state ~= 'paying' or rec.attempt ~= attempt then
  if not bar then return reply({ status = 'not_paying' }) end
  local barred = rec.barred or {}
  if not is_barred(rec, attempt) then
    barred[#barred + 1] = attempt
    if #barred > BARRED_MAX then table.remove(barred, 1) end
    rec.barred = barred
    redis.call('HSET', K.holds, n, encode_hold(rec))
  end
  return reply({ status = 'barred' })
end

-- Same rule as expire_due: dead from the deadline on.
if rec.held_deadline <= now then
  drop_hold(K, n, rec)
  return reply({ status = 'expired' })
end

rec.state = 'held'
rec.deadline = rec.held_deadline
rec.attempt = nil
redis.call('HSET', K.holds, n, encode_hold(rec))
redis.call('ZADD', K.dl, rec.deadline, n)
return reply({ status = 'restored', deadline = rec.deadline })
