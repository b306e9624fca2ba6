-- queue_status: where is this entry now? Each call is also a heartbeat.
--
-- KEYS[1..10] Q, the queue (prelude lib/queue.lua): reads cfg
--             (admit_per_second or, in auto mode, auto_admit_per_second,
--             idle_timeout_ms, open_ms, close_ms, ...); writes wait, poll,
--             adm, adm_entry, stats, pre_entry, draw
-- KEYS[11..] the event's schedule cfg hashes (seats, held, sold)
-- ARGV[1] entry id
-- ARGV[2] user id (from the verified token)
--
-- Returns (JSON):
--   {"status":"no_event"}
--   {"status":"gone"}      left, evicted or released as idle, admission
--                          window over, sale closed while waiting,
--                          completed by payment, or not this user's entry
--   {"status":"ok","state":"prequeue", sold_out, rate fields...}
--   {"status":"ok","state":"waiting","position":p, sold_out, rate fields...}
--   {"status":"ok","state":"admitted","admitted_until":ms, sold_out, rate fields...}
--
-- An idle entry is dropped here too, not only by admit_tick, so the
-- idle timeout holds even when no tick runs; the same goes for an
-- admitted user silent for idle_timeout_ms (released: the slot goes to
-- the next in line).

local Q = queue_keys(1)
local cfg = redis.call('HMGET', Q.cfg, 'admit_per_second', 'idle_timeout_ms', 'paused', 'open_ms', 'close_ms',
                       'auto_admit_per_second')
if not cfg[1] then
  return cjson.encode({ status = 'no_event' })
end
local entry, user = tonumber(ARGV[1]), ARGV[2]
local idle_timeout_ms = tonumber(cfg[2])
local open_ms, close_ms = tonumber(cfg[4] or '0'), tonumber(cfg[5] or '0')

local now = now_ms()

-- `state` is the entry's place as JSON members (',"state":...').
local function reply(state)
  local stats = redis.call('HMGET', Q.stats, 'rate_ema', 'rate_var')
  return '{"status":"ok",' .. pace_json(rate_in_use(cfg[1], cfg[6]), cfg[3] == '1', idle_timeout_ms, now, stats, sold_out(11))
    .. state .. '}'
end
local function gone(counter)
  redis.call('HINCRBY', Q.stats, counter, 1)
  return cjson.encode({ status = 'gone' })
end

local deadline = redis.call('ZSCORE', Q.adm, user)
if deadline and tonumber(redis.call('HGET', Q.adm_entry, user)) == entry then
  local seen = tonumber(redis.call('HGET', Q.poll, user) or now)
  if tonumber(deadline) <= now or now - seen > idle_timeout_ms then
    redis.call('ZREM', Q.adm, user)
    redis.call('HDEL', Q.adm_entry, user)
    redis.call('HDEL', Q.poll, user)
    return gone(tonumber(deadline) <= now and 'expired_total' or 'released_total')
  end
  redis.call('HSET', Q.poll, user, now)
  return reply(',"state":"admitted","admitted_until":' .. int(tonumber(deadline)))
end

local score = tonumber(redis.call('ZSCORE', Q.wait, user))
if score then
  local mine = score
  if score < 1 then mine = tonumber(redis.call('HGET', Q.pre_entry, user)) end
  if mine == entry then
    local seen = tonumber(redis.call('HGET', Q.poll, user) or '0')
    local closed = close_ms > 0 and now >= close_ms
    if closed or now - seen > idle_timeout_ms then
      redis.call('ZREM', Q.wait, user)
      redis.call('HDEL', Q.poll, user)
      if score < 1 then
        redis.call('HDEL', Q.pre_entry, user)
        if now < open_ms then redis.call('ZREM', Q.draw, user) end
      end
      return gone(closed and 'closed_total' or 'evicted_total')
    end
    redis.call('HSET', Q.poll, user, now)
    if score < 1 and now < open_ms then
      return reply(',"state":"prequeue"')
    end
    return reply(',"state":"waiting","position":' .. int(redis.call('ZRANK', Q.wait, user) + 1))
  end
end
return cjson.encode({ status = 'gone' })
