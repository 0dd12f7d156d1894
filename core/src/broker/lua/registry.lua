-- Change one user's connection registry set and announce the change, on
-- standalone Redis (the version key is in another slot than the set, so on
-- Redis Cluster the gateways use plain SADD / SREM and cache nothing).
--
-- KEYS[1] the user's registry set      KEYS[2] the registry version counter
-- ARGV[1] 'add' or 'rem'               ARGV[2] the invalidation channel
-- ARGV[3] the user (lowercase address) ARGV[4..] gateway ids to add or remove
--
-- A change INCRs the version and publishes `<version> <user>` on the
-- channel (gateways drop the user from their look-up cache). A counter that
-- is new (Redis restarted empty, or was flushed) starts at the Redis clock in
-- microseconds, above every version given out before, so caches see a gap
-- and start over.
--
-- Returns {version, member...}: the version after the call and the set's
-- members.
local changed
if ARGV[1] == 'add' then
  changed = redis.call('SADD', KEYS[1], unpack(ARGV, 4))
else
  changed = redis.call('SREM', KEYS[1], unpack(ARGV, 4))
end
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if changed > 0 then
  v = redis.call('INCR', KEYS[2])
  if v == 1 then
    local t = redis.call('TIME')
    v = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[2], string.format('%d', v))
  end
  redis.call('PUBLISH', ARGV[2], string.format('%d', v) .. ' ' .. ARGV[3])
end
local out = {v}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do table.insert(out, m) end
return out
