-- check_schedule: checks the invariants written at the top of
-- lib/schedule.lua against one schedule's keys, for the audit and the
-- tests. Runs after lib/schedule.lua (prelude). Read-only: it does not
-- expire due holds, so it reports the state exactly as it finds it (a hold
-- past its deadline that no script has dropped yet is still a hold, and
-- must still be consistent).
--
-- KEYS[1..7] the schedule (see lib/schedule.lua)
-- KEYS[8]    sold      bitmap: bit i = seat i sold
--
-- Returns (JSON): {"status":"no_schedule"} or
--   {"status":"ok","now":ms,"seats":N,"max_per_user":m,"price":"..",
--    "hold_ms":h,
--    "counts":{"seats":s,"holds":k,"held":a,"sold":b,"users":u},
--    "violations":[{"check":"<name>","detail":".."}, ..],
--    "sold":[[seat,"<payment id>"], ..],
--    "paying":[[hold,created_ms,deadline_ms], ..]}
--   Check names: seat_range, seat_value, held_counter, sold_counter,
--   uheld, map_bits, sold_bits, hold_deadline, deadline_hold,
--   hold_record, seat_owner, max_per_user, static_cfg.
--   At most 50 violations are listed per check; "totals" has the exact
--   count of each failed check: [{"check":"<name>","count":n}, ..].
--
-- Cost: O(N + holds) in one call (HGETALL of the seats and holds hashes,
-- two GETs of N/8 bytes); the audit's, never a buyer's.

local K = sched_keys(1)
local sold_key = KEYS[8]
local cfg = load_cfg(K)
if not cfg then return json({ status = 'no_schedule' }) end
local n_seats = cfg.seats

local violations, vcount = {}, {}
local function bad(check, detail)
  vcount[check] = (vcount[check] or 0) + 1
  if vcount[check] <= 50 then violations[#violations + 1] = { check = check, detail = detail } end
end

-- Bit i of a Redis bitmap string (bit 0 = high bit of byte 1).
local function bit(s, i)
  local byte = string.byte(s, math.floor(i / 8) + 1)
  if not byte then return 0 end
  return math.floor(byte / 2 ^ (7 - i % 8)) % 2
end

-- The seats hash: every field a seat number in 1..N, every value h:<n>
-- or s:<payment id>.
local seats = {}
local n_h, n_s, n_fields = 0, 0, 0
local by_hold = {}
local sold = {}
local all = redis.call('HGETALL', K.seats)
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  n_fields = n_fields + 1
  local seat = string.match(f, '^%d+$') and tonumber(f)
  if not seat or seat < 1 or seat > n_seats then
    bad('seat_range', 'seat "' .. f .. '" is outside 1..' .. n_seats)
  end
  local kind, rest = string.sub(v, 1, 2), string.sub(v, 3)
  if kind == 'h:' and hold_id(rest) then
    n_h = n_h + 1
    local hid = hold_id(rest)
    by_hold[hid] = by_hold[hid] or {}
    if seat then by_hold[hid][#by_hold[hid] + 1] = seat end
  elseif kind == 's:' and rest ~= '' then
    n_s = n_s + 1
    if seat then sold[#sold + 1] = { seat, rest } end
  else
    bad('seat_value', 'seat ' .. f .. ' has value "' .. v .. '"')
  end
  if seat then seats[seat] = v end
end

if cfg.held ~= n_h then
  bad('held_counter', 'cfg.held is ' .. cfg.held .. ' but ' .. n_h .. ' seats are h:')
end
if cfg.sold ~= n_s then
  bad('sold_counter', 'cfg.sold is ' .. cfg.sold .. ' but ' .. n_s .. ' seats are s:')
end

-- The bitmaps: bit i == seat i present (map), seat i sold (sold), 1..N.
local map = redis.call('GET', K.map) or ''
local soldbits = redis.call('GET', sold_key) or ''
for i = 1, n_seats do
  local present = seats[i] ~= nil
  if (bit(map, i) == 1) ~= present then
    bad('map_bits', 'seat ' .. i .. ': map bit ' .. bit(map, i) .. ' but the seat is '
      .. (present and 'taken' or 'free'))
  end
  local is_sold = present and string.sub(seats[i], 1, 2) == 's:'
  if (bit(soldbits, i) == 1) ~= is_sold then
    bad('sold_bits', 'seat ' .. i .. ': sold bit ' .. bit(soldbits, i) .. ' but the seat is '
      .. (is_sold and 'sold' or 'not sold'))
  end
end

-- Holds and deadlines, both ways; each hold's seats that are still h:<n>
-- are the ones it lists; uheld[user] is the sum over the user's holds.
local holds = {}
local n_holds = 0
local hall = redis.call('HGETALL', K.holds)
local want_uheld = {}
local paying = {}
for i = 1, #hall, 2 do
  local hid, raw = hall[i], hall[i + 1]
  n_holds = n_holds + 1
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or type(rec.seats) ~= 'table' or type(rec.user) ~= 'string'
      or type(rec.deadline) ~= 'number' then
    bad('hold_record', 'hold ' .. hid .. ' has an unreadable record')
  else
    holds[hid] = rec
    local score = redis.call('ZSCORE', K.dl, hid)
    if not score then
      bad('hold_deadline', 'hold ' .. hid .. ' has no deadline in dl')
    elseif tonumber(score) ~= rec.deadline then
      bad('hold_deadline', 'hold ' .. hid .. ': dl says ' .. score .. ', the record ' .. rec.deadline)
    end
    local listed = {}
    for _, s in ipairs(rec.seats) do listed[s] = true end
    local owned = 0
    for _, s in ipairs(by_hold[hid] or {}) do
      if listed[s] then owned = owned + 1 else
        bad('seat_owner', 'seat ' .. s .. ' is h:' .. hid .. ' but hold ' .. hid .. ' does not list it')
      end
    end
    want_uheld[rec.user] = (want_uheld[rec.user] or 0) + owned
    if rec.state == 'paying' then
      paying[#paying + 1] = { tonumber(hid), rec.created or 0, rec.deadline }
    end
  end
end
for hid, list in pairs(by_hold) do
  if not holds[hid] then
    bad('seat_owner', 'seats ' .. table.concat(sorted(list), ',') .. ' are h:' .. hid
      .. ' but there is no hold ' .. hid)
  end
end
local dl = redis.call('ZRANGE', K.dl, 0, -1)
for _, hid in ipairs(dl) do
  if redis.call('HEXISTS', K.holds, hid) == 0 then
    bad('deadline_hold', 'deadline ' .. hid .. ' in dl has no hold record')
  end
end

local uheld = redis.call('HGETALL', K.uheld)
local uheld_sum, users = 0, {}
for i = 1, #uheld, 2 do
  local user, v = uheld[i], tonumber(uheld[i + 1])
  users[user] = true
  uheld_sum = uheld_sum + (v or 0)
  if v ~= (want_uheld[user] or 0) then
    bad('uheld', 'uheld[' .. user .. '] is ' .. uheld[i + 1] .. ' but the user\'s holds own '
      .. (want_uheld[user] or 0) .. ' seats')
  end
end
for user, want in pairs(want_uheld) do
  if want > 0 and not users[user] then
    bad('uheld', 'uheld[' .. user .. '] is missing but the user\'s holds own ' .. want .. ' seats')
  end
end
if uheld_sum ~= n_h and not vcount['uheld'] then
  bad('uheld', 'sum of uheld is ' .. uheld_sum .. ' but ' .. n_h .. ' seats are h:')
end

-- The `static` field (place_hold's one read of the config) says what the
-- fields say.
local static = redis.call('HGET', K.cfg, 'static')
if static then
  local c = static_cfg(static)
  local row_size = tonumber(redis.call('HGET', K.cfg, 'row_size')) or cfg.seats
  if not c or c.seats ~= cfg.seats or c.row_size ~= row_size or c.price ~= cfg.price
      or c.hold_ms ~= cfg.hold_ms or c.max_per_user ~= cfg.max_per_user then
    bad('static_cfg', 'cfg.static is ' .. static .. ' but the fields say seats ' .. cfg.seats
      .. ', row_size ' .. row_size .. ', price ' .. tostring(cfg.price) .. ', hold_ms '
      .. cfg.hold_ms .. ', max_per_user ' .. tostring(cfg.max_per_user))
  end
end

-- Seats held plus seats bought per user never exceed max_per_user.
local ub = redis.call('HGETALL', K.ubought)
local bought = {}
for i = 1, #ub, 2 do
  bought[ub[i]] = tonumber(ub[i + 1]) or 0
  users[ub[i]] = true
end
if cfg.max_per_user then
  for user, _ in pairs(users) do
    local total = (bought[user] or 0) + (want_uheld[user] or 0)
    if total > cfg.max_per_user then
      bad('max_per_user', user .. ' has ' .. (bought[user] or 0) .. ' bought and '
        .. (want_uheld[user] or 0) .. ' held, above max_per_user ' .. cfg.max_per_user)
    end
  end
end

local totals = {}
for check, count in pairs(vcount) do totals[#totals + 1] = { check = check, count = count } end
local n_users = 0
for _ in pairs(users) do n_users = n_users + 1 end
table.sort(sold, function(a, b) return a[1] < b[1] end)
return json({ status = 'ok', now = now_ms(), seats = n_seats, max_per_user = cfg.max_per_user,
              price = cfg.price, hold_ms = cfg.hold_ms,
              counts = { seats = n_fields, holds = n_holds, held = n_h, sold = n_s, users = n_users },
              violations = violations, totals = totals, sold = sold, paying = paying })
