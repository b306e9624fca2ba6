-- sold_seats: the seats of a schedule sold in Redis, read from the seats
-- hash itself (the truth the scripts keep), for the invariant audit.
-- Runs after lib/schedule.lua (prelude). Read-only apart from nothing:
-- it does not expire holds, so it never changes what it audits.
--
-- KEYS[1..7] the schedule (see seat_map.lua)
--
-- Returns (JSON): {"status":"no_schedule"} or
--   {"status":"ok","sold":[..]} (sorted seat numbers)
--
-- Cost: one HGETALL, O(held + sold); the audit's, never a buyer's.

local K = sched_keys(1)
if not load_cfg(K) then return json({ status = 'no_schedule' }) end

local all = redis.call('HGETALL', K.seats)
local sold = {}
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, 2) == 's:' then sold[#sold + 1] = tonumber(all[i]) end
end
table.sort(sold)
return json({ status = 'ok', sold = sold })
