-- stream_status: the state of many entries of one event at once, for the
-- streams (GET /v1/queue/stream) this instance serves. One call per event
-- per tick replaces one status request per waiting client; it is also
-- their heartbeat (one HSET for all of them).
--
-- KEYS[1] cfg       hash: event config
-- KEYS[2] wait      zset: waiting user -> score (draw score < 1, or entry)
-- KEYS[3] poll      hash: waiting or admitted user -> last activity (ms)
-- KEYS[4] adm       zset: admitted user -> deadline (ms)
-- KEYS[5] adm_entry hash: admitted user -> entry
-- KEYS[6] stats     hash: rate_ema, rate_var
-- KEYS[7] pre_entry hash: pre-queue user -> entry
-- KEYS[8..] the event's schedule cfg hashes (seats, held, sold)
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

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'idle_timeout_ms', 'paused', 'open_ms')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local open_ms = tonumber(cfg[4] or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function sold_out()
  local held = 0
  for i = 8, #KEYS do
    local s = redis.call('HMGET', KEYS[i], 'seats', 'held', 'sold')
    local seats, h, sold = tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0')
    if seats - h - sold > 0 then return nil end
    held = held + h
  end
  if #KEYS < 8 then return nil end
  return held > 0 and 'for_now' or 'final'
end

local entries, alive = {}, {}
for i = 1, #ARGV, 2 do
  local user, entry = ARGV[i], tonumber(ARGV[i + 1])
  local r = { s = 'gone' }
  local deadline = redis.call('ZSCORE', KEYS[4], user)
  if deadline and tonumber(deadline) > now and tonumber(redis.call('HGET', KEYS[5], user)) == entry then
    r = { s = 'admitted', u = tonumber(deadline) }
  else
    local score = tonumber(redis.call('ZSCORE', KEYS[2], user))
    if score then
      local mine = score
      if score < 1 then mine = tonumber(redis.call('HGET', KEYS[7], user)) end
      if mine == entry then
        if score < 1 and now < open_ms then
          r = { s = 'prequeue' }
        else
          r = { s = 'waiting', p = redis.call('ZRANK', KEYS[2], user) + 1 }
        end
      end
    end
  end
  if r.s ~= 'gone' then
    alive[#alive + 1] = user
    alive[#alive + 1] = now
  end
  entries[#entries + 1] = r
end
if #alive > 0 then redis.call('HSET', KEYS[3], unpack(alive)) end

local s = redis.call('HMGET', KEYS[6], 'rate_ema', 'rate_var')
local reply = { status = 'ok', rate = tonumber(s[1] or '0'), rate_var = tonumber(s[2] or '0'),
                admit_per_second = tonumber(cfg[1]), paused = cfg[3] == '1' and 1 or 0,
                idle_timeout_ms = tonumber(cfg[2]), now_ms = now,
                sold_out = sold_out() or cjson.null }
-- cjson writes an empty table as {}; there is always at least one entry.
reply.entries = entries
return cjson.encode(reply)
