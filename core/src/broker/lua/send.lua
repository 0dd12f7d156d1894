-- Send one message: dedupe, member check, seq, log append and persistence
-- append, atomically (every key shares the conversation's shard hash tag).
--
-- KEYS[1] the seq counter          KEYS[2] the conversation log (stream)
-- KEYS[3] who may send: a group's members, a channel's publishers (set)
-- KEYS[4] the idempotency record of this (sender, message id)
-- KEYS[5] the shard's persistence stream
-- KEYS[6] the record of this message id written before records were per
--         sender; trusted only when the log still shows the same sender at
--         its seq (an older record could be another member's)
-- KEYS[7] (standalone Redis only) the connection registry's version
--         counter, read for the gateway's look-up cache (lua/registry.lua)
--
-- ARGV[1] sender (lowercase address)  ARGV[2] message id  ARGV[3] body (JSON)
-- ARGV[4] unused (the timestamp comes from the Redis clock, so every
--         gateway stamps from one clock)
-- ARGV[5] log MAXLEN (approximate)    ARGV[6] idempotency record TTL (ms)
-- ARGV[7] '1' to append to the persistence stream
-- ARGV[8] kind: 'dm', 'g', 'ch', or 'chx' (a privileged channel sender, no
--         publisher check)
-- ARGV[9] conversation id             ARGV[10] '1' when a missing seq
--         counter means the conversation must be seeded from the store
-- ARGV[11] log max age (ms, 0: none)
-- ARGV[12] with ARGV[7] '1': the persistence stream length at which new
--          messages are refused (0: no cap)
--
-- Returns {-2} when seeding is required and the seq counter is missing,
-- {-4} when the persistence stream is full (the worker is down or behind),
-- {-1} for a non-member, {-3} for a channel non-publisher,
-- {0, seq, ts, regver, member...} for a duplicate and {1, seq, ts, regver,
-- member...} for a new message (regver: the registry version, 0 without
-- KEYS[7]; members of groups only: a direct conversation's members are in
-- its id).
--
-- Stream field names are placeholders in double braces, filled in from the
-- Rust constants (core::broker::persist::fields, the log's in redis.rs)
-- when the script text is built (core::broker::lua::render).
if ARGV[10] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return {-2}
end
if ARGV[8] == 'g' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  return {-1}
end
if ARGV[8] == 'ch' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  return {-3}
end
local out
local prev = redis.call('GET', KEYS[4])
if not prev then
  local legacy = redis.call('GET', KEYS[6])
  if legacy then
    local sep = string.find(legacy, ':', 1, true)
    local lseq = string.sub(legacy, 1, sep - 1)
    local entry = redis.call('XRANGE', KEYS[2], lseq .. '-0', lseq .. '-0')
    if #entry == 1 then
      local f = entry[1][2]
      local lfrom, lid
      for i = 1, #f, 2 do
        if f[i] == '{{L_FROM}}' then lfrom = f[i + 1] end
        if f[i] == '{{L_ID}}' then lid = f[i + 1] end
      end
      if lfrom == ARGV[1] and lid == ARGV[2] then prev = legacy end
    end
  end
end
if prev then
  local sep = string.find(prev, ':', 1, true)
  out = {0, tonumber(string.sub(prev, 1, sep - 1)), tonumber(string.sub(prev, sep + 1))}
elseif ARGV[7] == '1' and tonumber(ARGV[12]) > 0
    and redis.call('XLEN', KEYS[5]) >= tonumber(ARGV[12]) then
  return {-4}
else
  local t = redis.call('TIME')
  local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',
    '{{L_ID}}', ARGV[2], '{{L_FROM}}', ARGV[1], '{{L_BODY}}', ARGV[3], '{{L_TS}}', ts)
  if tonumber(ARGV[11]) > 0 then
    -- Stream ids are seqs, not times, so the age cap trims by the oldest
    -- entry's ts, a few at a time (each send trims at most 16).
    for _ = 1, 16 do
      local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
      if #first == 0 then break end
      local f = first[1][2]
      local fts = 0
      for i = 1, #f, 2 do if f[i] == '{{L_TS}}' then fts = tonumber(f[i + 1]) end end
      if fts >= ts - tonumber(ARGV[11]) or first[1][1] == seq .. '-0' then break end
      redis.call('XDEL', KEYS[2], first[1][1])
    end
  end
  redis.call('SET', KEYS[4], seq .. ':' .. ts, 'PX', ARGV[6])
  if ARGV[7] == '1' then
    redis.call('XADD', KEYS[5], '*', '{{F_KIND}}', '{{K_MESSAGE}}', '{{F_CONV}}', ARGV[9],
      '{{F_SEQ}}', seq, '{{F_ID}}', ARGV[2], '{{F_FROM}}', ARGV[1], '{{F_BODY}}', ARGV[3],
      '{{F_TS}}', ts)
  end
  out = {1, seq, ts}
end
local regver = 0
if KEYS[7] then regver = tonumber(redis.call('GET', KEYS[7]) or '0') end
table.insert(out, regver)
if ARGV[8] == 'g' then
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do table.insert(out, m) end
end
return out
