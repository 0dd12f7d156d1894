-- Seed a conversation from the store: the seq counter (only if missing), a
-- new epoch (Redis clock, ms) when the counter was missing, and for a group
-- its description and members when the description is missing.
--
-- KEYS[1] the seq counter  KEYS[2] the epoch (`<ms>:<base>`)
-- KEYS[3] the meta hash    KEYS[4] the member set
-- ARGV[1] the stored last seq  ARGV[2] 'g' for a group, 'dm' otherwise
-- for a group: ARGV[3] created_at  ARGV[4] title ('' for none)
--   ARGV[5] created_by ('' for none)  ARGV[6..] the members
--
-- Returns the epoch in force (its ms part; 0 when there is none).
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], now .. ':' .. ARGV[1])
end
if ARGV[2] == 'g' and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'created_at', ARGV[3])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], 'title', ARGV[4]) end
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'created_by', ARGV[5]) end
  for i = 6, #ARGV do redis.call('SADD', KEYS[4], ARGV[i]) end
end
local e = redis.call('GET', KEYS[2]) or '0:0'
return tonumber(string.sub(e, 1, string.find(e, ':', 1, true) - 1))
