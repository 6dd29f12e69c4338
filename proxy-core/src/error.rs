//! Data-plane errors.

use std::net::SocketAddr;

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The address is already in use by another socket (another ringlb, or any program).
    #[error("cannot listen on {addr}: address already in use (pass --share-port to join another process's SO_REUSEPORT group on purpose)")]
    AddressInUse {
        /// The frontend address.
        addr: SocketAddr,
    },
    /// A socket on port 0 found no free port: the kernel's ephemeral range
    /// (`net.ipv4.ip_local_port_range`) is used up.
    #[error("cannot listen on {addr}: no free port left in net.ipv4.ip_local_port_range (widen it, or free ports)")]
    NoFreePort {
        /// The frontend address, port 0.
        addr: SocketAddr,
    },
    /// Binding or listening failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The frontend address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker's runtime could not be built.
    #[error("worker {worker}: cannot start the {driver} I/O driver: {source}")]
    Runtime {
        /// Worker index.
        worker: usize,
        /// Driver asked for.
        driver: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread could not be spawned.
    #[error("cannot spawn a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A worker exited before it was ready.
    #[error("a worker thread exited during start-up")]
    WorkerDied,
}
