//! Kubernetes' rules for fields every kind shares: names (DNS labels and subdomains, IANA
//! service names), required fields, port protocols, and where ringlb's annotations stand.
//! The kinds ([`super::service`], [`super::endpoints`]) and the document reader
//! ([`super::parse`]) use them; this module reads no document of its own.

use std::collections::BTreeMap;

use super::types::PortProtocol;
use super::yaml::{Checker, Fields, Loc, Node};

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
pub(crate) const SERVICE_NAME_RULE: &str =
    "use at most 63 lower-case letters, digits and '-', starting with a letter and ending with a \
     letter or digit";
pub(crate) const SUBDOMAIN_RULE: &str =
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
