//! Multi-document YAML text into checked [`Object`]s: documents, kinds, lists and metadata.
//! The kinds themselves are read by [`super::service`] and [`super::endpoints`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Problem;
use crate::raw::syntax_problem;

use super::rules::{
    dns1035_label, dns1123_label, dns1123_subdomain, required, LABEL_RULE, SERVICE_NAME_RULE,
    SUBDOMAIN_RULE,
};
use super::types::{Object, ObjectMeta, Origin};
use super::yaml::{Checker, Fields, Loc, Node};
use super::{endpoints, service};

/// Reads every document of `text`; returns what could be read and every problem found.
pub(crate) fn parse(source: &Arc<str>, text: &str) -> (Vec<Object>, Vec<Problem>) {
    let docs: Vec<Node> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => return (Vec::new(), vec![syntax_problem(&e)]),
    };
    let mut ck = Checker::default();
    let mut out = Vec::new();
    if docs.is_empty() {
        ck.problems.push(Problem {
            line: None,
            column: None,
            path: String::new(),
            reason: "no Kubernetes objects in this text (Service, Endpoints, EndpointSlice)".into(),
        });
    }
    for (d, doc) in docs.iter().enumerate() {
        let label = format!("document {}", d + 1);
        document(&mut ck, source, &label, doc, true, &mut out);
    }
    ck.problems
        .sort_by_key(|p| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
    (out, ck.problems)
}

/// The list kinds accepted, with the kind of their items (`None`: any supported kind).
const LIST_KINDS: &[(&str, &str, Option<&str>)] = &[
    ("List", "v1", None),
    ("ServiceList", "v1", Some("Service")),
    ("EndpointsList", "v1", Some("Endpoints")),
    (
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        Some("EndpointSlice"),
    ),
];

/// One document, or one item of a list (`top` is false inside a list).
fn document(
    ck: &mut Checker,
    source: &Arc<str>,
    label: &str,
    node: &Node,
    top: bool,
    out: &mut Vec<Object>,
) {
    ck.object = label.to_owned();
    let Some(f) = ck.map(node, "") else { return };
    let kind = required(ck, &f, "kind").and_then(|n| ck.string(n, "kind").map(|k| (k, n.loc)));
    let api =
        required(ck, &f, "apiVersion").and_then(|n| ck.string(n, "apiVersion").map(|a| (a, n.loc)));
    let Some((kind, kind_loc)) = kind else { return };
    let expected_api = match kind.as_str() {
        "Service" | "Endpoints" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        k => match LIST_KINDS.iter().find(|(name, _, _)| *name == k) {
            Some((_, api, _)) => api,
            None => {
                ck.at(
                    kind_loc,
                    "kind",
                    format!(
                        "kind {kind} is not supported (Service, Endpoints, EndpointSlice, \
                         or a List of them)"
                    ),
                );
                return;
            }
        },
    };
    let Some((api, api_loc)) = api else { return };
    if api != expected_api {
        let hint = if api == "discovery.k8s.io/v1beta1" {
            " (v1beta1 was removed in Kubernetes 1.25)"
        } else {
            ""
        };
        ck.at(
            api_loc,
            "apiVersion",
            format!("apiVersion {api} is not supported for kind {kind}: use {expected_api}{hint}"),
        );
        return;
    }
    if let Some(&(_, _, item_kind)) = LIST_KINDS.iter().find(|(name, _, _)| *name == kind) {
        if !top {
            ck.at(kind_loc, "kind", "a List inside a List is not supported");
            return;
        }
        list_items(ck, source, label, &kind, item_kind, &f, out);
        return;
    }
    object(ck, source, label, &kind, &f, out);
}

/// The items of a list of kind `kind`, each of `item_kind` where the list says so.
fn list_items(
    ck: &mut Checker,
    source: &Arc<str>,
    label: &str,
    kind: &str,
    item_kind: Option<&str>,
    f: &Fields<'_>,
    out: &mut Vec<Object>,
) {
    let Some(items) = f.get("items").and_then(|n| ck.seq(n, "items")) else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let before = out.len();
        document(
            ck,
            source,
            &format!("{label}, items[{i}]"),
            item,
            false,
            out,
        );
        if let (Some(want), Some(got)) = (item_kind, out.get(before)) {
            if got.kind() != want {
                ck.object = format!("{label}, items[{i}]");
                ck.at(
                    item.loc,
                    "kind",
                    format!("a {kind} holds {want} objects only"),
                );
                out.truncate(before);
            }
        }
    }
}

/// One object of kind `kind` (a Service, Endpoints or EndpointSlice).
fn object(
    ck: &mut Checker,
    source: &Arc<str>,
    label: &str,
    kind: &str,
    f: &Fields<'_>,
    out: &mut Vec<Object>,
) {
    ck.object = format!("{kind} ({label})");
    let meta = metadata(ck, source, kind, f);
    let named = meta.is_some();
    // Without a usable name, still check the rest of the object (and then drop it), so that
    // every problem is reported at once.
    let meta = meta.unwrap_or_else(|| ObjectMeta {
        name: String::new(),
        namespace: String::new(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        origin: Origin {
            source: Arc::clone(source),
            loc: f.loc,
        },
    });
    if named {
        ck.object = format!("{kind} {}", meta.key());
    }
    let object = match kind {
        "Service" => service::service(ck, meta, f).map(Object::Service),
        "Endpoints" => endpoints::endpoints(ck, meta, f).map(Object::Endpoints),
        _ => endpoints::endpoint_slice(ck, meta, f).map(Object::EndpointSlice),
    };
    if named {
        out.extend(object);
    }
}

/// `metadata`: name (required), namespace, labels, annotations.
fn metadata(ck: &mut Checker, source: &Arc<str>, kind: &str, f: &Fields<'_>) -> Option<ObjectMeta> {
    let m = required(ck, f, "metadata").and_then(|n| ck.map(n, "metadata"))?;
    let name = required(ck, &m, "metadata.name").and_then(|n| {
        let name = ck.string(n, "metadata.name")?;
        // A Service name becomes a DNS label; other objects are DNS subdomains.
        let (ok, rule) = if kind == "Service" {
            (dns1035_label(&name), SERVICE_NAME_RULE)
        } else {
            (dns1123_subdomain(&name), SUBDOMAIN_RULE)
        };
        if !ok {
            ck.at(
                n.loc,
                "metadata.name",
                format!("invalid name {name:?}: {rule}"),
            );
            return None;
        }
        Some(name)
    });
    let namespace = match m.get("namespace") {
        None => Some("default".to_owned()),
        Some(n) => ck.string(n, "metadata.namespace").and_then(|ns| {
            if dns1123_label(&ns) {
                Some(ns)
            } else {
                ck.at(
                    n.loc,
                    "metadata.namespace",
                    format!("invalid namespace {ns:?}: {LABEL_RULE}"),
                );
                None
            }
        }),
    };
    let plain = |map: BTreeMap<String, (String, Loc)>| -> BTreeMap<String, String> {
        map.into_iter().map(|(k, (v, _))| (k, v)).collect()
    };
    let labels = m
        .get("labels")
        .map(|n| plain(ck.string_map(n, "metadata.labels")))
        .unwrap_or_default();
    let annotations = m
        .get("annotations")
        .map(|n| plain(ck.string_map(n, "metadata.annotations")))
        .unwrap_or_default();
    Some(ObjectMeta {
        name: name?,
        namespace: namespace?,
        labels,
        annotations,
        origin: Origin {
            source: Arc::clone(source),
            loc: f.loc,
        },
    })
}
