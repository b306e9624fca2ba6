-- lib/schedule: shared code of the schedule scripts. The Rust side puts
-- this file (after lib/queue.lua, whose now_ms and buyer_keys it uses) at
-- the top of the scripts' function library (src/store/redis.rs), run once
-- when the library is loaded, so it only defines locals: no top-level
-- return, no redis.call, no KEYS read outside a function.
--
-- One schedule is 7 keys, always in this order (K below is the table
-- sched_keys(i) builds from KEYS[i..i+6]):
--   cfg      hash: starts_at, seats (N, numbered 1..N), row_size, price,
--            hold_ms, max_per_user, held (seats held or paying),
--            sold (seats sold), cancelled ("1" once the schedule is
--            cancelled: no new holds or payments), refunded:<payment_id>
--            ("1" once that payment is refunded: never sold again)
--   seats    hash: seat -> "h:<hold>" (held or paying) | "s:<payment_id>"
--            (sold); absent = free
--   map      bitmap: bit i = 1 when seat i is in `seats`; bit 0 is set
--            by the loader and never read here
--   holds    hash: hold -> JSON {"user","seats","deadline","state",
--            "held_deadline","created"}
--   dl       zset: hold -> current deadline (ms)
--   uheld    hash: user -> seats held or paying by that user's holds
--   ubought  hash: user -> seats bought
--
-- Invariants every script keeps, on every path:
--   cfg.held == number of "h:" values in seats == sum of uheld
--   cfg.sold == number of "s:" values in seats
--   map bit i == (seat i present in seats), for i >= 1
--   every hold in holds has a member in dl, and the other way round
-- uheld[user] counts the seats that are still "h:<n>" for the user's
-- holds, so whenever a hold ends only the seats it still owns are
-- subtracted (confirm_sale can take a seat away from another hold).
--
-- Lazy expiry: a hold is dead from its deadline on. Every schedule script
-- calls expire_due first, so no reply ever shows an expired hold and
-- nothing depends on a background job, key TTLs or keyspace events.

-- The tables are shared by the calls (a cache, see lib/queue.lua): never
-- written to.
local SCHED_KEYS, sched_keys_size = {}, 0
local function sched_keys(i)
  local K = SCHED_KEYS[KEYS[i]]
  if K and K.seats == KEYS[i + 1] and K.map == KEYS[i + 2] and K.holds == KEYS[i + 3]
      and K.dl == KEYS[i + 4] and K.uheld == KEYS[i + 5] and K.ubought == KEYS[i + 6] then
    return K
  end
  K = { cfg = KEYS[i], seats = KEYS[i + 1], map = KEYS[i + 2], holds = KEYS[i + 3],
        dl = KEYS[i + 4], uheld = KEYS[i + 5], ubought = KEYS[i + 6] }
  if sched_keys_size >= CACHE_MAX then SCHED_KEYS, sched_keys_size = {}, 0 end
  SCHED_KEYS[KEYS[i]], sched_keys_size = K, sched_keys_size + 1
  return K
end

-- The schedule's config with numbers converted, or nil when the schedule
-- is not loaded (no `seats` field).
local function load_cfg(K)
  local v = redis.call('HMGET', K.cfg, 'seats', 'row_size', 'price', 'hold_ms',
                       'max_per_user', 'held', 'sold', 'starts_at', 'cancelled')
  if not v[1] then return nil end
  local n = tonumber(v[1])
  return { seats = n, row_size = tonumber(v[2]) or n, price = v[3],
           hold_ms = tonumber(v[4]) or 0, max_per_user = tonumber(v[5]),
           held = tonumber(v[6]) or 0, sold = tonumber(v[7]) or 0, starts_at = v[8],
           cancelled = v[9] == '1' }
end

-- The `static` field of a schedule's cfg (load_event.lua): seats,
-- row_size, price, hold_ms and max_per_user as one JSON object, decoded
-- once per distinct text (a cache, see lib/queue.lua; the table is shared:
-- never written to). Nil when the field is absent (a schedule loaded before
-- it existed) or not an object.
local STATIC, static_size = {}, 0
local function static_cfg(text)
  if not text then return nil end
  local c = STATIC[text]
  if c then return c end
  local ok, d = pcall(cjson.decode, text)
  if not ok or type(d) ~= 'table' or type(d.seats) ~= 'number' then return nil end
  c = { seats = d.seats, row_size = tonumber(d.row_size) or d.seats, price = tostring(d.price),
        hold_ms = tonumber(d.hold_ms) or 0, max_per_user = tonumber(d.max_per_user) }
  if static_size >= CACHE_MAX then STATIC, static_size = {}, 0 end
  STATIC[text], static_size = c, static_size + 1
  return c
end

-- The event's ready mark (KEYS entry `ready`, see finish_restore.lua) is
-- absent while the event is missing from Redis or being restored: its sold
-- seats may not all be back yet, so no hold may be placed or paid. Checked
-- first, before the schedule's config (which a restore writes earlier).
local function restoring(ready_key)
  return redis.call('EXISTS', ready_key) == 0
end

-- Errors for broken caller contracts (malformed ARGV). Only ever returned
-- before the first write.
local function bad_arg(what)
  return redis.error_reply('ERR boxoffice script: bad argument: ' .. what)
end

-- Hold numbers travel as decimal strings without leading zeros ("7"), the
-- form INCR produced and every seat value "h:<n>" uses.
local function hold_id(s)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
  return (string.gsub(s, '^0+(%d)', '%1'))
end
local function hold_id_of(num)
  return string.format('%d', num)
end

-- "3,1,2" -> {3,1,2}; nil when a token is not a positive integer.
local function parse_seats(csv)
  local out = {}
  if type(csv) ~= 'string' then return nil end
  for tok in string.gmatch(csv, '[^,]+') do
    if not string.match(tok, '^%d+$') or tonumber(tok) < 1 then return nil end
    out[#out + 1] = tonumber(tok)
  end
  if #out == 0 then return nil end
  return out
end

local function sorted(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  table.sort(out)
  return out
end

-- All in one row and consecutive; a single seat is adjacent.
local function is_adjacent(cfg, seats)
  local s = sorted(seats)
  local r = cfg.row_size
  if math.floor((s[1] - 1) / r) ~= math.floor((s[#s] - 1) / r) then return false end
  return s[#s] - s[1] == #s - 1
end

-- Seat numbers (or any integers) as command arguments (see `int` in
-- lib/queue.lua).
local function ints(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = int(v) end
  return out
end

-- A string as JSON: one of plain id characters needs no escaping, so
-- cjson only sees the others (hand-written JSON on hot paths).
local function jstr(v)
  if string.find(v, '^[%w%-_.:@]*$') then return '"' .. v .. '"' end
  return cjson.encode(v)
end

local function decode_hold(raw)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function encode_hold(rec)
  return cjson.encode(rec)
end
-- Payment attempts a hold refuses (abort_payment's bar): their
-- begin_payment calls were lost, and may still arrive. A hold keeps the
-- last BARRED_MAX; each is one lost call of a buyer while the hold lived.
local BARRED_MAX = 32
local function is_barred(rec, attempt)
  for _, a in ipairs(rec.barred or {}) do
    if a == attempt then return true end
  end
  return false
end

-- Seat writes. Each keeps `seats` and `map` in step; the callers adjust
-- the held/sold counters, in one HINCRBY per script where possible.
local function set_seat(K, seat, value)
  redis.call('HSET', K.seats, seat, value)
  redis.call('SETBIT', K.map, seat, 1)
end
-- Frees the seat only if it still has exactly `value`; true if freed.
local function free_seat_if(K, seat, value)
  if redis.call('HGET', K.seats, seat) ~= value then return false end
  redis.call('HDEL', K.seats, seat)
  redis.call('SETBIT', K.map, seat, 0)
  return true
end

-- uheld[user] += delta; the field goes away at 0 (never stays negative).
local function uheld_add(K, user, delta)
  if delta == 0 then return end
  if redis.call('HINCRBY', K.uheld, user, int(delta)) <= 0 then
    redis.call('HDEL', K.uheld, user)
  end
end

-- Ends hold n: frees the seats still "h:<n>", subtracts exactly those
-- from held and uheld, deletes the record and its deadline. Returns the
-- freed seats (sorted).
local function drop_hold(K, n, rec)
  local mine = 'h:' .. n
  local freed = {}
  for _, seat in ipairs(rec.seats) do
    if free_seat_if(K, seat, mine) then freed[#freed + 1] = seat end
  end
  if #freed > 0 then
    redis.call('HINCRBY', K.cfg, 'held', -#freed)
    uheld_add(K, rec.user, -#freed)
  end
  redis.call('HDEL', K.holds, n)
  redis.call('ZREM', K.dl, n)
  return sorted(freed)
end

-- Ends every hold whose deadline is <= now (held or paying). Returns
-- (expired, expired_paying). Unbounded on purpose: a capped batch would
-- leave dead holds blocking seats. The backlog is only what expired since
-- the schedule's last script call (sweep_holds keeps it short), each hold
-- at most max_per_user seats.
local function expire_due(K, now)
  local due = redis.call('ZRANGEBYSCORE', K.dl, '-inf', int(now))
  local expired, paying = 0, 0
  for _, n in ipairs(due) do
    local rec = decode_hold(redis.call('HGET', K.holds, n))
    if rec then
      drop_hold(K, n, rec)
      expired = expired + 1
      if rec.state == 'paying' then paying = paying + 1 end
    else
      redis.call('ZREM', K.dl, n)
    end
  end
  return expired, paying
end

-- The buyer's queue entry (the one its token names, not just any entry of
-- the user) must be live and admitted right now. The queue keys share the
-- event's hash tag, so the scripts that need an admitted buyer check it
-- themselves instead of costing the request a second round trip.
-- Returns nil when admitted, else a reply table: {status="not_admitted",
-- position=p} while that entry waits, {status="queue_gone"} when it is not
-- live (left, evicted, window over, completed by a payment, or replaced:
-- a token of an entry that ended stays dead even after the user joins
-- again). Reads only: see `admission` for the heartbeat.
local function admission_of(Q, user, entry, now)
  local deadline = redis.call('ZSCORE', Q.adm, user)
  if deadline then
    -- Entries are written and sent as '%d' text: equal text is the same
    -- entry (no tonumber on the hot path); other text is compared as
    -- numbers.
    local admitted = redis.call('HGET', Q.adm_entry, user)
    if admitted and (admitted == entry or tonumber(admitted) == tonumber(entry))
        and tonumber(deadline) > now then
      return nil
    end
    return { status = 'queue_gone' }
  end
  -- Waiting (or in the pre-queue, scored by the draw rather than by the
  -- entry): nothing is allowed yet, whichever of the user's tokens asks.
  local rank = redis.call('ZRANK', Q.wait, user)
  if rank then return { status = 'not_admitted', position = rank + 1 } end
  return { status = 'queue_gone' }
end

-- admission_of, and an admitted buyer's request recorded as activity in
-- `seen` (admit_tick releases admitted users silent for idle_timeout_ms).
-- That is not part of the script's transition, so it may precede the
-- script's own validation: a refused request was still made. place_hold,
-- which checks many buyers in one call, uses admission_of and writes the
-- heartbeats together.
local function admission(Q, user, entry, now)
  local refused = admission_of(Q, user, entry, now)
  if not refused then redis.call('HSET', Q.seen, user, int(now)) end
  return refused
end

-- The common opening of the scripts that act on one existing hold
-- (hold_info, release_hold, begin_payment, abort_payment): KEYS[1..7] are
-- the schedule, ARGV[1] the hold number, ARGV[2] the user. Validates both,
-- runs `before(K, n, user, now)` (checks that must come before the first
-- write; it returns a reply to stop, or nil), expires due holds, and finds
-- the hold, owned by the user. Returns h = {K, cfg, n, user, now, rec,
-- reply} or nil plus the reply to return at once.
local function open_hold(before)
  local K = sched_keys(1)
  local n, user = hold_id(ARGV[1]), ARGV[2]
  if not n then return nil, bad_arg('hold') end
  if not user or user == '' then return nil, bad_arg('user') end
  local cfg = load_cfg(K)
  if not cfg then return nil, json({ status = 'no_schedule' }) end
  local now = now_ms()
  if before then
    local stop = before(K, n, user, now)
    if stop then return nil, stop end
  end
  local expired, expired_paying = expire_due(K, now)
  local function reply(t)
    t.expired, t.expired_paying = expired, expired_paying
    return json(t)
  end
  local rec = decode_hold(redis.call('HGET', K.holds, n))
  if not rec then return nil, reply({ status = 'gone' }) end
  if rec.user ~= user then return nil, reply({ status = 'forbidden' }) end
  return { K = K, cfg = cfg, n = n, user = user, now = now, rec = rec, reply = reply }
end
