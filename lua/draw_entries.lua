-- draw_entries: one page of the draw's entry list, in draw order (admin,
-- for an auditor who recomputes the order from the revealed seed).
-- Read-only; O(log n + page).
--
-- KEYS[1] draw  zset: user -> draw score, frozen at opens_at
-- ARGV[1] offset (>= 0)
-- ARGV[2] page size (1..10000)
--
-- Returns (JSON): {"total":n,"users":["...", ...]}

local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if not offset or offset < 0 or not limit or limit < 1 or limit > 10000 then
  return redis.error_reply('ERR boxoffice script: bad argument: page')
end
local users = redis.call('ZRANGE', KEYS[1], offset, offset + limit - 1)
local out = { total = redis.call('ZCARD', KEYS[1]), users = users }
if #users == 0 then
  return '{"total":' .. out.total .. ',"users":[]}'
end
return cjson.encode(out)
