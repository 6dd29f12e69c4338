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
    match tokio::time::timeout(check.timeout, probe(check, backend)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe(check: &HealthCheck, backend: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Closed with a reset, as HAProxy closes its checks: no FIN exchange, no TIME_WAIT left
    // on this host for every check (the backend sees a connection it can forget at once).
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    match &check.probe {
        Probe::Tcp if check.send.is_empty() && check.expect.is_empty() => Ok(()),
        Probe::Tcp => exchange(stream, &check.send, &check.expect).await,
        Probe::Http { path } => http_get(stream, backend, path, &check.status).await,
    }
}

/// The most bytes of an answer searched for `expect`.
const ANSWER_MAX: usize = 4096;

/// Sends `send`, then reads until the answer contains `expect` (nothing more when it is
/// empty), within [`ANSWER_MAX`] bytes.
async fn exchange(mut stream: TcpStream, send: &[u8], expect: &[u8]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(send)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !expect.is_empty() && !answer.windows(expect.len()).any(|w| w == expect) {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || answer.len() >= ANSWER_MAX {
            let got = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
            return Err(format!(
                "expected {:?}, got {got:?}",
                String::from_utf8_lossy(expect)
            ));
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// `GET path` on `stream`: a status within `status` passes.
async fn http_get(
    stream: TcpStream,
    backend: SocketAddr,
    path: &str,
    status: &std::ops::RangeInclusive<u16>,
) -> Result<(), String> {
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
    let got = answer.map_err(|e| format!("HTTP: {e}"))?.status().as_u16();
    if status.contains(&got) {
        Ok(())
    } else {
        Err(format!("HTTP status {got}"))
    }
}
