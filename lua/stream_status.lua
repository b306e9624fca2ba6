-- stream_status: the state of many entries of one event at once, for the
-- streams (GET /v1/queue/stream) this instance serves. One call per event
-- per tick replaces one status request per waiting client; it is also
-- their heartbeat (one HSET for all of them).
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg (the rate
--             in use as queue_status does: auto_admit_per_second in auto
--             mode), wait,
--             adm, adm_entry, stats (rate_ema, rate_var), pre_entry;
--             writes poll
-- KEYS[11..] the event's schedule cfg hashes (seats, held, sold)
-- ARGV[2i-1], ARGV[2i]: user i, entry i (from verified tokens), i >= 1
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"ok", rate fields, "sold_out":..., "now_ms":t,
--    "entries":[{"s":"prequeue"|"waiting"|"admitted"|"gone",
--                "p":position, "u":admitted_until}, ...]}  in ARGV order
--
-- Read-only but for the heartbeat: an idle entry is not evicted here (a
-- stream is the heartbeat; the tick and queue_status evict the silent).
-- Cost: two O(log n) lookups per entry; the caller sends only entries
-- due for an update, at most 250 per call.

local Q = queue_keys(1)
local cfg = redis.call('HMGET', Q.cfg, 'admit_per_second', 'idle_timeout_ms', 'paused', 'open_ms',
                       'auto_admit_per_second')
if not cfg[1] then
  return '{"status":"no_event"}'
end
local open_ms = tonumber(cfg[4] or '0')
local now = now_ms()

local entries, beats = {}, new_beats(now)
for i = 1, #ARGV, 2 do
  local user = ARGV[i]
  local kind, at = find_entry(Q, user, tonumber(ARGV[i + 1]))
  local r
  if kind == 'admitted' and at > now then
    r = '{"s":"admitted","u":' .. int(at) .. '}'
  elseif kind == 'waiting' then
    r = waiting_json(Q, user, at, now, open_ms)
  end
  if r then beat(beats, user) end
  entries[#entries + 1] = r or '{"s":"gone"}'
end
write_beats(beats, Q.poll)

local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'rate_var')
return '{"status":"ok",' .. pace_json(rate_in_use(cfg[1], cfg[5]), cfg[3] == '1', tonumber(cfg[2]), now, stats, sold_out(11))
  .. ',"entries":[' .. table.concat(entries, ',') .. ']}'
