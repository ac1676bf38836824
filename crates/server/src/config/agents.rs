//! The `agents` section: the `[agents.<agent_id>]` tables (or `SANDBOXD_AGENTS__<ID>__<KEY>`),
//! one engine-neutral [`AgentProfile`] per agent a client may ask for.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::Figment;
use sandboxd_domain::{AgentId, AgentProfile};
use sandboxd_usecase::Profiles;
use serde::Deserialize;

use super::ConfigError;

/// The TOML key of the section (a table of tables, so no flag).
pub(crate) const KEY: &str = "agents";

/// Agent profiles by agent id, as written (so a bad id can be named); an id not listed is
/// refused with INVALID_ARGUMENT.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct AgentProfiles(BTreeMap<String, AgentProfile>);

impl AgentProfiles {
    /// The tables of every layer, merged; none is an empty section.
    pub(crate) fn extract(figment: &Figment) -> Result<Self, ConfigError> {
        if figment.contains(KEY) {
            figment.extract_inner(KEY).map_err(super::parse_error)
        } else {
            Ok(Self::default())
        }
    }

    /// Adds (or replaces) the profile of `agent_id`.
    pub fn insert(&mut self, agent_id: impl Into<String>, profile: AgentProfile) {
        self.0.insert(agent_id.into(), profile);
    }

    /// Every (agent id as written, profile).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &AgentProfile)> {
        self.0
            .iter()
            .map(|(name, profile)| (name.as_str(), profile))
    }

    /// The table names, for logs.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every table name is an agent id and every profile is valid.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `agents.<id>` or `agents.<id>.<field>`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, profile) in &self.0 {
            let scope = format!("{KEY}.{name}");
            AgentId::parse(name)
                .map_err(|e| ConfigError::invalid(&scope, format!("agent id {e}")))?;
            profile
                .validate(&scope)
                .map_err(|e| ConfigError::invalid(e.setting, e.reason))?;
        }
        Ok(())
    }

    /// The profiles by agent id (validated by [`Self::validate`]; a bad name is skipped).
    #[must_use]
    pub(crate) fn by_agent_id(&self) -> Profiles {
        Profiles::new(
            self.0
                .iter()
                .filter_map(|(name, profile)| Some((AgentId::parse(name).ok()?, profile.clone()))),
        )
    }

    /// The longest `ready_timeout` of any profile; zero without profiles.
    pub(crate) fn slowest_ready_timeout(&self) -> Duration {
        self.0
            .values()
            .map(|profile| profile.ready_timeout)
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_ids_and_bad_profiles_are_named() {
        let mut profiles = AgentProfiles::default();
        profiles.insert("Bad", AgentProfile::new("x"));
        let message = profiles.validate().unwrap_err().to_string();
        assert!(message.contains("`agents.Bad`"), "{message}");

        let mut profiles = AgentProfiles::default();
        let mut no_port = AgentProfile::new("x");
        no_port.ready_probe = Some(sandboxd_domain::ReadyProbe::Tcp);
        profiles.insert("web", no_port);
        let message = profiles.validate().unwrap_err().to_string();
        assert!(message.contains("`agents.web.ready_probe`"), "{message}");
    }
}
