//! The configured agent profiles, looked up in one place: CreateSandbox refuses an agent id
//! without a profile before anything changes, and hands the profile to the runtime in the spec;
//! the server checks them against the runtimes the engine has before it serves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sandboxd_domain::{AgentId, AgentProfile};

/// A profile naming an OCI runtime the engine does not have: every create of that agent would
/// fail, so the server refuses to start with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`agents.{agent_id}.runtime` names the runtime \"{runtime}\", which the container engine does \
     not have (it has: {})",
    registered.join(", ")
)]
pub struct UnregisteredRuntime {
    pub agent_id: AgentId,
    pub runtime: String,
    /// What the engine has, in name order, so the message says what would work.
    pub registered: Vec<String>,
}

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

    /// Checks that every profile's `runtime` is among the engine's `registered` runtimes. A
    /// profile without one runs under the engine's default and needs nothing.
    ///
    /// # Errors
    /// [`UnregisteredRuntime`] for the first such profile in agent id order.
    pub fn check_runtimes(&self, registered: &BTreeSet<String>) -> Result<(), UnregisteredRuntime> {
        let missing = self.iter().find_map(|(agent_id, profile)| {
            let runtime = profile.runtime.as_ref()?;
            (!registered.contains(runtime)).then_some((agent_id, runtime))
        });
        match missing {
            None => Ok(()),
            Some((agent_id, runtime)) => Err(UnregisteredRuntime {
                agent_id: agent_id.clone(),
                runtime: runtime.clone(),
                registered: registered.iter().cloned().collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile(runtime: Option<&str>) -> AgentProfile {
        let mut profile = AgentProfile::new("busybox");
        profile.runtime = runtime.map(str::to_owned);
        profile
    }

    fn profiles(entries: &[(&str, Option<&str>)]) -> Profiles {
        Profiles::new(
            entries
                .iter()
                .map(|(id, runtime)| (AgentId::parse(id).unwrap(), profile(*runtime))),
        )
    }

    #[test]
    fn profiles_whose_runtimes_the_engine_has_pass_and_the_default_needs_none() {
        let registered = BTreeSet::from(["runc".to_owned(), "runsc".to_owned()]);
        profiles(&[
            ("plain", None),
            ("gvisor", Some("runsc")),
            ("explicit", Some("runc")),
        ])
        .check_runtimes(&registered)
        .unwrap();
        profiles(&[("plain", None)])
            .check_runtimes(&BTreeSet::new())
            .unwrap();
    }

    #[test]
    fn an_unregistered_runtime_is_named_with_its_profile_and_what_the_engine_has() {
        let registered = BTreeSet::from(["runsc".to_owned(), "runc".to_owned()]);
        let refused = profiles(&[
            ("a-fine", Some("runsc")),
            ("b-typo", Some("runsv")),
            ("c-other", Some("kata")),
        ])
        .check_runtimes(&registered)
        .unwrap_err();
        assert_eq!(refused.agent_id.as_str(), "b-typo", "the first in id order");
        assert_eq!(refused.runtime, "runsv");
        assert_eq!(
            refused.to_string(),
            "`agents.b-typo.runtime` names the runtime \"runsv\", which the container engine \
             does not have (it has: runc, runsc)"
        );
    }
}
