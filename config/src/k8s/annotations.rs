//! ringlb's own annotations on a Service: `ringlb.io/scheduler` (an IPVS name),
//! `ringlb.io/scheduler-flags`, and the opt-in guards `ringlb.io/health-check`,
//! `ringlb.io/health-interval` and `ringlb.io/eject-after`, read from a manifest (every
//! problem located) or from the API (node mode: a problem falls back to the default rather
//! than failing).

use std::collections::BTreeMap;

use balancers::{SchedulerConfig, SchedulerKind};

use crate::model::{HealthCheck, Outliers, Probe};

use super::rules::located_annotations;
use super::yaml::{Checker, Fields, Loc};

/// Annotation choosing the scheduler (an IPVS name).
pub const SCHEDULER_ANNOTATION: &str = "ringlb.io/scheduler";
/// Annotation with comma-separated scheduler flags.
pub const SCHEDULER_FLAGS_ANNOTATION: &str = "ringlb.io/scheduler-flags";
/// Annotation turning on health checks of the endpoints: `tcp` or `http:PATH`.
pub const HEALTH_CHECK_ANNOTATION: &str = "ringlb.io/health-check";
/// Annotation with the time between two checks of an endpoint.
pub const HEALTH_INTERVAL_ANNOTATION: &str = "ringlb.io/health-interval";
/// Annotation turning on outlier detection: failures in a row that eject an endpoint.
pub const EJECT_AFTER_ANNOTATION: &str = "ringlb.io/eject-after";
/// Prefix of every ringlb annotation: an unknown one is a problem (most likely a typo).
const RINGLB_PREFIX: &str = "ringlb.io/";
/// Every ringlb annotation.
const KNOWN: [&str; 5] = [
    SCHEDULER_ANNOTATION,
    SCHEDULER_FLAGS_ANNOTATION,
    HEALTH_CHECK_ANNOTATION,
    HEALTH_INTERVAL_ANNOTATION,
    EJECT_AFTER_ANNOTATION,
];

/// Whether `key` is a ringlb annotation this version does not know.
fn unknown(key: &str) -> bool {
    key.starts_with(RINGLB_PREFIX) && !KNOWN.contains(&key)
}

/// The health checks and outlier detection a Service's annotations ask for, and each
/// annotation that cannot be used with why (those are left out).
pub fn guards_of_annotations(
    annotations: &BTreeMap<String, String>,
) -> (
    Option<HealthCheck>,
    Option<Outliers>,
    Vec<(&'static str, String)>,
) {
    let mut problems = Vec::new();
    let mut health = annotations.get(HEALTH_CHECK_ANNOTATION).and_then(|v| {
        let probe = Probe::parse(v);
        if probe.is_none() {
            let why =
                format!("{v:?} is not a health check: tcp, or http:PATH with PATH starting with /");
            problems.push((HEALTH_CHECK_ANNOTATION, why));
        }
        probe.map(HealthCheck::new)
    });
    if let Some(v) = annotations.get(HEALTH_INTERVAL_ANNOTATION) {
        match (crate::parse_positive_duration(v), health.as_mut()) {
            (Ok(d), Some(h)) => {
                h.interval = d;
                h.down_interval = d;
            }
            (Ok(_), None) => problems.push((
                HEALTH_INTERVAL_ANNOTATION,
                format!("only with {HEALTH_CHECK_ANNOTATION}"),
            )),
            (Err(e), _) => problems.push((HEALTH_INTERVAL_ANNOTATION, e.to_string())),
        }
    }
    let outliers =
        annotations
            .get(EJECT_AFTER_ANNOTATION)
            .and_then(|v| match v.trim().parse::<u32>() {
                Ok(0) => None,
                Ok(n) if n <= 100 => Some(Outliers::new(n)),
                _ => {
                    let why = format!("{v:?}: failures in a row, 0 (off) to 100");
                    problems.push((EJECT_AFTER_ANNOTATION, why));
                    None
                }
            });
    (health, outliers, problems)
}

/// The scheduler from ringlb's annotations, and where to point at if it cannot serve.
pub(crate) fn scheduler(
    ck: &mut Checker,
    f: &Fields<'_>,
    object: Loc,
) -> (Option<SchedulerConfig>, Loc) {
    let annotations: BTreeMap<String, (String, Loc)> = located_annotations(f);
    let field = |key: &str| format!("metadata.annotations[{key:?}]");
    for (key, (_, loc)) in &annotations {
        if unknown(key) {
            let why = format!("unknown ringlb annotation ({})", KNOWN.join(", "));
            ck.at(*loc, &field(key), why);
        }
    }
    let (mut sc, loc) = match annotations.get(SCHEDULER_ANNOTATION) {
        None => (SchedulerConfig::default(), object),
        Some((value, loc)) => match value.trim().parse::<SchedulerKind>() {
            Ok(kind) => (SchedulerConfig::new(kind), *loc),
            Err(e) => {
                ck.at(*loc, &field(SCHEDULER_ANNOTATION), e.to_string());
                return (None, *loc);
            }
        },
    };
    let Some((flags, flags_loc)) = annotations.get(SCHEDULER_FLAGS_ANNOTATION) else {
        return (Some(sc), loc);
    };
    let errors = apply_scheduler_flags(&mut sc, flags);
    for e in &errors {
        ck.at(*flags_loc, &field(SCHEDULER_FLAGS_ANNOTATION), e.clone());
    }
    (errors.is_empty().then_some(sc), loc)
}

/// Sets the flags of the comma-separated `flags` (`ringlb.io/scheduler-flags`) on `sc`;
/// returns why each flag that cannot be set was refused.
fn apply_scheduler_flags(sc: &mut SchedulerConfig, flags: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for flag in flags.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = sc.kind;
        let (owner, slot) = match flag {
            "sh-fallback" => (SchedulerKind::Sh, &mut sc.sh_fallback),
            "sh-port" => (SchedulerKind::Sh, &mut sc.sh_port),
            "mh-fallback" => (SchedulerKind::Mh, &mut sc.mh_fallback),
            "mh-port" => (SchedulerKind::Mh, &mut sc.mh_port),
            other => {
                errors.push(format!(
                    "unknown flag {other:?} (sh-fallback, sh-port, mh-fallback, mh-port)"
                ));
                continue;
            }
        };
        if owner != kind {
            errors.push(format!(
                "{flag} only applies to scheduler {owner}, not {kind}"
            ));
            continue;
        }
        *slot = true;
    }
    errors
}

/// The scheduler of a Service read from the API (node mode): its ringlb annotations, or the
/// default scheduler with why each annotation was not usable. A typo in an annotation must
/// not take a Service of a running cluster off the air, so it falls back rather than fails.
pub fn scheduler_of_annotations(
    annotations: &BTreeMap<String, String>,
) -> (SchedulerConfig, Vec<String>) {
    let mut problems = Vec::new();
    for key in annotations.keys() {
        if unknown(key) {
            problems.push(format!(
                "unknown ringlb annotation {key:?} ({})",
                KNOWN.join(", ")
            ));
        }
    }
    let mut sc = match annotations.get(SCHEDULER_ANNOTATION) {
        None => SchedulerConfig::default(),
        Some(value) => match value.trim().parse::<SchedulerKind>() {
            Ok(kind) => SchedulerConfig::new(kind),
            Err(e) => {
                problems.push(format!("{SCHEDULER_ANNOTATION}: {e}; using rr"));
                return (SchedulerConfig::default(), problems);
            }
        },
    };
    if let Some(flags) = annotations.get(SCHEDULER_FLAGS_ANNOTATION) {
        let mut flagged = sc;
        let errors = apply_scheduler_flags(&mut flagged, flags);
        if errors.is_empty() {
            sc = flagged;
        } else {
            problems.extend(
                errors
                    .into_iter()
                    .map(|e| format!("{SCHEDULER_FLAGS_ANNOTATION}: {e}; flags ignored")),
            );
        }
    }
    (sc, problems)
}
