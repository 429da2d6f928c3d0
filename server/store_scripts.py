"""Lua scripts behind RedisStore: each runs atomically and touches one user's keys (one slot).

A user's history has a *token* (`plr:{u}:tok`, 16 hex chars) that changes whenever the history
changes other than by appending (created, replaced, trimmed); deleting the user deletes it. So
(token, length) names one exact history, and a value tagged with them is current iff both still
match, and a prefix iff the token matches and its length is <= the history's: no script ever
compares or hashes a whole history to validate a cache. Stored values start with a 32-byte
envelope: 4-byte magic, the covered history length as 12 decimal digits, the token.

Reads never write (no TTL refresh, no AOF traffic); writes are conditional on the token and
length they were computed for, so a write computed from a deleted or replaced history is refused.
Item ids are pushed in chunks (Lua's unpack() is stack-bound); histories are returned as one JSON
array string (cjson) so the client decodes one value instead of one RESP item per entry.
"""

_COMMON = """
local function push(key, items, first)
  for i = first, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
local function json_list(list)
  if #list == 0 then return '[]' end  -- cjson would encode an empty table as {}
  return cjson.encode(list)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The user's history keys (hist, tok, eids) share one absolute expiry, so they expire together.
local function expire_user(keys, ttl_ms, now)
  if tonumber(ttl_ms) > 0 then
    for _, key in ipairs(keys) do redis.call('PEXPIREAT', key, now + tonumber(ttl_ms)) end
  end
end
-- Covered length of an envelope with this magic and token, or -1.
local function covered(value, magic, tok)
  if value and string.sub(value, 1, 4) == magic and string.sub(value, 17, 32) == tok then
    return tonumber(string.sub(value, 5, 16))
  end
  return -1
end
-- What one model version needs to answer for the history (hist, n, tok):
-- {1, state} when the state covers exactly this history (nothing else is read);
-- {4, base, new items} when the stored cache's envelope is `hint` (the caller's near-cache copy,
-- with its state, is the stored one: no cache or state bytes are sent);
-- {2, state, kv, base, new items} when state and cache cover the same prefix `base`;
-- {3, false, kv or false, 0, whole history, stale} otherwise (kv only when it is a prefix;
-- stale = 1 when a cache existed but could not be used);
-- {5, stale} instead when `extend_only` and no cache is a prefix: events only extend a cache, so
-- nothing is read (above all not the whole history, up to max_stored entries, for a model that
-- never served this user).
local function model_view(hist, n, tok, st_key, kv_key, skip_state, hint, extend_only)
  local ls = -1  -- the state's envelope first: after an append it is stale, and never copied
  if not skip_state then ls = covered(redis.call('GETRANGE', st_key, 0, 31), 'PST1', tok) end
  if ls == n then return {1, redis.call('GET', st_key)} end
  if hint ~= '' and redis.call('GETRANGE', kv_key, 0, 31) == hint then
    local lh = covered(hint, 'PKV2', tok)
    if lh >= 0 and lh <= n then
      return {4, lh, json_list(redis.call('LRANGE', hist, lh, -1))}
    end
  end
  local kv = redis.call('GET', kv_key)
  local lk = covered(kv, 'PKV2', tok)
  local stale = 0
  if kv and (lk < 0 or lk > n) then kv = false; stale = 1 end
  if extend_only and not kv then return {5, stale} end
  if kv and ls == lk then
    return {2, redis.call('GET', st_key), kv, lk, json_list(redis.call('LRANGE', hist, lk, -1))}
  end
  return {3, false, kv, 0, json_list(redis.call('LRANGE', hist, 0, -1)), stale}
end
local function set(key, value, ttl)  -- with its TTL in the same command
  if ttl > 0 then redis.call('SET', key, value, 'EX', ttl) else redis.call('SET', key, value) end
end
-- Store one model's cache and state computed for the history (n, tok), which the caller has
-- checked is current or a prefix of the current one. The cache is appended to (mode 'append': only
-- if it is still exactly the value it extends: envelope exp_head, exp_len bytes) or set (mode
-- 'set': never over a cache of this history that covers more); the state likewise is never set
-- over one covering more. An equal-length value is replaced (the writer found it unusable, or
-- another server computed the same value). `with_kv`: the state only if the cache was written.
-- -> kv written, state written (1/0)
local function apply_write(kv_key, st_key, n, tok, ttl, mode, head, payload, exp_head, exp_len,
                           state, with_kv)
  local kv_ok, st_ok = 0, 0
  if mode == 'append' then
    if redis.call('GETRANGE', kv_key, 0, 31) == exp_head
        and redis.call('STRLEN', kv_key) == tonumber(exp_len) then
      redis.call('SETRANGE', kv_key, 0, head)
      redis.call('APPEND', kv_key, payload)
      if ttl > 0 then redis.call('EXPIRE', kv_key, ttl) end
      kv_ok = 1
    end
  elseif mode == 'set' then
    if covered(redis.call('GETRANGE', kv_key, 0, 31), 'PKV2', tok) <= n then
      set(kv_key, head .. payload, ttl)
      kv_ok = 1
    end
  end
  if state ~= '' and (kv_ok == 1 or not with_kv)
      and covered(redis.call('GETRANGE', st_key, 0, 31), 'PST1', tok) <= n then
    set(st_key, state, ttl)
    st_ok = 1
  end
  return kv_ok, st_ok
end
-- hints: ARGV index of the first version's hint ('' = none), one per (state, kv) key pair.
local function views(n, tok, first_key, skip_state, hints, extend_only)
  local out = {}
  for i = first_key, #KEYS, 2 do
    if n == 0 then out[#out + 1] = {0} else
      local hint = ARGV[hints + (i - first_key) / 2]
      out[#out + 1] = model_view(KEYS[1], n, tok, KEYS[i], KEYS[i + 1], skip_state, hint,
                                 extend_only)
    end
  end
  return out
end
"""

# KEYS: hist  ->  history as a JSON array
READ_HISTORY = _COMMON + """
return json_list(redis.call('LRANGE', KEYS[1], 0, -1))
"""

# KEYS: hist, tok, then (state, kv) per model version   ARGV: skip_state (1 = ignore stored
# states, e.g. one that failed to decode), a near-cache hint per version
# ->  {n, tok, view per version}
READ = _COMMON + """
local n = redis.call('LLEN', KEYS[1])
local tok = redis.call('GET', KEYS[2]) or ''
return {n, tok, views(n, tok, 3, ARGV[1] == '1', 2, false)}
"""

# The current state of one model version alone: for a stored user's /recommend that does not
# wait for the user's request in flight (services.py). Reads no cache and no history entries.
# KEYS: hist, tok, state  ->  {n, the state value when it covers exactly the history, else false}
READ_STATE = _COMMON + """
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return {0, false} end
local value = redis.call('GET', KEYS[3])
if covered(value, 'PST1', redis.call('GET', KEYS[2]) or '') == n then return {n, value} end
return {n, false}
"""

# Make the stored history equal the request's (authoritative) one: extend it when the stored one
# is a prefix (token kept), else replace it (new token; the replaced history's event ids are
# forgotten with it, so a retried event is applied to the new history). Then READ.
# KEYS: hist, tok, eids, then (state, kv) pairs
# ARGV: new_token, hist_ttl_ms, a near-cache hint per version, item ids...
# -> {action, n, tok, view per version}
SYNC_HISTORY = _COMMON + """
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
local first = 3 + (#KEYS - 3) / 2
local items = {}
for i = first, #ARGV do items[#items + 1] = ARGV[i] end
local n = #items
local prefix = #cur <= n
if prefix then
  for i = 1, #cur do
    if cur[i] ~= items[i] then prefix = false; break end
  end
end
local tok = redis.call('GET', KEYS[2])
local action = 'unchanged'
if not prefix then
  redis.call('DEL', KEYS[1], KEYS[3])
  push(KEYS[1], items, 1)
  tok = false
  action = 'replaced'
elseif #cur < n then
  push(KEYS[1], items, #cur + 1)
  action = 'extended'
end
local wrote = action ~= 'unchanged' or not tok
if not tok then
  tok = ARGV[1]
  redis.call('SET', KEYS[2], tok)
end
if wrote then expire_user({KEYS[1], KEYS[2], KEYS[3]}, ARGV[2], now_ms()) end
return {action, n, tok, views(n, tok, 4, false, 3, false)}
"""

# All-or-nothing append, applied once per event_id within the idempotency window: ids live in a
# sorted set scored by the time they were applied and are evicted one by one, by age (window_ms)
# and by count (max_ids), oldest first; ids the server makes for id-less events are kept only
# auto_keep_ms (enough to dedupe the client library's own reconnect retry). Past max_stored the
# oldest half of the history is dropped (new token: caches rebuild once).
# Then, per model version, either its precomputed write or a READ view, extend-only (a model with
# no cache to extend gets {5, stale}: the next /recommend builds it). A precomputed write is the
# cache and state the caller computed *before* this call from its near-cache copy of the history
# (base, token), for base + these items: it is applied (`apply_write`) only when this call
# appended the items right after exactly that history (not a repeated event id, history length
# was base, token unchanged, no trim), and the answer is then {6}; else the view, as if no write
# had been offered. One round trip per event instead of an append and a write.
# KEYS: hist, tok, eids, then (state, kv) pairs
# ARGV: event_id, is_auto, new_token, hist_ttl_ms, max_stored, window_ms, max_ids, auto_keep_ms,
#       kv_ttl, a near-cache hint per version, then per version a write: base (-1 = none),
#       token, kv_mode, kv_head, kv_payload, expected_head, expected_strlen, state; item ids...
# -> {applied, n, tok, view or {6} per version}
APPEND_EVENTS = _COMMON + """
local V = (#KEYS - 3) / 2
local first_item = 10 + 9 * V
local applied = 0
local now = now_ms()
local window = tonumber(ARGV[6])
local n0 = redis.call('LLEN', KEYS[1])
local tok0 = redis.call('GET', KEYS[2]) or ''
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  local items = {}
  for i = first_item, #ARGV do items[#items + 1] = ARGV[i] end
  push(KEYS[1], items, 1)
  local n = redis.call('LLEN', KEYS[1])
  local max_stored = tonumber(ARGV[5])
  local tok = redis.call('GET', KEYS[2])
  if n > max_stored then
    redis.call('LTRIM', KEYS[1], n - math.floor(max_stored / 2), -1)
    tok = false
  end
  if not tok then redis.call('SET', KEYS[2], ARGV[3]) end
  local score = now
  if ARGV[2] == '1' then score = now - math.max(0, window - tonumber(ARGV[8])) end
  redis.call('ZADD', KEYS[3], score, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - window))
  local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[7])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1) end
  expire_user({KEYS[1], KEYS[2], KEYS[3]}, ARGV[4], now)
  applied = 1
end
local n = redis.call('LLEN', KEYS[1])
local tok = redis.call('GET', KEYS[2]) or ''
local extended = applied == 1 and tok == tok0 and n == n0 + #ARGV - first_item + 1
local ttl = tonumber(ARGV[9])
local out = {}
for v = 1, V do
  local st_key, kv_key, a = KEYS[2 + 2 * v], KEYS[3 + 2 * v], 10 + V + 8 * (v - 1)
  local kv_ok = 0
  if extended and tonumber(ARGV[a]) == n0 and ARGV[a + 1] == tok then
    kv_ok = apply_write(kv_key, st_key, n, tok, ttl, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
                        ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], true)
  end
  if kv_ok == 1 then
    out[v] = {6}
  elseif n == 0 then
    out[v] = {0}
  else
    out[v] = model_view(KEYS[1], n, tok, st_key, kv_key, false, ARGV[9 + v], true)
  end
end
return {applied, n, tok, out}
"""

# Store what was computed for the history (n, tok), for one or more model versions of one user
# (one script call per user and history, all its models at once): applies only while the history
# still has that token and at least n entries (not deleted, replaced or trimmed since; appends are
# fine), each write as `apply_write` says. Envelopes are read with GETRANGE (32 bytes, never the
# value).
# KEYS: hist, tok, then (kv, state) per write
# ARGV: n, tok, kv_ttl, then per write: kv_mode (none|set|append), kv_head, kv_payload,
#       expected_head, expected_strlen, state (whole value, '' = none)
# -> {kv written, state written} per write, flattened
WRITE_STATE = _COMMON + """
local n = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[2]) == ARGV[2] and redis.call('LLEN', KEYS[1]) >= n
local out = {}
for w = 0, (#KEYS - 2) / 2 - 1 do
  local a = 3 + 6 * w
  local kv_ok, st_ok = 0, 0
  if current then
    kv_ok, st_ok = apply_write(KEYS[3 + 2 * w], KEYS[4 + 2 * w], n, ARGV[2], tonumber(ARGV[3]),
                               ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
                               ARGV[a + 6], false)
  end
  out[#out + 1] = kv_ok
  out[#out + 1] = st_ok
end
return out
"""

# KEYS: every key of the user this server knows  ->  number deleted
DELETE_USER = """
return redis.call('DEL', unpack(KEYS))
"""
