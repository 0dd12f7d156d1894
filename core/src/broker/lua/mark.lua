-- Monotonic watermark updates, one or many in one call: delivered and read
-- only move forward, read implies delivered, and neither passes the last
-- assigned seq. A change is appended to the persistence stream.
--
-- Marks are numbered i = 0 .. n-1 (n = (#ARGV - 1) / 4). On standalone Redis
-- the gateway sends the marks of many conversations in one call; on a
-- cluster each conversation's keys live in their own slot, so a call holds
-- one mark.
--
-- KEYS[3i+1] the watermark hash (`<user>:d`, `<user>:r`)
-- KEYS[3i+2] the seq counter  KEYS[3i+3] the shard's persistence stream
-- KEYS[3n+1] (standalone Redis only) the connection registry's version
--            counter, read for the gateway's look-up cache (lua/registry.lua)
-- ARGV[1] '1' to append to the persistence stream
-- ARGV[4i+2] user (lowercase address)  ARGV[4i+3] 'd' (delivered) or 'r' (read)
-- ARGV[4i+4] seq  ARGV[4i+5] conversation id
--
-- Returns {regver, changed_0, delivered_0, read_0, changed_1, ...} (changed:
-- 1 or 0; regver: the registry version, 0 without KEYS[3n+1]).
--
-- Stream field names are placeholders in double braces, filled in from the
-- Rust constants (core::broker::persist::fields, the log's in redis.rs)
-- when the script text is built (core::broker::lua::render).
local n = (#ARGV - 1) / 4
local regver = 0
if KEYS[3 * n + 1] then regver = tonumber(redis.call('GET', KEYS[3 * n + 1]) or '0') end
local out = {regver}
for i = 0, n - 1 do
  local k = 3 * i
  local a = 4 * i + 1
  local user = ARGV[a + 1]
  local last = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  local s = math.min(tonumber(ARGV[a + 3]), last)
  -- Both marks in one command (a missing field comes back as false).
  local dr = redis.call('HMGET', KEYS[k + 1], user .. ':d', user .. ':r')
  local d = tonumber(dr[1] or '0')
  local r = tonumber(dr[2] or '0')
  local nr = r
  local nd = math.max(d, s)
  if ARGV[a + 2] == 'r' then
    nr = math.max(r, s)
    nd = math.max(d, nr)
  end
  if nd == d and nr == r then
    table.insert(out, 0)
  else
    redis.call('HSET', KEYS[k + 1], user .. ':d', nd, user .. ':r', nr)
    if ARGV[1] == '1' then
      redis.call('XADD', KEYS[k + 3], '*', '{{F_KIND}}', '{{K_WATERMARK}}', '{{F_CONV}}', ARGV[a + 4],
        '{{F_USER}}', user, '{{F_DELIVERED}}', nd, '{{F_READ}}', nr)
    end
    table.insert(out, 1)
  end
  table.insert(out, nd)
  table.insert(out, nr)
end
return out
