//! Active health checks of backends, as HAProxy's `check`: on the control runtime, one task
//! per checked backend runs its checks on its own schedule (`health_interval` while up,
//! `health_down_interval` while down, each spread by up to ±10 %), a TCP connect or an HTTP
//! `GET` through hyper, and marks the backend down after `fall` failures in a row and up
//! after `rise` successes. The mark is the backend's node-wide state, which the workers read
//! at every pick: a backend marked down takes no new connection from the next pick on, and
//! its open connections are left alone.
//!
//! A supervising task follows the table: when a new one is published it starts the checks of
//! backends that appeared and ends those of backends that left (or whose checks changed).
//! Every backend starts up (a new ringlb serves at once; a dead backend is still skipped by
//! the connect retry until `fall` checks say so).

mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use balancers::BackendState;
use config::{HealthCheck, Table};
use proxy_core::{BackendChange, BackendEvent, DecisionLog, Telemetry};
use tokio::task::AbortHandle;

/// How often the supervisor looks for a new table.
const FOLLOW: Duration = Duration::from_millis(250);

/// A backend of a service.
type Key = (String, SocketAddr);

/// The checks running for one backend.
struct Running {
    check: HealthCheck,
    state: Arc<BackendState>,
    task: AbortHandle,
}

/// Ends the open sessions to a backend (its connections and UDP flows): what a backend
/// marked down gets when its checks say `shutdown_sessions`. The data plane brings it.
pub type Cut = Arc<dyn Fn(&Arc<BackendState>) + Send + Sync>;

/// Starts checking the backends of the services of `table` (followed as it is replaced) on
/// the current runtime, ending a backend's sessions with `cut` when it is marked down and
/// its checks ask for it. The tasks end when the runtime does.
pub fn spawn(
    table: Arc<ArcSwap<Table>>,
    cut: Cut,
    telemetry: Arc<Telemetry>,
) -> tokio::task::JoinHandle<()> {
    let hooks = Hooks { cut, telemetry };
    tokio::spawn(async move {
        let mut running: HashMap<Key, Running> = HashMap::new();
        let mut version = None;
        loop {
            let current = table.load();
            if version != Some(current.version()) {
                version = Some(current.version());
                follow(&table, &hooks, &current, &mut running);
            }
            tokio::time::sleep(FOLLOW).await;
        }
    })
}

/// Brings the running checks in line with the services of `table`: backends that appeared
/// (or whose checks or state changed) get a task, those that left lose theirs.
fn follow(
    published: &Arc<ArcSwap<Table>>,
    hooks: &Hooks,
    table: &Table,
    running: &mut HashMap<Key, Running>,
) {
    let mut wanted: HashMap<Key, (HealthCheck, Arc<BackendState>)> = HashMap::new();
    for entry in table.services() {
        let Some(check) = &entry.service.health else {
            continue;
        };
        for (backend, state) in entry.backends.iter().zip(&entry.states) {
            let key = (entry.service.name.clone(), backend.address);
            wanted.insert(key, (check.clone(), Arc::clone(state)));
        }
    }
    running.retain(|key, r| {
        let keep = wanted
            .get(key)
            .is_some_and(|(check, state)| *check == r.check && Arc::ptr_eq(state, &r.state));
        if !keep {
            r.task.abort();
            if !wanted.contains_key(key) {
                // No checks any more (a backend of a service whose checks were switched off
                // stays in the table): nothing would ever bring it up again.
                r.state.set_down(false);
            }
        }
        keep
    });
    for (key, (check, state)) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let task = tokio::spawn(checks(
            key.clone(),
            check.clone(),
            Arc::clone(&state),
            Arc::clone(published),
            hooks.clone(),
        ));
        let task = task.abort_handle();
        running.insert(key, Running { check, state, task });
    }
}

/// Checks one backend until aborted, first within one interval. A backend coming back
/// starts its slow start (if its service has one) before it is marked up.
async fn checks(
    key: Key,
    check: HealthCheck,
    state: Arc<BackendState>,
    table: Arc<ArcSwap<Table>>,
    hooks: Hooks,
) {
    let mut jitter = Jitter::for_key(&key);
    let mut tally = Tally::new(!state.is_down(), check.rise, check.fall);
    tokio::time::sleep(jitter.within(check.interval)).await;
    loop {
        let outcome = probe::check(&check, key.1).await;
        if let Some(up) = tally.record(outcome.is_ok()) {
            report(&key, &check, up, outcome.as_ref().err().map(String::as_str));
            if up {
                crate::slow_start::coming_back(&table, &state);
            }
            state.set_down(!up);
            if !up && check.shutdown_sessions {
                (hooks.cut)(&state);
            }
            let change = match outcome {
                Ok(_) => BackendChange::Up,
                Err(reason) => BackendChange::Down { reason },
            };
            record(hooks.telemetry.decision_log(), &key.0, key.1, change);
        }
        let every = if tally.up {
            check.interval
        } else {
            check.down_interval
        };
        tokio::time::sleep(jitter.around(every)).await;
    }
}

/// What the check tasks hand the data plane: the session cutter, and the telemetry whose
/// decision log records every change.
#[derive(Clone)]
struct Hooks {
    cut: Cut,
    telemetry: Arc<Telemetry>,
}

/// Writes a change of `backend` of `service` to the decision log (when it is on).
pub(crate) fn record(log: &DecisionLog, service: &str, backend: SocketAddr, change: BackendChange) {
    log.backend(BackendEvent {
        service: service.to_owned(),
        backend,
        change,
        at: std::time::SystemTime::now(),
    });
}

fn report(key: &Key, check: &HealthCheck, up: bool, why: Option<&str>) {
    let (service, backend) = (&key.0, key.1);
    if up {
        tracing::info!(service = %service, %backend, rise = check.rise, "backend up");
    } else {
        tracing::warn!(
            service = %service, %backend, fall = check.fall, reason = why.unwrap_or(""),
            "backend down: no new connections until it passes its checks again"
        );
    }
}

/// Consecutive results of one backend's checks.
#[derive(Debug)]
struct Tally {
    up: bool,
    /// Results in a row that go against `up`.
    run: u32,
    rise: u32,
    fall: u32,
}

impl Tally {
    fn new(up: bool, rise: u32, fall: u32) -> Tally {
        Tally {
            up,
            run: 0,
            rise,
            fall,
        }
    }

    /// Counts one check; `Some(up)` when the backend changes state.
    fn record(&mut self, passed: bool) -> Option<bool> {
        self.run = if passed == self.up { 0 } else { self.run + 1 };
        let needed = if self.up { self.fall } else { self.rise };
        if self.run < needed {
            return None;
        }
        self.up = !self.up;
        self.run = 0;
        Some(self.up)
    }
}

/// Spreads checks in time so that backends checked together do not stay in step
/// (xorshift: not for anything secret).
struct Jitter(u64);

impl Jitter {
    /// Seeded from `key` and the process's random hash keys, so that no two backends draw
    /// alike.
    fn for_key(key: &Key) -> Jitter {
        use std::hash::BuildHasher;
        Jitter(std::collections::hash_map::RandomState::new().hash_one(key) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A time in `[0, d)`.
    fn within(&mut self, d: Duration) -> Duration {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.next() % nanos)
    }

    /// `d` ± 10 %.
    fn around(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.9) + self.within(d / 5)
    }
}

#[cfg(test)]
mod tests;
