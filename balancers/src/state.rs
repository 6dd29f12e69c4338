//! Node-wide per-backend state shared by all workers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Live counters of one backend, shared by every worker of the node.
///
/// "Active" is a proxied TCP connection that is established to the backend and not yet
/// closed; the table builder carries one `BackendState` per backend identity across table
/// swaps, so counts stay right when the table changes under open connections.
#[derive(Debug, Default)]
pub struct BackendState {
    active: AtomicU32,
    inactive: AtomicU32,
}

impl BackendState {
    /// Connections currently open to this backend.
    #[inline]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections to this backend that are closing or idle (IPVS "inactive").
    #[inline]
    pub fn inactive(&self) -> u32 {
        self.inactive.load(Ordering::Relaxed)
    }

    /// Counts one new active connection until the returned guard is dropped.
    #[inline]
    pub fn connect(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            state: Arc::clone(self),
        }
    }
}

/// Holds one active connection on a [`BackendState`]; dropping it releases the count.
#[derive(Debug)]
pub struct ConnectionGuard {
    state: Arc<BackendState>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let prev = self.state.active.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "active connection count underflow");
    }
}
