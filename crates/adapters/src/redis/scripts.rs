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
const PRELUDE: &str = r"
local function session_ttl(expires_ms, grace_ms)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local ttl = expires_ms - now_ms + grace_ms
  if ttl < grace_ms then ttl = grace_ms end
  return string.format('%d', ttl)
end
local function keep_at_least(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or (current >= 0 and current < tonumber(ttl)) then
    redis.call('PEXPIRE', key, ttl)
  end
end
";

/// KEYS: lock, session hash, chat pointer, expiry zset, sessions zset, agent zset.
/// ARGV: token, agent key prefix, grace ms, session id, expires_at ms, field, value, ...
/// Returns the active count, or -1 when the lease is not the lock holder.
const SAVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local id = ARGV[4]
local old_agent = redis.call('HGET', KEYS[2], 'agent_id')
if old_agent and (ARGV[2] .. old_agent) ~= KEYS[6] then
  redis.call('ZREM', ARGV[2] .. old_agent, id)
end
local ttl = session_ttl(tonumber(ARGV[5]), tonumber(ARGV[3]))
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], id, 'PX', ttl)
redis.call('ZADD', KEYS[4], ARGV[5], id)
redis.call('ZADD', KEYS[5], 0, id)
redis.call('ZADD', KEYS[6], 0, id)
keep_at_least(KEYS[4], ttl)
keep_at_least(KEYS[5], ttl)
keep_at_least(KEYS[6], ttl)
return redis.call('ZCARD', KEYS[4])
";

/// KEYS: lock, session hash, chat pointer, expiry zset, sessions zset, agent zset (of the
/// caller's copy). ARGV: token, agent key prefix, session id.
/// Returns the active count, or -1 when the lease is not the lock holder. The chat pointer is
/// removed only while it still names this session.
const DELETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local id = ARGV[3]
local stored_agent = redis.call('HGET', KEYS[2], 'agent_id')
if stored_agent then redis.call('ZREM', ARGV[2] .. stored_agent, id) end
redis.call('ZREM', KEYS[6], id)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
if redis.call('GET', KEYS[3]) == id then redis.call('DEL', KEYS[3]) end
return redis.call('ZCARD', KEYS[4])
";

/// KEYS: lock (of the lease's chat), session hash, expiry zset, sessions zset.
/// ARGV: token, key prefix with its colon, grace ms, session id, expires_at ms, lease chat id.
/// Returns {-1} when the lease is not the lock holder (or covers another chat), {0} when the
/// session is gone, {1, hash} after the update.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local id = ARGV[4]
local chat = redis.call('HGET', KEYS[2], 'chat_id')
if not chat then return {0} end
if chat ~= ARGV[6] then return {-1} end
local agent = redis.call('HGET', KEYS[2], 'agent_id')
local ttl = session_ttl(tonumber(ARGV[5]), tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], 'expires_at', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], ARGV[5], id)
local chat_key = ARGV[2] .. 'chat:' .. chat
if redis.call('GET', chat_key) == id then redis.call('PEXPIRE', chat_key, ttl) end
keep_at_least(KEYS[3], ttl)
keep_at_least(KEYS[4], ttl)
if agent then keep_at_least(ARGV[2] .. 'agent:' .. agent, ttl) end
return {1, redis.call('HGETALL', KEYS[2])}
";

/// KEYS: chat pointer. ARGV: session key prefix. Returns the current session's hash (empty when
/// there is none): the pointer and the hash in one round trip.
const GET_BY_CHAT: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[1] .. id)
";

/// KEYS: expiry zset, sessions zset. ARGV: session key prefix, now ms, limit, stale budget.
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

/// KEYS: a lex-ordered index (all sessions or one agent's). ARGV: session key prefix, start
/// bound ('-' or '(' .. last id), how many to return, stale budget.
/// Returns {resume, hash, hash, ...}: `resume` is the last id looked at when the stale budget
/// ran out before the page filled (the caller continues after it), else ''.
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
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE));
pub(crate) static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(EXTEND));
pub(crate) static GET_BY_CHAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GET_BY_CHAT));
pub(crate) static LIST_EXPIRED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(LIST_EXPIRED));
pub(crate) static LIST_PAGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIST_PAGE));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
