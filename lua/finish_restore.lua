-- finish_restore: mark an event ready in Redis, after its catalog and all
-- its sold seats were written (event creation, or a restore from
-- PostgreSQL). Also moves the event's hold counter into the epoch's own
-- range, so hold ids minted from now on differ from every id minted before
-- the Redis loss (which may already be in a payment).
--
-- KEYS[1] ready     string: the event's epoch; present = ready
-- KEYS[2] hold_seq  counter: hold numbers of the event
-- ARGV[1] epoch     integer 0 .. 99999 (0 = just created; a restore takes
--                   the next value of PostgreSQL's redis_epochs.epoch)
--
-- Returns (JSON): {"status":"ok","epoch":e,"hold_seq":n}
--   The counter becomes max(current, epoch * 1e9) and the mark
--   max(current, epoch): never lower, so two instances restoring the same
--   event at once, in any order, both leave a counter past every id used.
--
-- Why 1e9 per epoch and at most 99999 epochs: hold numbers stay below
-- 1e14, which cjson (14 significant digits) encodes exactly.

local epoch = tonumber(ARGV[1])
if not epoch or epoch < 0 or epoch > 99999 or epoch ~= math.floor(epoch) then
  return redis.error_reply('ERR boxoffice script: bad argument: epoch')
end
local floor = epoch * 1000000000
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq < floor then
  redis.call('SET', KEYS[2], string.format('%d', floor))
  seq = floor
end
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < epoch then
  redis.call('SET', KEYS[1], string.format('%d', epoch))
else
  epoch = current
end
return cjson.encode({ status = 'ok', epoch = epoch, hold_seq = seq })
