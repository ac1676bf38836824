//! TLS and mutual TLS on the gRPC port, in-process over the use-case fakes, with real tonic
//! clients and a test CA generated at run time (rcgen): a client trusting the CA connects, a
//! plaintext or untrusting client fails, and with mTLS a client without a certificate (or with
//! one from another CA) fails while one signed by the client CA succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/in_process.rs"]
mod in_process;

use std::net::SocketAddr;
use std::time::Duration;

use in_process::{Served, serve};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_domain::AgentProfile;
use sandboxd_server::config::{Cli, Config};
use sandboxd_usecase::testing::Fakes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const CHAT: &str = "0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10";

/// A CA and what it signed, as PEM.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    /// A client identity signed by a CA the server does not trust.
    rogue_cert_pem: String,
    rogue_key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let server_ca = ca("sandboxd test server CA");
    let client_ca = ca("sandboxd test client CA");
    let rogue_ca = ca("somebody else's CA");
    let (server_cert_pem, server_key_pem) = leaf(
        &server_ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert_pem, client_key_pem) =
        leaf(&client_ca, &["agent"], ExtendedKeyUsagePurpose::ClientAuth);
    let (rogue_cert_pem, rogue_key_pem) =
        leaf(&rogue_ca, &["agent"], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca_pem: server_ca.pem(),
        server_cert_pem,
        server_key_pem,
        client_ca_pem: client_ca.pem(),
        client_cert_pem,
        client_key_pem,
        rogue_cert_pem,
        rogue_key_pem,
    }
}

struct TlsApp {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TlsApp {
    /// Loads the TLS settings through the real config path (files on disk, validated).
    async fn spawn(pki: &Pki, mutual: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let mut args = vec![
            "sandboxd".to_owned(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--cleanup-interval".into(),
            "0s".into(),
            "--tls-cert-file".into(),
            write("server.crt", &pki.server_cert_pem),
            "--tls-key-file".into(),
            write("server.key", &pki.server_key_pem),
        ];
        if mutual {
            args.push("--tls-client-ca-file".into());
            args.push(write("client-ca.crt", &pki.client_ca_pem));
        }
        let cli = Cli::try_parse_from(args).unwrap();
        let mut config = Config::load(&cli).unwrap();
        config
            .agents
            .insert("default", AgentProfile::new("sandboxd/busybox:local"));
        let Served {
            addr,
            shutdown,
            server,
        } = serve(&config, Fakes::default().ports()).await;
        Self {
            addr,
            shutdown,
            server,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// One GetSandbox over a fresh connection configured by `tls` (`None` = plaintext): the
    /// call's status code, or `None` when no connection could be made at all.
    async fn call(&self, tls: Option<ClientTlsConfig>) -> Result<Code, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Channel::from_shared(format!("{scheme}://localhost:{}", self.addr.port()))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let outcome = SandboxServiceClient::new(channel)
            .get_sandbox(v1::GetSandboxRequest {
                chat_id: CHAT.to_owned(),
            })
            .await;
        Ok(match outcome {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        })
    }
}

fn trusting(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
}

/// A handshake or transport failure: no gRPC answer from the service.
fn refused(outcome: &Result<Code, String>) -> bool {
    match outcome {
        Err(_) => true,
        // The transport error surfaces as UNAVAILABLE/UNKNOWN/INTERNAL from the client, never as
        // the service's NOT_FOUND answer.
        Ok(code) => *code != Code::NotFound,
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_connects_and_plaintext_or_untrusting_clients_fail() {
    let pki = pki();
    let app = TlsApp::spawn(&pki, false).await;

    // NOT_FOUND is the service's real answer: the call went through TLS to the handler.
    assert_eq!(app.call(Some(trusting(&pki))).await, Ok(Code::NotFound));

    let plaintext = app.call(None).await;
    assert!(refused(&plaintext), "plaintext got {plaintext:?}");
    let untrusting = app
        .call(Some(ClientTlsConfig::new().domain_name("localhost")))
        .await;
    assert!(refused(&untrusting), "untrusting got {untrusting:?}");
    app.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let pki = pki();
    let app = TlsApp::spawn(&pki, true).await;

    let with_cert = trusting(&pki).identity(Identity::from_pem(
        &pki.client_cert_pem,
        &pki.client_key_pem,
    ));
    assert_eq!(app.call(Some(with_cert)).await, Ok(Code::NotFound));

    let without_cert = app.call(Some(trusting(&pki))).await;
    assert!(
        refused(&without_cert),
        "no client cert got {without_cert:?}"
    );
    let rogue =
        trusting(&pki).identity(Identity::from_pem(&pki.rogue_cert_pem, &pki.rogue_key_pem));
    let rogue = app.call(Some(rogue)).await;
    assert!(refused(&rogue), "rogue client cert got {rogue:?}");
    let plaintext = app.call(None).await;
    assert!(refused(&plaintext), "plaintext got {plaintext:?}");
    app.stop().await;
}

/// The command line `--tls-cert-file CERT --tls-key-file KEY --tls-client-ca-file CA`, each flag
/// only when its file is given.
fn tls_cli(cert: Option<&String>, key: Option<&String>, ca: Option<&String>) -> Cli {
    let mut args = vec!["sandboxd".to_owned()];
    for (flag, file) in [
        ("--tls-cert-file", cert),
        ("--tls-key-file", key),
        ("--tls-client-ca-file", ca),
    ] {
        if let Some(file) = file {
            args.push(flag.to_owned());
            args.push(file.clone());
        }
    }
    Cli::try_parse_from(args).unwrap()
}

#[test]
fn tls_settings_are_validated_at_load() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cert = path("ok.crt", &pki.server_cert_pem);
    let key = path("ok.key", &pki.server_key_pem);
    let garbage = path("garbage.pem", "not a pem file\n");
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_owned();
    let cases = [
        (Some(&cert), None, None, "tls_key_file"),
        (None, Some(&key), None, "tls_cert_file"),
        (Some(&garbage), Some(&key), None, "tls_cert_file"),
        (Some(&cert), Some(&garbage), None, "tls_key_file"),
        (Some(&missing), Some(&key), None, "tls_cert_file"),
        (
            Some(&cert),
            Some(&key),
            Some(&garbage),
            "tls_client_ca_file",
        ),
        (None, None, Some(&cert), "tls_client_ca_file"),
    ];
    for (cert_file, key_file, ca_file, setting) in cases {
        let cli = tls_cli(cert_file, key_file, ca_file);
        let message = Config::load(&cli).unwrap_err().to_string();
        assert!(message.contains(setting), "{setting}: {message}");
    }
    let cli = tls_cli(Some(&cert), Some(&key), Some(&cert));
    let config = Config::load(&cli).unwrap();
    let files = config.server.tls_files().unwrap().unwrap();
    assert!(files.client_ca_pem.is_some());
    assert!(!format!("{files:?}").contains("PRIVATE KEY"));
}
