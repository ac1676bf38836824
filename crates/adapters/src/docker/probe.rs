//! Readiness probes against a sandbox's published port. They speak to the host address only
//! (never a container's bridge IP) and judge at the protocol level, because Docker's userland
//! proxy accepts a TCP connection before anything listens inside the container.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use sandboxd_domain::ReadyProbe;

/// How long a probed connection must stay open, silent, for `tcp` to call it ready. The proxy
/// closes within a millisecond or two when nothing listens inside.
const TCP_OPEN_WINDOW: Duration = Duration::from_millis(150);
/// Longest status line read before giving up on an HTTP answer.
const MAX_STATUS_LINE: usize = 256;

/// One probe attempt bounded by `budget`: `true` when the endpoint is serving.
pub(super) async fn probe_once(kind: ReadyProbe, addr: SocketAddr, budget: Duration) -> bool {
    match kind {
        ReadyProbe::None => true,
        ReadyProbe::Http => timeout(budget, http_status_line(addr))
            .await
            .unwrap_or(false),
        ReadyProbe::Tcp => timeout(budget, tcp_stays_open(addr)).await.unwrap_or(false),
    }
}

/// Sends `GET / HTTP/1.0` and accepts any `HTTP/1.x NNN` status line, whatever the status:
/// a 404 still proves a server is answering.
async fn http_status_line(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut received = Vec::with_capacity(64);
    let mut chunk = [0_u8; 64];
    while received.len() < MAX_STATUS_LINE && !received.contains(&b'\n') {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    is_http_status_line(&received)
}

/// `HTTP/1.0 200` / `HTTP/1.1 404 …`: version, one space, three digits.
fn is_http_status_line(received: &[u8]) -> bool {
    let Some(rest) = received.strip_prefix(b"HTTP/1.") else {
        return false;
    };
    matches!(rest, [minor, b' ', a, b, c, ..]
        if minor.is_ascii_digit() && [a, b, c].iter().all(|d| d.is_ascii_digit()))
}

/// Connects and waits [`TCP_OPEN_WINDOW`]: closed or reset meanwhile = nothing listens inside;
/// still open, or bytes arrived (a banner) = a server holds the connection.
async fn tcp_stays_open(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut byte = [0_u8; 1];
    match timeout(TCP_OPEN_WINDOW, stream.read(&mut byte)).await {
        Err(_elapsed) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_are_recognised() {
        assert!(is_http_status_line(b"HTTP/1.0 200 OK\r\n"));
        assert!(is_http_status_line(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(!is_http_status_line(b"HTTP/1.1 20"));
        assert!(!is_http_status_line(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!is_http_status_line(b""));
        assert!(!is_http_status_line(b"HTTP/2 200\r\n"));
    }

    #[tokio::test]
    async fn http_probe_accepts_any_status_and_refuses_silence_and_closes() {
        let answering = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = answering.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = answering.accept().await {
                let mut buf = [0_u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").await;
            }
        });
        assert!(probe_once(ReadyProbe::Http, addr, Duration::from_secs(2)).await);

        // Accept-then-close is what the userland proxy does when nothing listens inside.
        let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closing_addr = closing.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = closing.accept().await {
                drop(stream);
            }
        });
        assert!(!probe_once(ReadyProbe::Http, closing_addr, Duration::from_secs(2)).await);
        assert!(!probe_once(ReadyProbe::Tcp, closing_addr, Duration::from_secs(2)).await);

        // Nothing bound at all.
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unused_addr = unused.local_addr().unwrap();
        drop(unused);
        assert!(!probe_once(ReadyProbe::Http, unused_addr, Duration::from_secs(2)).await);
        assert!(!probe_once(ReadyProbe::Tcp, unused_addr, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn tcp_probe_accepts_a_connection_held_open() {
        let holding = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = holding.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = holding.accept().await {
                held.push(stream);
            }
        });
        assert!(probe_once(ReadyProbe::Tcp, addr, Duration::from_secs(2)).await);
        // A silent server is not an HTTP server: the probe times out within its budget.
        assert!(!probe_once(ReadyProbe::Http, addr, Duration::from_millis(200)).await);
    }
}
