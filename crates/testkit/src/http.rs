//! A minimal HTTP/1.0 GET over raw TCP (no HTTP client crate needed), for sandboxd's `/metrics`,
//! `/healthz` and `/readyz` and for the busybox httpd inside a sandbox, and the samples of one
//! metric as `/metrics` shows them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the connect and the whole read may each take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET {path}` from `addr` (`host:port`): the status code (0 if none) and the body.
///
/// # Errors
/// When the connection fails or the connect or read takes longer than 5 s.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The samples of the metric `name` on `addr`'s `/metrics`: (its labels as printed, e.g.
/// `{result="adopted"}` or empty, value); `None` when the process cannot be scraped.
pub async fn metric_samples(addr: &str, name: &str) -> Option<Vec<(String, f64)>> {
    let (_, body) = http_get(addr, "/metrics").await.ok()?;
    let samples = body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !rest.starts_with(['{', ' ']) {
                return None;
            }
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.trim().to_owned(), value.parse().ok()?))
        })
        .collect();
    Some(samples)
}
