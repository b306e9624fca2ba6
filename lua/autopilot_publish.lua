-- autopilot_publish: one instance's measurement window for one event, and
-- everything the admission autopilot's step needs, in one round trip.
--
-- KEYS[1] cfg   hash: event config (admit_per_second, admission_mode,
--               target_p99_ms, min_admit_per_second, max_admit_per_second,
--               auto_admit_per_second)
-- KEYS[2] ap    hash: "i:<instance>" -> "<Redis ms>;<window>" (each
--               instance's last window), step_ms (the last control step),
--               cut_from (the rate the last decrease cut, written by
--               autopilot_apply.lua); expires 10 s after the last publish
-- KEYS[3] wait  zset: waiting entries (only counted)
-- ARGV[1] this instance's field ("i:<instance id>")
-- ARGV[2] this instance's window: "<pool wait p99 ms>;<c0>,<c1>,..."
--         (src/queue/autopilot.rs encodes and decodes it)
-- ARGV[3] a window older than this (ms) is dropped (its instance is gone)
-- ARGV[4] minimum interval between two control steps (ms)
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"ok","mode":"fixed"|"auto","target_p99_ms":t,"min":a,"max":b,
--    "admit_per_second":r,"rate":e (the autopilot's rate; absent in fixed
--    mode),"waiting":w,"cut_from":c (absent before the first decrease),
--    "due":true|false,"windows":["<window>",...]}
--   due: this call took the event's control step for this interval (only
--   one caller across all instances gets it).
--
-- Why a script: taking the step ("has a step run in the last ARGV[4] ms?
-- then this one is mine") must be one atomic read-and-write on Redis TIME,
-- so that however many instances publish, one of them steers per second;
-- reading the windows in the same call saves a round trip.

local cfg = redis.call('HMGET', KEYS[1], 'admit_per_second', 'admission_mode', 'target_p99_ms',
                       'min_admit_per_second', 'max_admit_per_second', 'auto_admit_per_second')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local stale_ms = tonumber(ARGV[3])
local min_step_ms = tonumber(ARGV[4])
local now = now_ms()

redis.call('HSET', KEYS[2], ARGV[1], now .. ';' .. ARGV[2])
redis.call('PEXPIRE', KEYS[2], 10000)

local windows = {}
local all = redis.call('HGETALL', KEYS[2])
local step_ms, cut_from = 0, nil
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == 'step_ms' then
    step_ms = tonumber(value)
  elseif field == 'cut_from' then
    cut_from = tonumber(value)
  elseif string.sub(field, 1, 2) == 'i:' then
    local sep = string.find(value, ';', 1, true)
    local at = sep and tonumber(string.sub(value, 1, sep - 1))
    if at and now - at <= stale_ms then
      windows[#windows + 1] = string.sub(value, sep + 1)
    else
      redis.call('HDEL', KEYS[2], field)
    end
  end
end

local due = now - step_ms >= min_step_ms
if due then redis.call('HSET', KEYS[2], 'step_ms', now) end

local admit_per_second = tonumber(cfg[1])
return json({
  status = 'ok',
  mode = cfg[2] == 'auto' and 'auto' or 'fixed',
  target_p99_ms = tonumber(cfg[3] or '50'),
  min = tonumber(cfg[4] or '1'),
  max = tonumber(cfg[5] or admit_per_second),
  admit_per_second = admit_per_second,
  rate = tonumber(cfg[6] or ''),
  waiting = redis.call('ZCARD', KEYS[3]),
  cut_from = cut_from,
  due = due,
  windows = windows,
})
