//! The control plane's half of passive outlier detection: the workers eject a backend
//! (see `proxy-core`'s outliers), this task readmits it when its ejection time is up, and
//! forgets a backend's earlier ejections once it has stayed in for ten base ejection times
//! (so that the next one is short again).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use balancers::outlier::monotonic_ms;
use config::{ServiceEntry, Table};
use proxy_core::{BackendChange, DecisionLog, Telemetry};

/// How often ejections are looked at: how late a readmission may be.
const SWEEP: Duration = Duration::from_millis(100);

/// Starts readmitting the ejected backends of the services of `table` (read again at every
/// sweep) on the current runtime, each ejection and readmission written to the decision log
/// of `telemetry`. The task ends when the runtime does.
pub fn spawn(table: Arc<ArcSwap<Table>>, telemetry: Arc<Telemetry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut version = None;
        let mut watched = Vec::new();
        loop {
            let current = table.load();
            if version != Some(current.version()) {
                version = Some(current.version());
                watched = with_outliers(&current);
            }
            sweep(&table, &watched, monotonic_ms(), telemetry.decision_log());
            tokio::time::sleep(SWEEP).await;
        }
    })
}

/// The services of `table` with outlier detection: the only ones a sweep looks at.
fn with_outliers(table: &Table) -> Vec<Arc<ServiceEntry>> {
    table
        .services()
        .iter()
        .filter(|e| e.service.outliers.is_some())
        .cloned()
        .collect()
}

/// Readmits every backend of `services` whose ejection is over at `now` (after starting its
/// slow start in `table`, when its service has one).
fn sweep(table: &ArcSwap<Table>, services: &[Arc<ServiceEntry>], now: u64, log: &DecisionLog) {
    for entry in services {
        let Some(rules) = entry.service.outliers else {
            continue;
        };
        let forgive_after =
            u64::try_from(rules.time.as_millis().saturating_mul(10)).unwrap_or(u64::MAX);
        for (backend, state) in entry.backends.iter().zip(&entry.states) {
            if state.outlier().take_unreported() {
                let time = rules.ejection(state.outlier().ejections());
                let failures = rules.after;
                let change = BackendChange::Ejected { failures, time };
                crate::checks::record(log, &entry.service.name, backend.address, change);
            }
            let over = state.is_ejected() && state.outlier().ejection_over(now);
            if over && entry.service.slow_start.is_some() {
                crate::slow_start::coming_back(table, state);
            }
            if state.readmit(now) {
                tracing::info!(
                    service = %entry.service.name, backend = %backend.address,
                    ejections = state.outlier().ejections(),
                    "backend readmitted after its ejection"
                );
                let change = BackendChange::Readmitted;
                crate::checks::record(log, &entry.service.name, backend.address, change);
            } else if !state.is_ejected()
                && state.outlier().ejections() > 0
                && now >= state.outlier().until().saturating_add(forgive_after)
            {
                state.outlier().forgive();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use config::{Backend, Config, Outliers, Protocol, Service};

    use super::*;

    #[test]
    fn an_ejected_backend_is_readmitted_when_its_time_is_up_and_forgiven_later() {
        let mut svc = Service::with_defaults(
            "web",
            Protocol::Tcp,
            vec!["127.0.0.1:0".parse().unwrap()],
            vec![Backend::new("127.0.0.1:1".parse().unwrap(), 1)],
            balancers::SchedulerConfig::new(balancers::SchedulerKind::Rr),
        );
        svc.outliers = Some(Outliers {
            after: 1,
            time: Duration::from_millis(100),
            max_percent: 10,
        });
        let table = Table::build(
            &Config {
                services: vec![svc],
            },
            None,
        );
        let watched = with_outliers(&table);
        let table = ArcSwap::from_pointee(table);
        let telemetry = Telemetry::new(1, false);
        let log = telemetry.decision_log();
        log.set_enabled(true);
        assert_eq!(watched.len(), 1);
        let state = &watched[0].states[0];
        assert!(state.eject(1_000));
        sweep(&table, &watched, 999, log);
        assert!(state.is_ejected());
        sweep(&table, &watched, 1_000, log);
        assert!(!state.is_ejected());
        assert_eq!(state.outlier().ejections(), 1);
        let events: Vec<_> = std::iter::from_fn(|| log.try_next())
            .map(|r| match r {
                proxy_core::Record::Backend(e) => e.change,
                proxy_core::Record::Flow(_) => panic!("no flow here"),
            })
            .collect();
        let time = Duration::from_millis(100);
        assert_eq!(
            events,
            [
                BackendChange::Ejected { failures: 1, time },
                BackendChange::Readmitted
            ],
            "reported once each"
        );
        sweep(&table, &watched, 1_999, log);
        assert_eq!(state.outlier().ejections(), 1, "not yet ten ejection times");
        sweep(&table, &watched, 2_000, log);
        assert_eq!(state.outlier().ejections(), 0);
    }
}
