//! The DaemonSet of `deploy/` upgrades a node the way ringlb's handover needs: the new pod
//! beside the old one, both reaching the same handover socket on the host.

use std::path::Path;

use serde_json::Value;

fn daemonset() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_daemonset_surges_and_shares_the_handover_socket_on_the_host() {
    let ds = daemonset();
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 1, "{rolling}");
    assert_eq!(rolling["maxUnavailable"], 0, "{rolling}");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // A surge pod on the same node must not need a free host port.
    assert!(container["ports"].is_null(), "no hostPort: {container}");
    let socket = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--handover-socket="))
        .expect("--handover-socket in the args");
    let dir = Path::new(socket).parent().unwrap().to_str().unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_ne!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["hostPath"]["path"], dir, "{volume}");
}
