-- Monotonic watermark update: delivered and read only move forward, read
-- implies delivered, and neither passes the last assigned seq. A change is
-- appended to the persistence stream.
--
-- KEYS[1] the watermark hash (`<user>:d`, `<user>:r`)  KEYS[2] the seq counter
-- KEYS[3] the shard's persistence stream
-- KEYS[4] (standalone Redis only) the connection registry's version counter,
--         read for the gateway's look-up cache (lua/registry.lua)
-- ARGV[1] user (lowercase address)  ARGV[2] 'd' (delivered) or 'r' (read)
-- ARGV[3] seq  ARGV[4] '1' to append to the persistence stream
-- ARGV[5] conversation id
--
-- Returns {changed, delivered, read, regver} (changed: 1 or 0; regver: the
-- registry version, 0 without KEYS[4]).
--
-- Stream field names are placeholders in double braces, filled in from the
-- Rust constants (core::broker::persist::fields, the log's in redis.rs)
-- when the script text is built (core::broker::lua::render).
local regver = 0
if KEYS[4] then regver = tonumber(redis.call('GET', KEYS[4]) or '0') end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local s = math.min(tonumber(ARGV[3]), last)
local d = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':d') or '0')
local r = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':r') or '0')
local nr = r
local nd = math.max(d, s)
if ARGV[2] == 'r' then
  nr = math.max(r, s)
  nd = math.max(d, nr)
end
if nd == d and nr == r then return {0, d, r, regver} end
redis.call('HSET', KEYS[1], ARGV[1] .. ':d', nd, ARGV[1] .. ':r', nr)
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[3], '*', '{{F_KIND}}', '{{K_WATERMARK}}', '{{F_CONV}}', ARGV[5],
    '{{F_USER}}', ARGV[1], '{{F_DELIVERED}}', nd, '{{F_READ}}', nr)
end
return {1, nd, nr, regver}
