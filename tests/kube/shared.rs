//! What the node-mode tests of `tests/kube.rs` and the `kube_scale` benchmark share: the
//! objects they give the fake API server, and `ringlb run --kubernetes` as node `node-a`.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::{self, Ringlb};

/// Node `name` in zone `zone`.
pub fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
}

/// EndpointSlice `name` of Service `shop/service`: `endpoints` on TCP port `http` = `port`.
pub fn slice(name: &str, service: &str, endpoints: Value, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// `ringlb run --kubernetes` as node `node-a` of the API in `kubeconfig`, one worker, no
/// admin API.
pub fn node_a(kubeconfig: &Path) -> Ringlb {
    node_a_in(None, kubeconfig)
}

/// [`node_a`], or with `--nftables` inside namespace `ns`.
pub fn node_a_in(ns: Option<&support::netns::Netns>, kubeconfig: &Path) -> Ringlb {
    let mut args = vec![
        "run",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--admin",
        "off",
        "--workers",
        "1",
    ];
    match ns {
        None => Ringlb::start(&args),
        Some(ns) => {
            args.push("--nftables");
            Ringlb::start_in_netns(&ns.0, &args)
        }
    }
}
