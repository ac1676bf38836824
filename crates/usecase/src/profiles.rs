//! The configured agent profiles, looked up in one place: CreateSandbox refuses an agent id
//! without a profile before anything changes, and hands the profile to the runtime in the spec.

use std::collections::BTreeMap;
use std::sync::Arc;

use sandboxd_domain::{AgentId, AgentProfile};

/// Agent profiles by agent id, validated by whoever built them (the server's configuration).
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Profiles(Arc<BTreeMap<AgentId, Arc<AgentProfile>>>);

impl Profiles {
    #[must_use]
    pub fn new(profiles: impl IntoIterator<Item = (AgentId, AgentProfile)>) -> Self {
        Self(Arc::new(
            profiles
                .into_iter()
                .map(|(agent_id, profile)| (agent_id, Arc::new(profile)))
                .collect(),
        ))
    }

    /// The profile of `agent_id`, if one is configured.
    #[must_use]
    pub fn get(&self, agent_id: &AgentId) -> Option<&Arc<AgentProfile>> {
        self.0.get(agent_id)
    }

    /// Every configured profile with its agent id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&AgentId, &AgentProfile)> {
        self.0.iter().map(|(id, profile)| (id, profile.as_ref()))
    }
}
