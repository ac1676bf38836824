//! Identifier newtypes: chats and sessions are UUIDs, containers are engine-assigned strings.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::ValidationError;

/// Parses only the canonical form (36 chars, lowercase, hyphenated), so one entity never has two
/// spellings in Redis keys, labels or logs.
fn parse_canonical_uuid(raw: &str) -> Result<Uuid, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::Empty);
    }
    let uuid = Uuid::try_parse(raw).map_err(|_| ValidationError::NotCanonicalUuid)?;
    if uuid.hyphenated().to_string() != raw {
        return Err(ValidationError::NotCanonicalUuid);
    }
    if uuid.is_nil() {
        return Err(ValidationError::NilUuid);
    }
    Ok(uuid)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Parses the canonical lowercase hyphenated form.
            ///
            /// # Errors
            /// [`ValidationError`] when `raw` is empty, not a UUID, not canonical, or nil.
            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                parse_canonical_uuid(raw).map(Self)
            }

            /// Wraps a UUID produced inside the process.
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The inner UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }
    };
}

uuid_id!(
    /// The chat (agent conversation) a sandbox belongs to; the unit of locking.
    ChatId
);
uuid_id!(
    /// One sandbox session: a new id every time a chat gets a new container.
    SessionId
);

impl SessionId {
    /// A fresh random session id.
    #[must_use]
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

/// A runtime's id of a sandbox container. Opaque and engine-neutral (a Docker id is 64 hex
/// characters, a pod would be `namespace/name`), but bounded and printable so it is safe in keys,
/// labels and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Longest id accepted: room for a Kubernetes `namespace/name` (63 + 1 + 253) and more.
    pub const MAX_LEN: usize = 512;

    /// # Errors
    /// [`ValidationError`] when `raw` is empty, longer than [`Self::MAX_LEN`], or has characters
    /// outside `[A-Za-z0-9_.:/-]`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() {
            return Err(ValidationError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValidationError::TooLong { max: Self::MAX_LEN });
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
        {
            return Err(ValidationError::BadChar {
                allowed: "[A-Za-z0-9_.:/-]",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ContainerId {
    type Err = ValidationError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_id_accepts_only_the_canonical_form() {
        let canonical = "0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10";
        assert_eq!(
            ChatId::parse(canonical).map(|c| c.to_string()).as_deref(),
            Ok(canonical)
        );
        for refused in [
            "",
            "0B0E4A8E-54F1-4F7E-9C1E-3B7B5F2F6A10",
            "0b0e4a8e54f14f7e9c1e3b7b5f2f6a10",
            "{0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10}",
            "urn:uuid:0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10",
            " 0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10",
            "0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a1",
            "00000000-0000-0000-0000-000000000000",
            "not-a-uuid",
        ] {
            assert!(
                ChatId::parse(refused).is_err(),
                "{refused:?} must be refused"
            );
        }
    }

    #[test]
    fn nil_uuid_is_its_own_error() {
        assert_eq!(
            SessionId::parse("00000000-0000-0000-0000-000000000000"),
            Err(ValidationError::NilUuid)
        );
    }

    #[test]
    fn container_id_is_engine_neutral_bounded_and_printable() {
        assert!(ContainerId::parse("abc123_.-X").is_ok());
        assert!(ContainerId::parse(&"f".repeat(64)).is_ok(), "a Docker id");
        assert!(
            ContainerId::parse("sandboxes/sandbox-1:main").is_ok(),
            "a pod's namespace/name and a container name"
        );
        assert!(ContainerId::parse(&"a".repeat(ContainerId::MAX_LEN)).is_ok());
        assert_eq!(ContainerId::parse(""), Err(ValidationError::Empty));
        assert!(matches!(
            ContainerId::parse(&"a".repeat(ContainerId::MAX_LEN + 1)),
            Err(ValidationError::TooLong { max: 512 })
        ));
        assert!(ContainerId::parse("a b").is_err());
        assert!(ContainerId::parse("a\nb").is_err());
        assert!(ContainerId::parse("a\\b").is_err());
    }

    #[test]
    fn new_session_ids_are_distinct_and_parse_back() {
        let a = SessionId::new_random();
        let b = SessionId::new_random();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(&a.to_string()), Ok(a));
    }
}
