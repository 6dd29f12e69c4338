//! Passive outlier detection in the data plane: a worker that sees a backend fail (a connect
//! that failed, a connection reset before its first byte back) counts it on the backend's
//! node-wide state, and the failure that completes a run of `eject_after` ejects it, unless
//! `max_eject_percent` of the service's backends are out already. The control plane readmits
//! it when its time is up.

use balancers::outlier::monotonic_ms;
use config::ServiceEntry;

use crate::relay::{RelayEnd, RelayOutcome};

/// Backend `idx` of `entry` failed.
pub(crate) fn failed(entry: &ServiceEntry, idx: usize) {
    let Some(rules) = entry.service.outliers else {
        return;
    };
    let state = &entry.states[idx];
    let run = state.outlier().failure();
    if run < rules.after || state.is_ejected() {
        return;
    }
    let out = entry.states.iter().filter(|s| s.is_ejected()).count();
    if out >= rules.most_ejected(entry.states.len()) {
        return;
    }
    let time = rules.ejection(state.outlier().ejections() + 1);
    let until = monotonic_ms().saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
    if state.eject(until) {
        tracing::warn!(
            service = %entry.service.name, backend = %entry.backends[idx].address,
            failures = run, ?time,
            "backend ejected: no new connections until its time is up"
        );
    }
}

/// A connection relayed by backend `idx` of `entry` ended as `outcome` says: a reset before
/// the first byte back is a failure, bytes back end the failure run.
pub(crate) fn relayed(entry: &ServiceEntry, idx: usize, outcome: &RelayOutcome) {
    if entry.service.outliers.is_none() {
        return;
    }
    match (outcome.end, outcome.to_client) {
        (RelayEnd::Error, 0) => failed(entry, idx),
        (_, 0) => {}
        _ => entry.states[idx].outlier().success(),
    }
}
