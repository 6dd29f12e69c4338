//! `ringlb check`: a config file validated and described, or every problem in it.

use std::path::Path;
use std::process::ExitCode;

use config::{Backend, BackendAddress, Config, Target};

/// `ringlb check`: exit 0 and a summary when valid, exit 1 and every problem when not.
pub fn check(path: &Path, node_addresses: &[std::net::IpAddr]) -> ExitCode {
    match config::load(path, node_addresses) {
        Ok(loaded) => {
            print!("{}", describe(&loaded.config));
            let names = loaded.config.host_names().len();
            if names > 0 {
                let d = &loaded.dns;
                let servers = if d.nameservers.is_empty() {
                    "the system's (/etc/resolv.conf)".to_owned()
                } else {
                    let list: Vec<String> = d.nameservers.iter().map(ToString::to_string).collect();
                    list.join(", ")
                };
                println!(
                    "dns: {names} name{} resolved at run time by {servers}, TTL clamped to {}..{}, \
                     timeout {}",
                    if names == 1 { "" } else { "s" },
                    humantime::format_duration(d.min_ttl),
                    humantime::format_duration(d.max_ttl),
                    humantime::format_duration(d.timeout)
                );
            }
            for np in &loaded.not_proxied {
                println!("not proxied {}: {}", np.name, np.reason);
            }
            let format = match loaded.format {
                config::Format::Ringlb => "ringlb YAML",
                config::Format::Kubernetes => "Kubernetes manifests",
            };
            println!(
                "{}: OK ({format}, {} services)",
                path.display(),
                loaded.config.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.problems().len().max(1);
            eprintln!(
                "{}: invalid ({n} problem{})",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

/// The health checks, outlier detection and PROXY protocol of `svc`, a line each.
fn describe_guards(s: &mut String, svc: &config::Service) {
    use std::fmt::Write as _;
    if let Some(h) = &svc.health {
        let _ = writeln!(
            s,
            "  health check {} every {} ({} while down), timeout {}, rise {}, fall {}",
            h.probe,
            humantime::format_duration(h.interval),
            humantime::format_duration(h.down_interval),
            humantime::format_duration(h.timeout),
            h.rise,
            h.fall
        );
        if h.shutdown_sessions {
            let _ = writeln!(s, "  a backend marked down has its sessions shut at once");
        }
    }
    if let Some(o) = svc.outliers {
        let _ = writeln!(
            s,
            "  outliers ejected after {} failures in a row for {} (more each time), at most {}% at once",
            o.after,
            humantime::format_duration(o.time),
            o.max_percent
        );
    }
    if let Some(time) = svc.slow_start {
        let _ = writeln!(
            s,
            "  slow start: a backend that comes back ramps to its weight over {}",
            humantime::format_duration(time)
        );
    }
    if let Some(version) = svc.proxy_protocol {
        let _ = writeln!(s, "  PROXY protocol {} to backends", version.name());
    }
    if !svc.accept_proxy_protocol.is_empty() {
        let ranges: Vec<String> = svc
            .accept_proxy_protocol
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(s, "  PROXY protocol read from {}", ranges.join(", "));
    }
}

/// What a config would serve, for humans.
fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for svc in &config.services {
        let sc = &svc.scheduler;
        let flags: Vec<&str> = sc.flag_names().collect();
        let _ = write!(
            s,
            "service {} ({}): scheduler {}",
            svc.name, svc.protocol, sc.kind
        );
        if !flags.is_empty() {
            let _ = write!(s, " [{}]", flags.join(","));
        }
        if let Some(t) = svc.session_affinity {
            let _ = write!(s, ", client_ip affinity {}", humantime::format_duration(t));
        }
        let _ = writeln!(
            s,
            ", connect_timeout {}, idle_timeout {}, max_connect_attempts {}",
            humantime::format_duration(svc.connect_timeout),
            humantime::format_duration(svc.idle_timeout),
            svc.max_connect_attempts
        );
        describe_guards(&mut s, svc);
        for l in &svc.listen {
            let _ = writeln!(s, "  listen  {l}");
        }
        // The list as written: what a DNS name resolves to is only known at run time.
        let written: Vec<Target> = if svc.targets.is_empty() {
            let ip = |b: &Backend| Target {
                address: BackendAddress::Ip(b.address),
                weight: b.weight,
                max_connections: b.max_connections,
            };
            svc.backends.iter().map(ip).collect()
        } else {
            svc.targets.clone()
        };
        for t in &written {
            let _ = write!(s, "  backend {} weight {}", t.address, t.weight);
            if let Some(m) = t.max_connections {
                let _ = write!(s, " max_connections {m}");
            }
            if matches!(t.address, BackendAddress::Name(..)) {
                let _ = write!(s, " (DNS name: one backend per A/AAAA address)");
            }
            let _ = writeln!(s);
        }
    }
    s
}
