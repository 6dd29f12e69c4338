//! Validation of the top-level `dns:` key: how DNS-named backends are resolved.

use std::net::SocketAddr;

use serde_saphyr::Spanned;

use super::{RawDns, Validator};
use crate::names::DnsConfig;

impl Validator {
    /// The `dns:` settings; defaults when absent.
    pub(super) fn dns(&mut self, raw: Option<Spanned<RawDns>>) -> Option<DnsConfig> {
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
}
