//! Validation of a service's PROXY protocol keys: `proxy_protocol` (towards backends) and
//! `accept_proxy_protocol` (from a front load balancer), each with its located error.

use serde_saphyr::Spanned;

use super::Validator;
use crate::model::ProxyProtocol;

impl Validator {
    /// `proxy_protocol`: `v1` or `v2` (a UDP service: `v2` only, its header before every
    /// datagram); absent: none.
    pub(super) fn proxy_protocol(
        &mut self,
        path: &str,
        raw: Option<Spanned<String>>,
        tcp: bool,
    ) -> Option<Option<ProxyProtocol>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let field = format!("{path}.proxy_protocol");
        match ProxyProtocol::parse(&raw.value) {
            Some(ProxyProtocol::V1) if !tcp => {
                let why =
                    "a UDP service sends v2 (its header starts every datagram); v1 is for TCP";
                self.at(&raw, field, why);
                None
            }
            Some(version) => Some(Some(version)),
            None => {
                let why = format!("unknown PROXY protocol version {:?} (v1 or v2)", raw.value);
                self.at(&raw, field, why);
                None
            }
        }
    }

    /// `accept_proxy_protocol`: a non-empty list of address ranges (`10.0.0.0/8`, or an
    /// address for itself alone), TCP services only; absent: none.
    pub(super) fn accept_proxy_protocol(
        &mut self,
        path: &str,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        tcp: bool,
    ) -> Option<Vec<ipnet::IpNet>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let field = format!("{path}.accept_proxy_protocol");
        if !tcp {
            self.at(&raw, field, "the PROXY protocol is for TCP services only");
            return None;
        }
        if raw.value.is_empty() {
            let why = "list the address ranges of the load balancers that send the header";
            self.at(&raw, field, why);
            return None;
        }
        let mut ranges = Vec::with_capacity(raw.value.len());
        let mut ok = true;
        for (i, range) in raw.value.iter().enumerate() {
            match parse_range(&range.value) {
                Some(net) => ranges.push(net),
                None => {
                    let why = format!(
                        "{:?} is not an address range (e.g. 10.0.0.0/8, fd00::/8 or 192.0.2.7)",
                        range.value
                    );
                    self.at(range, format!("{field}[{i}]"), why);
                    ok = false;
                }
            }
        }
        ok.then_some(ranges)
    }
}

/// A range as `ADDR/LEN`, or one address (a /32 or /128); the host bits are cleared.
pub fn parse_range(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}
