-- Presence: `last_seen` only moves forward, whichever gateway reports last.
--
-- KEYS[1] the presence hash (user -> Unix ms)
-- ARGV[1] user (lowercase address)  ARGV[2] now (Unix ms)
--
-- Returns 0.
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
