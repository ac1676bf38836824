//! Key names of the data model (docs/design.md §3), all under one configurable prefix.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `{p}:session:{session_id}` | hash | the session's fields, timestamps in unix ms |
//! | `{p}:chat:{chat_id}` | string | the chat's current session id |
//! | `{p}:expiry` | zset | session ids scored by `expires_at` ms (cleanup, count) |
//! | `{p}:sessions` | zset | every session id, score 0: lex order for paging (addition) |
//! | `{p}:agent:{agent_id}` | zset | one agent's session ids, score 0 (addition: filtered paging) |
//! | `{p}:lock:{chat_id}` | string | the lease token |
//! | `{p}:state:{paused,hibernated}` | zset | session ids in that state, score 0 (counts, filter) |
//! | `{p}:reserved`, `{p}:reserved:{agent_id}` | zset | creates in flight (admission), scored by when the slot frees itself |
//! | `{p}:events` | stream | lifecycle events, appended by the write that made the change |

use sandboxd_domain::{AgentId, ChatId, SandboxState, SessionId};

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `{p}:`: scripts append the rest of keys they derive from stored data.
    pub(crate) fn root(&self) -> String {
        format!("{}:", self.prefix)
    }

    pub(crate) fn session_prefix(&self) -> String {
        format!("{}:session:", self.prefix)
    }

    pub(crate) fn session(&self, id: &SessionId) -> String {
        format!("{}:session:{id}", self.prefix)
    }

    pub(crate) fn chat(&self, id: &ChatId) -> String {
        format!("{}:chat:{id}", self.prefix)
    }

    pub(crate) fn lock(&self, id: &ChatId) -> String {
        format!("{}:lock:{id}", self.prefix)
    }

    pub(crate) fn agent(&self, id: &AgentId) -> String {
        format!("{}:agent:{id}", self.prefix)
    }

    pub(crate) fn expiry(&self) -> String {
        format!("{}:expiry", self.prefix)
    }

    pub(crate) fn state(&self, state: SandboxState) -> String {
        format!("{}:state:{state}", self.prefix)
    }

    pub(crate) fn reserved(&self) -> String {
        format!("{}:reserved", self.prefix)
    }

    pub(crate) fn reserved_by(&self, agent: &AgentId) -> String {
        format!("{}:reserved:{agent}", self.prefix)
    }

    pub(crate) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    pub(crate) fn sessions(&self) -> String {
        format!("{}:sessions", self.prefix)
    }
}
