//! Sets of objects into one model, through the one resolver ([`super::resolve`]): standalone
//! mode's manifests, where every problem fails them, and node mode's Services, where nothing
//! fails and a frontend claimed twice stays with the first Service.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::Problem;
use crate::model::Protocol;

use super::endpoints::SERVICE_NAME_LABEL;
use super::policy::{NodeOptions, Policy, StandaloneOptions};
use super::resolve::{resolve_service, Part};
use super::resolved::{NodeService, Resolved};
use super::select::Source;
use super::types::{EndpointSlice, Endpoints, Object, Service};
use super::yaml::Loc;
use super::SCHEDULER_ANNOTATION;

type Key<'a> = (&'a str, &'a str);

/// Which ringlb service each frontend belongs to: the first that claimed it.
#[derive(Default)]
struct Claims(HashMap<(Protocol, SocketAddr), String>);

impl Claims {
    /// Claims `addr` for `name`; `Err` names the service that claimed it first.
    fn claim(&mut self, protocol: Protocol, addr: SocketAddr, name: &str) -> Result<(), String> {
        match self.0.entry((protocol, addr)) {
            Entry::Occupied(first) => Err(first.get().clone()),
            Entry::Vacant(free) => {
                free.insert(name.to_owned());
                Ok(())
            }
        }
    }
}

/// Problems of resolution, each with the source of its object.
#[derive(Default)]
struct Problems(Vec<(Arc<str>, Problem)>);

impl Problems {
    fn at(&mut self, object: &Object, loc: Loc, field: &str, reason: String) {
        let meta = object.meta();
        let label = format!("{} {}", object.kind(), meta.key());
        self.0.push((
            Arc::clone(&meta.origin.source),
            Problem {
                line: Some(loc.line),
                column: Some(loc.column),
                path: if field.is_empty() {
                    label
                } else {
                    format!("{label}: {field}")
                },
                reason,
            },
        ));
    }
}

/// The manifests' objects by what they are: each Service with its object, and the endpoints
/// objects by the Service they belong to.
#[derive(Default)]
struct Index<'a> {
    services: Vec<(&'a Object, &'a Service)>,
    by_key: HashMap<Key<'a>, &'a Object>,
    endpoints: HashMap<Key<'a>, &'a Endpoints>,
    slices: HashMap<Key<'a>, Vec<&'a EndpointSlice>>,
}

impl<'a> Index<'a> {
    /// Indexes `objects`; a duplicate object (same kind, namespace and name) is a problem.
    fn new(objects: &'a [Object], problems: &mut Problems) -> Index<'a> {
        let mut index = Index::default();
        let mut seen: HashMap<(&str, Key<'_>), &Object> = HashMap::new();
        for o in objects {
            let meta = o.meta();
            let key = (meta.namespace.as_str(), meta.name.as_str());
            if let Some(first) = seen.insert((o.kind(), key), o) {
                let f = &first.meta().origin;
                problems.at(
                    o,
                    meta.origin.loc,
                    "metadata.name",
                    format!(
                        "duplicate {} {} (also {}:{})",
                        o.kind(),
                        meta.key(),
                        f.source,
                        f.loc
                    ),
                );
                continue;
            }
            match o {
                Object::Service(s) => {
                    index.services.push((o, s));
                    index.by_key.insert(key, o);
                }
                Object::Endpoints(e) => {
                    index.endpoints.insert(key, e);
                }
                Object::EndpointSlice(s) => index
                    .slices
                    .entry((meta.namespace.as_str(), s.service_name.as_str()))
                    .or_default()
                    .push(s),
            }
        }
        index
    }

    /// Endpoints of a Service that is not there: most likely a typo in a name.
    fn orphans(&self, objects: &[Object], problems: &mut Problems) {
        for o in objects {
            let meta = o.meta();
            let (service, field) = match o {
                Object::Service(_) => continue,
                Object::Endpoints(_) => (meta.name.as_str(), "metadata.name".to_owned()),
                Object::EndpointSlice(s) => (
                    s.service_name.as_str(),
                    format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
                ),
            };
            if !self
                .by_key
                .contains_key(&(meta.namespace.as_str(), service))
            {
                problems.at(
                    o,
                    meta.origin.loc,
                    &field,
                    format!("no Service {}/{service} in these manifests", meta.namespace),
                );
            }
        }
    }

    /// Where the endpoints of `svc` come from.
    fn source(&self, svc: &'a Service) -> Source<'_> {
        let key = (svc.meta.namespace.as_str(), svc.meta.name.as_str());
        match (self.slices.get(&key), self.endpoints.get(&key)) {
            (Some(s), _) => Source::Slices(s),
            (None, Some(e)) => Source::Endpoints(e),
            (None, None) => Source::None,
        }
    }
}

/// Resolves manifests for standalone mode; `Err` holds every problem with its source: a
/// duplicate object, endpoints of a missing Service, a frontend used twice, a scheduler that
/// cannot serve its endpoints.
pub(crate) fn resolve(
    objects: &[Object],
    options: &StandaloneOptions,
) -> Result<Resolved, Vec<(Arc<str>, Problem)>> {
    let mut problems = Problems::default();
    let index = Index::new(objects, &mut problems);
    index.orphans(objects, &mut problems);
    let mut out = Resolved::default();
    let mut claims = Claims::default();
    for &(object, svc) in &index.services {
        let resolution = resolve_service(svc, &index.source(svc), Policy::Standalone(options));
        out.not_proxied.extend(resolution.not_proxied);
        out.warnings.extend(resolution.warnings);
        for part in resolution.parts {
            if let Some(part) = checked(object, svc, part, &mut claims, &mut problems) {
                out.config.services.push(part.model);
                out.ports.push(part.port);
            }
        }
    }
    if problems.0.is_empty() {
        Ok(out)
    } else {
        Err(problems.0)
    }
}

/// `part` if its frontends are its own and its scheduler can serve it; else the problems.
fn checked(
    object: &Object,
    svc: &Service,
    part: Part,
    claims: &mut Claims,
    problems: &mut Problems,
) -> Option<Part> {
    let model = &part.model;
    let port = &svc.ports[part.index];
    let mut clash = false;
    for addr in &model.listen {
        if let Err(first) = claims.claim(model.protocol, *addr, &model.name) {
            problems.at(
                object,
                port.loc,
                &format!("spec.ports[{}]", part.index),
                format!("{} {addr} is already a frontend of {first}", model.protocol),
            );
            clash = true;
        }
    }
    if let Some(why) = &part.unusable_scheduler {
        problems.at(
            object,
            svc.scheduler_loc,
            &format!("metadata.annotations[{SCHEDULER_ANNOTATION:?}]"),
            why.clone(),
        );
        return None;
    }
    (!clash).then_some(part)
}

/// Resolves one Service with its EndpointSlices (those labelled with its name, in its
/// namespace) for this node.
pub fn resolve_node_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    options: &NodeOptions,
) -> NodeService {
    let source = if slices.is_empty() {
        Source::None
    } else {
        Source::Slices(slices)
    };
    let resolution = resolve_service(svc, &source, Policy::Node(options));
    NodeService {
        services: resolution
            .parts
            .into_iter()
            .map(|p| (p.model, p.port))
            .collect(),
        not_proxied: resolution.not_proxied,
        warnings: resolution.warnings,
    }
}

/// Puts resolved Services together into one model, in the order given. A frontend claimed by
/// two Services (two Services with one external IP and port, say) stays with the first; the
/// later one serves without it, with a warning.
pub fn assemble<'a>(parts: impl IntoIterator<Item = &'a NodeService>) -> Resolved {
    let mut out = Resolved::default();
    let mut claims = Claims::default();
    for part in parts {
        out.not_proxied.extend(part.not_proxied.iter().cloned());
        out.warnings.extend(part.warnings.iter().cloned());
        for (model, port) in &part.services {
            let mut model = model.clone();
            let (name, protocol) = (model.name.clone(), model.protocol);
            model
                .listen
                .retain(|addr| match claims.claim(protocol, *addr, &name) {
                    Err(first) => {
                        out.warnings.push(format!(
                            "{name}: {protocol} {addr} is already a frontend of {first}; left out"
                        ));
                        false
                    }
                    Ok(()) => true,
                });
            if model.listen.is_empty() {
                continue;
            }
            out.config.services.push(model);
            out.ports.push(port.clone());
        }
    }
    out
}

/// Resolves a whole set of objects for this node: each Service with the EndpointSlices
/// labelled with its name, in namespace and name order. `Endpoints` objects are ignored, as
/// kube-proxy ignores them (the mirroring controller turns custom ones into slices).
pub fn resolve_node(objects: &[Object], options: &NodeOptions) -> Resolved {
    let mut services: Vec<&Service> = Vec::new();
    let mut slices: HashMap<Key<'_>, Vec<&EndpointSlice>> = HashMap::new();
    for o in objects {
        match o {
            Object::Service(s) => services.push(s),
            Object::EndpointSlice(s) => slices
                .entry((s.meta.namespace.as_str(), s.service_name.as_str()))
                .or_default()
                .push(s),
            Object::Endpoints(_) => {}
        }
    }
    services
        .sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    let parts: Vec<NodeService> = services
        .iter()
        .map(|s| {
            let key = (s.meta.namespace.as_str(), s.meta.name.as_str());
            let own = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
            resolve_node_service(s, own, options)
        })
        .collect();
    assemble(&parts)
}
