//! Bearer-token authentication of SandboxService calls (health and reflection stay open).

use std::sync::Arc;

use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` when a token is configured; passes everything otherwise.
#[derive(Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for BearerAuth {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("enabled", &self.token.is_some())
            .finish()
    }
}

/// The token in `auth_token_file`, surrounding whitespace (a final newline) removed: what calls
/// must carry, and what this node sends to the others in fleet mode.
///
/// # Errors
/// When the file cannot be read or holds only whitespace.
pub(crate) fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading auth_token_file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("auth_token_file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

impl BearerAuth {
    #[must_use]
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.trim().as_bytes())),
        }
    }

    /// Reads the token file (surrounding whitespace, such as a final newline, is ignored).
    ///
    /// # Errors
    /// When the file cannot be read or holds only whitespace.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self::new(Some(read_token(path)?)))
    }

    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The interceptor body.
    ///
    /// # Errors
    /// UNAUTHENTICATED when the header is missing or the token differs.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::as_bytes);
        match presented {
            Some(presented) if constant_time_eq(presented, expected) => Ok(request),
            _ => Err(Status::unauthenticated("missing or invalid bearer token")),
        }
    }
}

/// Compares without an early exit on the first differing byte, so timing does not reveal how
/// much of a guess was right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_right_token_passes() {
        let auth = BearerAuth::new(Some("s3cret\n".into()));
        assert!(auth.check(request(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("Bearer s3cre"),
            Some("s3cret"),
            Some("Bearer s3cret2"),
        ] {
            assert_eq!(
                auth.check(request(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert!(BearerAuth::default().check(request(None)).is_ok());
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
