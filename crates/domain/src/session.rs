//! A chat's sandbox session: the container that serves it and how long it lives.

use std::fmt;

use crate::{AgentId, ChatId, ContainerId, Endpoint, SessionId, Timestamp, VolumePath};

/// One chat's sandbox: the container the runtime started and the lifetime the store tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSession {
    pub session_id: SessionId,
    pub chat_id: ChatId,
    /// The profile the container was started from; a create with another one is a conflict.
    pub agent_id: AgentId,
    /// The host directory mounted into the container; a create with another one is a conflict.
    pub volume_host_path: VolumePath,
    pub container_id: ContainerId,
    /// Unset when the profile publishes no port.
    pub endpoint: Option<Endpoint>,
    pub created_at: Timestamp,
    /// The session is live strictly before this instant and expired from it on.
    pub expires_at: Timestamp,
}

impl SandboxSession {
    /// Live means `expires_at > now`: a session expiring exactly now is replaced, not reused.
    #[must_use]
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }

    /// Which of the requested fields differ from this session's; `None` when both match.
    #[must_use]
    pub fn conflict_with(&self, agent_id: &AgentId, volume: &VolumePath) -> Option<ConflictReason> {
        match (&self.agent_id != agent_id, &self.volume_host_path != volume) {
            (false, false) => None,
            (true, false) => Some(ConflictReason::AgentId),
            (false, true) => Some(ConflictReason::VolumeHostPath),
            (true, true) => Some(ConflictReason::AgentIdAndVolumeHostPath),
        }
    }
}

/// Why a live session cannot be reused for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictReason {
    AgentId,
    VolumeHostPath,
    AgentIdAndVolumeHostPath,
}

impl ConflictReason {
    /// As metrics, spans and the status's `ErrorInfo` spell it: `agent_id`, `volume_host_path`
    /// or `agent_id,volume_host_path`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentId => "agent_id",
            Self::VolumeHostPath => "volume_host_path",
            Self::AgentIdAndVolumeHostPath => "agent_id,volume_host_path",
        }
    }
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn session() -> Result<SandboxSession, crate::ValidationError> {
        Ok(SandboxSession {
            session_id: SessionId::parse("11111111-1111-4111-8111-111111111111")?,
            chat_id: ChatId::parse("22222222-2222-4222-8222-222222222222")?,
            agent_id: AgentId::parse("default")?,
            volume_host_path: VolumePath::parse("/srv/a")?,
            container_id: ContainerId::parse("c1")?,
            endpoint: None,
            created_at: datetime!(2026-01-01 00:00 UTC),
            expires_at: datetime!(2026-01-01 00:30 UTC),
        })
    }

    #[test]
    fn live_strictly_before_expiry() -> Result<(), crate::ValidationError> {
        let s = session()?;
        assert!(s.is_live_at(datetime!(2026-01-01 00:29:59.999 UTC)));
        assert!(!s.is_live_at(datetime!(2026-01-01 00:30 UTC)));
        Ok(())
    }

    #[test]
    fn conflict_names_the_differing_fields() -> Result<(), crate::ValidationError> {
        let s = session()?;
        let same_agent = AgentId::parse("default")?;
        let other_agent = AgentId::parse("other")?;
        let same_vol = VolumePath::parse("/srv/a")?;
        let other_vol = VolumePath::parse("/srv/b")?;
        assert_eq!(s.conflict_with(&same_agent, &same_vol), None);
        assert_eq!(
            s.conflict_with(&other_agent, &same_vol),
            Some(ConflictReason::AgentId)
        );
        assert_eq!(
            s.conflict_with(&same_agent, &other_vol),
            Some(ConflictReason::VolumeHostPath)
        );
        assert_eq!(
            s.conflict_with(&other_agent, &other_vol)
                .map(ConflictReason::as_str),
            Some("agent_id,volume_host_path")
        );
        Ok(())
    }
}
