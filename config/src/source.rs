//! Loading a configuration from a path: ringlb YAML or Kubernetes manifests, told apart by
//! their content.

use std::net::IpAddr;
use std::path::Path;

use crate::error::ConfigError;
use crate::k8s::{self, NotProxied, StandaloneOptions};
use crate::model::Config;
use crate::names::DnsConfig;

/// The formats a configuration path can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The ringlb YAML format (`services:`).
    Ringlb,
    /// Kubernetes `Service`, `Endpoints` and `EndpointSlice` manifests (a file or a directory).
    Kubernetes,
}

/// What a path resolved to.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The services to serve.
    pub config: Config,
    /// Which format the path held.
    pub format: Format,
    /// Kubernetes Services and ports that are valid but not proxied, with why.
    pub not_proxied: Vec<NotProxied>,
    /// How DNS-named backends are resolved (the `dns:` key of ringlb YAML; defaults otherwise).
    pub dns: DnsConfig,
}

/// Reads `path`: a directory of manifests, a manifest file (a document with `apiVersion:` or
/// `kind:` at the top level), or a ringlb YAML file. `node_addresses` are where Kubernetes
/// NodePorts listen.
pub fn load(path: &Path, node_addresses: &[IpAddr]) -> Result<Loaded, ConfigError> {
    let options = StandaloneOptions {
        node_addresses: node_addresses.to_vec(),
    };
    if !path.is_dir() {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        if !looks_like_manifests(&text) {
            let (config, dns) =
                crate::raw::parse_yaml_with_dns(&path.display().to_string(), &text)?;
            return Ok(Loaded {
                config,
                format: Format::Ringlb,
                not_proxied: Vec::new(),
                dns,
            });
        }
    }
    let resolved = k8s::load_dir_or_file(path, &options)?;
    Ok(Loaded {
        config: resolved.config,
        format: Format::Kubernetes,
        not_proxied: resolved.not_proxied,
        dns: DnsConfig::default(),
    })
}

/// Whether a document of `text` has `apiVersion` or `kind` at the top level.
fn looks_like_manifests(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("apiVersion:") || l.starts_with("kind:"))
}

#[cfg(test)]
mod tests {
    use super::looks_like_manifests;

    #[test]
    fn tells_manifests_from_ringlb_yaml() {
        assert!(looks_like_manifests("---\napiVersion: v1\nkind: Service\n"));
        assert!(looks_like_manifests("kind: List\nitems: []\n"));
        assert!(!looks_like_manifests(
            "services:\n  - name: kind\n    listen: []\n"
        ));
    }
}
