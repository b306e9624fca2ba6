-- autopilot_apply: sets the autopilot's admission rate of one event.
--
-- KEYS[1] cfg  hash: event config (admission_mode, auto_admit_per_second)
-- KEYS[2] ap   hash: the autopilot's shared state (autopilot_publish.lua);
--              writes cut_from
-- ARGV[1] the new rate (admissions per second, an integer >= 1)
-- ARGV[2] on a decrease, the rate it cut (remembered as cut_from, near
--         which the rate later rises gently); '' otherwise
--
-- Returns (JSON): {"status":"ok"}, {"status":"fixed"} (the event was
-- switched to fixed admission since the step read it: nothing written) or
-- {"status":"no_event"}.
--
-- Why a script: the rate may be written only while the event is in auto
-- mode (admit_tick and join_queue use the field whenever it exists), and a
-- PATCH to fixed may land between the step's read and this write.

local rate = tonumber(ARGV[1])
if not rate or rate < 1 then
  return redis.error_reply('ERR boxoffice script: bad argument: rate')
end
if redis.call('HGET', KEYS[1], 'admission_mode') ~= 'auto' then
  return cjson.encode({ status = redis.call('EXISTS', KEYS[1]) == 0 and 'no_event' or 'fixed' })
end
redis.call('HSET', KEYS[1], 'auto_admit_per_second', math.floor(rate))
local cut_from = tonumber(ARGV[2])
if cut_from then redis.call('HSET', KEYS[2], 'cut_from', math.floor(cut_from)) end
return cjson.encode({ status = 'ok' })
