//! The control runtime: one OS thread, `ringlb-control`, running a current-thread tokio
//! runtime (I/O and timers), and what tasks on it share ([`Plane`]).
//!
//! This is the home of control-plane tasks: today every HTTP port ringlb serves (the admin
//! API, the node health server, the `healthCheckNodePort` servers, see [`crate::http`]); the
//! file and API watchers, DNS and the reload loop are to move here too. Nothing on it may
//! block the thread (a blocking call stalls every port at once: await instead, and bound the
//! wait), and nothing on it touches a data-plane socket.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::http::telemetry::Telemetry;
use crate::readiness::Readiness;

/// What a control-plane task needs: where to run and where to report.
#[derive(Clone, Debug)]
pub struct Plane {
    /// The control runtime, to spawn tasks on and to enter for socket conversions.
    pub handle: Handle,
    /// What `/readyz` reports.
    pub readiness: Arc<Readiness>,
    /// The counters of the HTTP servers, for `/metrics`.
    pub http: Arc<Telemetry>,
}

/// The running control thread; dropping it stops the runtime (its tasks are dropped) and
/// joins the thread.
#[derive(Debug)]
pub struct ControlRuntime {
    plane: Plane,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlRuntime {
    /// Starts the thread and its runtime.
    pub fn start() -> std::io::Result<ControlRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ringlb-control".into())
            .spawn(move || {
                // Either a stop or a dropped sender ends it.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(ControlRuntime {
            plane: Plane {
                handle,
                readiness: Arc::default(),
                http: Arc::default(),
            },
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime's handle and the shared registries.
    pub fn plane(&self) -> &Plane {
        &self.plane
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_named_thread_until_the_runtime_is_dropped() {
        let control = ControlRuntime::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        control.plane().handle.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name);
        });
        let name = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("ringlb-control"));
        let handle = control.plane().handle.clone();
        drop(control);
        // The runtime is gone: a task spawned now never runs, and its handle says so.
        let late = handle.spawn(async {});
        assert!(handle.block_on(late).is_err());
    }
}
