-- place_hold: hold seats of an event's schedules for users, chosen by
-- number or best available. Runs after lib/schedule.lua (prelude). One
-- call carries every hold of one event that one instance gathered while
-- its previous call was in flight (src/holds/coalesce.rs), on any of the
-- event's schedules; each is decided as if alone, in the order given, so
-- a seat taken by one hold is unavailable to the next and a user's second
-- hold on a schedule counts its first against that schedule's limit.
--
-- KEYS[1] hold_seq  counter: hold numbers of the event
-- KEYS[2] adm       zset: queue, admitted user -> deadline (ms)
-- KEYS[3] wait      zset: queue, waiting user -> entry
-- KEYS[4] adm_entry hash: queue, admitted user -> entry
-- KEYS[5] poll      hash: queue, user -> last activity (ms); written
-- KEYS[6] ready     string: the event's ready mark (finish_restore.lua)
-- KEYS[7+7(j-1)..13+7(j-1)], schedule j >= 1 (of m): its 7 keys in
--         lib/schedule.lua's order:
--   cfg     hash: schedule config and the held/sold counters
--   seats   hash: seat -> "h:<hold>" | "s:<payment_id>"
--   map     bitmap: bit i = seat i taken
--   holds   hash: hold -> JSON record
--   dl      zset: hold -> deadline (ms)
--   uheld   hash: user -> seats held or paying
--   ubought hash: user -> seats bought
-- KEYS[7+7m+(k-1)], keyed hold k >= 1 (of r, below): its key's string,
--         "<fingerprint>\n<the hold's ok reply>" until the hold's deadline
-- ARGV[1] n, the number of holds
-- ARGV[2+5(i-1)..6+5(i-1)], hold i:
--         the schedule's number j in KEYS;
--         user id;
--         mode: "seats" | "count";
--         mode seats: comma-separated seat numbers (non-empty, <= 100,
--         no duplicates); mode count: number of seats (>= 1);
--         the buyer's queue entry (from the verified token)
-- ARGV[2+5n+2(k-1)..3+5n+2(k-1)], keyed hold k (r >= 0 of them, after
--         every hold): the number i of a hold that carries an
--         Idempotency-Key, and the fingerprint of its request (schedule and
--         seats asked for). A call without keyed holds is the call of
--         before: nothing of this is read.
-- Every argument is checked before the first write: a malformed one
-- fails the whole call, and only a broken caller sends one.
--
-- Returns (JSON), for the whole call:
--   {"status":"restoring"}  the event is not (yet) ready in Redis: missing
--                           or its sold seats still being restored
--   {"status":"ok","expired":x,"expired_paying":y,"holds":[hold, ...]}
--       x, y: the holds this call expired on its way (on the schedules
--       its holds name); holds in ARGV order, each one of
--   {"status":"no_schedule"}
--   {"status":"cancelled"}  the schedule was cancelled: nothing is sold
--   {"status":"not_admitted","position":p}  still waiting in the queue
--   {"status":"queue_gone"}  the user has no live queue entry
--   {"status":"invalid","reason":"seat_out_of_range","seats":[..]}
--   {"status":"invalid","reason":"count_too_large"}
--   {"status":"limit","max_per_user":m,"held":h,"bought":b,"requested":k}
--   {"status":"unavailable","seats":[..]}
--       mode seats: exactly the requested seats that are taken (sorted);
--       mode count: [] (fewer free seats than requested)
--   {"status":"ok","hold":n,"seats":[..],"adjacent":true|false,
--    "deadline":ms,"price":".."}
--   {"status":"ok","replayed":true,...}  a keyed hold whose key already
--       made a hold (still before its deadline): that hold's reply again,
--       and nothing else is done (docs/HOLDS.md, "A hold whose answer was
--       lost")
--   {"status":"key_reused"}  the key made a hold for another request
--
-- Why a script: "are these seats free and is the user under the limit"
-- and "take them" must be one step, or two buyers both get a seat; with
-- all or nothing over several seats, MULTI/WATCH would retry forever on a
-- hot schedule. Expiry runs in the same step, so a seat is free again
-- exactly from its hold's deadline on.

local n_holds = tonumber(ARGV[1])
if not n_holds or n_holds < 1 or n_holds ~= math.floor(n_holds) then
  return bad_arg('hold count')
end
local n_keyed = (#ARGV - 1 - 5 * n_holds) / 2
if n_keyed < 0 or n_keyed > n_holds or n_keyed ~= math.floor(n_keyed) then
  return bad_arg('hold count')
end
local n_sched = (#KEYS - 6 - n_keyed) / 7
if n_sched < 1 or n_sched ~= math.floor(n_sched) then return bad_arg('keys') end
-- Each schedule once: two numbers for one schedule would split its
-- deferred writes and its held_new in two (no_room would miss some).
if n_sched > 1 then
  local named = {}
  for j = 1, n_sched do
    local cfg = KEYS[7 + 7 * (j - 1)]
    if named[cfg] then return bad_arg('schedule named twice') end
    named[cfg] = true
  end
end
-- Each hold's request, parsed and checked before anything is written.
local sched_of, wanted_of, count_of = {}, {}, {}
for i = 1, n_holds do
  local at = 5 * (i - 1)
  local j, user, mode, arg = num(ARGV[at + 2]), ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  if not j or j < 1 or j > n_sched or j ~= math.floor(j) then return bad_arg('schedule') end
  sched_of[i] = j
  if not user or user == '' then return bad_arg('user') end
  if mode == 'seats' then
    local wanted = parse_seats(arg)
    if not wanted then return bad_arg('seats') end
    wanted_of[i], count_of[i] = wanted, #wanted
  elseif mode == 'count' then
    local count = num(arg)
    if not count or count < 1 or count ~= math.floor(count) then return bad_arg('count') end
    count_of[i] = count
  else
    return bad_arg('mode')
  end
end
-- The keyed holds: hold i's key (a KEYS name) and its request's
-- fingerprint; each hold at most once.
local key_of, print_of
if n_keyed > 0 then
  key_of, print_of = {}, {}
  local keys_at, args_at = 6 + 7 * n_sched, 1 + 5 * n_holds
  for k = 1, n_keyed do
    local i, fp = num(ARGV[args_at + 2 * k - 1]), ARGV[args_at + 2 * k]
    if not i or i < 1 or i > n_holds or i ~= math.floor(i) or key_of[i] then
      return bad_arg('keyed hold')
    end
    if fp == '' or string.find(fp, '\n', 1, true) then return bad_arg('fingerprint') end
    key_of[i], print_of[i] = KEYS[keys_at + k], fp
  end
end
if restoring(KEYS[6]) then return json({ status = 'restoring' }) end

local now = now_ms()
local now_s = int(now)
-- The queue keys (admission_of checks each buyer; the call writes the
-- admitted buyers' heartbeats together, at its end).
local Q = buyer_keys(2)
local expired, expired_paying = 0, 0

-- Writes that no later hold of this call reads, made once at the end of
-- the call: the heartbeats of admitted buyers, and per schedule the hold
-- records and their deadlines (all the same: one clock, one hold time)
-- and its held counter (no_room() adds held_new to what it reads). Hold
-- numbers are drawn for the whole call at the first need (one INCRBY of
-- n_holds): each hold takes at most one, and those left over stay
-- unused, as a number drawn by a round that found its seat taken always
-- has.
local beats = new_beats(now)
local next_n
local function draw_hold_id()
  if not next_n then
    next_n = redis.call('INCRBY', KEYS[1], n_holds) - n_holds + 1
  end
  local n = next_n
  next_n = n + 1
  return hold_id_of(n)
end

-- Schedule j as this call uses it, read at its first hold: its keys, the
-- config this script needs (load_cfg reads and converts more), its due
-- holds expired, and the writes deferred to the end of the call; or
-- `refused`, the answer of each of its holds (no schedule, cancelled).
-- The config is the hot path of a sale, where every field (~2,300
-- instructions each in an HMGET) and tonumber shows: the five that only
-- the schedule's loading writes come as one field, decoded once per
-- library (static_cfg); a schedule loaded before that field existed has
-- them read one by one.
local schedules, used = {}, {}
local function schedule(j)
  local S = schedules[j]
  if S then return S end
  local K = sched_keys(7 + 7 * (j - 1))
  local v = redis.call('HMGET', K.cfg, 'static', 'cancelled')
  local c = static_cfg(v[1])
  if not c then
    local w = redis.call('HMGET', K.cfg, 'seats', 'price', 'hold_ms', 'max_per_user')
    if w[1] then
      c = { seats = num(w[1]), price = w[2], hold_ms = num(w[3]) or 0, max_per_user = num(w[4]) }
    end
  end
  if not c then
    S = { refused = '{"status":"no_schedule"}' }
  elseif v[2] == '1' then
    S = { refused = '{"status":"cancelled"}' }
  else
    local x, y = expire_due(K, now)
    expired, expired_paying = expired + x, expired_paying + y
    S = { K = K, N = c.seats, R = c.row_size, max_per_user = c.max_per_user,
          price_json = jstr(c.price), deadline_s = int(now + c.hold_ms),
          held_new = 0, records = {}, deadlines = {} }
    used[#used + 1] = S
  end
  schedules[j] = S
  return S
end

-- Schedule S's row size, read when a search or an adjacency check needs
-- it (static_cfg has it; a schedule loaded before `static` existed does
-- not).
local function row_size(S)
  if not S.R then
    S.R = num(redis.call('HGET', S.K.cfg, 'row_size')) or S.N
  end
  return S.R
end

-- Hold i, decided against everything the holds before it in this call
-- did: its reply as JSON text.
local function place(i)
  -- A key that already made a hold answers that hold, whatever else has
  -- changed since (the buyer's entry, the schedule): the request was
  -- decided when its key was first used.
  local key = key_of and key_of[i]
  if key then
    local saved = redis.call('GET', key)
    if saved then
      local cut = string.find(saved, '\n', 1, true)
      if string.sub(saved, 1, cut - 1) ~= print_of[i] then return '{"status":"key_reused"}' end
      -- '{"status":"ok",' is 15 bytes.
      return '{"status":"ok","replayed":true,' .. string.sub(saved, cut + 16)
    end
  end
  local S = schedule(sched_of[i])
  if S.refused then return S.refused end
  local K, N = S.K, S.N
  local at = 5 * (i - 1)
  local user, entry = ARGV[at + 3], ARGV[at + 6]
  local wanted, count = wanted_of[i], count_of[i]
  if wanted then
    local bad = {}
    for _, s in ipairs(wanted) do
      if s > N then bad[#bad + 1] = s end
    end
    if #bad > 0 then
      return json({ status = 'invalid', reason = 'seat_out_of_range', seats = sorted(bad) })
    end
  elseif count > N then
    return json({ status = 'invalid', reason = 'count_too_large' })
  end

  -- The user must be admitted (checked here rather than in a second round trip).
  local refused = admission_of(Q, user, entry, now)
  if refused then return json(refused) end
  beat(beats, user)

  local max_per_user = S.max_per_user
  if max_per_user then
    local h_user = num(redis.call('HGET', K.uheld, user)) or 0
    local b_user = num(redis.call('HGET', K.ubought, user)) or 0
    if h_user + b_user + count > max_per_user then
      return json({ status = 'limit', max_per_user = max_per_user, held = h_user,
                    bought = b_user, requested = count })
    end
  end

  -- Best available on the bitmap. The map string can be shorter than N+1
  -- bits (SETBIT grows it lazily): bits past its end are free. BITPOS with
  -- an explicit end clamps to the string, hence the two helpers. The map's
  -- length in bits is read once, when a helper first needs it. The helpers
  -- are built (a closure each) only when a search needs more than the
  -- one-seat path in best_available.
  local maplen
  local function general_search()
    local R = row_size(S)
    local function map_bits()
      if not maplen then maplen = redis.call('STRLEN', K.map) * 8 end
      return maplen
    end

    -- Lowest free seat in [from, to], or nil.
    local function first_free(from, to)
      if from > to then return nil end
      local maplen = map_bits()
      if from >= maplen then return from end
      local p = redis.call('BITPOS', K.map, 0, from, math.min(to, maplen - 1), 'BIT')
      if p >= 0 then return p end
      if to >= maplen then return maplen end
      return nil
    end

    -- Lowest taken seat in [from, to], or nil.
    local function first_taken(from, to)
      local maplen = map_bits()
      if from > to or from >= maplen then return nil end
      local p = redis.call('BITPOS', K.map, 1, from, math.min(to, maplen - 1), 'BIT')
      if p >= 0 then return p end
      return nil
    end

    -- Per byte value b (8 seats), for runs of k: lead[b] free seats at its
    -- start, trail[b] free seats at its end, inner[b] offset of the first k
    -- free seats in a row inside it (or false). 256 entries, built only when
    -- scan_run runs. Bit i is the (i % 8)-th most significant bit of byte
    -- i // 8.
    local band, bor, rshift = bit.band, bit.bor, bit.rshift
    local min, sbyte = math.min, string.byte
    local function byte_tables(k)
      local lead, trail, inner = {}, {}, {}
      for b = 0, 255 do
        local run, first, at = 0, nil, false
        for i = 0, 7 do
          if band(b, rshift(128, i)) == 0 then
            run = run + 1
            if run == k and not at then at = i - k + 1 end
          else
            if not first then first = i end
            run = 0
          end
        end
        lead[b], trail[b], inner[b] = first or 8, run, at
      end
      return lead, trail, inner
    end

    -- Lowest run of k free seats inside one row from seat `from` on (a free
    -- seat no earlier run can reach), reading the bitmap in Lua: one GETRANGE,
    -- then one table step per byte. A byte that `from`, a row start or seat N
    -- cuts is split into segments, the bits outside a segment masked as taken,
    -- so each segment lies in one row and the tables stay exact.
    local function scan_run(from, k)
      local base = math.floor(from / 8)   -- byte index of the string's first byte
      local bytes = redis.call('GETRANGE', K.map, base, math.floor(N / 8))
      local lead, trail, inner = byte_tables(k)
      local before, after = {}, {}        -- masks: bits < i, bits > i
      for i = 0, 7 do
        before[i] = 0xFF - rshift(0xFF, i)
        after[i] = rshift(0xFF, i + 1)
      end
      local run, s = 0, from              -- run: free seats just before s, same row
      local off = (s - 1) % R             -- s's place in its row
      while s <= N do
        local lo = s % 8
        local b0 = s - lo                 -- seat of the byte's first bit
        local hi = min(7, N - b0, lo + R - off - 1)  -- segment: bits lo..hi
        local byte = sbyte(bytes, b0 / 8 - base + 1) or 0  -- past the end: free
        local m = bor(byte, before[lo], after[hi])
        if off == 0 then run = 0 end
        -- lo > 0 only at `from` or a row start, where run is 0.
        if run + lead[m] >= k then return s - run end
        if inner[m] then return b0 + inner[m] end
        if m == 0 then run = run + 8 else run = trail[m] end
        off = off + hi - lo + 1
        if off >= R then off = 0 end
        s = b0 + hi + 1
      end
      return nil
    end

    -- Lowest run of k adjacent free seats inside one row. Each probe jumps
    -- with BITPOS (C speed) over a taken stretch, a free run too short, or
    -- the rest of a row the run cannot fit in, so cost grows with the number
    -- of free fragments, not with N: a sold-out-but-a-few map costs a few
    -- calls. A badly fragmented map would need one Redis call per fragment;
    -- after PROBES of them the rest is scanned in Lua, bounded by N/8 bytes
    -- (100000 seats, every other one free, no pair anywhere: ~3 ms).
    local PROBES = 64
    local function find_run(k)
      local pos = first_free(1, N)
      local probes = 0
      while pos do
        probes = probes + 1
        if probes > PROBES then return scan_run(pos, k) end
        local row_end = math.min(N, math.ceil(pos / R) * R)
        if pos + k - 1 > row_end then
          pos = first_free(row_end + 1, N)
        else
          local t = first_taken(pos, pos + k - 1)
          if not t then return pos end
          pos = first_free(t + 1, N)
        end
      end
      return nil
    end

    -- `count` seats by the rule above, or nil when fewer are free.
    return function(k)
      local start = k <= R and find_run(k) or nil
      local seats = {}
      if start then
        for i = 0, k - 1 do seats[#seats + 1] = start + i end
        return seats, true
      end
      -- No run in any row: the k lowest free seats. Not adjacent by
      -- construction (a run in one row would have been found above).
      local pos = 0
      for _ = 1, k do
        pos = first_free(pos + 1, N)
        if not pos then return nil end
        seats[#seats + 1] = pos
      end
      return seats, false
    end
  end

  -- `count` seats by the rule above, or nil when fewer are free.
  local general
  local function best_available(k)
    if k == 1 then
      -- The hot path: the lowest free seat in one BITPOS over the whole
      -- map (bit 0 is always set, so 0 means the map is missing: then the
      -- general search below). A map of all ones answers the bit past its
      -- end, which is free if it is a seat.
      local p = redis.call('BITPOS', K.map, '0')
      if p >= 1 then
        if p > N then return nil end
        return { p }, true
      end
    end
    general = general or general_search()
    return general(k)
  end

  -- seats: the seats to hold, ids: the same as command arguments, n: the
  -- hold number once drawn, claimed: the seats hash already has them.
  local seats, adjacent, ids, n, claimed
  if wanted then
    seats = sorted(wanted)
    ids = ints(seats)
    local vals = redis.call('HMGET', K.seats, unpack(ids))
    local taken = {}
    for i, s in ipairs(seats) do
      if vals[i] then taken[#taken + 1] = s end
    end
    if #taken > 0 then return json({ status = 'unavailable', seats = taken }) end
    if #seats == 1 then
      adjacent = true
    else
      adjacent = is_adjacent({ row_size = row_size(S) }, seats)
    end
  else
    -- The counters are exact, so a sold-out schedule answers in O(1): a
    -- search for several seats asks them first; one seat is one BITPOS
    -- either way (over at most N/8 bytes when none is free), cheaper than
    -- reading them, so it asks only once the map proves stale (below).
    local function no_room()
      local c = redis.call('HMGET', K.cfg, 'held', 'sold')
      return N - (tonumber(c[1]) or 0) - S.held_new - (tonumber(c[2]) or 0) < count
    end
    if count > 1 and no_room() then return json({ status = 'unavailable', seats = {} }) end
    -- The map only mirrors `seats`; the hash has the last word. A map bit
    -- wrongly 0 (a map lost or restored apart) must never sell a seat
    -- twice: repair it and search again. Each round fixes at least one bit.
    -- One seat (the hot path) is checked and taken in one HSETNX, under a
    -- hold number drawn first (a round that finds the seat taken leaves
    -- that number unused).
    local stale_seen = false
    while true do
      seats, adjacent = best_available(count)
      if not seats then return json({ status = 'unavailable', seats = {} }) end
      ids = ints(seats)
      if count == 1 then
        n = n or draw_hold_id()
        if redis.call('HSETNX', K.seats, ids[1], 'h:' .. n) == 1 then
          claimed = true
          break
        end
        redis.call('SETBIT', K.map, ids[1], '1')
        -- A stale map (lost, or restored apart): without the counters a
        -- sold-out schedule would be repaired bit by bit, N rounds.
        if not stale_seen and no_room() then return json({ status = 'unavailable', seats = {} }) end
        stale_seen = true
      else
        local vals = redis.call('HMGET', K.seats, unpack(ids))
        local stale = false
        for i, id in ipairs(ids) do
          if vals[i] then
            redis.call('SETBIT', K.map, id, '1')
            stale = true
          end
        end
        if not stale then break end
      end
      maplen = nil
    end
  end

  -- All checks passed: the writes.
  n = n or draw_hold_id()
  for _, id in ipairs(ids) do redis.call('SETBIT', K.map, id, '1') end
  if not claimed then
    local value, fields = 'h:' .. n, {}
    for _, id in ipairs(ids) do
      fields[#fields + 1] = id
      fields[#fields + 1] = value
    end
    redis.call('HSET', K.seats, unpack(fields))
  end
  S.held_new = S.held_new + #seats
  uheld_add(K, user, #seats)
  -- The record and the reply are written as JSON strings directly (what
  -- encode_hold and json would make of the same tables, without building
  -- and walking them): this is the hot path of a sale.
  local seat_list = '[' .. table.concat(ids, ',') .. ']'
  local records, deadlines, deadline_s = S.records, S.deadlines, S.deadline_s
  records[#records + 1] = n
  records[#records + 1] = '{"user":' .. jstr(user) .. ',"seats":' .. seat_list
    .. ',"deadline":' .. deadline_s .. ',"state":"held","held_deadline":' .. deadline_s
    .. ',"created":' .. now_s .. '}'
  deadlines[#deadlines + 1] = deadline_s
  deadlines[#deadlines + 1] = n

  local reply = '{"status":"ok","hold":' .. n .. ',"seats":' .. seat_list .. ',"adjacent":'
    .. tostring(adjacent) .. ',"deadline":' .. deadline_s .. ',"price":' .. S.price_json .. '}'
  -- The key remembers the hold for as long as the hold can be held: a
  -- retry after its deadline finds neither and holds anew.
  if key then redis.call('SET', key, print_of[i] .. '\n' .. reply, 'PXAT', deadline_s) end
  return reply
end

local replies = {}
for i = 1, n_holds do replies[i] = place(i) end
write_beats(beats, Q.seen)
for _, S in ipairs(used) do
  if #S.records > 0 then
    redis.call('HSET', S.K.holds, unpack(S.records))
    redis.call('ZADD', S.K.dl, unpack(S.deadlines))
    redis.call('HINCRBY', S.K.cfg, 'held', int(S.held_new))
  end
end
return '{"status":"ok","expired":' .. int(expired) .. ',"expired_paying":' .. int(expired_paying)
  .. ',"holds":[' .. table.concat(replies, ',') .. ']}'
