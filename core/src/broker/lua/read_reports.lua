-- Read every unexpired report of a cluster; expired fields are left out,
-- not deleted (reading writes nothing).
--
-- KEYS[1] the cluster's report hash, sb:conns:{<namespace>/<cluster>}
--
-- Returns {now, pod, value, pod, value, ...} (now: Unix ms, Redis clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], ':(%d+)$') or '0')
  if exp > now then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
