//! DNS-named backends, the pure part: host name syntax, the `dns:` settings, TTL clamping,
//! retry backoff, and the backends as configured ([`Target`]); `expand.rs` turns them into one
//! [`crate::Backend`] per address.
//!
//! Resolution itself (hickory-resolver, tasks on the control runtime) is in `resolver.rs`, behind the
//! `dns` feature; everything here is synchronous and tested without a network.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A host name as RFC 1123 allows it: dot-separated labels of 1 to 63 letters, digits and
/// hyphens (no hyphen first or last), at most 253 characters, and a last label that is not all
/// digits (so a mistyped IPv4 address is not taken for a name). Stored in lower case (DNS
/// names are case-insensitive); a trailing dot (fully qualified, no search domains) is kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(Box<str>);

/// Why a text is not a [`HostName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    /// Nothing before the port.
    #[error("the host name is empty")]
    Empty,
    /// More than 253 characters.
    #[error("the host name has {0} characters, more than 253")]
    TooLong(usize),
    /// Two dots in a row, or a leading dot.
    #[error("empty label (two dots in a row or a leading dot)")]
    EmptyLabel,
    /// A label longer than 63 characters.
    #[error("label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    /// A character other than a letter, digit or hyphen.
    #[error("label {label:?} contains {found:?}: use letters, digits and '-'")]
    BadCharacter {
        /// The label.
        label: String,
        /// The first bad character.
        found: char,
    },
    /// A label starting or ending with a hyphen.
    #[error("label {0:?} starts or ends with '-'")]
    Hyphen(String),
    /// All-digit last label: neither an IPv4 address nor a host name.
    #[error("the last label {0:?} is all digits: neither an IP address nor a host name")]
    Numeric(String),
}

impl HostName {
    /// Checks `text` against RFC 1123 and returns it in lower case.
    pub fn parse(text: &str) -> Result<HostName, HostNameError> {
        let bare = text.strip_suffix('.').unwrap_or(text);
        if bare.is_empty() {
            return Err(HostNameError::Empty);
        }
        if bare.len() > 253 {
            return Err(HostNameError::TooLong(bare.len()));
        }
        for label in bare.split('.') {
            if label.is_empty() {
                return Err(HostNameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(HostNameError::LabelTooLong(label.to_owned()));
            }
            if let Some(found) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(HostNameError::BadCharacter {
                    label: label.to_owned(),
                    found,
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(HostNameError::Hyphen(label.to_owned()));
            }
        }
        let last = bare.rsplit('.').next().unwrap_or(bare);
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HostNameError::Numeric(last.to_owned()));
        }
        Ok(HostName(text.to_ascii_lowercase().into_boxed_str()))
    }

    /// The name as text (lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a configured backend is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    /// A fixed IP socket address.
    Ip(SocketAddr),
    /// A DNS name and a port: one backend per address the name resolves to (A and AAAA).
    Name(HostName, u16),
}

impl BackendAddress {
    /// Parses `IP:port` (IPv6 as `[::1]:80`) or `host name:port`; the error is a reason for a
    /// human.
    pub fn parse(text: &str) -> Result<BackendAddress, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BackendAddress::Ip(addr));
        }
        let not_an_address =
            || format!("{text:?} is not an IP:port address or host name:port (IPv6 as [::1]:80)");
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(not_an_address());
        };
        if host.contains([':', '[', ']']) {
            return Err(not_an_address());
        }
        let host =
            HostName::parse(host).map_err(|e| format!("{text:?}: invalid host name: {e}"))?;
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(BackendAddress::Name(host, port)),
            _ => Err(format!(
                "{text:?}: the port must be a number from 1 to 65535"
            )),
        }
    }
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(addr) => addr.fmt(f),
            BackendAddress::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// A backend as configured: an IP address or a name, with the weight and limit that every
/// address of the name gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where.
    pub address: BackendAddress,
    /// Relative weight of each backend this target yields.
    pub weight: u32,
    /// Connection limit of each backend this target yields (`None`: unlimited).
    pub max_connections: Option<u32>,
}

/// The latest addresses of each name (in any order: [`crate::Service::expand`] sorts them).
pub type Answers = HashMap<HostName, Vec<IpAddr>>;

/// The top-level `dns:` settings of a ringlb YAML file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask, over UDP and TCP; empty: the system configuration
    /// (`/etc/resolv.conf`, and `/etc/hosts` first).
    pub nameservers: Vec<SocketAddr>,
    /// Answers are kept at least this long before the name is asked again.
    pub min_ttl: Duration,
    /// Answers are kept at most this long, whatever their TTL.
    pub max_ttl: Duration,
    /// Deadline of one query to one name server.
    pub timeout: Duration,
}

impl DnsConfig {
    /// Default and lowest `min_ttl`: a record with TTL 0 is not asked for in a loop.
    pub const MIN_TTL: Duration = Duration::from_secs(1);
    /// Default `max_ttl`: a name is asked again at least every five minutes.
    pub const MAX_TTL: Duration = Duration::from_secs(300);
    /// Default query deadline (HAProxy's resolvers retry after 1 s; glibc waits 5 s).
    pub const TIMEOUT: Duration = Duration::from_secs(2);
    /// Longest accepted query deadline.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
    /// First retry after a failed lookup.
    pub const RETRY_FIRST: Duration = Duration::from_secs(1);
    /// Longest wait between retries (also capped by `max_ttl`).
    pub const RETRY_MAX: Duration = Duration::from_secs(30);

    /// How long to keep an answer whose records say `ttl`.
    pub fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }

    /// How long to wait after the `failures`-th failed lookup in a row (1-based): 1 s, 2 s,
    /// 4 s, ... up to [`Self::RETRY_MAX`] or `max_ttl`, whichever is shorter.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        Self::RETRY_FIRST
            .saturating_mul(1 << doublings)
            .min(Self::RETRY_MAX)
            .min(self.max_ttl)
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Self::MIN_TTL,
            max_ttl: Self::MAX_TTL,
            timeout: Self::TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    #[test]
    fn host_names_follow_rfc_1123() {
        for ok in [
            "localhost",
            "backend.example.test",
            "Backend-1.Example.TEST.",
            "3com.com",
            "a.b-c.d1",
            &format!("{}.test", "a".repeat(63)),
        ] {
            assert!(HostName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(host("Web.Example.").as_str(), "web.example.");
        let bad: [(&str, HostNameError); 8] = [
            ("", HostNameError::Empty),
            (".", HostNameError::Empty),
            ("a..b", HostNameError::EmptyLabel),
            (".a", HostNameError::EmptyLabel),
            ("-a.test", HostNameError::Hyphen("-a".into())),
            (
                "my_backend",
                HostNameError::BadCharacter {
                    label: "my_backend".into(),
                    found: '_',
                },
            ),
            ("10.0.0.256", HostNameError::Numeric("256".into())),
            (
                &format!("{}.test", "a".repeat(64)),
                HostNameError::LabelTooLong("a".repeat(64)),
            ),
        ];
        for (text, want) in bad {
            assert_eq!(HostName::parse(text), Err(want), "{text:?}");
        }
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(HostName::parse(&long), Err(HostNameError::TooLong(259)));
    }

    #[test]
    fn backend_addresses_are_ip_or_name_with_port() {
        assert_eq!(
            BackendAddress::parse(" 10.0.0.1:80 "),
            Ok(BackendAddress::Ip("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            BackendAddress::parse("[fd00::1]:80"),
            Ok(BackendAddress::Ip("[fd00::1]:80".parse().unwrap()))
        );
        let named = BackendAddress::parse("DB.example.test:5432").unwrap();
        assert_eq!(named, BackendAddress::Name(host("db.example.test"), 5432));
        assert_eq!(named.to_string(), "db.example.test:5432");
        let err = |s: &str| BackendAddress::parse(s).unwrap_err();
        assert!(err("nowhere").contains("is not an IP:port address or host name:port"));
        assert!(err("10.0.0.2").contains("\"10.0.0.2\" is not an IP:port address"));
        assert!(err("fd00::1:80").contains("is not an IP:port address"));
        assert!(err("db.test:0").contains("port must be a number from 1 to 65535"));
        assert!(err("db.test:http").contains("port must be a number"));
        assert!(err("db_1:80").contains("invalid host name: label \"db_1\" contains '_'"));
        assert!(err("10.0.0.256:80").contains("all digits"));
    }

    #[test]
    fn ttls_are_clamped_and_retries_back_off() {
        let dns = DnsConfig::default();
        assert_eq!(dns.clamp_ttl(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            dns.clamp_ttl(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            dns.clamp_ttl(Duration::from_secs(86_400)),
            Duration::from_secs(300)
        );
        let delays: Vec<u64> = (1..=8).map(|n| dns.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(dns.retry_delay(u32::MAX), DnsConfig::RETRY_MAX);
        let short = DnsConfig {
            max_ttl: Duration::from_secs(5),
            ..DnsConfig::default()
        };
        assert_eq!(short.retry_delay(4), Duration::from_secs(5));
        assert_eq!(
            short.clamp_ttl(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
