//! The ringlb YAML format: raw serde structs, then validation into [`crate::Config`].
//!
//! Scalars are kept as [`Spanned`] strings or numbers so that validation can point at the
//! line and column of every bad value and report all of them at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use balancers::{SchedulerConfig, SchedulerKind};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::error::{ConfigError, Problem};
use crate::model::{Backend, Config, Protocol, Service, ServiceDefaults};

/// Largest accepted backend weight.
const MAX_WEIGHT: i64 = 65_535;
/// Largest accepted `max_connect_attempts`.
const MAX_ATTEMPTS: i64 = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    scheduler: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connect_attempts: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
}

/// Reads and validates a ringlb YAML file.
pub fn parse_yaml_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_yaml(&path.display().to_string(), &text)
}

/// Validates ringlb YAML text; `source_name` (usually the file name) prefixes every error.
pub fn parse_yaml(source_name: &str, text: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    let raw: RawConfig = match serde_saphyr::from_str(text) {
        Ok(Some(raw)) => raw,
        Ok(None) => return Err(invalid(vec![root_problem("the file is empty")])),
        Err(e) => return Err(invalid(vec![syntax_problem(&e)])),
    };
    let mut v = Validator::default();
    let config = v.config(raw);
    // Report in document order (validation visits some fields out of order).
    v.problems
        .sort_by_key(|p| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
    match config {
        Some(config) if v.problems.is_empty() => Ok(config),
        _ => Err(invalid(v.problems)),
    }
}

fn root_problem(reason: &str) -> Problem {
    Problem {
        line: None,
        column: None,
        path: String::new(),
        reason: reason.to_owned(),
    }
}

fn syntax_problem(e: &serde_saphyr::Error) -> Problem {
    let loc = e.location();
    // The rendered message repeats the location; keep only its first line of text.
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("invalid YAML").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop serde-saphyr's own "line L column C: " prefix: the location is printed in front.
    let reason = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, rest)) => rest,
        None => first,
    }
    .to_owned();
    Problem {
        line: loc.map(|l| l.line()),
        column: loc.map(|l| l.column()),
        path: String::new(),
        reason,
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn at<T>(&mut self, s: &Spanned<T>, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            line: Some(s.referenced.line()),
            column: Some(s.referenced.column()),
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let Some(services) = raw.services else {
            self.problems.push(Problem {
                path: "services".into(),
                ..root_problem("required: list at least one service")
            });
            return None;
        };
        if services.value.is_empty() {
            self.at(&services, "services", "list at least one service");
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listens: HashMap<(Protocol, SocketAddr), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, s) in services.value.into_iter().enumerate() {
            let path = format!("services[{i}]");
            if let Some(name) = &s.value.name {
                if let Some(first) = names.insert(name.value.clone(), i) {
                    self.at(
                        name,
                        format!("{path}.name"),
                        format!(
                            "duplicate service name {:?} (also services[{first}])",
                            name.value
                        ),
                    );
                }
            }
            let protocol = match s
                .value
                .protocol
                .as_ref()
                .map(|p| p.value.to_ascii_lowercase())
            {
                Some(p) if p == "udp" => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            for (j, l) in s
                .value
                .listen
                .iter()
                .flat_map(|l| l.value.iter())
                .enumerate()
            {
                // Port 0 asks the kernel for a free port: two of those never collide.
                let Ok(addr) = l.value.trim().parse::<SocketAddr>() else {
                    continue;
                };
                if addr.port() == 0 {
                    continue;
                }
                if let Some(first) = listens.insert((protocol, addr), i) {
                    self.at(
                        l,
                        format!("{path}.listen[{j}]"),
                        format!("{protocol} {addr} is already a frontend of services[{first}]"),
                    );
                }
            }
            let Some(svc) = self.service(&path, s) else {
                continue;
            };
            out.push(svc);
        }
        Some(Config { services: out })
    }

    fn service(&mut self, path: &str, raw: Spanned<RawService>) -> Option<Service> {
        let at = raw.referenced;
        let r = raw.value;
        let missing = |field: &str| Problem {
            line: Some(at.line()),
            column: Some(at.column()),
            path: format!("{path}.{field}"),
            reason: "required field is missing".into(),
        };
        let name = match r.name {
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
                self.problems.push(missing("name"));
                None
            }
        };
        let protocol = match r.protocol {
            None => Some(Protocol::Tcp),
            Some(p) => match p.value.to_ascii_lowercase().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => {
                    self.at(
                        &p,
                        format!("{path}.protocol"),
                        "udp services are not supported by this version yet (tcp only)",
                    );
                    None
                }
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
            },
        };
        let listen = match r.listen {
            None => {
                self.problems.push(missing("listen"));
                None
            }
            Some(l) => {
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
        };
        let backends = match r.backends {
            None => {
                self.problems.push(missing("backends"));
                None
            }
            Some(b) => {
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
                (list.len() == n && n > 0).then_some(list)
            }
        };
        let scheduler = match r.scheduler {
            None => Some(SchedulerConfig::default()),
            Some(s) => match s.value.parse::<SchedulerKind>() {
                Ok(kind) => Some(SchedulerConfig::new(kind)),
                Err(e) => {
                    self.at(&s, format!("{path}.scheduler"), e.to_string());
                    None
                }
            },
        };
        let connect_timeout = self.duration(
            r.connect_timeout,
            format!("{path}.connect_timeout"),
            ServiceDefaults::CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration(
            r.idle_timeout,
            format!("{path}.idle_timeout"),
            ServiceDefaults::IDLE_TIMEOUT,
        );
        let max_connect_attempts = match r.max_connect_attempts {
            None => Some(ServiceDefaults::MAX_CONNECT_ATTEMPTS),
            Some(n) => match u32::try_from(n.value).ok().and_then(NonZeroU32::new) {
                Some(v) if i64::from(v.get()) <= MAX_ATTEMPTS => Some(v),
                _ => {
                    self.at(
                        &n,
                        format!("{path}.max_connect_attempts"),
                        format!("must be between 1 and {MAX_ATTEMPTS}, got {}", n.value),
                    );
                    None
                }
            },
        };
        Some(Service {
            name: name?,
            protocol: protocol?,
            listen: listen?,
            backends: backends?,
            scheduler: scheduler?,
            connect_timeout: connect_timeout?,
            idle_timeout: idle_timeout?,
            max_connect_attempts: max_connect_attempts?,
        })
    }

    fn backend(&mut self, path: &str, raw: Spanned<RawBackend>) -> Option<Backend> {
        let at = raw.referenced;
        let r = raw.value;
        let address = match r.address {
            Some(a) => self.socket_addr(&a, format!("{path}.address")),
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
        Some(Backend {
            address: address?,
            weight: weight?,
        })
    }

    fn socket_addr(&mut self, s: &Spanned<String>, path: String) -> Option<SocketAddr> {
        match s.value.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at(
                    s,
                    path,
                    format!("{:?} is not an IP:port address (IPv6 as [::1]:80)", s.value),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        raw: Option<Spanned<String>>,
        path: String,
        default: Duration,
    ) -> Option<Duration> {
        let Some(s) = raw else { return Some(default) };
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.at(&s, path, "must be greater than zero");
                None
            }
            Err(e) => {
                self.at(
                    &s,
                    path,
                    format!(
                        "{:?} is not a duration such as 500ms, 5s or 1h: {e}",
                        s.value
                    ),
                );
                None
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
