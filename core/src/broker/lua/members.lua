-- Change a group's member set, only if the group exists (its meta hash).
--
-- KEYS[1] the group's meta hash  KEYS[2] its member set
-- ARGV[1] 'add' or 'rem', then the users (lowercase addresses; one for 'rem')
--
-- Returns for 'add' the number added, for 'rem' 1 or 0; -1 for no such
-- group.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == 'add' then
  local n = 0
  for i = 2, #ARGV do n = n + redis.call('SADD', KEYS[2], ARGV[i]) end
  return n
end
return redis.call('SREM', KEYS[2], ARGV[2])
