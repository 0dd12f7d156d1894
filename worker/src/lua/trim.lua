-- Trim entries every consumer is done with: below the oldest pending entry,
-- or, with nothing pending, up to the last entry handed out. Entries not yet
-- read by the group are never trimmed.
--
-- KEYS[1] the shard's persistence stream
-- ARGV[1] the consumer group
--
-- Returns the number of entries removed (0 when the group has read nothing
-- or does not exist).
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, ldi
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then ldi = g[i + 1] end
  end
  if name == ARGV[1] then last = ldi end
end
if not last or last == '0-0' then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid
if p[1] > 0 then
  minid = p[2]
else
  local sep = string.find(last, '-', 1, true)
  minid = string.sub(last, 1, sep - 1) .. '-' .. (tonumber(string.sub(last, sep + 1)) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
