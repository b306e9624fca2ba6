-- lib/queue: shared code of every script that reads the clock or the
-- waiting room (the queue scripts, and lib/schedule.lua's). The Rust side
-- puts this file first in the scripts' function library
-- (src/store/redis.rs), run once when the library is loaded, so it only
-- defines locals: no top-level return, no redis.call, no KEYS read outside
-- a function.
--
-- The event's waiting room is 10 keys, always in this order (Q below is
-- the table queue_keys(i) builds from KEYS[i..i+9]; EventKeys::queue_keys
-- in src/store/keys.rs builds the list):
--   cfg        hash: event config (admit_per_second, max_active,
--              active_ttl_ms, idle_timeout_ms, paused, pre_ms, open_ms,
--              close_ms, pow_bits, seed)
--   seq        counter: join order
--   wait       zset: waiting user -> score: the draw score in [0, 1) for a
--              pre-queue entry, else the entry (join sequence)
--   poll       hash: waiting or admitted user -> last activity (ms)
--   adm        zset: admitted user -> admission deadline (ms)
--   adm_entry  hash: admitted user -> entry
--   win        zset: entry -> admission time (ms), the last second only
--   stats      hash: last_tick_ms, rate_ema, rate_var, admitted_total,
--              joined_total, evicted_total, expired_total, released_total,
--              left_total, closed_total, peak_active, sweep_after, adm_sweep
--   pre_entry  hash: pre-queue user -> entry
--   draw       zset: user -> draw score, every entry in the pre-queue at
--              opens_at (frozen from then on: the draw's entry list)

-- Caches in the library's state, which lives as long as the library is
-- loaded (FUNCTION LOAD): each holds what a pure computation made from
-- its key alone, so a hit returns exactly what recomputing would, and is
-- emptied at 1024 entries. They spare the hot paths conversions that cost
-- as much as a Redis command each (callgrind: tonumber of a stored number
-- ~2,100 instructions, string.format ~2,300, a 7-field table ~3,200).
local CACHE_MAX = 1024

-- Redis TIME in milliseconds: the one clock every instance agrees on.
-- The seconds' conversion is kept while they do not change.
local time_sec, time_sec_ms
local function now_ms()
  local t = redis.call('TIME')
  if t[1] ~= time_sec then time_sec, time_sec_ms = t[1], tonumber(t[1]) * 1000 end
  return time_sec_ms + math.floor(tonumber(t[2]) / 1000)
end

-- tonumber of a value that repeats (config fields, per-user counts,
-- arguments); counters that change on every call take tonumber directly.
local NUM, num_size = {}, 0
local function num(s)
  if s == nil or s == false then return nil end
  local v = NUM[s]
  if v then return v end
  v = tonumber(s)
  if v then
    if num_size >= CACHE_MAX then NUM, num_size = {}, 0 end
    NUM[s], num_size = v, num_size + 1
  end
  return v
end

-- An integer as a command argument. Redis 7.0 turns a Lua number given to
-- redis.call into text with snprintf("%.17g"), which glibc does in
-- multi-precision arithmetic: on the hot paths that cost as much as the
-- commands themselves. '%d' is plain integer formatting, same text; still
-- about 2,300 instructions a call (callgrind), so the numbers scripts
-- write most (counts, deltas, small seat numbers) are kept once made: the
-- library's state lives as long as the library, and this is a pure cache.
-- (Filled as used: a library's top level cannot call string functions.)
local SMALL_INT, int_last, int_last_s = {}, nil, nil
local function int(x)
  local s = SMALL_INT[x]
  if s then return s end
  if x == int_last then return int_last_s end
  s = string.format('%d', x)
  if x >= 0 and x < 1024 and x % 1 == 0 then
    SMALL_INT[x] = s
  else
    int_last, int_last_s = x, s   -- the same large number (a clock) again
  end
  return s
end

-- A stored number (a hash field's text, as tostring wrote it) as a JSON
-- number: the text itself when it is one, else 0 (inf or nan never reach
-- a reply).
local function jnum(s)
  if s and string.find(s, '^%-?%d+%.?%d*[eE]?[-+]?%d*$') then return s end
  return '0'
end

-- The pacing members every live entry reply carries (queue_status,
-- join_queue; EntryWire in src/queue/reply.rs reads them), written as JSON
-- text with no braces: a cjson.encode of the same table cost about 3 µs of
-- Redis's one thread per call, a tenth of the status script. `stats` is
-- the HMGET of stats' rate_ema and rate_var; `soldout` sold_out()'s answer.
local function pace_json(admit_per_second, paused, idle_timeout_ms, now, stats, soldout)
  return '"rate":' .. jnum(stats[1]) .. ',"rate_var":' .. jnum(stats[2])
    .. ',"admit_per_second":' .. int(admit_per_second or 0) .. ',"paused":' .. (paused and '1' or '0')
    .. ',"idle_timeout_ms":' .. int(idle_timeout_ms or 0) .. ',"now_ms":' .. int(now)
    .. ',"sold_out":' .. (soldout and ('"' .. soldout .. '"') or 'null')
end

local function queue_keys(i)
  return { cfg = KEYS[i], seq = KEYS[i + 1], wait = KEYS[i + 2], poll = KEYS[i + 3],
           adm = KEYS[i + 4], adm_entry = KEYS[i + 5], win = KEYS[i + 6],
           stats = KEYS[i + 7], pre_entry = KEYS[i + 8], draw = KEYS[i + 9] }
end

-- The heartbeats of one call, written together at its end: a script that
-- answers many requests records each active user once with beat(H, user)
-- and writes them all in one HSET with write_beats(H, key) (the queue's
-- `poll` hash). H.seen[user] tells a later request of the call that its
-- user is already seen now, which the hash does not show until the end.
local function new_beats(now)
  return { seen = {}, args = {}, now = int(now) }
end
local function beat(H, user)
  if H.seen[user] then return end
  H.seen[user] = true
  local args, n = H.args, #H.args
  args[n + 1], args[n + 2] = user, H.now
end
local function write_beats(H, key)
  if #H.args > 0 then redis.call('HSET', key, unpack(H.args)) end
end

-- Drops a waiting entry of the queue Q: its member and last poll and, for
-- a pre-queue entry (score < 1), its entry number and, before the draw
-- (now < open_ms), its place in the draw. `score` is its score in wait.
local function drop_waiting(Q, user, score, now, open_ms)
  redis.call('ZREM', Q.wait, user)
  redis.call('HDEL', Q.poll, user)
  if score < 1 then
    redis.call('HDEL', Q.pre_entry, user)
    if now < open_ms then redis.call('ZREM', Q.draw, user) end
  end
end

-- Where `entry` (the entry a verified token names, a number) of `user`
-- stands in the queue Q: 'admitted' and its admission deadline (ms), even
-- if past; 'waiting' and its score in wait (< 1: in the pre-queue, scored
-- by the draw); or nil when that entry is not live (left, evicted, ended,
-- or another entry of the user's). queue_status and stream_status answer
-- from it; what each does with an expired or idle entry is its own.
--
-- The line is looked at first: in a surge nearly every entry asked about
-- is waiting, and its answer then takes one lookup fewer. A user is in at
-- most one of wait and adm (admit_tick moves a user from the one to the
-- other; join_queue drops a user's stale admission before it queues the
-- user again), so the order changes no answer.
local function find_entry(Q, user, entry)
  local score = tonumber(redis.call('ZSCORE', Q.wait, user))
  if score then
    local mine = score
    if score < 1 then mine = tonumber(redis.call('HGET', Q.pre_entry, user)) end
    if mine == entry then return 'waiting', score end
  end
  local deadline = redis.call('ZSCORE', Q.adm, user)
  if deadline and tonumber(redis.call('HGET', Q.adm_entry, user)) == entry then
    return 'admitted', tonumber(deadline)
  end
  return nil
end

-- A live waiting entry's answer (find_entry's score): in the pre-queue
-- until opens_at, then its position in line.
local function waiting_json(Q, user, score, now, open_ms)
  if score < 1 and now < open_ms then return '{"s":"prequeue"}' end
  return '{"s":"waiting","p":' .. int(redis.call('ZRANK', Q.wait, user) + 1) .. '}'
end

-- The admission rate in use, from the event's cfg: the autopilot's
-- (`auto_admit_per_second`, present only in auto mode) or else the
-- configured `admit_per_second`. Admission (admit_tick), joins and status
-- answers all pace by this one rule.
local function rate_in_use(admit_per_second, auto_admit_per_second)
  return tonumber(auto_admit_per_second or admit_per_second)
end

-- The queue keys a buyer's admission check reads (lib/schedule.lua's
-- `admission`), KEYS[i..i+3] in this order (EventKeys::buyer_keys builds
-- them): adm, wait, adm_entry, seen (= poll, the buyer's last activity).
local BUYER_KEYS, buyer_keys_size = {}, 0
local function buyer_keys(i)
  local Q = BUYER_KEYS[KEYS[i]]
  if Q and Q.wait == KEYS[i + 1] and Q.adm_entry == KEYS[i + 2] and Q.seen == KEYS[i + 3] then
    return Q
  end
  Q = { adm = KEYS[i], wait = KEYS[i + 1], adm_entry = KEYS[i + 2], seen = KEYS[i + 3] }
  if buyer_keys_size >= CACHE_MAX then BUYER_KEYS, buyer_keys_size = {}, 0 end
  BUYER_KEYS[KEYS[i]], buyer_keys_size = Q, buyer_keys_size + 1
  return Q
end

-- Sold out, from the schedule cfg hashes (seats, held, sold) at
-- KEYS[first..]: nil while any schedule has a free seat (or none is
-- given), 'for_now' when none is free but some are held (they may come
-- back), 'final' when none is held either.
local function sold_out(first)
  if #KEYS < first then return nil end
  local held = 0
  for i = first, #KEYS do
    local s = redis.call('HMGET', KEYS[i], 'seats', 'held', 'sold')
    local seats, h, sold = tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0')
    if seats - h - sold > 0 then return nil end
    held = held + h
  end
  return held > 0 and 'for_now' or 'final'
end

-- cjson (Redis' build) encodes {} as an object; every empty table in a
-- reply is a list, so it is swapped for a marker and written as []. Here,
-- not in lib/schedule.lua, so queue scripts reply through json() too.
local EMPTY_ARRAY = '__boxoffice_empty_array__'
local function has_empty_table(v)
  if type(v) ~= 'table' then return false end
  if next(v) == nil then return true end
  for _, x in pairs(v) do
    if has_empty_table(x) then return true end
  end
  return false
end
local function with_empty_arrays(v)
  if type(v) ~= 'table' then return v end
  if next(v) == nil then return EMPTY_ARRAY end
  local out = {}
  for k, x in pairs(v) do out[k] = with_empty_arrays(x) end
  return out
end
local function json(t)
  -- Most replies have no empty table: encoded as they are, no copy.
  if not has_empty_table(t) then return cjson.encode(t) end
  return (string.gsub(cjson.encode(with_empty_arrays(t)), '"' .. EMPTY_ARRAY .. '"', '[]'))
end
