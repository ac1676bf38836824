//! The Lua scripts behind every multi-key operation: each runs atomically in one round trip.
//!
//! Fenced writes start by comparing the chat's lock key with the caller's lease token, so a
//! holder whose lease expired cannot overwrite a newer holder's work. Keys a script derives from
//! stored data (an old agent index, a chat pointer) are built from the prefix inside the script:
//! fine on a single Redis, not cluster-safe (the design targets one primary).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the write scripts.
///
/// TTLs are relative to Redis' clock, `expires_at - now + grace`, and never below `grace`, so a
/// session written with a past `expires_at` (tests, a slow clock) still lives `grace` long.
/// Shared index keys only ever get longer TTLs, so they outlive every session they list.
/// Numbers go back to Redis through `string.format('%d')`: Lua would print large ones in
/// exponent notation.
const PRELUDE: &str = r"
local function redis_now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local function session_ttl(expires_ms, grace_ms)
  local ttl = expires_ms - redis_now_ms() + grace_ms
  if ttl < grace_ms then ttl = grace_ms end
  return string.format('%d', ttl)
end
local function keep_at_least(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or (current >= 0 and current < tonumber(ttl)) then
    redis.call('PEXPIRE', key, ttl)
  end
end
local function index_state(root, id, state, ttl)
  redis.call('ZREM', root .. 'state:paused', id)
  redis.call('ZREM', root .. 'state:hibernated', id)
  if state == 'paused' or state == 'hibernated' then
    redis.call('ZADD', root .. 'state:' .. state, 0, id)
    keep_at_least(root .. 'state:' .. state, ttl)
  end
end
local function append_event(root, kind, reason, at, retention_ms, hash)
  local min_id = string.format('%d', redis_now_ms() - tonumber(retention_ms))
  redis.call('XADD', root .. 'events', 'MINID', '~', min_id, '*',
    'event_type', kind, 'event_reason', reason, 'event_at', at, unpack(hash))
  -- Once appends stop, every event ages out of the retention together with the stream.
  redis.call('PEXPIRE', root .. 'events', retention_ms)
end
";

/// KEYS: lock, session hash, chat pointer, expiry zset, sessions zset, agent zset.
/// ARGV: token, key root, grace ms, session id, expires_at ms, event type, reason, at ms,
/// retention ms, field, value, ...
/// Returns the active count, or -1 when the lease is not the lock holder.
const SAVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local root = ARGV[2]
local id = ARGV[4]
local old_agent = redis.call('HGET', KEYS[2], 'agent_id')
if old_agent and (root .. 'agent:' .. old_agent) ~= KEYS[6] then
  redis.call('ZREM', root .. 'agent:' .. old_agent, id)
end
local ttl = session_ttl(tonumber(ARGV[5]), tonumber(ARGV[3]))
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 10))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], id, 'PX', ttl)
redis.call('ZADD', KEYS[4], ARGV[5], id)
redis.call('ZADD', KEYS[5], 0, id)
redis.call('ZADD', KEYS[6], 0, id)
keep_at_least(KEYS[4], ttl)
keep_at_least(KEYS[5], ttl)
keep_at_least(KEYS[6], ttl)
index_state(root, id, redis.call('HGET', KEYS[2], 'state'), ttl)
append_event(root, ARGV[6], ARGV[7], ARGV[8], ARGV[9], redis.call('HGETALL', KEYS[2]))
return redis.call('ZCARD', KEYS[4])
";

/// KEYS: lock, session hash, chat pointer, expiry zset, sessions zset, agent zset (of the
/// caller's copy). ARGV: token, key root, session id, expected expires_at ms ('' = any), event
/// type, reason, at ms, retention ms.
/// Returns the active count, -1 when the lease is not the lock holder, -2 when the expected
/// expiry no longer matches (or the session is gone). The chat pointer is removed only while it
/// still names this session; the event is appended only when there was a session to remove.
const DELETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local root = ARGV[2]
local id = ARGV[3]
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'expires_at') ~= ARGV[4] then return -2 end
local hash = redis.call('HGETALL', KEYS[2])
local stored_agent = redis.call('HGET', KEYS[2], 'agent_id')
if stored_agent then redis.call('ZREM', root .. 'agent:' .. stored_agent, id) end
redis.call('ZREM', KEYS[6], id)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', root .. 'state:paused', id)
redis.call('ZREM', root .. 'state:hibernated', id)
if redis.call('GET', KEYS[3]) == id then redis.call('DEL', KEYS[3]) end
if #hash > 0 then append_event(root, ARGV[5], ARGV[6], ARGV[7], ARGV[8], hash) end
return redis.call('ZCARD', KEYS[4])
";

/// KEYS: lock (of the lease's chat), session hash, expiry zset, sessions zset.
/// ARGV: token, key root, grace ms, session id, lease chat id, expected expires_at ms ('' =
/// any), event type, reason, at ms, retention ms, field, value, ... (an empty value removes the
/// field).
/// Returns {-1} when the lease is not the lock holder (or covers another chat), {-2} when the
/// expected expiry no longer matches, {0} when the session is gone, {1, hash} after the update.
const UPDATE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local root = ARGV[2]
local id = ARGV[4]
local chat = redis.call('HGET', KEYS[2], 'chat_id')
if not chat then
  if ARGV[6] ~= '' then return {-2} end
  return {0}
end
if chat ~= ARGV[5] then return {-1} end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[2], 'expires_at') ~= ARGV[6] then return {-2} end
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
local expires = redis.call('HGET', KEYS[2], 'expires_at')
local ttl = session_ttl(tonumber(expires), tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], expires, id)
local chat_key = root .. 'chat:' .. chat
if redis.call('GET', chat_key) == id then redis.call('PEXPIRE', chat_key, ttl) end
keep_at_least(KEYS[3], ttl)
keep_at_least(KEYS[4], ttl)
local agent = redis.call('HGET', KEYS[2], 'agent_id')
if agent then keep_at_least(root .. 'agent:' .. agent, ttl) end
index_state(root, id, redis.call('HGET', KEYS[2], 'state'), ttl)
local after = redis.call('HGETALL', KEYS[2])
append_event(root, ARGV[7], ARGV[8], ARGV[9], ARGV[10], after)
return {1, after}
";

/// KEYS: chat pointer, expiry zset. ARGV: key root, now ms, agent id ('' = any), volume ('' =
/// any), grace ms.
/// Records activity on the chat's current session when it is running, live at `now` and
/// matches (see `SandboxSession::touched_at`); returns its hash after (empty when none). No
/// lease: a transition decided on the old expiry is fenced on it and loses to this write.
const TOUCH: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then return {} end
local key = ARGV[1] .. 'session:' .. id
local f = redis.call('HMGET', key, 'state', 'expires_at', 'agent_id', 'volume_host_path',
  'idle_timeout_ms', 'max_expires_at')
if not f[2] then return {} end
local now = tonumber(ARGV[2])
local expires = tonumber(f[2])
local running = (not f[1]) or f[1] == 'running'
local matches = (ARGV[3] == '' or ARGV[3] == f[3]) and (ARGV[4] == '' or ARGV[4] == f[4])
if running and expires > now and matches then
  redis.call('HSET', key, 'last_active_at', ARGV[2])
  if f[5] then
    local due = now + tonumber(f[5])
    if f[6] and tonumber(f[6]) < due then due = tonumber(f[6]) end
    if due > expires then
      local due_text = string.format('%d', due)
      local ttl = session_ttl(due, tonumber(ARGV[5]))
      redis.call('HSET', key, 'expires_at', due_text)
      redis.call('ZADD', KEYS[2], due_text, id)
      redis.call('PEXPIRE', key, ttl)
      redis.call('PEXPIRE', KEYS[1], ttl)
      keep_at_least(KEYS[2], ttl)
      keep_at_least(ARGV[1] .. 'sessions', ttl)
      if f[3] then keep_at_least(ARGV[1] .. 'agent:' .. f[3], ttl) end
    end
  end
end
return redis.call('HGETALL', key)
";

/// KEYS: expiry zset, agent zset, reservations zset, agent reservations zset. ARGV: now ms,
/// reservation id, reservation expiry ms, deployment limit (0 = none), agent limit (0 = none),
/// replaced session id ('' = none).
/// Returns {1, ''} after taking the slot, {0, 'deployment'|'agent'} when that limit is full. Stored
/// sessions and live reservations both count; the replaced session does not (it is removed
/// before the new one starts).
const RESERVE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
local replacing = ARGV[6]
local function in_use(index, reserved)
  local n = redis.call('ZCARD', index) + redis.call('ZCARD', reserved)
  if replacing ~= '' and redis.call('ZSCORE', index, replacing) then n = n - 1 end
  return n
end
local limit = tonumber(ARGV[4])
if limit > 0 and in_use(KEYS[1], KEYS[3]) >= limit then return {0, 'deployment'} end
limit = tonumber(ARGV[5])
if limit > 0 and in_use(KEYS[2], KEYS[4]) >= limit then return {0, 'agent'} end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
local ttl = string.format('%d', tonumber(ARGV[3]) - tonumber(ARGV[1]) + 1000)
keep_at_least(KEYS[3], ttl)
keep_at_least(KEYS[4], ttl)
return {1, ''}
";

/// KEYS: reservations zset, agent reservations zset. ARGV: reservation id.
const RELEASE_RESERVATION: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// ARGV: key root, event type, reason, at ms, retention ms, field, value, ... Appends an event
/// that records no stored change.
const APPEND_EVENT: &str = r"
append_event(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], {unpack(ARGV, 6)})
return 1
";

/// KEYS: chat pointer. ARGV: session key prefix. Returns the current session's hash (empty when
/// there is none): the pointer and the hash in one round trip.
const GET_BY_CHAT: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[1] .. id)
";

/// KEYS: expiry zset, sessions zset, paused zset, hibernated zset. ARGV: session key prefix,
/// now ms, limit, stale budget.
/// Returns up to `limit` hashes of sessions due at `now`, earliest first. Index entries whose
/// hash is gone are removed on the way (at most `budget` of them per call) and skipped.
const LIST_EXPIRED: &str = r"
local limit = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local out = {}
while #out < limit do
  local want = limit - #out
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', #out, want)
  local stale = 0
  for _, id in ipairs(ids) do
    local hash = redis.call('HGETALL', ARGV[1] .. id)
    if #hash == 0 then
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      stale = stale + 1
    else
      out[#out + 1] = hash
    end
  end
  budget = budget - stale
  if #ids < want or stale == 0 or budget <= 0 then break end
end
return out
";

/// KEYS: a lex-ordered index (all sessions, one agent's or one state's). ARGV: session key
/// prefix, start bound ('-' or '(' .. last id), how many to return, budget, state ('' = any).
/// Returns {resume, hash, hash, ...}: `resume` is the last id looked at when the budget (for
/// stale entries and sessions of another state) ran out before the page filled (the caller
/// continues after it), else ''.
const LIST_PAGE: &str = r"
local want = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local start = ARGV[2]
local out = {''}
while #out - 1 < want do
  local need = want - (#out - 1)
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, need)
  for _, id in ipairs(ids) do
    local hash = redis.call('HGETALL', ARGV[1] .. id)
    if #hash == 0 then
      redis.call('ZREM', KEYS[1], id)
      budget = budget - 1
    elseif ARGV[5] ~= '' and (redis.call('HGET', ARGV[1] .. id, 'state') or 'running') ~= ARGV[5] then
      budget = budget - 1
    else
      out[#out + 1] = hash
    end
    start = '(' .. id
  end
  if #ids < need then break end
  if budget <= 0 and #out - 1 < want then
    out[1] = string.sub(start, 2)
    break
  end
end
return out
";

/// KEYS: lock. ARGV: token, ttl ms. 1 when renewed, 0 when the token is no longer there.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// KEYS: lock. ARGV: token. 1 when released, 0 when someone else holds it (nothing deleted).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(crate) static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(SAVE));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(DELETE));
pub(crate) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(UPDATE));
pub(crate) static RESERVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(RESERVE));
pub(crate) static RELEASE_RESERVATION_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(RELEASE_RESERVATION));
pub(crate) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(TOUCH));
pub(crate) static APPEND_EVENT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| with_prelude(APPEND_EVENT));
pub(crate) static GET_BY_CHAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GET_BY_CHAT));
pub(crate) static LIST_EXPIRED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(LIST_EXPIRED));
pub(crate) static LIST_PAGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIST_PAGE));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
