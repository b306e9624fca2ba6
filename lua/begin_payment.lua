-- begin_payment: a held hold enters payment; its seats stay taken until
-- confirm_sale, abort_payment or the payment deadline. Runs after
-- lib/schedule.lua (prelude).
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
-- ARGV[3] payment timeout (ms): the paying deadline is now + this
--
-- Returns (JSON), every reply but no_schedule with "expired":x,
-- "expired_paying":y:
--   {"status":"no_schedule"}
--   {"status":"gone"}        no such hold, expired (a hold at or past its
--                            deadline can never be paid), or one of its
--                            seats was taken by a replayed sale (the
--                            hold is then dropped, its other seats freed)
--   {"status":"forbidden"}   the hold belongs to another user; untouched
--   {"status":"paying"}      a payment of this hold is already running
--   {"status":"ok","seats":[..],"price":"..","held_deadline":ms,
--    "paying_deadline":ms}
--
-- Why a script: the state change must be atomic with the expiry check,
-- or a hold could expire (and its seats be re-held) between "still held?"
-- and "now paying", and be sold twice.

local K = sched_keys(1)
local n, user = hold_id(ARGV[1]), ARGV[2]
local timeout = tonumber(ARGV[3])
if not n then return bad_arg('hold') end
if not user or user == '' then return bad_arg('user') end
if not timeout or timeout < 1 or timeout ~= math.floor(timeout) then return bad_arg('timeout') end
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end

local now = now_ms()
local expired, expired_paying = expire_due(K, now)
local function reply(t)
  t.expired, t.expired_paying = expired, expired_paying
  return json(t)
end

local rec = decode_hold(redis.call('HGET', K.holds, n))
if not rec then return reply({ status = 'gone' }) end
if rec.user ~= user then return reply({ status = 'forbidden' }) end
if rec.state == 'paying' then return reply({ status = 'paying' }) end

local vals = redis.call('HMGET', K.seats, unpack(rec.seats))
for i = 1, #rec.seats do
  if vals[i] ~= 'h:' .. n then
    drop_hold(K, n, rec)
    return reply({ status = 'gone' })
  end
end

rec.state = 'paying'
rec.deadline = now + timeout
redis.call('HSET', K.holds, n, encode_hold(rec))
redis.call('ZADD', K.dl, rec.deadline, n)

return reply({ status = 'ok', seats = sorted(rec.seats), price = cfg.price,
               held_deadline = rec.held_deadline, paying_deadline = rec.deadline })
