//! The control plane's half of slow start: while a backend of a service with `slow_start`
//! ramps up (see `balancers::SlowStart`), this task republishes the service with its
//! scheduler rebuilt for the weights of the moment, at most once per step of the ramp.
//!
//! A rebuild replaces only the schedulers whose weights changed, keeps the table's version
//! (the configuration did not change), and is published with a compare-and-swap: when a
//! reload published a table meanwhile, nothing is lost but this step, which the next tick
//! takes again from the table that won (a ramp's weights follow from the time alone).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use balancers::outlier::monotonic_ms;
use config::Table;

/// How often ramps are looked at: how late a step may be.
const TICK: Duration = Duration::from_millis(50);

/// Starts following the slow starts of the services of `table` on the current runtime. The
/// task ends when the runtime does.
pub fn spawn(table: Arc<ArcSwap<Table>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            step(&table, monotonic_ms());
            tokio::time::sleep(TICK).await;
        }
    })
}

/// Starts `state`'s ramp now and republishes `table` with it at once, before the caller lets
/// the backend take connections again (marks it up, readmits it): so that not one pick
/// sees its full weight.
pub fn coming_back(table: &ArcSwap<Table>, state: &balancers::BackendState) {
    let now = monotonic_ms();
    state.came_back(now);
    step(table, now);
}

/// Republishes the table if a ramp moved at `now`; `true` when it did.
fn step(table: &ArcSwap<Table>, now: u64) -> bool {
    let current = table.load_full();
    if !current
        .services()
        .iter()
        .any(|s| s.service.slow_start.is_some())
    {
        return false;
    }
    let Some(next) = current.reramped(now) else {
        return false;
    };
    let previous = table.compare_and_swap(&current, Arc::new(next));
    Arc::ptr_eq(&previous, &current)
}

#[cfg(test)]
mod tests {
    use balancers::{SchedulerConfig, SchedulerKind};
    use config::{Backend, Config, Protocol, Service};

    use super::*;

    #[test]
    fn a_ramp_republishes_its_service_at_each_step_and_once_more_at_its_end() {
        let mut svc = Service::with_defaults(
            "web",
            Protocol::Tcp,
            vec!["127.0.0.1:0".parse().unwrap()],
            vec![
                Backend::new("127.0.0.1:1".parse().unwrap(), 1),
                Backend::new("127.0.0.1:2".parse().unwrap(), 1),
            ],
            SchedulerConfig::new(SchedulerKind::Wrr),
        );
        svc.slow_start = Some(Duration::from_millis(2_000));
        let config = Config {
            services: vec![svc],
        };
        let table = ArcSwap::from_pointee(Table::build(&config, None));
        let weights = |t: &ArcSwap<Table>| {
            t.load().services()[0]
                .scheduler
                .as_ref()
                .unwrap()
                .weights()
                .to_vec()
        };
        assert!(!step(&table, 1_000), "nothing ramps");
        table.load().services()[0].states[1].came_back(1_000);
        assert!(step(&table, 1_000));
        assert_eq!(weights(&table), [16, 1]);
        assert!(!step(&table, 1_001), "the same step");
        assert!(step(&table, 2_000));
        assert_eq!(weights(&table), [16, 8]);
        assert_eq!(
            table.load().version(),
            1,
            "the configuration did not change"
        );
        assert!(step(&table, 3_000), "the ramp is over");
        assert_eq!(weights(&table), [1, 1]);
        assert!(!step(&table, 4_000));
    }
}
