//! The control runtime: one current-thread tokio runtime (I/O, timers, signals, child
//! processes) that the process's main thread runs, and what tasks on it share ([`Plane`]).
//!
//! Every control-plane source is a task on it: signals, the config file watch, DNS
//! re-resolution, node mode's API watch and host address polling, the admin API and the health
//! ports (see [`crate::http`]), takeover, `nft` and `conntrack` awaited as child processes;
//! the reconcile loop that owns the table swap is the future the main thread blocks on.
//! Nothing on it may block the thread (a blocking call stalls every port at once: await
//! instead, and bound the wait), and nothing on it touches a data-plane socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use proxy_core::{LocalSockets, ProxyError, SocketKind, SocketSource, SocketSpec};
use tokio::runtime::{Handle, Runtime};

use crate::http::telemetry::Telemetry;
use crate::readiness::Readiness;

/// What a control-plane task needs: where to run, where its listening sockets come from and
/// where to report.
#[derive(Clone, Debug)]
pub struct Plane {
    /// The control runtime, to spawn tasks on and to enter for socket conversions.
    pub handle: Handle,
    /// What `/readyz` reports.
    pub readiness: Arc<Readiness>,
    /// The counters of the HTTP servers, for `/metrics`.
    pub http: Arc<Telemetry>,
    /// Where HTTP ports' listeners come from (ringlb's master keeps them across restarts).
    pub sockets: Arc<dyn SocketSource>,
}

impl Plane {
    /// Tasks on the runtime of `handle`, binding their sockets in this process, with nothing
    /// reported yet.
    pub fn new(handle: Handle) -> Plane {
        Plane::with_sockets(handle, Arc::new(LocalSockets))
    }

    /// As [`Plane::new`], with listening sockets from `sockets`.
    pub fn with_sockets(handle: Handle, sockets: Arc<dyn SocketSource>) -> Plane {
        Plane {
            handle,
            readiness: Arc::default(),
            http: Arc::default(),
            sockets,
        }
    }

    /// The listener of an HTTP port named `key` at `addr` (with `dual_stack`, every address of
    /// both families at its port), from [`Plane::sockets`].
    pub fn http_listener(
        &self,
        key: String,
        addr: SocketAddr,
        dual_stack: bool,
    ) -> io::Result<std::net::TcpListener> {
        let spec = SocketSpec {
            key,
            kind: SocketKind::Http { dual_stack },
            addr,
        };
        let opened = self.sockets.open(&spec).map_err(|e| match e {
            ProxyError::Bind { source, .. } => source,
            ProxyError::AddressInUse { .. } => io::ErrorKind::AddrInUse.into(),
            other => io::Error::other(other.to_string()),
        })?;
        let socket = opened
            .sockets
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("no socket opened"))?;
        Ok(socket.into())
    }
}

/// The control runtime, not running until a thread blocks on it ([`ControlRuntime::block_on`]:
/// the main thread, for ringlb); dropping it drops its tasks.
#[derive(Debug)]
pub struct ControlRuntime {
    runtime: Runtime,
    plane: Plane,
}

impl ControlRuntime {
    /// Builds the runtime: current-thread, with I/O (sockets, signals, child processes) and
    /// timers. It spawns no thread. Its HTTP ports' sockets come from `sockets`.
    pub fn new(sockets: Arc<dyn SocketSource>) -> std::io::Result<ControlRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let plane = Plane::with_sockets(runtime.handle().clone(), sockets);
        Ok(ControlRuntime { runtime, plane })
    }

    /// The runtime's handle and the shared registries.
    pub fn plane(&self) -> &Plane {
        &self.plane
    }

    /// Runs `future`, and every task spawned on the runtime meanwhile, on this thread until
    /// `future` ends.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_thread_that_blocks_on_the_runtime_and_end_with_it() {
        let control = ControlRuntime::new(Arc::new(LocalSockets)).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        control.plane().handle.spawn(async move {
            let _ = tx.send(std::thread::current().id());
        });
        let ran_on = control.block_on(rx).unwrap();
        assert_eq!(ran_on, std::thread::current().id());
        let handle = control.plane().handle.clone();
        drop(control);
        // The runtime is gone: a task spawned now never runs, and its handle says so.
        let late = handle.spawn(async {});
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(other.block_on(late).is_err());
    }
}
