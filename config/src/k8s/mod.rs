//! Kubernetes manifests as a configuration source: `v1 Service`, `v1 Endpoints` and
//! `discovery.k8s.io/v1 EndpointSlice` (also inside a `v1 List`), parsed, checked and
//! resolved into the ringlb model for standalone mode.
//!
//! Two steps, as for ringlb YAML:
//!
//! 1. [`parse_manifests`] reads multi-document YAML into checked [`Object`]s. Fields ringlb
//!    does not use are ignored (real manifests carry many); fields it uses are type-checked,
//!    and every problem of the text is reported at once with line, column and field path
//!    (`Service default/web: spec.ports[1].protocol`). Other kinds are problems, not silently
//!    skipped.
//! 2. [`resolve`] turns the objects into a [`Config`] the way kube-proxy reads a cluster:
//!
//!    - One ringlb service per (Service, service port), named by [`service_port_name`]:
//!      `namespace.name.portname`, or `namespace.name.port` for an unnamed port. Namespaces,
//!      Service names and port names are DNS labels, so the name is unambiguous and uses only
//!      ringlb name characters (`[a-z0-9.-]`); it can be longer than the 63 characters a
//!      hand-written ringlb name may have (up to 191).
//!    - Endpoint ports match service ports by name and protocol; each backend takes the port
//!      of its own slice or subset, so a named `targetPort` can resolve to different ports on
//!      different endpoints. Endpoint ports without a number are ignored.
//!    - Backends are the ready endpoints; if none is ready, the serving and terminating ones.
//!      `notReadyAddresses` of Endpoints are never backends. A Service with EndpointSlices
//!      ignores its Endpoints. Only `addresses[0]` of a slice endpoint is used.
//!    - Listen addresses: every cluster IP (`clusterIPs`, else `clusterIP`), every external
//!      IP and every `status.loadBalancer.ingress[].ip` (except `ipMode: Proxy`) at `port`;
//!      for NodePort and LoadBalancer services also `nodePort` on every
//!      [`StandaloneOptions::node_addresses`].
//!    - Headless and ExternalName Services, Services handed to another proxy by
//!      `service.kubernetes.io/service-proxy-name`, and ports with no listen address or no
//!      usable endpoint are accepted but not proxied: they are listed in
//!      [`Resolved::not_proxied`] (kube-proxy leaves the first ones to DNS).
//!    - The scheduler comes from the annotation `ringlb.io/scheduler` (an IPVS name) and
//!      `ringlb.io/scheduler-flags` (comma-separated `sh-fallback`, `sh-port`, `mh-fallback`,
//!      `mh-port`); `sessionAffinity: ClientIP` becomes the model's session affinity with
//!      `timeoutSeconds` (default 10800, at most 86400). Other model fields take the defaults
//!      of [`crate::ServiceDefaults`]; every backend has weight 1.
//!
//! Kept in the [`Object`] types (and [`ResolvedPort`]) for node mode but ignored in standalone
//! mode: `externalTrafficPolicy` and `internalTrafficPolicy` (every policy acts as `Cluster`),
//! `healthCheckNodePort`, endpoint `nodeName` and `zone`, the `terminating` state (beyond
//! choosing the fallback set), `spec.selector` (only whether it is set), load balancer
//! `hostname`s, and the address family of frontends (a dual-stack service sends IPv4 and
//! IPv6 clients to all its backends). `spec.loadBalancerSourceRanges` is refused rather than
//! ignored, since ignoring it would open the service to every client (node mode enforces it
//! through nftables). SCTP service ports
//! are refused. UDP service ports resolve to [`crate::Protocol::Udp`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ConfigError, Problem};
use crate::Config;

mod annotations;
mod collect;
mod endpoints;
mod parse;
mod policy;
mod resolve;
mod resolved;
mod rules;
mod select;
mod service;
mod types;
mod yaml;

pub use annotations::{
    guards_of_annotations, scheduler_of_annotations, EJECT_AFTER_ANNOTATION,
    HEALTH_CHECK_ANNOTATION, HEALTH_INTERVAL_ANNOTATION, SCHEDULER_ANNOTATION,
    SCHEDULER_FLAGS_ANNOTATION,
};
pub use collect::{assemble, resolve_node, resolve_node_service};
pub use endpoints::SERVICE_NAME_LABEL;
pub use policy::{NodeOptions, StandaloneOptions};
pub use resolved::{
    service_port_name, Firewall, Frontends, NodeService, NotProxied, NotProxiedReason, Resolved,
    ResolvedEndpoint, ResolvedPort, SERVICE_PROXY_NAME_LABEL,
};
pub use types::{
    AddressType, EndpointAddress, EndpointConditions, EndpointPort, EndpointSlice, EndpointSubset,
    Endpoints, IpMode, LoadBalancerIngress, Loc, Object, ObjectMeta, Origin, PortProtocol, Service,
    ServicePort, ServiceType, SliceEndpoint, TargetPort, TrafficPolicy,
};

/// Reads multi-document YAML text of Kubernetes objects; `source_name` (usually the file
/// name) prefixes every problem and is kept in each object's [`Origin`].
pub fn parse_manifests(source_name: &str, text: &str) -> Result<Vec<Object>, ConfigError> {
    let source: Arc<str> = Arc::from(source_name);
    let (objects, problems) = parse::parse(&source, text);
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        })
    }
}

/// Resolves checked objects into the model for standalone mode (see the module docs).
///
/// Problems found here (a frontend used twice, endpoints of a missing Service, a scheduler
/// that cannot serve its endpoints, duplicate objects) point at the objects' sources.
pub fn resolve(objects: &[Object], options: &StandaloneOptions) -> Result<Resolved, ConfigError> {
    collect::resolve(objects, options).map_err(|p| merge("Kubernetes manifests", p))
}

/// Reads one manifest file, or every `*.yaml` / `*.yml` file of a directory (in name order,
/// not recursively), and resolves all their objects together.
pub fn load_dir_or_file(path: &Path, options: &StandaloneOptions) -> Result<Resolved, ConfigError> {
    let files = manifest_files(path)?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let source: Arc<str> = Arc::from(file.display().to_string());
        let (mut objs, probs) = parse::parse(&source, &text);
        objects.append(&mut objs);
        problems.extend(probs.into_iter().map(|p| (Arc::clone(&source), p)));
    }
    if !problems.is_empty() {
        return Err(merge(&path.display().to_string(), problems));
    }
    collect::resolve(&objects, options).map_err(|p| merge(&path.display().to_string(), p))
}

/// `path` itself, or the sorted `*.yaml` / `*.yml` files of the directory `path`.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        file: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_err)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let p = entry.map_err(read_err)?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::Invalid {
            source_name: path.display().to_string(),
            problems: vec![Problem {
                line: None,
                column: None,
                path: String::new(),
                reason: "no *.yaml or *.yml files in this directory".into(),
            }],
        });
    }
    Ok(files)
}

/// One error from problems of one or several sources. From one source, the problems keep
/// their line and column; from several, `fallback` names the error and each problem's path
/// starts with `file:line:column` (a [`Problem`] has no file of its own).
fn merge(fallback: &str, mut problems: Vec<(Arc<str>, Problem)>) -> ConfigError {
    let single = problems
        .first()
        .filter(|(first, _)| problems.iter().all(|(s, _)| s == first))
        .map(|(s, _)| s.to_string());
    if let Some(source_name) = single {
        problems.sort_by_key(|(_, p)| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
        return ConfigError::Invalid {
            source_name,
            problems: problems.into_iter().map(|(_, p)| p).collect(),
        };
    }
    // Stable: keeps document order within a source.
    problems.sort_by(|(a, _), (b, _)| a.cmp(b));
    let problems = problems
        .into_iter()
        .map(|(source, p)| {
            let at = match (p.line, p.column) {
                (Some(l), Some(c)) => format!("{source}:{l}:{c}"),
                _ => source.to_string(),
            };
            Problem {
                line: None,
                column: None,
                path: if p.path.is_empty() {
                    at
                } else {
                    format!("{at}: {}", p.path)
                },
                reason: p.reason,
            }
        })
        .collect();
    ConfigError::Invalid {
        source_name: fallback.to_owned(),
        problems,
    }
}

/// The model alone, for callers that do not report what is not proxied.
impl From<Resolved> for Config {
    fn from(r: Resolved) -> Self {
        r.config
    }
}
