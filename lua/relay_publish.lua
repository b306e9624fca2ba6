-- relay_publish: one batch of the outbox relay (src/payments/relay.rs)
-- onto the event stream, in one call, in order.
--
-- KEYS[1]  the stream (`boxoffice:events` under the key prefix)
-- KEYS[2]  its ready mark (`<prefix>{<prefix>boxoffice:events}:ready`, the
--          same slot)
-- ARGV[1]  its approximate MAXLEN
-- ARGV[2..] six values per message, in outbox id order: message_id,
--          outbox_id, topic, user_id, payload, created_at
--
-- Returns the number of messages appended, counted from the first. The
-- first XADD that fails ends the batch, so a message is never in the
-- stream before one ahead of it in the batch: the relay marks exactly the
-- messages counted, and the rest go out, in order, in a later batch.
--
-- Returns 'lost', appending nothing, when the ready mark is missing: this
-- Redis lost the stream (restarted empty, flushed, a failed-over shard)
-- and the reconciler has not yet put every message PostgreSQL keeps back
-- in line (src/payments/reconcile.rs, restore_stream). Appending now would
-- put new messages ahead of the lost ones it is about to send again.
if redis.call('EXISTS', KEYS[2]) == 0 then return 'lost' end
local n = 0
for i = 2, #ARGV, 6 do
  local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'message_id', ARGV[i], 'outbox_id', ARGV[i + 1], 'topic', ARGV[i + 2],
    'user_id', ARGV[i + 3], 'payload', ARGV[i + 4], 'created_at', ARGV[i + 5])
  if type(id) == 'table' and id.err then break end
  n = n + 1
end
return tostring(n)
