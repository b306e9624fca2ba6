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
-- ARGV[1] hold number
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON), every reply but no_schedule with "expired":x,
-- "expired_paying":y:
--   {"status":"no_schedule"}
--   {"status":"gone"}        no such hold (never existed, expired, sold)
--   {"status":"forbidden"}   the hold belongs to another user; untouched
--   {"status":"paying"}      a payment is running; abort_payment or
--                            confirm_sale ends it, not the user
--   {"status":"released","seats":[..]}  the seats freed by this call

local K = sched_keys(1)
local n, user = hold_id(ARGV[1]), ARGV[2]
if not n then return bad_arg('hold') end
if not user or user == '' then return bad_arg('user') end
if not load_cfg(K) then return json({ status = 'no_schedule' }) end

local expired, expired_paying = expire_due(K, now_ms())
local function reply(t)
  t.expired, t.expired_paying = expired, expired_paying
  return json(t)
end

local rec = decode_hold(redis.call('HGET', K.holds, n))
if not rec then return reply({ status = 'gone' }) end
if rec.user ~= user then return reply({ status = 'forbidden' }) end
if rec.state == 'paying' then return reply({ status = 'paying' }) end

return reply({ status = 'released', seats = drop_hold(K, n, rec) })
