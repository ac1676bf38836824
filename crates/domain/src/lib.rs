//! The sandboxd domain: a chat's sandbox session, its ids and the validated values it is made of.
//!
//! Nothing here performs I/O or needs an async runtime; every value that comes from outside the
//! process is parsed through a constructor that refuses what the rest of the system must never see;
//! agent profiles (`[agents.<id>]`) are validated here too, so every engine gets the same checks.

mod egress;
mod error;
mod event;
mod ids;
mod node;
mod profile;
mod session;
mod values;

pub use egress::{Cidr, Egress, PUBLIC_EXCLUDED_V4, public_excluded_v4};
pub use error::ValidationError;
pub use event::{EventCursor, EventNote, EventReason, EventType, SandboxEvent};
pub use ids::{ChatId, ContainerId, SessionId};
pub use node::{NodeId, NodeInfo};
pub use profile::{
    AgentProfile, ByteSize, DEFAULT_PAUSED_RETENTION, IDENTITY_ENV, InvalidProfile, OnIdle,
    ReadyProbe, de_duration, de_optional_duration,
};
pub use session::{ConflictReason, SandboxSession, SandboxState};
pub use values::{AgentId, Endpoint, VolumePath};

/// Timestamps are UTC instants; `time` keeps them exact to the nanosecond.
pub type Timestamp = time::OffsetDateTime;
