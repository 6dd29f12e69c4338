//! One health check of one backend: a TCP connect, or an HTTP/1.1 `GET` through hyper, within
//! the check's timeout.

use std::net::SocketAddr;
use std::time::Duration;

use config::{HealthCheck, Probe};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Checks `backend`: `Ok` when it passed, else why not.
pub(super) async fn check(check: &HealthCheck, backend: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe(&check.probe, backend)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe(probe: &Probe, backend: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Closed with a reset, as HAProxy closes its checks: no FIN exchange, no TIME_WAIT left
    // on this host for every check (the backend sees a connection it can forget at once).
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path } => http_get(stream, backend, path).await,
    }
}

/// `GET path` on `stream`: a 2xx or 3xx status passes.
async fn http_get(stream: TcpStream, backend: SocketAddr, path: &str) -> Result<(), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection's own task ends with it (the check drops the sender).
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, backend.to_string())
        .header(hyper::header::USER_AGENT, "ringlb-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let answer = sender.send_request(request).await;
    driver.abort();
    let status = answer.map_err(|e| format!("HTTP: {e}"))?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("HTTP status {}", status.as_u16()))
    }
}
