-- sweep_holds: expire the due holds of one schedule, nothing else. Runs
-- after lib/schedule.lua (prelude).
--
-- KEYS[1] cfg       hash: schedule config and the held/sold counters
-- KEYS[2] seats     hash: seat -> "h:<hold>" | "s:<payment_id>"
-- KEYS[3] map       bitmap: bit i = seat i taken
-- KEYS[4] holds     hash: hold -> JSON record
-- KEYS[5] dl        zset: hold -> deadline (ms)
-- KEYS[6] uheld     hash: user -> seats held or paying
-- KEYS[7] ubought   hash: user -> seats bought
--
-- Returns (JSON):
--   {"status":"no_schedule"}
--   {"status":"ok","expired":x,"expired_paying":y}
--
-- Every schedule script expires lazily, so nothing depends on this one:
-- a tidy-up loop calls it so expirations show up in metrics on quiet
-- schedules, and the backlog the next caller has to clear stays short.

local K = sched_keys(1)
if not load_cfg(K) then return json({ status = 'no_schedule' }) end
local expired, expired_paying = expire_due(K, now_ms())
return json({ status = 'ok', expired = expired, expired_paying = expired_paying })
