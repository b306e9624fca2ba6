-- refund_seats: put the seats of a refunded payment back on sale. Also
-- replayed by the reconciler, so it is idempotent per payment: only seats
-- still sold to this payment are freed, and ubought shrinks by exactly
-- those. Runs after lib/schedule.lua (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
-- KEYS[8] sold      bitmap: bit i = seat i sold (the seat map's view)
-- ARGV[1] user id (the buyer of the refunded payment)
-- ARGV[2] payment id
-- ARGV[3] comma-separated seats of the payment
--
-- Returns (JSON):
--   {"status":"no_schedule"}
--   {"status":"ok","freed":[..],"expired":x,"expired_paying":y}
--       freed: the seats this call put back on sale (sorted); [] on a
--              replay
--
-- Why a script: "still sold to this payment?" and "free it, fix the
-- counters" must be one step, or a replay racing a new sale of the seat
-- could free a seat somebody else just bought.
--
-- The payment is also marked refunded in cfg (`refunded:<payment_id>`),
-- for good: a confirm_sale of it that comes later (the request's own step
-- 3, or a reconciler that read the payment before the refund) must not
-- sell its seats again. Here its seats may still be its hold's ("h:<n>"),
-- which this call does not free; that confirm_sale, or the hold's paying
-- deadline, does.

local K = sched_keys(1)
local user, payment = ARGV[1], ARGV[2]
if not user or user == '' then return bad_arg('user') end
if not payment or payment == '' then return bad_arg('payment_id') end
local seats = parse_seats(ARGV[3])
if not seats then return bad_arg('seats') end
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end
local expired, expired_paying = expire_due(K, now_ms())
redis.call('HSET', K.cfg, 'refunded:' .. payment, '1')

local sold_value = 's:' .. payment
local freed = {}
for _, s in ipairs(seats) do
  if free_seat_if(K, s, sold_value) then
    redis.call('SETBIT', KEYS[8], s, 0)
    freed[#freed + 1] = s
  end
end
if #freed > 0 then
  redis.call('HINCRBY', K.cfg, 'sold', -#freed)
  if redis.call('HINCRBY', K.ubought, user, -#freed) <= 0 then
    redis.call('HDEL', K.ubought, user)
  end
end
return json({ status = 'ok', freed = sorted(freed), expired = expired,
              expired_paying = expired_paying })
