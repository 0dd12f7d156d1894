-- Create a group: its description and members in one step (one slot), so
-- nobody sees a group without its members.
--
-- KEYS[1] the group's meta hash      KEYS[2] its member set
-- ARGV[1] created_at (Unix ms)  ARGV[2] title ('' for none)
-- ARGV[3] created_by ('' for none)  ARGV[4..] the members
--
-- Returns 1, or 0 when the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'created_at', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'title', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'created_by', ARGV[3]) end
for i = 4, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
