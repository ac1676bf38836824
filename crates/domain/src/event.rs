//! Lifecycle events: what changed in a chat's sandbox, why, and where it sits in the event log.

use std::fmt;

use crate::{SandboxSession, Timestamp, ValidationError};

/// The kind of change an event records (the wire enum `SandboxEventType`, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Replaced,
    Resumed,
    Paused,
    Hibernated,
    Extended,
    Deleted,
    Expired,
    Reconciled,
    /// Its node stopped renewing its registration (fleet mode).
    Lost,
}

impl EventType {
    pub const ALL: [Self; 10] = [
        Self::Created,
        Self::Replaced,
        Self::Resumed,
        Self::Paused,
        Self::Hibernated,
        Self::Extended,
        Self::Deleted,
        Self::Expired,
        Self::Reconciled,
        Self::Lost,
    ];

    /// As stored in the log.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Resumed => "resumed",
            Self::Paused => "paused",
            Self::Hibernated => "hibernated",
            Self::Extended => "extended",
            Self::Deleted => "deleted",
            Self::Expired => "expired",
            Self::Reconciled => "reconciled",
            Self::Lost => "lost",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Why a change happened; clients see it as the event's `reason` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// A client asked (CreateSandbox, PauseSandbox, DeleteSandbox, ...).
    Requested,
    /// Its idle timeout (or, without one, its TTL) ran out.
    Idle,
    /// Its hard cap ran out.
    MaxLifetime,
    /// It stayed paused or hibernated for the profile's `paused_retention`.
    Retention,
    /// Rebuilt from its container's labels after the store lost it.
    Adopted,
    /// A container of the chat that no session owned was removed.
    Stray,
    /// Its container was gone or had exited.
    ContainerGone,
    /// The engine's state differed from the session's and was brought back in line.
    Drift,
    /// An expired session removed by the CreateSandbox that replaced it.
    Replaced,
    /// Its node's registration expired (fleet mode).
    NodeLost,
}

impl EventReason {
    pub const ALL: [Self; 10] = [
        Self::Requested,
        Self::Idle,
        Self::MaxLifetime,
        Self::Retention,
        Self::Adopted,
        Self::Stray,
        Self::ContainerGone,
        Self::Drift,
        Self::Replaced,
        Self::NodeLost,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Idle => "idle",
            Self::MaxLifetime => "max_lifetime",
            Self::Retention => "retention",
            Self::Adopted => "adopted",
            Self::Stray => "stray",
            Self::ContainerGone => "container_gone",
            Self::Drift => "drift",
            Self::Replaced => "replaced",
            Self::NodeLost => "node_lost",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

/// What a state change appends to the log, in the same atomic write as the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventNote {
    pub kind: EventType,
    pub reason: EventReason,
    pub at: Timestamp,
}

impl EventNote {
    #[must_use]
    pub const fn new(kind: EventType, reason: EventReason, at: Timestamp) -> Self {
        Self { kind, reason, at }
    }
}

/// A position in the event log: `<unix ms>-<sequence>`, ordered. Events after a cursor are those
/// appended later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventCursor {
    pub millis: u64,
    pub sequence: u64,
}

impl EventCursor {
    /// # Errors
    /// When `text` is not two decimal numbers joined by `-`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::NotACursor;
        let (millis, sequence) = text.split_once('-').ok_or_else(bad)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u64>().map_err(|_| bad())
        };
        Ok(Self {
            millis: number(millis)?,
            sequence: number(sequence)?,
        })
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.sequence)
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    pub cursor: EventCursor,
    pub kind: EventType,
    pub reason: EventReason,
    pub occurred_at: Timestamp,
    /// After the change; for a removal, as it was.
    pub session: SandboxSession,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_order_and_print_back() {
        let a = EventCursor::parse("1700000000000-0");
        let b = EventCursor::parse("1700000000000-7");
        assert!(matches!((a, b), (Ok(a), Ok(b)) if a < b && b.to_string() == "1700000000000-7"));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-1-1",
            "+1-1",
            "1 -1",
            "1-99999999999999999999999",
        ] {
            assert!(EventCursor::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kinds_and_reasons_round_trip_through_their_names() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        for reason in EventReason::ALL {
            assert_eq!(EventReason::parse(reason.as_str()), Some(reason));
        }
    }
}
