"""Lua scripts behind RedisStore: each runs atomically and touches one user's keys (one slot).

Sent with EVAL (Redis caches the compiled body by its SHA), so a restarted Redis or another
Cluster node never answers NOSCRIPT. Item ids are pushed in chunks: Lua's unpack() is stack-bound.
Histories are returned as one JSON array string (cjson, built into Redis' Lua), not as a
multi-bulk reply of one string per item: the client then decodes one value instead of parsing
hundreds of RESP items in Python.
"""

_PUSH = """
local function push(key, first)
  for i = first, #ARGV, 1000 do
    redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
local function touch(key, ttl)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', key, ttl) end
end
local function json_list(list)
  if #list == 0 then return '[]' end  -- cjson would encode an empty table as {}
  return cjson.encode(list)
end
"""

# KEYS: hist  ->  history as a JSON array
READ_HISTORY = _PUSH + """
return json_list(redis.call('LRANGE', KEYS[1], 0, -1))
"""

# KEYS: hist, kv   ARGV: kv_ttl, hist_ttl  ->  {history as a JSON array, kv or nil}
READ_STATE = _PUSH + """
local hist = redis.call('LRANGE', KEYS[1], 0, -1)
local kv = redis.call('GET', KEYS[2])
if kv then touch(KEYS[2], ARGV[1]) end
if #hist > 0 then touch(KEYS[1], ARGV[2]) end
return {json_list(hist), kv}
"""

# Make the stored history equal the request's (authoritative) one: extend it when the stored one
# is a prefix, else replace it.  KEYS: hist, kv   ARGV: kv_ttl, hist_ttl, item ids...
# -> {action, kv or nil}
SYNC_HISTORY = _PUSH + """
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
local n = #ARGV - 2
local prefix = #cur <= n
if prefix then
  for i = 1, #cur do
    if cur[i] ~= ARGV[i + 2] then prefix = false; break end
  end
end
local action
if prefix and #cur == n then
  action = 'unchanged'
elseif prefix then
  push(KEYS[1], 3 + #cur)
  action = 'extended'
else
  redis.call('DEL', KEYS[1])
  push(KEYS[1], 3)
  action = 'replaced'
end
touch(KEYS[1], ARGV[2])
local kv = redis.call('GET', KEYS[2])
if kv then touch(KEYS[2], ARGV[1]) end
return {action, kv}
"""

# All-or-nothing append, applied once per event_id. Past max_stored the oldest half is dropped
# (caches then fail their fingerprint and are rebuilt once). With kv keys, the same atomic step
# then reads what READ_STATE would (the history and each cache, TTLs touched), so POST /events
# needs no second round trip before extending the caches.
# KEYS: hist, events, kv...   ARGV: event_id, hist_ttl, max_stored, kv_ttl, item ids...
# -> {applied, length} and, with kv keys, {applied, length, history as a JSON array, kv or nil...}
APPEND_EVENTS = _PUSH + """
local applied, n = 0, 0
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  n = redis.call('LLEN', KEYS[1])
else
  push(KEYS[1], 5)
  n = redis.call('LLEN', KEYS[1])
  local max_stored = tonumber(ARGV[3])
  if n > max_stored then
    redis.call('LTRIM', KEYS[1], n - math.floor(max_stored / 2), -1)
    n = redis.call('LLEN', KEYS[1])
  end
  if redis.call('HLEN', KEYS[2]) >= max_stored then redis.call('DEL', KEYS[2]) end
  redis.call('HSET', KEYS[2], ARGV[1], n)
  touch(KEYS[1], ARGV[2])
  touch(KEYS[2], ARGV[2])
  applied = 1
end
if #KEYS == 2 then return {applied, n} end
local out = {applied, n, json_list(redis.call('LRANGE', KEYS[1], 0, -1))}
if n > 0 then touch(KEYS[1], ARGV[2]) end
for i = 3, #KEYS do
  local kv = redis.call('GET', KEYS[i])  -- false (a nil reply) when absent: keeps the array whole
  if kv then touch(KEYS[i], ARGV[4]) end
  out[#out + 1] = kv
end
return out
"""

# Compare-and-set on the cache header.  KEYS: kv
# ARGV: mode (set|append), expected_head, new_head, payload, expected_strlen, kv_ttl, header_len
WRITE_KV = _PUSH + """
local head = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[7]) - 1)
if head ~= ARGV[2] then return 0 end
if ARGV[1] == 'append' then
  if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[5]) then return 0 end
  redis.call('SETRANGE', KEYS[1], 0, ARGV[3])
  redis.call('APPEND', KEYS[1], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('APPEND', KEYS[1], ARGV[4])
end
touch(KEYS[1], ARGV[6])
return 1
"""

# KEYS: every key of the user this server knows  ->  number deleted
DELETE_USER = """
return redis.call('DEL', unpack(KEYS))
"""
