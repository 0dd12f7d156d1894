-- Write one gateway's connection report. Stamps it with the Redis clock,
-- drops expired fields of other pods (the hash stays O(live pods) even
-- without a reader), and keeps the hash's own expiry at least the TTL.
--
-- KEYS[1] the cluster's report hash, sb:conns:{<namespace>/<cluster>}
-- ARGV[1] pod  ARGV[2] connections  ARGV[3] TTL (ms)
--
-- Returns the stamp (Unix ms, Redis clock). Values are
-- `<connections>:<reported_at>:<expires_at>` (`parse_value` reads them).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], ':(%d+)$') or '0')
  if all[i] ~= ARGV[1] and exp <= now then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. now .. ':' .. (now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return now
