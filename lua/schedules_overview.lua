-- schedules_overview: seat counts of every schedule of an event in one
-- call. Runs after lib/schedule.lua (prelude).
--
-- KEYS[7i+1..7i+7] the 7 keys of schedule i (i = 0, 1, ...), each group
--                  in schedule-key order: cfg, seats, map, holds, dl,
--                  uheld, ubought (all of one event: one hash tag)
-- then, with a buyer only: the queue's adm, wait, adm_entry and poll keys
-- (the buyer's activity is recorded in poll) and the event's ready mark
-- ARGV[1] buyer's user id, or none (operators)
-- ARGV[2] buyer's queue entry (from the verified token)
--
-- Returns (JSON):
--   {"status":"restoring"}  (buyer only) the event is not ready in Redis
--   {"status":"not_admitted","position":p} | {"status":"queue_gone"}
--       the buyer is not admitted right now (checked first)
--   {"status":"ok","schedules":[{"seats_total":N,"held":h,"sold":s,
--    "available":N-h-s,"price":"..","starts_at":".."} | {"missing":true},
--    ... in KEYS order],"expired":x,"expired_paying":y}
--       missing: no config loaded for that schedule
--
-- Counts come from the exact held/sold counters (O(1) per schedule after
-- expiry), not from the seats hashes.

local now = now_ms()
local groups = #KEYS
if ARGV[1] then
  groups = #KEYS - 5
  if restoring(KEYS[#KEYS]) then return json({ status = 'restoring' }) end
  local refused = admission(buyer_keys(#KEYS - 4), ARGV[1], ARGV[2], now)
  if refused then return json(refused) end
end
if groups % 7 ~= 0 then return bad_arg('KEYS must be groups of 7') end

local schedules, expired, expired_paying = {}, 0, 0
for i = 1, groups, 7 do
  local K = sched_keys(i)
  if not load_cfg(K) then
    schedules[#schedules + 1] = { missing = true }
  else
    local x, y = expire_due(K, now)
    expired, expired_paying = expired + x, expired_paying + y
    local cfg = load_cfg(K)   -- again: expiry moved the held counter
    schedules[#schedules + 1] = { seats_total = cfg.seats, held = cfg.held, sold = cfg.sold,
      available = cfg.seats - cfg.held - cfg.sold, price = cfg.price, starts_at = cfg.starts_at }
  end
end

return json({ status = 'ok', schedules = schedules, expired = expired,
              expired_paying = expired_paying })
