-- queue_status: where are these entries now? Each answer is also the
-- entry's heartbeat. One call answers every status poll of one event that
-- one instance has gathered while its previous call was in flight
-- (src/queue/coalesce.rs): the event-wide figures (config, pacing, sold
-- out) are read once per call, not once per poll.
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg
--             (admit_per_second or, in auto mode, auto_admit_per_second,
--             idle_timeout_ms, open_ms, close_ms, ...); writes wait, poll,
--             adm, adm_entry, stats, pre_entry, draw
-- KEYS[11..] the event's schedule cfg hashes (seats, held, sold)
-- ARGV[2i-1], ARGV[2i]: user i, entry i (from verified tokens), i >= 1;
--             answered in this order, each as if alone
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"ok", rate fields, "sold_out":..., "now_ms":t,
--    "entries":[{"s":"prequeue"|"waiting"|"admitted"|"gone",
--                "p":position, "u":admitted_until}, ...]}  in ARGV order
--   (stream_status' shape). "gone": left, evicted or released as idle,
--   admission window over, sale closed while waiting, completed by
--   payment, or not this user's entry.
--
-- An idle entry is dropped here too, not only by admit_tick, so the
-- idle timeout holds even when no tick runs; the same goes for an
-- admitted user silent for idle_timeout_ms (released: the slot goes to
-- the next in line).

local Q = queue_keys(1)
local cfg = redis.call('HMGET', Q.cfg, 'admit_per_second', 'idle_timeout_ms', 'paused', 'open_ms', 'close_ms',
                       'auto_admit_per_second')
if not cfg[1] then
  return '{"status":"no_event"}'
end
local idle_timeout_ms = tonumber(cfg[2])
local open_ms, close_ms = tonumber(cfg[4] or '0'), tonumber(cfg[5] or '0')
local now = now_ms()
local closed = close_ms > 0 and now >= close_ms

local GONE = '{"s":"gone"}'
local gone_counts, beats = {}, new_beats(now)
local function gone(counter)
  gone_counts[counter] = (gone_counts[counter] or 0) + 1
  return GONE
end

-- One entry's answer (a JSON object of stream_status' shape).
local function status_of(user, entry)
  local kind, at = find_entry(Q, user, entry)
  if kind == 'admitted' then
    local seen = tonumber(redis.call('HGET', Q.poll, user) or now)
    if at <= now or now - seen > idle_timeout_ms then
      redis.call('ZREM', Q.adm, user)
      redis.call('HDEL', Q.adm_entry, user)
      redis.call('HDEL', Q.poll, user)
      return gone(at <= now and 'expired_total' or 'released_total')
    end
    beat(beats, user)
    return '{"s":"admitted","u":' .. int(at) .. '}'
  end
  if not kind then return GONE end
  local seen = tonumber(redis.call('HGET', Q.poll, user) or '0')
  if closed or now - seen > idle_timeout_ms then
    drop_waiting(Q, user, at, now, open_ms)
    return gone(closed and 'closed_total' or 'evicted_total')
  end
  beat(beats, user)
  return waiting_json(Q, user, at, now, open_ms)
end

local entries = {}
for i = 1, #ARGV, 2 do
  entries[#entries + 1] = status_of(ARGV[i], tonumber(ARGV[i + 1]))
end
-- The heartbeats, one write (a user polled twice in one call is seen
-- alive by both answers: neither evicts it).
write_beats(beats, Q.poll)
for counter, n in pairs(gone_counts) do
  redis.call('HINCRBY', Q.stats, counter, n)
end

local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'rate_var')
return '{"status":"ok",' .. pace_json(rate_in_use(cfg[1], cfg[6]), cfg[3] == '1', idle_timeout_ms, now, stats, sold_out(11))
  .. ',"entries":[' .. table.concat(entries, ',') .. ']}'
