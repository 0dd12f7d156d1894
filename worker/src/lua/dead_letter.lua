-- Move one pending entry to the dead-letter stream and acknowledge it,
-- atomically (both keys share the shard's hash tag). The dead entry keeps
-- the entry's own fields and adds why it was moved.
--
-- KEYS[1] the shard's persistence stream  KEYS[2] its dead-letter stream
-- ARGV[1] the consumer group  ARGV[2] the entry's id
-- ARGV[3] the reason          ARGV[4] how often it was delivered
-- ARGV[5] the dead-letter stream's cap (approximate; the oldest go first)
--
-- Returns 1 when moved, 0 when the entry is gone already (trimmed or moved
-- by another worker; it is acknowledged all the same).
--
-- The added field names are placeholders in double braces, filled in from
-- core::broker::persist::dead_fields when the script text is built.
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local f = e[1][2]
table.insert(f, '{{D_SRC_ID}}'); table.insert(f, ARGV[2])
table.insert(f, '{{D_REASON}}'); table.insert(f, ARGV[3])
table.insert(f, '{{D_ATTEMPTS}}'); table.insert(f, ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(f))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
