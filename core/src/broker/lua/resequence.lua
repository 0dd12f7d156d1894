-- Give a message a new seq because the store already holds another message
-- under its seq: Redis lost writes (a crash between AOF fsyncs, an async
-- failover, a restore) and its seq counter went back below seqs the worker
-- had stored. Called by the worker, which found the conflict.
--
-- KEYS[1] the seq counter   KEYS[2] the conversation log (stream)
-- KEYS[3] the epoch (`<ms>:<base>`)
-- KEYS[4] the idempotency record of this (sender, message id)
-- KEYS[5] the shard's persistence stream
--
-- ARGV[1] the conversation's highest stored seq
-- ARGV[2] the seq the message was given, which the store has for another
-- ARGV[3] sender (lowercase)  ARGV[4] message id  ARGV[5] body (JSON)
-- ARGV[6] log MAXLEN (approximate)  ARGV[7] idempotency record TTL (ms)
-- ARGV[8] '1' to append to the persistence stream  ARGV[9] conversation id
-- ARGV[10] episode window (ms): a new epoch within it of the previous one
--          keeps the lower base, so a client that skipped an epoch still
--          drops everything the whole episode changed
--
-- Returns {1, seq} with the new seq, or {0, seq} when the message already
-- has a seq other than the conflicting one (a repeated repair).
--
-- Stream field names are placeholders filled in from the Rust constants.
local conflicting = tonumber(ARGV[2])
local rec = redis.call('GET', KEYS[4])
if rec then
  local sep = string.find(rec, ':', 1, true)
  local had = tonumber(string.sub(rec, 1, sep - 1))
  if had ~= conflicting then return {0, had} end
end
-- Never again give out a stored seq.
local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
if counter < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
-- The log's entry at the conflicting seq, if it is this message, goes: the
-- store's message is the one at that seq (reads fall back to the store).
local at = redis.call('XRANGE', KEYS[2], conflicting .. '-0', conflicting .. '-0')
if #at == 1 then
  local f = at[1][2]
  local id, from
  for i = 1, #f, 2 do
    if f[i] == '{{L_ID}}' then id = f[i + 1] end
    if f[i] == '{{L_FROM}}' then from = f[i + 1] end
  end
  if id == ARGV[4] and from == ARGV[3] then redis.call('XDEL', KEYS[2], at[1][1]) end
end
-- A new epoch: clients drop what they hold above the base and sync again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = conflicting - 1
local prev = redis.call('GET', KEYS[3])
if prev then
  local sep = string.find(prev, ':', 1, true)
  local pms = tonumber(string.sub(prev, 1, sep - 1))
  local pbase = tonumber(string.sub(prev, sep + 1))
  if now - pms < tonumber(ARGV[10]) and pbase < base then base = pbase end
  -- Strictly later than the previous epoch, so clients see the change.
  if now <= pms then now = pms + 1 end
end
redis.call('SET', KEYS[3], now .. ':' .. base)
-- The message again, under the next seq.
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], seq .. '-0',
  '{{L_ID}}', ARGV[4], '{{L_FROM}}', ARGV[3], '{{L_BODY}}', ARGV[5], '{{L_TS}}', now)
redis.call('SET', KEYS[4], seq .. ':' .. now, 'PX', ARGV[7])
if ARGV[8] == '1' then
  redis.call('XADD', KEYS[5], '*', '{{F_KIND}}', '{{K_MESSAGE}}', '{{F_CONV}}', ARGV[9],
    '{{F_SEQ}}', seq, '{{F_ID}}', ARGV[4], '{{F_FROM}}', ARGV[3], '{{F_BODY}}', ARGV[5],
    '{{F_TS}}', now)
end
return {1, seq}
