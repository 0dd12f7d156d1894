-- Create a channel: description, publishers (creator included) and members
-- in one step (one slot).
--
-- KEYS[1] the channel's meta hash  KEYS[2] its member set
-- KEYS[3] its publisher set
-- ARGV[1] created_at (Unix ms)  ARGV[2] title ('' for none)
-- ARGV[3] created_by ('' for none)  ARGV[4] visibility ('public', 'members')
-- ARGV[5] the number of publishers, then the publishers, then the members
--
-- Returns 1, or 0 when the name is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'kind', 'channel', 'visibility', ARGV[4])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'title', ARGV[2]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'created_by', ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[3])
end
local np = tonumber(ARGV[5])
for i = 6, 5 + np do redis.call('SADD', KEYS[3], ARGV[i]) end
for i = 6 + np, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
