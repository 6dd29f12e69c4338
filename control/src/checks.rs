//! Active health checks of backends, as HAProxy's `check`: one task on the control runtime
//! checks every backend of every service that asks for it (a TCP connect, or an HTTP `GET`
//! through hyper), each on its own schedule (`health_interval` while up, `health_down_interval`
//! while down, each spread by up to ±10 %), and marks a backend down after `fall` failures
//! in a row and up after `rise` successes. The mark is the backend's node-wide state, which
//! the workers read at every pick: a backend marked down takes no new connection from the
//! next pick on, and its open connections are left alone.
//!
//! The table is read again at every turn: a reload that adds a backend starts its checks,
//! one that removes a backend ends them. Every backend starts up (a new ringlb serves at
//! once; a dead backend is still skipped by the connect retry until `fall` checks say so).

mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use config::{HealthCheck, Table};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often the table is read again when no check is due sooner.
const RESCAN: Duration = Duration::from_secs(1);

/// A backend of a service.
type Key = (String, SocketAddr);

/// What the checker knows of one backend.
#[derive(Debug)]
struct Backend {
    check: HealthCheck,
    up: bool,
    /// Consecutive results that go against `up`.
    run: u32,
    next: Instant,
    in_flight: bool,
}

/// A check's outcome: `Err` says why it failed.
type Outcome = (Key, Result<(), String>);

/// Starts checking the backends of the services of `table` (read again at every turn) on
/// the current runtime. The task ends when the runtime does.
pub fn spawn(table: Arc<ArcSwap<Table>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(table))
}

async fn run(table: Arc<ArcSwap<Table>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut backends: HashMap<Key, Backend> = HashMap::new();
    let mut jitter = Jitter::new();
    loop {
        let now = Instant::now();
        follow(&table.load(), &mut backends, &mut jitter, now);
        for (key, b) in &mut backends {
            if b.next <= now && !b.in_flight {
                b.in_flight = true;
                let (key, check, tx) = (key.clone(), b.check.clone(), tx.clone());
                tokio::spawn(async move {
                    let outcome = probe::check(&check, key.1).await;
                    let _ = tx.send((key, outcome));
                });
            }
        }
        let due = backends
            .values()
            .filter(|b| !b.in_flight)
            .map(|b| b.next)
            .min()
            .unwrap_or(now + RESCAN)
            .min(now + RESCAN);
        tokio::select! {
            Some((key, outcome)) = rx.recv() => {
                let Some(b) = backends.get_mut(&key) else { continue };
                record(&table.load(), &key, b, outcome, &mut jitter);
            }
            () = tokio::time::sleep_until(due) => {}
        }
    }
}

/// Brings `backends` in line with the services of `table` that have health checks: new
/// backends are checked soon (spread over one interval), gone ones forgotten, a changed
/// check applies from the next one.
fn follow(table: &Table, backends: &mut HashMap<Key, Backend>, jitter: &mut Jitter, now: Instant) {
    let mut seen = std::collections::HashSet::new();
    for entry in table.services() {
        let Some(check) = &entry.service.health else {
            continue;
        };
        for (backend, state) in entry.backends.iter().zip(&entry.states) {
            let key = (entry.service.name.clone(), backend.address);
            seen.insert(key.clone());
            let b = backends.entry(key).or_insert_with(|| Backend {
                check: check.clone(),
                up: !state.is_down(),
                run: 0,
                next: now + jitter.within(check.interval),
                in_flight: false,
            });
            b.check.clone_from(check);
        }
    }
    backends.retain(|key, _| seen.contains(key));
}

/// Counts `outcome` for backend `key`, turns it down or up when the run is long enough
/// (on its state in the current `table`), and schedules its next check.
fn record(
    table: &Table,
    key: &Key,
    b: &mut Backend,
    outcome: Result<(), String>,
    jitter: &mut Jitter,
) {
    b.in_flight = false;
    let against = outcome.is_ok() != b.up;
    b.run = if against { b.run + 1 } else { 0 };
    let (service, address) = (&key.0, key.1);
    if b.up && b.run >= b.check.fall {
        b.up = false;
        b.run = 0;
        let why = outcome.as_ref().err().map_or("", String::as_str);
        tracing::warn!(
            service = %service, backend = %address, fall = b.check.fall, reason = why,
            "backend down: no new connections until it passes its checks again"
        );
        mark(table, key, true);
    } else if !b.up && b.run >= b.check.rise {
        b.up = true;
        b.run = 0;
        tracing::info!(service = %service, backend = %address, rise = b.check.rise, "backend up");
        mark(table, key, false);
    }
    let every = if b.up {
        b.check.interval
    } else {
        b.check.down_interval
    };
    b.next = Instant::now() + jitter.around(every);
}

/// Sets backend `key`'s down flag in `table`.
fn mark(table: &Table, key: &Key, down: bool) {
    let found = table
        .services()
        .iter()
        .filter(|e| e.service.name == key.0)
        .flat_map(|e| e.backends.iter().zip(&e.states))
        .find(|(b, _)| b.address == key.1);
    if let Some((_, state)) = found {
        state.set_down(down);
    }
}

/// Spreads checks in time so that backends checked together do not stay in step
/// (xorshift: not for anything secret).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
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
