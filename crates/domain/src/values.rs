//! Validated values a request carries: the agent profile name, the host volume path, the endpoint.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;

use crate::ValidationError;

/// A lowercase name: 1..=`max` bytes of `[a-z0-9]` and `punctuation` (`allowed` describes them),
/// starting with a letter or a digit.
pub(crate) fn check_name(
    raw: &str,
    max: usize,
    punctuation: &[u8],
    allowed: &'static str,
) -> Result<(), ValidationError> {
    let first = raw.bytes().next().ok_or(ValidationError::Empty)?;
    if raw.len() > max {
        return Err(ValidationError::TooLong { max });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(ValidationError::BadFirstChar);
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || punctuation.contains(&b))
    {
        return Err(ValidationError::BadChar { allowed });
    }
    Ok(())
}

/// The name of an agent profile: 1–63 chars of `[a-z0-9._-]`, starting alphanumeric (safe as a
/// Docker label value, a metric label and a TOML table key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    pub const MAX_LEN: usize = 63;

    /// # Errors
    /// [`ValidationError`] when `raw` is empty, too long, starts with a non-alphanumeric or has a
    /// character outside `[a-z0-9._-]`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        check_name(raw, Self::MAX_LEN, b"._-", "[a-z0-9._-]").map(|()| Self(raw.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute, normalised host path. Only its syntax is checked here; whether it may be mounted
/// (allowed roots, symlinks, forbidden paths) is the runtime adapter's policy, which needs I/O.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumePath(String);

impl VolumePath {
    /// Linux `PATH_MAX`.
    pub const MAX_LEN: usize = 4096;

    /// # Errors
    /// [`ValidationError`] when `raw` is empty, longer than 4096 bytes, has NUL or control
    /// characters, is relative, or is not normalised (`.`/`..` components, `//`, trailing `/`).
    /// The root `/` itself is syntactically valid (policy refuses it).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() {
            return Err(ValidationError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValidationError::TooLong { max: Self::MAX_LEN });
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::ControlChar);
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(ValidationError::NotAbsolute);
        };
        if rest.is_empty() {
            return Ok(Self(raw.to_owned()));
        }
        if rest
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ValidationError::NotNormalised);
        }
        Ok(Self(raw.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a sandbox's service answers: the published host IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: NonZeroU16,
}

impl Endpoint {
    /// # Errors
    /// [`ValidationError::ZeroPort`] for port 0.
    pub fn new(ip: IpAddr, port: u16) -> Result<Self, ValidationError> {
        let port = NonZeroU16::new(port).ok_or(ValidationError::ZeroPort)?;
        Ok(Self { ip, port })
    }

    /// Parses the textual IP and the port as stored.
    ///
    /// # Errors
    /// [`ValidationError::BadIp`] or [`ValidationError::ZeroPort`].
    pub fn parse(ip: &str, port: u16) -> Result<Self, ValidationError> {
        let ip = IpAddr::from_str(ip).map_err(|_| ValidationError::BadIp)?;
        Self::new(ip, port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

macro_rules! string_value_impls {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

string_value_impls!(AgentId, VolumePath);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn agent_id_table() {
        for ok in ["default", "a", "0", "py3.12_agent-x", &"a".repeat(63)] {
            assert_eq!(AgentId::parse(ok).map(|a| a.to_string()).as_deref(), Ok(ok));
        }
        let refused: &[(&str, ValidationError)] = &[
            ("", ValidationError::Empty),
            (&"a".repeat(64), ValidationError::TooLong { max: 63 }),
            ("-a", ValidationError::BadFirstChar),
            (".a", ValidationError::BadFirstChar),
            ("_a", ValidationError::BadFirstChar),
            ("Default", ValidationError::BadFirstChar),
            (
                "aB",
                ValidationError::BadChar {
                    allowed: "[a-z0-9._-]",
                },
            ),
            (
                "a b",
                ValidationError::BadChar {
                    allowed: "[a-z0-9._-]",
                },
            ),
            (
                "a/b",
                ValidationError::BadChar {
                    allowed: "[a-z0-9._-]",
                },
            ),
            (
                "a\0",
                ValidationError::BadChar {
                    allowed: "[a-z0-9._-]",
                },
            ),
            ("é", ValidationError::BadFirstChar),
        ];
        for (raw, want) in refused {
            assert_eq!(AgentId::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn volume_path_table() {
        for ok in [
            "/",
            "/srv",
            "/srv/chats/abc",
            "/a/.hidden",
            "/a/b..c",
            "/a/...",
            "/ä/ü",
        ] {
            assert_eq!(
                VolumePath::parse(ok).map(|v| v.to_string()).as_deref(),
                Ok(ok)
            );
        }
        let long = format!("/{}", "a".repeat(4096));
        let refused: &[(&str, ValidationError)] = &[
            ("", ValidationError::Empty),
            ("srv/x", ValidationError::NotAbsolute),
            ("./srv", ValidationError::NotAbsolute),
            ("/srv/", ValidationError::NotNormalised),
            ("//srv", ValidationError::NotNormalised),
            ("/srv//x", ValidationError::NotNormalised),
            ("/srv/./x", ValidationError::NotNormalised),
            ("/srv/..", ValidationError::NotNormalised),
            ("/srv/../etc", ValidationError::NotNormalised),
            ("/srv/\0x", ValidationError::ControlChar),
            ("/srv/\nx", ValidationError::ControlChar),
            ("/srv/\u{7f}", ValidationError::ControlChar),
            (&long, ValidationError::TooLong { max: 4096 }),
        ];
        for (raw, want) in refused {
            assert_eq!(VolumePath::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn endpoint_refuses_port_zero_and_bad_ips() {
        assert_eq!(
            Endpoint::parse("127.0.0.1", 0),
            Err(ValidationError::ZeroPort)
        );
        assert_eq!(
            Endpoint::parse("localhost", 80),
            Err(ValidationError::BadIp)
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1", 8080)
                .map(|e| e.to_string())
                .as_deref(),
            Ok("127.0.0.1:8080")
        );
        assert_eq!(
            Endpoint::parse("::1", 8080)
                .map(|e| e.to_string())
                .as_deref(),
            Ok("[::1]:8080")
        );
    }

    proptest! {
        #[test]
        fn agent_id_parse_never_panics_and_round_trips(raw in "\\PC{0,80}|[a-z0-9._-]{0,70}") {
            if let Ok(agent) = AgentId::parse(&raw) {
                prop_assert_eq!(agent.to_string(), raw.clone());
                let shown = agent.to_string();
                prop_assert_eq!(AgentId::parse(&shown), Ok(agent));
            }
        }

        #[test]
        fn volume_path_parse_never_panics_and_round_trips(raw in "(/[a-z.\\x00/]{0,12}){0,6}|\\PC{0,60}|.{0,40}") {
            if let Ok(path) = VolumePath::parse(&raw) {
                prop_assert_eq!(path.to_string(), raw.clone());
                prop_assert!(!path.as_str().contains("//"));
                prop_assert!(!path.as_str().split('/').any(|p| p == ".."));
                let shown = path.to_string();
                prop_assert_eq!(VolumePath::parse(&shown), Ok(path));
            }
        }

        #[test]
        fn chat_id_parse_never_panics_and_round_trips(raw in "[0-9a-fA-F-]{30,40}|\\PC{0,40}", uuid in any::<u128>()) {
            if let Ok(id) = crate::ChatId::parse(&raw) {
                prop_assert_eq!(id.to_string(), raw.clone());
            }
            let generated = uuid::Uuid::from_u128(uuid).hyphenated().to_string();
            if uuid != 0 {
                prop_assert_eq!(crate::ChatId::parse(&generated).map(|c| c.to_string()), Ok(generated));
            }
        }
    }
}
