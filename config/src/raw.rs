//! The ringlb YAML format: raw serde structs, then validation into [`crate::Config`].
//!
//! Scalars are kept as [`Spanned`] strings or numbers so that validation can point at the
//! line and column of every bad value and report all of them at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use balancers::{BackendSpec, Scheduler, SchedulerConfig, SchedulerKind, MH_TABLE_SIZES};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::duration::parse_positive_duration;
use crate::error::{ConfigError, Problem};
use crate::model::{Admin, Backend, Config, Protocol, Service, ServiceDefaults};
use crate::names::{BackendAddress, DnsConfig, Target};

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
                (list.len() == n && n > 0).then(|| Target::split(list))
            }
        };
        let scheduler_at = r.scheduler.as_ref().map_or(at, |s| s.referenced);
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
        let scheduler = scheduler
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
        let max_flows = match r.max_flows {
            None => Some(ServiceDefaults::MAX_FLOWS),
            Some(n) => match u32::try_from(n.value) {
                Ok(v) if v > 0 => Some(v),
                _ => {
                    self.at(
                        &n,
                        format!("{path}.max_flows"),
                        format!("must be between 1 and {}, got {}", u32::MAX, n.value),
                    );
                    None
                }
            },
        };
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
        })
        .and_then(|svc| self.schedulable(path, scheduler_at, svc))
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

    /// `scheduler_flags` and `mh_table_size`, which only apply to the scheduler they name.
    fn scheduler_options(
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
    fn session_affinity(
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
    fn schedulable(
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

    /// The `dns:` settings; defaults when absent.
    fn dns(&mut self, raw: Option<Spanned<RawDns>>) -> Option<DnsConfig> {
        let Some(raw) = raw else {
            return Some(DnsConfig::default());
        };
        let r = raw.value;
        let mut nameservers = Vec::new();
        let mut ok = true;
        let listed = r.nameservers.iter().flat_map(|n| n.value.iter());
        for (j, ns) in listed.enumerate() {
            // A bare IP means the standard port 53, as in resolv.conf.
            let text = ns.value.trim();
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => nameservers.push(SocketAddr::new(ip, 53)),
                Err(_) => match self.socket_addr(ns, format!("dns.nameservers[{j}]")) {
                    Some(addr) => nameservers.push(addr),
                    None => ok = false,
                },
            }
        }
        if let Some(list) = r.nameservers.as_ref().filter(|l| l.value.is_empty()) {
            self.at(
                list,
                "dns.nameservers",
                "list at least one name server, or leave the key out to use /etc/resolv.conf",
            );
            ok = false;
        }
        let d = DnsConfig::default();
        let min_ttl = self.duration(r.min_ttl.clone(), "dns.min_ttl".into(), d.min_ttl);
        let max_ttl = self.duration(r.max_ttl.clone(), "dns.max_ttl".into(), d.max_ttl);
        let timeout = self.duration(r.timeout.clone(), "dns.timeout".into(), d.timeout);
        if let (Some(min), Some(t)) = (min_ttl, &r.min_ttl) {
            if min < DnsConfig::MIN_TTL {
                self.at(t, "dns.min_ttl", "must be at least 1s");
                ok = false;
            }
        }
        if let (Some(min), Some(max), Some(t)) = (min_ttl, max_ttl, &r.max_ttl) {
            if max < min {
                self.at(
                    t,
                    "dns.max_ttl",
                    format!(
                        "must not be below min_ttl ({})",
                        humantime::format_duration(min)
                    ),
                );
                ok = false;
            }
        }
        if let (Some(timeout), Some(t)) = (timeout, &r.timeout) {
            if timeout > DnsConfig::MAX_TIMEOUT {
                self.at(t, "dns.timeout", "must be at most 30s");
                ok = false;
            }
        }
        let config = DnsConfig {
            nameservers,
            min_ttl: min_ttl?,
            max_ttl: max_ttl?,
            timeout: timeout?,
        };
        ok.then_some(config)
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
