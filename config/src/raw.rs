//! The ringlb YAML format: raw serde structs, then validation into [`crate::Config`].
//!
//! Scalars are kept as [`Spanned`] strings or numbers so that validation can point at the
//! line and column of every bad value and report all of them at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::duration::parse_positive_duration;
use crate::error::{ConfigError, Problem};
use crate::model::{Admin, Config, Protocol};
use crate::names::DnsConfig;

mod dns;
mod health;
mod proxy;

pub use proxy::parse_range;
mod scheduler;
mod service;

/// Largest accepted backend weight.
const MAX_WEIGHT: i64 = 65_535;
/// Largest accepted `max_connect_attempts`.
const MAX_ATTEMPTS: i64 = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    services: Option<Spanned<Vec<Spanned<RawService>>>>,
    dns: Option<Spanned<RawDns>>,
    /// `off` or the admin API's `IP:port`; read by [`parse_admin`], checked here.
    admin: Option<Spanned<String>>,
}

/// The top-level `dns:` key: how DNS-named backends are resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Option<Spanned<Vec<Spanned<String>>>>,
    min_ttl: Option<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
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
    scheduler_flags: Option<Spanned<Vec<Spanned<String>>>>,
    mh_table_size: Option<Spanned<i64>>,
    session_affinity: Option<Spanned<String>>,
    session_affinity_timeout: Option<Spanned<String>>,
    max_flows: Option<Spanned<i64>>,
    proxy_protocol: Option<Spanned<String>>,
    accept_proxy_protocol: Option<Spanned<Vec<Spanned<String>>>>,
    health_check: Option<Spanned<String>>,
    health_interval: Option<Spanned<String>>,
    health_down_interval: Option<Spanned<String>>,
    health_timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    health_send: Option<Spanned<String>>,
    health_expect: Option<Spanned<String>>,
    health_status: Option<Spanned<String>>,
    on_marked_down: Option<Spanned<String>>,
    eject_after: Option<Spanned<i64>>,
    eject_time: Option<Spanned<String>>,
    max_eject_percent: Option<Spanned<i64>>,
    slow_start: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
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
    parse_yaml_with_dns(source_name, text).map(|(config, _)| config)
}

/// As [`parse_yaml`], with the `dns:` settings (defaults when the key is absent).
pub(crate) fn parse_yaml_with_dns(
    source_name: &str,
    text: &str,
) -> Result<(Config, DnsConfig), ConfigError> {
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
    if let Some(admin) = &raw.admin {
        v.admin(admin);
    }
    let dns = v.dns(raw.dns);
    let config = v.config(raw.services);
    // Report in document order (validation visits some fields out of order).
    v.problems
        .sort_by_key(|p| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
    match (config, dns) {
        (Some(config), Some(dns)) if v.problems.is_empty() => Ok((config, dns)),
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

/// A YAML syntax or type error as a located [`Problem`].
pub(crate) fn syntax_problem(e: &serde_saphyr::Error) -> Problem {
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

    fn config(&mut self, services: Option<Spanned<Vec<Spanned<RawService>>>>) -> Option<Config> {
        let Some(services) = services else {
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

    /// A duration field: positive, and within [`crate::MAX_DURATION`] (see there why).
    fn duration(
        &mut self,
        raw: Option<Spanned<String>>,
        path: String,
        default: Duration,
    ) -> Option<Duration> {
        let Some(s) = raw else { return Some(default) };
        match parse_positive_duration(&s.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(&s, path, e.to_string());
                None
            }
        }
    }
}

/// The top-level `admin:` key alone; the rest of the document is skipped.
#[derive(Debug, Deserialize)]
struct RawAdminOnly {
    admin: Option<String>,
}

/// The `admin:` key of ringlb YAML text: `Ok(None)` when the key is absent. Only the key is
/// read: [`parse_yaml`] validates the whole text, this key included, with locations.
pub fn parse_admin(source_name: &str, text: &str) -> Result<Option<Admin>, ConfigError> {
    let invalid = |problem| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems: vec![problem],
    };
    let raw: Option<RawAdminOnly> =
        serde_saphyr::from_str(text).map_err(|e| invalid(syntax_problem(&e)))?;
    let Some(value) = raw.and_then(|r| r.admin) else {
        return Ok(None);
    };
    match Admin::parse(&value) {
        Some(admin) => Ok(Some(admin)),
        None => Err(invalid(Problem {
            path: "admin".into(),
            ..root_problem(&admin_reason(&value))
        })),
    }
}

fn admin_reason(value: &str) -> String {
    format!("{value:?} is neither off nor an IP:port address (IPv6 as [::1]:9901)")
}

impl Validator {
    /// The top-level `admin:` key: `off` or an `IP:port` address.
    fn admin(&mut self, raw: &Spanned<String>) {
        if Admin::parse(&raw.value).is_none() {
            self.at(raw, "admin", admin_reason(&raw.value));
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod admin_tests {
    use super::{parse_admin, parse_yaml};
    use crate::model::Admin;

    const SERVICES: &str = "services:\n  - {name: web, listen: [\"127.0.0.1:80\"], backends: [{address: \"127.0.0.1:81\"}]}\n";

    #[test]
    fn the_admin_key_is_read_alone_and_validated_with_the_rest() {
        assert_eq!(parse_admin("t.yaml", SERVICES).unwrap(), None);
        for (value, want) in [
            ("off", Admin::Off),
            (
                "\"[::1]:9901\"",
                Admin::Listen("[::1]:9901".parse().unwrap()),
            ),
        ] {
            let text = format!("admin: {value}\n{SERVICES}");
            assert!(parse_yaml("t.yaml", &text).is_ok(), "{text}");
            assert_eq!(parse_admin("t.yaml", &text).unwrap(), Some(want));
        }
        let text = format!("{SERVICES}admin: nope\n");
        let err = parse_yaml("t.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("t.yaml:3:8: admin: \"nope\" is neither off nor an IP:port"),
            "{err}"
        );
        assert!(parse_admin("t.yaml", &text).is_err());
    }
}
