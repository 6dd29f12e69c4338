//! Validation of a service's scheduler options and session affinity, and of whether its
//! scheduler can be built from its backends.

use std::time::Duration;

use balancers::{BackendSpec, Scheduler, SchedulerConfig, SchedulerKind, MH_TABLE_SIZES};
use serde_saphyr::Spanned;

use super::Validator;
use crate::error::Problem;
use crate::model::{Backend, Service, ServiceDefaults};

impl Validator {
    /// `scheduler_flags` and `mh_table_size`, which only apply to the scheduler they name.
    pub(super) fn scheduler_options(
        &mut self,
        path: &str,
        mut sc: SchedulerConfig,
        flags: Option<Spanned<Vec<Spanned<String>>>>,
        table_size: Option<Spanned<i64>>,
    ) -> Option<SchedulerConfig> {
        let mut ok = true;
        for (j, f) in flags.iter().flat_map(|f| f.value.iter()).enumerate() {
            let (owner, flag) = match f.value.as_str() {
                "sh-fallback" => (SchedulerKind::Sh, &mut sc.sh_fallback),
                "sh-port" => (SchedulerKind::Sh, &mut sc.sh_port),
                "mh-fallback" => (SchedulerKind::Mh, &mut sc.mh_fallback),
                "mh-port" => (SchedulerKind::Mh, &mut sc.mh_port),
                other => {
                    self.at(
                        f,
                        format!("{path}.scheduler_flags[{j}]"),
                        format!(
                            "unknown flag {other:?} (sh-fallback, sh-port, mh-fallback, mh-port)"
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            if owner != sc.kind {
                self.at(
                    f,
                    format!("{path}.scheduler_flags[{j}]"),
                    format!(
                        "{} only applies to scheduler {owner}, not {}",
                        f.value, sc.kind
                    ),
                );
                ok = false;
                continue;
            }
            *flag = true;
        }
        if let Some(t) = table_size {
            match u32::try_from(t.value) {
                Ok(v) if sc.kind == SchedulerKind::Mh && MH_TABLE_SIZES.contains(&v) => {
                    sc.mh_table_size = v
                }
                _ if sc.kind != SchedulerKind::Mh => {
                    self.at(
                        &t,
                        format!("{path}.mh_table_size"),
                        format!("only applies to scheduler mh, not {}", sc.kind),
                    );
                    ok = false;
                }
                _ => {
                    self.at(
                        &t,
                        format!("{path}.mh_table_size"),
                        format!(
                            "must be one of the primes {MH_TABLE_SIZES:?}, got {}",
                            t.value
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(sc)
    }

    /// `session_affinity` (none or client_ip) and its timeout.
    pub(super) fn session_affinity(
        &mut self,
        path: &str,
        kind: Option<Spanned<String>>,
        timeout: Option<Spanned<String>>,
    ) -> Option<Option<Duration>> {
        let client_ip = match &kind {
            None => false,
            Some(k) => match k.value.as_str() {
                "none" | "None" => false,
                "client_ip" | "ClientIP" => true,
                other => {
                    self.at(
                        k,
                        format!("{path}.session_affinity"),
                        format!("unknown session affinity {other:?} (none or client_ip)"),
                    );
                    return None;
                }
            },
        };
        let Some(t) = timeout else {
            return Some(client_ip.then_some(ServiceDefaults::AFFINITY_TIMEOUT));
        };
        if !client_ip {
            self.at(
                &t,
                format!("{path}.session_affinity_timeout"),
                "only applies with session_affinity: client_ip",
            );
            return None;
        }
        let d = self.duration(
            Some(t.clone()),
            format!("{path}.session_affinity_timeout"),
            ServiceDefaults::AFFINITY_TIMEOUT,
        )?;
        if d.subsec_nanos() != 0 || d > ServiceDefaults::MAX_AFFINITY_TIMEOUT {
            self.at(
                &t,
                format!("{path}.session_affinity_timeout"),
                "must be whole seconds between 1s and 24h (as Kubernetes validates)",
            );
            return None;
        }
        Some(Some(d))
    }

    /// Refuses a service whose scheduler cannot be built from its backends (for example more
    /// `mh` backends than table slots, or a `wrr` cycle too long).
    pub(super) fn schedulable(
        &mut self,
        path: &str,
        at: serde_saphyr::Location,
        svc: Service,
    ) -> Option<Service> {
        let mut specs: Vec<_> = svc.backends.iter().map(Backend::spec).collect();
        if !svc.targets.is_empty() {
            // Names resolve later: check the list as written, one backend per entry.
            specs = svc
                .targets
                .iter()
                .map(|t| BackendSpec::new(t.weight).with_max_connections(t.max_connections))
                .collect();
        }
        match Scheduler::build(&svc.scheduler, &specs) {
            Ok(_) => Some(svc),
            Err(e) => {
                self.problems.push(Problem {
                    line: Some(at.line()),
                    column: Some(at.column()),
                    path: format!("{path}.scheduler"),
                    reason: format!(
                        "scheduler {} cannot serve these backends: {e}",
                        svc.scheduler.kind
                    ),
                });
                None
            }
        }
    }
}
