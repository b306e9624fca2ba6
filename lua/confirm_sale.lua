-- confirm_sale: mark the seats of a paid hold sold. Also replays payments
-- from PostgreSQL (the reconciler), so it is idempotent per payment and
-- works without the hold record (expired meanwhile, or Redis lost and
-- restored). Runs after lib/schedule.lua (prelude).
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
-- KEYS[11] poll     hash: queue, user -> last activity (ms)
-- KEYS[12] sold     bitmap: bit i = seat i sold (the seat map's view)
-- ARGV[1] hold number, "0" when unknown (replay)
-- ARGV[2] user id (the buyer)
-- ARGV[3] payment id
-- ARGV[4] comma-separated seats paid for
-- ARGV[5] end_queue: "1" ends the user's queue entry, "0" keeps it
--
-- Returns (JSON):
--   {"status":"no_schedule"}
--   {"status":"invalid","reason":"seat_out_of_range","seats":[..]}
--   {"status":"ok","newly_sold":k,"conflicts":[..],"overrode":[..],
--    "expired":x,"expired_paying":y}
--       newly_sold: seats this call turned into "s:<payment_id>" (0 on a
--                   replay); ubought grows by exactly this
--       conflicts:  seats sold to another payment: left alone (the
--                   database's unique constraint makes this a bug report)
--       overrode:   seats another hold had; sold anyway (the payment is
--                   the truth), that hold's begin_payment will find them
--                   gone
--   {"status":"ok","newly_sold":0,"refunded":true,"expired":x,...}
--       the payment was refunded before this call (refund_seats marked
--       it): nothing is sold; its hold, if still there, is dropped
--
-- Per seat: "s:<payment_id>" -> nothing; "s:<other>" -> conflict;
-- "h:<n>" (this hold) or free or "h:<m>" (other hold) -> sold. The hold
-- record, if any, is dropped: its seats not in the paid list but still
-- "h:<n>" are freed (should not happen; keeps held exact).

local K = sched_keys(1)
local n = hold_id(ARGV[1])
local user, payment, end_queue = ARGV[2], ARGV[3], ARGV[5]
if not n then return bad_arg('hold') end
if not user or user == '' then return bad_arg('user') end
if not payment or payment == '' then return bad_arg('payment_id') end
if end_queue ~= '0' and end_queue ~= '1' then return bad_arg('end_queue') end
local paid = parse_seats(ARGV[4])
if not paid then return bad_arg('seats') end
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end
local bad = {}
for _, s in ipairs(paid) do
  if s > cfg.seats then bad[#bad + 1] = s end
end
if #bad > 0 then
  return json({ status = 'invalid', reason = 'seat_out_of_range', seats = sorted(bad) })
end

local expired, expired_paying = expire_due(K, now_ms())

-- Refunded before its seats were marked sold (a reconciler that read the
-- payment before the refund, or the request's step 3 after it): selling
-- them now would keep them off sale for good, since nothing finishes a
-- refunded payment. The hold goes instead, freeing what it still has.
if redis.call('HEXISTS', K.cfg, 'refunded:' .. payment) == 1 then
  if n ~= '0' then
    local rec = decode_hold(redis.call('HGET', K.holds, n))
    if rec then drop_hold(K, n, rec) end
  end
  return json({ status = 'ok', newly_sold = 0, refunded = true, expired = expired,
                expired_paying = expired_paying })
end

local sold_value, mine = 's:' .. payment, 'h:' .. n
local rec = nil
if n ~= '0' then rec = decode_hold(redis.call('HGET', K.holds, n)) end
-- Whose uheld the seats of this hold count in: the record's user; with
-- no record (should not happen while a seat is still "h:<n>"), the buyer.
local owner = rec and rec.user or user

local newly, conflicts, overrode = {}, {}, {}
local own_taken, held_delta = 0, 0
local done = {}
for _, s in ipairs(paid) do
  if not done[s] then
    done[s] = true
    local v = redis.call('HGET', K.seats, s)
    if v == sold_value then
      redis.call('SETBIT', K.map, s, 1)   -- repairs maps restored apart
      redis.call('SETBIT', KEYS[12], s, 1)
    elseif v and string.sub(v, 1, 2) == 's:' then
      conflicts[#conflicts + 1] = s
    else
      if v == mine and n ~= '0' then
        own_taken = own_taken + 1
        held_delta = held_delta - 1
      elseif v then
        -- "h:<m>": the seat leaves hold m, so it leaves m's owner's uheld.
        local m = string.sub(v, 3)
        local other = decode_hold(redis.call('HGET', K.holds, m))
        if other then uheld_add(K, other.user, -1) end
        held_delta = held_delta - 1
        overrode[#overrode + 1] = s
      end
      set_seat(K, s, sold_value)
      redis.call('SETBIT', KEYS[12], s, 1)
      newly[#newly + 1] = s
    end
  end
end

if rec then
  for _, s in ipairs(rec.seats) do
    if not done[s] and free_seat_if(K, s, mine) then
      own_taken = own_taken + 1
      held_delta = held_delta - 1
    end
  end
  redis.call('HDEL', K.holds, n)
  redis.call('ZREM', K.dl, n)
end
uheld_add(K, owner, -own_taken)
if held_delta ~= 0 then redis.call('HINCRBY', K.cfg, 'held', held_delta) end
if #newly > 0 then
  redis.call('HINCRBY', K.cfg, 'sold', #newly)
  redis.call('HINCRBY', K.ubought, user, #newly)
end

if end_queue == '1' then
  local B = buyer_keys(8)
  redis.call('ZREM', B.adm, user)
  redis.call('HDEL', B.adm_entry, user)
  redis.call('ZREM', B.wait, user)
  redis.call('HDEL', B.seen, user)
end

return json({ status = 'ok', newly_sold = #newly, conflicts = sorted(conflicts),
              overrode = sorted(overrode), expired = expired, expired_paying = expired_paying })
