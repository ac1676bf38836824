//! The `admission` section: how many sandboxes the deployment may hold, and how many engine
//! creates one process runs at once.

use serde::Deserialize;

use super::flags::{Kind, Setting};

/// Quotas; `0` means no limit. Per-profile limits are `agents.<id>.max_sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AdmissionSettings {
    /// Most sandboxes (stored sessions in any state, plus creates in flight) across every
    /// replica sharing the Redis; a create beyond it is RESOURCE_EXHAUSTED.
    pub max_sandboxes: usize,
    /// Most engine creates this process runs at once; more wait up to `lock_wait`, then answer
    /// UNAVAILABLE with a retry delay.
    pub max_concurrent_creates: usize,
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::new(
        "max_sandboxes",
        "N",
        "0",
        "Most sandboxes of the deployment (every replica on the Redis); 0 = no limit",
    )
    .kind(Kind::Count),
    Setting::new(
        "max_concurrent_creates",
        "N",
        "0",
        "Most engine creates in flight in this process; more wait up to lock_wait; 0 = no limit",
    )
    .kind(Kind::Count),
];

impl AdmissionSettings {
    /// `max_sandboxes` as the use case takes it.
    pub(crate) fn max_sandboxes(&self) -> Option<u32> {
        (self.max_sandboxes > 0).then(|| u32::try_from(self.max_sandboxes).unwrap_or(u32::MAX))
    }

    /// `max_concurrent_creates` as the use case takes it.
    pub(crate) fn max_concurrent_creates(&self) -> Option<usize> {
        (self.max_concurrent_creates > 0).then_some(self.max_concurrent_creates)
    }
}
