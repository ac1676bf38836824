//! A chat's sandbox session: the container that serves it and how long it lives.

use std::fmt;
use std::time::Duration;

use crate::{AgentId, ChatId, ContainerId, Endpoint, NodeId, SessionId, Timestamp, VolumePath};

/// Where a session is in its lifecycle. Only a running sandbox serves; the other two keep the
/// chat's container for a resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxState {
    #[default]
    Running,
    /// Frozen by the engine: memory kept, no CPU.
    Paused,
    /// Stopped by the engine: memory freed, the container's own filesystem kept.
    Hibernated,
}

impl SandboxState {
    pub const ALL: [Self; 3] = [Self::Running, Self::Paused, Self::Hibernated];

    /// As stored, logged and used as a metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Hibernated => "hibernated",
        }
    }

    /// The inverse of [`Self::as_str`].
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat's sandbox: the container the runtime started and the lifetime the store tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSession {
    pub session_id: SessionId,
    pub chat_id: ChatId,
    /// The profile the container was started from; a create with another one is a conflict.
    pub agent_id: AgentId,
    /// The host directory mounted into the container; a create with another one is a conflict.
    pub volume_host_path: VolumePath,
    /// The fleet node whose engine runs the container; `None` for a sandbox made in single-node
    /// mode, which belongs to whichever node reads it (the one node there is).
    pub node_id: Option<NodeId>,
    /// The engine's own id of the container, on `node_id`'s engine.
    pub container_id: ContainerId,
    /// Unset when the profile publishes no port.
    pub endpoint: Option<Endpoint>,
    pub created_at: Timestamp,
    /// The session is live strictly before this instant and expired from it on. For a paused or
    /// hibernated session: when it is deleted unless resumed.
    pub expires_at: Timestamp,
    pub state: SandboxState,
    /// The last activity: creation, a reuse, a touch, a resume or an extension.
    pub last_active_at: Timestamp,
    /// The hard cap no activity moves `expires_at` past; `None` without one.
    pub max_expires_at: Option<Timestamp>,
    /// Activity moves `expires_at` to this long after it; `None` keeps the fixed lifetime.
    /// Kept with the session so a touch needs nothing but the session itself.
    pub idle_timeout: Option<Duration>,
}

impl SandboxSession {
    /// Live means `expires_at > now`: a session expiring exactly now is replaced, not reused.
    #[must_use]
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }

    /// Whether the hard cap, not idleness or the TTL, ends this session at `expires_at`.
    #[must_use]
    pub fn hits_max_lifetime(&self) -> bool {
        self.max_expires_at
            .is_some_and(|cap| self.expires_at >= cap)
    }

    /// The session after activity at `now`: `last_active_at = now`, and with an idle timeout the
    /// expiry moved to `now + idle_timeout` (never earlier than it was, never past the cap).
    #[must_use]
    pub fn touched_at(&self, now: Timestamp) -> Self {
        let mut touched = self.clone();
        touched.last_active_at = now;
        if let Some(idle) = self.idle_timeout {
            let due = self
                .max_expires_at
                .map_or(now + idle, |cap| (now + idle).min(cap));
            touched.expires_at = self.expires_at.max(due);
        }
        touched
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
            node_id: None,
            container_id: ContainerId::parse("c1")?,
            endpoint: None,
            created_at: datetime!(2026-01-01 00:00 UTC),
            expires_at: datetime!(2026-01-01 00:30 UTC),
            state: SandboxState::Running,
            last_active_at: datetime!(2026-01-01 00:00 UTC),
            max_expires_at: None,
            idle_timeout: None,
        })
    }

    #[test]
    fn a_touch_moves_the_idle_expiry_forward_but_never_past_the_cap()
    -> Result<(), crate::ValidationError> {
        let fixed = session()?;
        let at = datetime!(2026-01-01 00:10 UTC);
        let touched = fixed.touched_at(at);
        assert_eq!(touched.last_active_at, at);
        assert_eq!(
            touched.expires_at, fixed.expires_at,
            "no idle timeout: fixed"
        );

        let idle = SandboxSession {
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            max_expires_at: Some(datetime!(2026-01-01 00:40 UTC)),
            ..fixed
        };
        assert_eq!(
            idle.touched_at(at).expires_at,
            datetime!(2026-01-01 00:30 UTC)
        );
        let later = datetime!(2026-01-01 00:20 UTC);
        assert_eq!(
            idle.touched_at(later).expires_at,
            datetime!(2026-01-01 00:35 UTC)
        );
        let capped = idle.touched_at(datetime!(2026-01-01 00:35 UTC));
        assert_eq!(capped.expires_at, datetime!(2026-01-01 00:40 UTC));
        assert!(capped.hits_max_lifetime());
        let early = idle.touched_at(datetime!(2026-01-01 00:01 UTC));
        assert_eq!(
            early.expires_at, idle.expires_at,
            "never earlier than it was"
        );
        Ok(())
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in SandboxState::ALL {
            assert_eq!(SandboxState::parse(state.as_str()), Some(state));
        }
        assert_eq!(SandboxState::parse("frozen"), None);
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
