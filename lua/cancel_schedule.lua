-- cancel_schedule: stop selling a schedule at once. Marks the schedule
-- cancelled (place_hold and begin_payment refuse it from now on) and drops
-- every live hold that is not being paid; a hold in *paying* is left to
-- its payment, which PostgreSQL refuses for a cancelled schedule (or which
-- the cancellation refunds if it committed first). Idempotent. Runs after
-- lib/schedule.lua (prelude).
--
-- KEYS[1..7] the schedule (cfg, seats, map, holds, dl, uheld, ubought)
--
-- Returns (JSON):
--   {"status":"no_schedule"}
--   {"status":"ok","holds_dropped":k,"expired":x,"expired_paying":y}
--
-- Why a script: the cancelled mark and the drops must be one step, or a
-- hold placed between them would survive the cancellation.

local K = sched_keys(1)
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end
local expired, expired_paying = expire_due(K, now_ms())
redis.call('HSET', K.cfg, 'cancelled', '1')
local dropped = 0
local all = redis.call('HGETALL', K.holds)
for i = 1, #all, 2 do
  local rec = decode_hold(all[i + 1])
  if rec and rec.state ~= 'paying' then
    drop_hold(K, all[i], rec)
    dropped = dropped + 1
  end
end
return json({ status = 'ok', holds_dropped = dropped, expired = expired,
              expired_paying = expired_paying })
