-- entry_live: is the queue entry a verified token names still live:
-- waiting (or in the pre-queue), or admitted with its admission not yet
-- over? A read for the routes that only look (a payment read with a queue
-- token): no heartbeat, no eviction. Runs after lib/queue.lua (prelude).
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads wait, adm,
--             adm_entry, pre_entry
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON): {"status":"live"} or {"status":"gone"} (left, evicted,
-- ended by a payment, admission over, or another entry of the user's).

local Q = queue_keys(1)
local kind, at = find_entry(Q, ARGV[2], tonumber(ARGV[1]))
if kind == 'waiting' or (kind == 'admitted' and at > now_ms()) then
  return '{"status":"live"}'
end
return '{"status":"gone"}'
