//! Idle connections held open through a proxy, to measure what each costs it in memory. Each
//! carries one HTTP/1.1 request and its answer first (the load's own client, hyper), so that
//! the proxy has connected it to a backend and relayed both ways (any buffers it keeps per
//! connection are allocated), and then sends nothing more.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::Connection;

/// Connections held open; dropping them closes them.
pub struct Idle {
    connections: Vec<Connection>,
    /// Owns the connections' drivers; they stay open while it exists, idle, not driven.
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("len", &self.len()).finish()
    }
}

impl Idle {
    /// Opens `n` connections to `target`, one after the other, each answered once within
    /// `timeout`.
    pub fn hold(target: SocketAddr, n: usize, timeout: Duration) -> std::io::Result<Idle> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let failed = |what: &str| std::io::Error::other(format!("an idle connection {what}"));
        let connections = runtime.block_on(async {
            let mut connections = Vec::with_capacity(n);
            for _ in 0..n {
                let answered = tokio::time::timeout(timeout, async {
                    let mut conn = Connection::open(target, None).await.ok()?;
                    conn.get(target, false).await.ok()?;
                    Some(conn)
                });
                match answered.await {
                    Ok(Some(conn)) => connections.push(conn),
                    Ok(None) => return Err(failed("failed")),
                    Err(_) => return Err(failed("was not answered in time")),
                }
            }
            Ok(connections)
        })?;
        Ok(Idle {
            connections,
            _runtime: runtime,
        })
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}
