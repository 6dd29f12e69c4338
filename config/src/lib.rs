//! The ringlb configuration: model, parsing, validation and the endpoint [`Table`].
//!
//! Text (a ringlb YAML file, or CLI flags) goes through two layers: raw serde structs that
//! accept anything shaped right, then validation into checked types ([`Config`], [`Service`],
//! [`Backend`]) that collects *every* problem with its file, line, column and field path.
//! Only checked types leave this crate. [`Table`] is the immutable snapshot the data plane
//! reads; it is built here, off the hot path, and carries node-wide state (backend connection
//! counts, the UDP flow gauge, each service's identity) across rebuilds.
//!
//! Backends may be DNS names ([`BackendAddress::Name`]): with the `dns` feature, `DnsWatch`
//! resolves them on their TTL as tasks on the caller's tokio runtime, and [`Config::expand`]
//! turns the answers into IP backends.
//!
//! [`k8s`] reads Kubernetes manifests and resolves Kubernetes Services, for standalone mode
//! and for node mode (whose API watch is the `ringlb-node` crate's).
//!
//! This crate never opens a data-plane socket and starts no thread or runtime: the DNS watch
//! (`dns` feature) and the file watch (`watch` feature) run as tasks on the caller's tokio
//! runtime (ringlb's control runtime); the data plane never sees them.
#![forbid(unsafe_code)]

mod duration;
mod error;
mod expand;
pub mod k8s;
mod model;
mod names;
mod raw;
#[cfg(feature = "dns")]
mod resolver;
mod source;
mod table;
#[cfg(feature = "watch")]
mod watch;

pub use duration::{
    parse_duration, parse_duration_at_most, parse_positive_duration, DurationError, MAX_DURATION,
};
pub use error::{ConfigError, Problem};
pub use model::{
    Admin, Backend, Config, HealthCheck, Outliers, Probe, Protocol, ProxyProtocol, Service,
    ServiceDefaults,
};
pub use names::{Answers, BackendAddress, DnsConfig, HostName, HostNameError, Target};
pub use raw::{parse_admin, parse_range, parse_yaml, parse_yaml_file};
#[cfg(feature = "dns")]
pub use resolver::{DnsError, DnsWatch};
pub use source::{load, Format, Loaded};
pub use table::{BackendEntry, FrontendKey, ServiceEntry, ServiceState, Table};
#[cfg(feature = "watch")]
pub use watch::{FileWatch, WatchError};
