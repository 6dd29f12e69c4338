//! Worker tasks that cannot take their worker down: a panic in one is caught, counted, logged
//! with its cause, and the worker carries on with its other connections and flows.
//!
//! monoio resumes a task's panic on the worker thread, which would end the whole runtime: every
//! connection of that worker, its accept loops and its UDP sockets. Every task a worker spawns
//! goes through [`spawn`] instead. A panic ends only that task (its connection or flow is
//! closed as its state drops); a long-lived task (an accept loop, a UDP frontend) that panics
//! stays stopped, and that is reported as lasting. A worker thread that ends by a panic anyway
//! (outside any task) is reported the same way. [`Panics`] is what the control plane reads
//! (`/readyz`, `/metrics`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;

/// What kind of task panicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// One TCP connection (its relay ends; the worker goes on).
    Connection,
    /// One UDP flow's reply relay (the flow ends).
    UdpFlow,
    /// An accept loop: its frontend is no longer served by this worker.
    Accept,
    /// A UDP frontend's receive loop: its frontend is no longer served by this worker.
    UdpFrontend,
    /// One of the worker's housekeeping tasks (timers, commands).
    Worker,
}

impl TaskKind {
    /// The kind as logged and as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Connection => "connection",
            TaskKind::UdpFlow => "udp_flow",
            TaskKind::Accept => "accept",
            TaskKind::UdpFrontend => "udp_frontend",
            TaskKind::Worker => "worker",
        }
    }

    /// Whether a panic leaves something stopped for good (not just one connection lost).
    pub fn lasting(self) -> bool {
        !matches!(self, TaskKind::Connection | TaskKind::UdpFlow)
    }
}

/// One panic, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicRecord {
    /// When it happened.
    pub at: SystemTime,
    /// The worker it happened on.
    pub worker: usize,
    /// What kind of task it ended; `None`: the worker thread itself ended.
    pub task: Option<TaskKind>,
    /// The panic's message.
    pub message: String,
}

impl std::fmt::Display for PanicRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.task {
            Some(kind) => write!(
                f,
                "worker {}: {} task panicked: {}",
                self.worker,
                kind.name(),
                self.message
            ),
            None => write!(
                f,
                "worker {} stopped after a panic: {}",
                self.worker, self.message
            ),
        }
    }
}

/// How many recent panic times [`Panics`] keeps, for [`Panics::since`].
const RECENT: usize = 64;

/// The data plane's panics, node-wide. Panics are rare: a lock per record is fine.
#[derive(Debug, Default)]
pub struct Panics {
    count: AtomicU64,
    last: Mutex<Option<PanicRecord>>,
    /// Panics that left a task or a worker stopped for good.
    lasting: Mutex<Vec<PanicRecord>>,
    /// When the latest panics happened (at most [`RECENT`]).
    recent: Mutex<VecDeque<SystemTime>>,
}

impl Panics {
    /// Panics caught so far (every kind, worker threads included).
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The latest panic.
    pub fn last(&self) -> Option<PanicRecord> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The panics after which something stays stopped (an accept loop, a UDP frontend, a
    /// worker thread): the process serves less than it should until it is restarted.
    pub fn lasting(&self) -> Vec<PanicRecord> {
        self.lasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Panics within `window` before `now` (counting at most the latest 64).
    pub fn since(&self, window: Duration, now: SystemTime) -> usize {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .iter()
            .filter(|at| now.duration_since(**at).is_ok_and(|ago| ago <= window))
            .count()
    }

    /// Records and logs a panic (the workers do, for every panic they catch).
    pub fn record(&self, record: PanicRecord) {
        self.count.fetch_add(1, Relaxed);
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(record.at);
        }
        let lasting = record.task.is_none_or(TaskKind::lasting);
        if lasting {
            tracing::error!("{record}; it stays stopped until ringlb restarts");
            self.lasting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record.clone());
        } else {
            tracing::error!("{record}; it was dropped and the worker goes on");
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(record);
    }
}

thread_local! {
    /// The worker running on this thread and where it reports panics.
    static WORKER: RefCell<Option<(usize, Arc<Panics>)>> = const { RefCell::new(None) };
}

/// Marks this thread as worker `id` reporting into `panics`, for as long as the returned guard
/// lives; a panic that ends the thread while it lives is reported as the worker stopping.
pub(crate) fn enter_worker(id: usize, panics: Arc<Panics>) -> WorkerGuard {
    WORKER.with(|w| *w.borrow_mut() = Some((id, panics)));
    WorkerGuard { id }
}

/// See [`enter_worker`].
pub(crate) struct WorkerGuard {
    id: usize,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        let entered = WORKER.with(|w| w.borrow_mut().take());
        if let (true, Some((_, panics))) = (std::thread::panicking(), entered) {
            panics.record(PanicRecord {
                at: SystemTime::now(),
                worker: self.id,
                task: None,
                message: "the worker's runtime panicked".to_owned(),
            });
        }
    }
}

/// Spawns `task` on this worker's runtime; a panic in it ends only the task and is reported.
pub(crate) fn spawn<F>(kind: TaskKind, task: F)
where
    F: Future<Output = ()> + 'static,
{
    monoio::spawn(async move {
        if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
            report(kind, payload.as_ref());
        }
    });
}

fn report(kind: TaskKind, payload: &(dyn Any + Send)) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned());
    let entered = WORKER.with(|w| w.borrow().clone());
    let Some((worker, panics)) = entered else {
        tracing::error!(task = kind.name(), %message, "a task panicked outside a worker");
        return;
    };
    panics.record(PanicRecord {
        at: SystemTime::now(),
        worker,
        task: Some(kind),
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    /// Drops a counted value when the task is torn down, as a connection's guards do.
    struct Counted(Rc<Cell<u32>>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_panicking_task_is_counted_its_state_dropped_and_the_worker_goes_on() {
        let panics = Arc::new(Panics::default());
        let _guard = enter_worker(3, Arc::clone(&panics));
        let dropped = Rc::new(Cell::new(0));
        let after = Rc::new(Cell::new(false));
        runtime().block_on({
            let (dropped, after) = (Rc::clone(&dropped), Rc::clone(&after));
            async move {
                let held = Counted(Rc::clone(&dropped));
                spawn(TaskKind::Connection, async move {
                    let _held = held;
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    panic!("boom {}", 42);
                });
                spawn(TaskKind::Accept, async { panic!("static message") });
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
                // The runtime survived both: this task still runs.
                after.set(true);
            }
        });
        assert!(after.get(), "the worker's other tasks kept running");
        assert_eq!(dropped.get(), 1, "the panicking task's state was dropped");
        assert_eq!(panics.count(), 2);
        let lasting = panics.lasting();
        assert_eq!(lasting.len(), 1, "{lasting:?}");
        assert_eq!(lasting[0].task, Some(TaskKind::Accept));
        assert_eq!(lasting[0].message, "static message");
        assert_eq!(lasting[0].worker, 3);
        // The connection panicked last (after its sleep), with a formatted message.
        let last = panics.last().expect("a record");
        assert_eq!(last.message, "boom 42");
        assert_eq!(last.task, Some(TaskKind::Connection));
        assert_eq!(
            lasting[0].to_string(),
            "worker 3: accept task panicked: static message"
        );
        let now = SystemTime::now();
        assert_eq!(panics.since(Duration::from_secs(60), now), 2);
        let later = now + Duration::from_secs(120);
        assert_eq!(panics.since(Duration::from_secs(60), later), 0);
    }

    #[test]
    fn a_worker_thread_ending_in_a_panic_is_reported_as_lasting() {
        let panics = Arc::new(Panics::default());
        let p = Arc::clone(&panics);
        let joined = std::thread::spawn(move || {
            let _guard = enter_worker(1, p);
            panic!("outside any task");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(panics.count(), 1);
        let lasting = panics.lasting();
        assert_eq!(lasting.len(), 1);
        assert_eq!(lasting[0].task, None);
        assert!(lasting[0].to_string().starts_with("worker 1 stopped"));
    }
}
