//! The one error type of the domain: why a value from outside was refused.

/// Why a raw value could not become a domain value. Callers name the field; this says what is wrong
/// with it, in words safe to show a client (it never echoes the input back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes")]
    TooLong { max: usize },
    #[error("must be a canonical lowercase hyphenated UUID")]
    NotCanonicalUuid,
    #[error("must be the nil-free UUID of a real entity, not the nil UUID")]
    NilUuid,
    #[error("must start with a lowercase letter or a digit")]
    BadFirstChar,
    #[error("may contain only {allowed}")]
    BadChar { allowed: &'static str },
    #[error("must not contain NUL or control characters")]
    ControlChar,
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("must be normalised: no '.' or '..' components, no repeated or trailing '/'")]
    NotNormalised,
    #[error("port must be non-zero")]
    ZeroPort,
    #[error("must be an IP address")]
    BadIp,
    #[error("must be the cursor of an event (<ms>-<seq>)")]
    NotACursor,
}
