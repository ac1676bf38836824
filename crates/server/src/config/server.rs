//! The `server` section: the listeners, their TLS and auth, and how long shutdown may drain.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxd_domain::de_duration;
use serde::Deserialize;

use super::ConfigError;
use super::flags::Setting;

/// The gRPC and HTTP ports, their TLS files and bearer token, and the drain bound.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// gRPC listener; port 0 picks a free port (the bound address is logged).
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    pub http_addr: SocketAddr,
    /// On SIGTERM, how long in-flight calls and a running cleanup pass may take before exit.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// File holding the bearer token SandboxService calls must carry; unset = no auth.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain of the gRPC port; with `tls_key_file`, the port speaks TLS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle client certificates must chain to; set = mutual TLS, clients without a
    /// certificate are refused in the handshake.
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 50051)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            drain_timeout: Duration::from_secs(20),
            auth_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::new(
        "grpc_addr",
        "ADDR",
        "127.0.0.1:50051",
        "gRPC listen address; port 0 picks one",
    ),
    Setting::new(
        "http_addr",
        "ADDR",
        "127.0.0.1:9090",
        "/metrics, /healthz, /readyz listen address",
    ),
    Setting::new(
        "drain_timeout",
        "DURATION",
        "20s",
        "On SIGTERM, bound on finishing in-flight calls",
    ),
    Setting::unset(
        "auth_token_file",
        "FILE",
        "none, no auth",
        "File with the bearer token SandboxService calls need",
    ),
    Setting::unset(
        "tls_cert_file",
        "FILE",
        "none, plaintext",
        "PEM certificate chain: the gRPC port speaks TLS (needs --tls-key-file)",
    ),
    Setting::unset(
        "tls_key_file",
        "FILE",
        "none",
        "PEM private key of the TLS certificate",
    ),
    Setting::unset(
        "tls_client_ca_file",
        "FILE",
        "none",
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS)",
    ),
];

impl ServerSettings {
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting of the section.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc_addr.port() != 0 && self.grpc_addr == self.http_addr {
            return Err(ConfigError::invalid(
                "http_addr",
                "must differ from grpc_addr",
            ));
        }
        if self.drain_timeout.is_zero() {
            return Err(ConfigError::invalid("drain_timeout", "must be positive"));
        }
        if let Some(path) = &self.auth_token_file
            && !path.is_file()
        {
            return Err(ConfigError::invalid(
                "auth_token_file",
                "not found or not a file",
            ));
        }
        self.validate_tls()
    }

    /// TLS files come as a set (certificate and key, optionally a client CA) and must parse as
    /// PEM now, not at the first handshake.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                read_pem_certificates("tls_cert_file", cert)?;
                read_pem_private_key("tls_key_file", key)?;
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls_key_file",
                    "must be set with tls_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls_cert_file",
                    "must be set with tls_key_file",
                ));
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.tls_client_ca_file {
            if self.tls_cert_file.is_none() {
                return Err(ConfigError::invalid(
                    "tls_client_ca_file",
                    "needs tls_cert_file and tls_key_file (mutual TLS is TLS first)",
                ));
            }
            read_pem_certificates("tls_client_ca_file", ca)?;
        }
        Ok(())
    }

    /// The gRPC port's TLS files, read; `None` when TLS is off.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when a file cannot be read (validated at load, so only when it
    /// changed since).
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let read = |setting: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                ConfigError::invalid(setting, format!("reading {}: {e}", path.display()))
            })
        };
        Ok(Some(TlsFiles {
            cert_pem: read("tls_cert_file", cert)?,
            key_pem: read("tls_key_file", key)?,
            client_ca_pem: self
                .tls_client_ca_file
                .as_deref()
                .map(|ca| read("tls_client_ca_file", ca))
                .transpose()?,
        }))
    }
}

/// The PEM contents of the gRPC port's TLS settings.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// At least one PEM `CERTIFICATE` block, every one well-formed.
pub(super) fn read_pem_certificates(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(ConfigError::invalid(
            setting,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(())
}

/// One PEM private key (PKCS#8, PKCS#1 or SEC1).
fn read_pem_private_key(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    PrivateKeyDer::from_pem_file(path)
        .map(drop)
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_two_ports_must_differ_unless_both_are_picked() {
        let same = ServerSettings {
            http_addr: ServerSettings::default().grpc_addr,
            ..ServerSettings::default()
        };
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("http_addr")
        );
        let both_picked = ServerSettings {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServerSettings::default()
        };
        both_picked.validate().unwrap();
    }

    #[test]
    fn a_missing_token_file_and_a_zero_drain_are_refused() {
        let no_token = ServerSettings {
            auth_token_file: Some(PathBuf::from("/nonexistent/token")),
            ..ServerSettings::default()
        };
        let message = no_token.validate().unwrap_err().to_string();
        assert!(message.contains("auth_token_file"), "{message}");
        let no_drain = ServerSettings {
            drain_timeout: Duration::ZERO,
            ..ServerSettings::default()
        };
        let message = no_drain.validate().unwrap_err().to_string();
        assert!(message.contains("drain_timeout"), "{message}");
    }
}
