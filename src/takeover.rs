//! `--takeover ADMIN`: a zero-downtime restart that keeps UDP flows on their backends. Before
//! binding, the new process reads the old one's live UDP flows from its admin API
//! (`GET /udp/flows`) and pins each client to its backend ([`proxy_core::HandedOver`]); then
//! it joins the old process's `SO_REUSEPORT` groups (`--share-port`). It keeps reading the
//! list every [`POLL`] until the old process drains or goes away, so flows opened meanwhile
//! are kept too (those opened in the last [`POLL`] before the old process stops are not).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use proxy_core::HandedOver;

use crate::admin::UdpFlowsView;

/// How often the old process's flows are read again while it serves.
const POLL: Duration = Duration::from_millis(100);
/// How long one read of the list may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the flows of the process at `admin` into `handed` once, then keeps following them
/// in a task on the current runtime until that process drains or stops answering. The old
/// process may be gone already: a restart does not fail for that.
pub async fn start(admin: SocketAddr, handed: Arc<HandedOver>) {
    match fetch(admin).await {
        Ok(view) => {
            let draining = view.draining;
            let flows = view.into_infos();
            handed.add(&flows, Instant::now());
            tracing::info!(from = %admin, flows = flows.len(), "took over UDP flows");
            if !draining {
                tokio::spawn(follow(admin, handed));
            }
        }
        Err(e) => {
            tracing::warn!(from = %admin, error = %format!("{e:#}"), "cannot read the UDP flows to take over; starting without them");
        }
    }
}

async fn follow(admin: SocketAddr, handed: Arc<HandedOver>) {
    loop {
        tokio::time::sleep(POLL).await;
        match fetch(admin).await {
            Ok(view) => {
                let draining = view.draining;
                handed.add(&view.into_infos(), Instant::now());
                if draining {
                    tracing::info!(from = %admin, flows = handed.len(), "the old process drains: UDP flows taken over");
                    return;
                }
            }
            Err(e) => {
                tracing::info!(from = %admin, error = %format!("{e:#}"), flows = handed.len(), "the old process stopped answering: UDP flows taken over");
                return;
            }
        }
    }
}

/// One `GET /udp/flows` from `admin`.
async fn fetch(admin: SocketAddr) -> anyhow::Result<UdpFlowsView> {
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("cannot connect to {admin}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        let request = Request::get("/udp/flows")
            .header(hyper::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("GET /udp/flows")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(anyhow!(
                "GET /udp/flows answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body).context("the answer is not a UDP flow list")
    })
    .await
    .map_err(|_| anyhow!("no answer from {admin} within {FETCH_TIMEOUT:?}"))?
}
