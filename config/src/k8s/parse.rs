//! Multi-document YAML text into checked [`Object`]s: documents, kinds, lists and metadata.
//! The kinds themselves are read by [`super::service`] and [`super::endpoints`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Problem;
use crate::raw::syntax_problem;

use super::node::{Checker, Fields, Loc, Node};
use super::types::{Object, ObjectMeta, Origin, PortProtocol};
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
        return;
    }
    ck.object = format!("{kind} ({label})");
    let meta = metadata(ck, source, &kind, &f);
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
    let object = match kind.as_str() {
        "Service" => service::service(ck, meta, &f).map(Object::Service),
        "Endpoints" => endpoints::endpoints(ck, meta, &f).map(Object::Endpoints),
        _ => endpoints::endpoint_slice(ck, meta, &f).map(Object::EndpointSlice),
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

/// The located annotations of `f` (`metadata.annotations`), for checking ringlb's own.
pub(crate) fn located_annotations(f: &Fields<'_>) -> BTreeMap<String, (String, Loc)> {
    let mut quiet = Checker::default();
    f.get("metadata")
        .and_then(|m| quiet.map(m, "").and_then(|m| m.get("annotations")))
        .map(|n| quiet.string_map(n, ""))
        .unwrap_or_default()
}

/// `f[key]`, or a "required field is missing" problem at the mapping.
pub(crate) fn required<'a>(ck: &mut Checker, f: &Fields<'a>, key_path: &str) -> Option<&'a Node> {
    let key = key_path.rsplit('.').next().unwrap_or(key_path);
    let n = f.get(key);
    if n.is_none() {
        ck.at(f.loc, key_path, "required field is missing");
    }
    n
}

/// `protocol` of a port: `TCP` (default), `UDP` or `SCTP`, spelled as Kubernetes does.
pub(crate) fn protocol(ck: &mut Checker, f: &Fields<'_>, field: &str) -> Option<PortProtocol> {
    let Some(n) = f.get("protocol") else {
        return Some(PortProtocol::Tcp);
    };
    match ck.string(n, field)?.as_str() {
        "TCP" => Some(PortProtocol::Tcp),
        "UDP" => Some(PortProtocol::Udp),
        "SCTP" => Some(PortProtocol::Sctp),
        other => {
            ck.at(
                n.loc,
                field,
                format!("unsupported protocol {other:?} (TCP, UDP or SCTP)"),
            );
            None
        }
    }
}

pub(crate) const LABEL_RULE: &str =
    "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit";
const SERVICE_NAME_RULE: &str =
    "use at most 63 lower-case letters, digits and '-', starting with a letter and ending with a \
     letter or digit";
const SUBDOMAIN_RULE: &str =
    "use at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter \
     or digit";

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1035 label (Service names): an RFC 1123 label that starts with a letter.
pub(crate) fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// IANA service name (named container ports): at most 15 of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or doubled '-'.
pub(crate) fn iana_svc_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_follow_kubernetes_validation() {
        assert!(dns1123_label("web-1"));
        assert!(dns1123_label("80"));
        assert!(!dns1123_label("Web"));
        assert!(!dns1123_label("-web"));
        assert!(!dns1123_label(&"a".repeat(64)));
        assert!(dns1035_label("web"));
        assert!(!dns1035_label("1web"));
        assert!(dns1123_subdomain("web-abc12.x"));
        assert!(!dns1123_subdomain("web..x"));
        assert!(iana_svc_name("http-alt"));
        assert!(!iana_svc_name("8080"));
        assert!(!iana_svc_name("a--b"));
        assert!(!iana_svc_name("averyveryverylongname"));
    }
}
