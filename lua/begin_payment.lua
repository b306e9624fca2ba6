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
-- KEYS[8] adm       zset: queue, admitted user -> deadline (ms)
-- KEYS[9] wait      zset: queue, waiting user -> entry
-- KEYS[10] adm_entry hash: queue, admitted user -> entry
-- KEYS[11] poll     hash: queue, user -> last activity (ms); written
-- KEYS[12] ready    string: the event's ready mark (finish_restore.lua)
-- ARGV[1] hold number
-- ARGV[2] user id (from the verified token)
-- ARGV[3] payment timeout (ms): the paying deadline is now + this
-- ARGV[4] the buyer's queue entry (from the verified token)
-- ARGV[5] the payment attempt (non-empty): kept in the paying hold, so
--         that abort_payment by this attempt gives back only what this
--         call did, also when this call reached Redis after its caller had
--         given up on it
--
-- Returns (JSON), every reply but restoring and no_schedule with
-- "expired":x, "expired_paying":y:
--   {"status":"restoring"}   the event is not (yet) ready in Redis
--   {"status":"no_schedule"}
--   {"status":"not_admitted","position":p}  the buyer is still waiting
--   {"status":"queue_gone"}  the buyer has no live queue entry (left,
--                            window over, or completed); nothing changed
--   {"status":"gone"}        no such hold, expired (a hold at or past its
--                            deadline can never be paid), or one of its
--                            seats was taken by a replayed sale (the
--                            hold is then dropped, its other seats freed)
--   {"status":"forbidden"}   the hold belongs to another user; untouched
--   {"status":"paying"}      a payment of this hold is already running
--   {"status":"barred"}      this attempt was given up (abort_payment with
--                            ARGV[4] = '1': its caller had no answer and
--                            moved no money); untouched
--   {"status":"cancelled"}   the schedule was cancelled; the hold is left
--                            as it is (the cancellation dropped it, or
--                            will)
--   {"status":"ok","seats":[..],"price":"..","held_deadline":ms,
--    "paying_deadline":ms}
--
-- Why a script: the state change must be atomic with the expiry check,
-- or a hold could expire (and its seats be re-held) between "still held?"
-- and "now paying", and be sold twice.

local timeout = tonumber(ARGV[3])
if not timeout or timeout < 1 or timeout ~= math.floor(timeout) then return bad_arg('timeout') end
local attempt = ARGV[5]
if not attempt or attempt == '' then return bad_arg('attempt') end
if restoring(KEYS[12]) then return json({ status = 'restoring' }) end
local h, stop = open_hold(function(_, _, user, now)
  local refused = admission(buyer_keys(8), user, ARGV[4], now)
  return refused and json(refused)
end)
if not h then return stop end
local K, cfg, n, now, rec, reply = h.K, h.cfg, h.n, h.now, h.rec, h.reply
if is_barred(rec, attempt) then return reply({ status = 'barred' }) end
if rec.state == 'paying' then return reply({ status = 'paying' }) end
if cfg.cancelled then return reply({ status = 'cancelled' }) end

local vals = redis.call('HMGET', K.seats, unpack(rec.seats))
for i = 1, #rec.seats do
  if vals[i] ~= 'h:' .. n then
    drop_hold(K, n, rec)
    return reply({ status = 'gone' })
  end
end

rec.state = 'paying'
rec.deadline = now + timeout
rec.attempt = attempt
redis.call('HSET', K.holds, n, encode_hold(rec))
redis.call('ZADD', K.dl, rec.deadline, n)

return reply({ status = 'ok', seats = sorted(rec.seats), price = cfg.price,
               held_deadline = rec.held_deadline, paying_deadline = rec.deadline })
