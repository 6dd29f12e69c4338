//! Validation of one service of ringlb YAML (and of its backends), field by field, each with
//! its located error.

use std::num::NonZeroU32;

use balancers::{SchedulerConfig, SchedulerKind};
use serde_saphyr::Spanned;

use super::{valid_name, RawBackend, RawService, Validator, MAX_ATTEMPTS, MAX_WEIGHT};
use crate::error::Problem;
use crate::model::{Backend, Protocol, Service, ServiceDefaults};
use crate::names::{BackendAddress, Target};

impl Validator {
    /// One service of `services`, or `None` with its problems recorded.
    pub(super) fn service(&mut self, path: &str, raw: Spanned<RawService>) -> Option<Service> {
        let at = raw.referenced;
        let r = raw.value;
        let name = self.name(path, at, r.name);
        let protocol = self.protocol(path, r.protocol);
        let listen = self.listen(path, at, r.listen);
        let backends = self.backends(path, at, r.backends);
        let scheduler_at = r.scheduler.as_ref().map_or(at, |s| s.referenced);
        let scheduler = self
            .scheduler(path, r.scheduler)
            .and_then(|sc| self.scheduler_options(path, sc, r.scheduler_flags, r.mh_table_size));
        let session_affinity =
            self.session_affinity(path, r.session_affinity, r.session_affinity_timeout);
        let connect_timeout = self.duration(
            r.connect_timeout,
            format!("{path}.connect_timeout"),
            ServiceDefaults::CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration(
            r.idle_timeout,
            format!("{path}.idle_timeout"),
            Service::default_idle_timeout(protocol.unwrap_or_default()),
        );
        let max_flows = self.max_flows(path, r.max_flows);
        let max_connect_attempts = self.max_connect_attempts(path, r.max_connect_attempts);
        let tcp_only = protocol.unwrap_or_default() == Protocol::Tcp;
        let proxy_protocol = self.proxy_protocol(path, r.proxy_protocol, tcp_only);
        let accept_proxy_protocol =
            self.accept_proxy_protocol(path, r.accept_proxy_protocol, tcp_only);
        let health = self.health(
            path,
            super::health::RawHealth {
                check: r.health_check,
                interval: r.health_interval,
                down_interval: r.health_down_interval,
                timeout: r.health_timeout,
                rise: r.rise,
                fall: r.fall,
                send: r.health_send,
                expect: r.health_expect,
                status: r.health_status,
                on_marked_down: r.on_marked_down,
            },
        );
        let outliers = self.outliers(
            path,
            super::health::RawOutliers {
                after: r.eject_after,
                time: r.eject_time,
                max_percent: r.max_eject_percent,
            },
            tcp_only,
        );
        let slow_start = self.slow_start(path, r.slow_start, scheduler.map(|s| s.kind));
        let (backends, targets) = backends?;
        Some(Service {
            name: name?,
            protocol: protocol?,
            listen: listen?,
            backends,
            targets,
            scheduler: scheduler?,
            connect_timeout: connect_timeout?,
            idle_timeout: idle_timeout?,
            max_connect_attempts: max_connect_attempts?,
            session_affinity: session_affinity?,
            max_flows: max_flows?,
            preserve_client_ip: false,
            transparent_from: Vec::new(),
            proxy_protocol: proxy_protocol?,
            accept_proxy_protocol: accept_proxy_protocol?,
            health: health?,
            outliers: outliers?,
            slow_start: slow_start?,
        })
        .and_then(|svc| self.schedulable(path, scheduler_at, svc))
    }

    /// A required field `field` of the object at `at` is missing.
    fn missing(&mut self, at: serde_saphyr::Location, path: &str, field: &str) {
        self.problems.push(Problem {
            line: Some(at.line()),
            column: Some(at.column()),
            path: format!("{path}.{field}"),
            reason: "required field is missing".into(),
        });
    }

    /// `name`: required, 1 to 63 letters, digits, `-`, `_` or `.`.
    fn name(
        &mut self,
        path: &str,
        at: serde_saphyr::Location,
        raw: Option<Spanned<String>>,
    ) -> Option<String> {
        match raw {
            Some(n) if valid_name(&n.value) => Some(n.value),
            Some(n) => {
                self.at(
                    &n,
                    format!("{path}.name"),
                    format!(
                        "invalid name {:?}: use 1 to 63 letters, digits, '-', '_' or '.'",
                        n.value
                    ),
                );
                None
            }
            None => {
                self.missing(at, path, "name");
                None
            }
        }
    }

    /// `protocol`: tcp (the default) or udp.
    fn protocol(&mut self, path: &str, raw: Option<Spanned<String>>) -> Option<Protocol> {
        let Some(p) = raw else {
            return Some(Protocol::Tcp);
        };
        match p.value.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => {
                self.at(
                    &p,
                    format!("{path}.protocol"),
                    "SCTP is not supported (tcp or udp)",
                );
                None
            }
            other => {
                self.at(
                    &p,
                    format!("{path}.protocol"),
                    format!("unknown protocol {other:?} (tcp or udp)"),
                );
                None
            }
        }
    }

    /// `listen`: required, at least one `IP:port`.
    fn listen(
        &mut self,
        path: &str,
        at: serde_saphyr::Location,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Option<Vec<std::net::SocketAddr>> {
        let Some(l) = raw else {
            self.missing(at, path, "listen");
            return None;
        };
        if l.value.is_empty() {
            self.at(
                &l,
                format!("{path}.listen"),
                "list at least one address to listen on",
            );
        }
        let addrs: Vec<_> = l
            .value
            .iter()
            .enumerate()
            .filter_map(|(j, a)| self.socket_addr(a, format!("{path}.listen[{j}]")))
            .collect();
        (addrs.len() == l.value.len() && !addrs.is_empty()).then_some(addrs)
    }

    /// `backends`: required, at least one; split into addresses and names to resolve.
    fn backends(
        &mut self,
        path: &str,
        at: serde_saphyr::Location,
        raw: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    ) -> Option<(Vec<Backend>, Vec<Target>)> {
        let Some(b) = raw else {
            self.missing(at, path, "backends");
            return None;
        };
        if b.value.is_empty() {
            self.at(&b, format!("{path}.backends"), "list at least one backend");
        }
        let n = b.value.len();
        let list: Vec<_> = b
            .value
            .into_iter()
            .enumerate()
            .filter_map(|(j, be)| self.backend(&format!("{path}.backends[{j}]"), be))
            .collect();
        (list.len() == n && n > 0).then(|| Target::split(list))
    }

    /// `scheduler`: one of the IPVS schedulers, rr by default.
    fn scheduler(&mut self, path: &str, raw: Option<Spanned<String>>) -> Option<SchedulerConfig> {
        let Some(s) = raw else {
            return Some(SchedulerConfig::default());
        };
        match s.value.parse::<SchedulerKind>() {
            Ok(kind) => Some(SchedulerConfig::new(kind)),
            Err(e) => {
                self.at(&s, format!("{path}.scheduler"), e.to_string());
                None
            }
        }
    }

    /// `max_flows`: 1 to `u32::MAX`.
    fn max_flows(&mut self, path: &str, raw: Option<Spanned<i64>>) -> Option<u32> {
        let Some(n) = raw else {
            return Some(ServiceDefaults::MAX_FLOWS);
        };
        match u32::try_from(n.value) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.at(
                    &n,
                    format!("{path}.max_flows"),
                    format!("must be between 1 and {}, got {}", u32::MAX, n.value),
                );
                None
            }
        }
    }

    /// `max_connect_attempts`: 1 to [`MAX_ATTEMPTS`].
    fn max_connect_attempts(
        &mut self,
        path: &str,
        raw: Option<Spanned<i64>>,
    ) -> Option<NonZeroU32> {
        let Some(n) = raw else {
            return Some(ServiceDefaults::MAX_CONNECT_ATTEMPTS);
        };
        match u32::try_from(n.value).ok().and_then(NonZeroU32::new) {
            Some(v) if i64::from(v.get()) <= MAX_ATTEMPTS => Some(v),
            _ => {
                self.at(
                    &n,
                    format!("{path}.max_connect_attempts"),
                    format!("must be between 1 and {MAX_ATTEMPTS}, got {}", n.value),
                );
                None
            }
        }
    }

    fn backend(&mut self, path: &str, raw: Spanned<RawBackend>) -> Option<Target> {
        let at = raw.referenced;
        let r = raw.value;
        let address = match r.address {
            Some(a) => match BackendAddress::parse(&a.value) {
                Ok(address) => Some(address),
                Err(reason) => {
                    self.at(&a, format!("{path}.address"), reason);
                    None
                }
            },
            None => {
                self.problems.push(Problem {
                    line: Some(at.line()),
                    column: Some(at.column()),
                    path: format!("{path}.address"),
                    reason: "required field is missing".into(),
                });
                None
            }
        };
        let weight = match r.weight {
            None => Some(ServiceDefaults::WEIGHT),
            Some(w) if (0..=MAX_WEIGHT).contains(&w.value) => u32::try_from(w.value).ok(),
            Some(w) => {
                self.at(
                    &w,
                    format!("{path}.weight"),
                    format!("must be between 0 and {MAX_WEIGHT}, got {}", w.value),
                );
                None
            }
        };
        let max_connections = match r.max_connections {
            None => Some(None),
            Some(m) => match u32::try_from(m.value) {
                Ok(0) => Some(None),
                Ok(v) => Some(Some(v)),
                Err(_) => {
                    self.at(
                        &m,
                        format!("{path}.max_connections"),
                        format!(
                            "must be between 0 (no limit) and {}, got {}",
                            u32::MAX,
                            m.value
                        ),
                    );
                    None
                }
            },
        };
        Some(Target {
            address: address?,
            weight: weight?,
            max_connections: max_connections?,
        })
    }
}
