//! The node registry on Redis (fleet mode): one hash per node, renewed by its heartbeat, and the
//! set of every node that ever registered.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `{p}:nodes` | set | every registered node id |
//! | `{p}:node:{id}` | hash | `address`, `capacity`, `active`, `draining` (0/1), `beat_ms`, `ttl_ms` |
//! | `{p}:node:{id}:lost:{beat_ms}` | string | the claim to report that beat's lapse (a day) |
//!
//! Health is judged at read time (`beat_ms + ttl_ms > now`), so a node that stops beating is
//! listed unhealthy rather than vanishing, and comes back healthy with its next beat.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use sandboxd_domain::{NodeId, NodeInfo, Timestamp};
use sandboxd_usecase::ports::{NodeBeat, NodeRegistry, RepositoryError};

use super::RedisStore;
use super::codec::{from_millis, to_millis};
use super::error::StoreFault;
use super::names::command;

/// How long the claim to report one lapse is kept: far longer than any node stays away.
const LOST_CLAIM_MS: u64 = 24 * 60 * 60 * 1000;

/// KEYS: nodes set, this node's hash. ARGV: key root, id, address, capacity, active, beat ms,
/// ttl ms. Renews the hash (its `draining` kept) and returns every node as
/// `[id, field, value, ..., '', id, ...]` (an empty string ends each node).
static BEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'address', ARGV[3], 'capacity', ARGV[4], 'active', ARGV[5],
  'beat_ms', ARGV[6], 'ttl_ms', ARGV[7])
if redis.call('HEXISTS', KEYS[2], 'draining') == 0 then
  redis.call('HSET', KEYS[2], 'draining', '0')
end
{ALL_NODES}"
    ))
});

/// KEYS: nodes set. ARGV: key root.
static NODES_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ALL_NODES));

/// KEYS: this node's hash. ARGV: draining (0/1). Returns the hash, or an empty list when the node
/// never registered (nothing written then).
static DRAIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'draining', ARGV[1])
return redis.call('HGETALL', KEYS[1])",
    )
});

const ALL_NODES: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. 'node:' .. id)
  if #fields > 0 then
    table.insert(out, id)
    for _, value in ipairs(fields) do table.insert(out, value) end
    table.insert(out, '')
  end
end
return out";

/// The registry of the fleet's nodes, on the session store's connection.
#[derive(Debug, Clone)]
pub struct RedisNodeRegistry {
    store: RedisStore,
}

impl RedisStore {
    /// The node registry on this connection (fleet mode).
    #[must_use]
    pub fn node_registry(&self) -> RedisNodeRegistry {
        RedisNodeRegistry {
            store: self.clone(),
        }
    }
}

impl RedisNodeRegistry {
    fn node_key(&self, id: &NodeId) -> String {
        format!("{}node:{id}", self.store.keys.root())
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.store.keys.root())
    }
}

#[async_trait]
impl NodeRegistry for RedisNodeRegistry {
    async fn beat(
        &self,
        beat: &NodeBeat,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<NodeInfo>, RepositoryError> {
        let mut invocation = BEAT_SCRIPT.prepare_invoke();
        invocation
            .key(self.nodes_key())
            .key(self.node_key(&beat.node_id))
            .arg(self.store.keys.root())
            .arg(beat.node_id.as_str())
            .arg(&beat.address)
            .arg(beat.capacity)
            .arg(beat.active)
            .arg(to_millis(now))
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut con = self.store.client.connection();
        let flat: Vec<String> = self
            .store
            .client
            .run(command::NODE_BEAT, invocation.invoke_async(&mut con))
            .await?;
        Ok(decode_nodes(command::NODE_BEAT, &flat, now)?)
    }

    async fn nodes(&self, now: Timestamp) -> Result<Vec<NodeInfo>, RepositoryError> {
        let mut invocation = NODES_SCRIPT.prepare_invoke();
        invocation.key(self.nodes_key()).arg(self.store.keys.root());
        let mut con = self.store.client.connection();
        let flat: Vec<String> = self
            .store
            .client
            .run(command::NODES, invocation.invoke_async(&mut con))
            .await?;
        Ok(decode_nodes(command::NODES, &flat, now)?)
    }

    async fn set_draining(
        &self,
        node_id: &NodeId,
        draining: bool,
        now: Timestamp,
    ) -> Result<Option<NodeInfo>, RepositoryError> {
        let mut invocation = DRAIN_SCRIPT.prepare_invoke();
        invocation
            .key(self.node_key(node_id))
            .arg(if draining { "1" } else { "0" });
        let mut con = self.store.client.connection();
        let fields: Vec<String> = self
            .store
            .client
            .run(command::NODE_DRAIN, invocation.invoke_async(&mut con))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_node(
            command::NODE_DRAIN,
            node_id.as_str(),
            &fields,
            now,
        )?))
    }

    async fn claim_loss(&self, node: &NodeInfo) -> Result<bool, RepositoryError> {
        let key = format!(
            "{}:lost:{}",
            self.node_key(&node.node_id),
            to_millis(node.last_heartbeat_at)
        );
        let mut con = self.store.client.connection();
        let claimed: Option<String> = self
            .store
            .client
            .run(
                command::NODE_CLAIM_LOSS,
                redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(LOST_CLAIM_MS)
                    .query_async(&mut con),
            )
            .await?;
        Ok(claimed.is_some())
    }
}

/// `[id, field, value, ..., '', id, ...]` into nodes, healthy as of `now`.
fn decode_nodes(
    command: &'static str,
    flat: &[String],
    now: Timestamp,
) -> Result<Vec<NodeInfo>, StoreFault> {
    flat.split(String::is_empty)
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| match chunk.split_first() {
            Some((id, fields)) => decode_node(command, id, fields, now),
            None => Err(corrupt(command, "an empty node entry")),
        })
        .collect()
}

fn decode_node(
    command: &'static str,
    id: &str,
    fields: &[String],
    now: Timestamp,
) -> Result<NodeInfo, StoreFault> {
    let map: HashMap<&str, &str> = fields
        .chunks_exact(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect();
    let number = |name: &str| -> Result<i64, StoreFault> {
        map.get(name)
            .and_then(|value| value.parse::<i64>().ok())
            .ok_or_else(|| corrupt(command, &format!("node {id} has no numeric {name}")))
    };
    let beat_ms = number("beat_ms")?;
    let ttl_ms = number("ttl_ms")?;
    let last_heartbeat_at =
        from_millis(beat_ms).ok_or_else(|| corrupt(command, "a beat time out of range"))?;
    Ok(NodeInfo {
        node_id: NodeId::parse(id).map_err(|error| corrupt(command, &error.to_string()))?,
        address: map.get("address").copied().unwrap_or_default().to_owned(),
        capacity: u32::try_from(number("capacity")?).unwrap_or(u32::MAX),
        active: u32::try_from(number("active")?).unwrap_or(u32::MAX),
        draining: map.get("draining") == Some(&"1"),
        healthy: to_millis(now) < beat_ms.saturating_add(ttl_ms),
        last_heartbeat_at,
    })
}

fn corrupt(command: &'static str, reason: &str) -> StoreFault {
    StoreFault::Corrupt {
        command,
        reason: reason.to_owned(),
    }
}
