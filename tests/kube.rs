//! Kubernetes node mode against a fake API server that speaks the real list + watch protocol
//! over HTTP (lists with a resourceVersion, `watch=true` streams of JSON lines resumed from a
//! resourceVersion, `410 Gone` for an expired one, label and field selectors, outages), with
//! kube's client pointed at it by a kubeconfig file.

#[path = "kube/fake_api.rs"]
mod fake_api;
mod support;

#[path = "kube/binary.rs"]
mod binary;
#[path = "kube/deploy.rs"]
mod deploy;
#[path = "kube/health.rs"]
mod health;
#[path = "kube/shared.rs"]
mod shared;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use config::k8s::{NodeOptions, NotProxiedReason};
use fake_api::{FakeApi, Kind};
use node::{KubeOptions, KubeSnapshot, KubeWatch};
use serde_json::{json, Value};
use shared::*;
use support::*;

fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config/k8s/valid")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|o| o["kind"] != "Endpoints")
        .collect()
}

/// The watch on a runtime of the test's own (one worker thread), so the test can read it
/// from a plain thread as ringlb's reconcile loop does on the control runtime.
struct Watch {
    // Dropped first: it stops the watch's task before the runtime goes.
    watch: KubeWatch,
    runtime: tokio::runtime::Runtime,
}

impl Watch {
    fn start(options: KubeOptions, on_change: impl Fn() + Send + Sync + 'static) -> Watch {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let watch = runtime
            .block_on(KubeWatch::start(runtime.handle(), options, on_change))
            .unwrap();
        Watch { watch, runtime }
    }

    fn wait_synced(&self, timeout: Duration) -> Option<Arc<KubeSnapshot>> {
        self.runtime.block_on(self.watch.wait_synced(timeout))
    }
}

impl std::ops::Deref for Watch {
    type Target = KubeWatch;

    fn deref(&self) -> &KubeWatch {
        &self.watch
    }
}

/// Starts a watch and delivers every publication to the returned channel.
fn start_watch(api: &FakeApi, proxy_name: Option<&str>) -> (Watch, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let options = KubeOptions {
        kubeconfig: Some(api.kubeconfig()),
        node: NodeOptions {
            node_name: "node-a".into(),
            zone: None,
            node_addresses: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100))],
            service_proxy_name: proxy_name.map(str::to_owned),
            source_ranges_enforced: false,
            preserve_client_ip: false,
            transparent_clients: Vec::new(),
        },
        primary_node_addresses: false,
    };
    let watch = Watch::start(options, move || {
        let _ = tx.send(());
    });
    (watch, rx)
}

/// Waits until the latest publication satisfies `ok`.
fn wait_for(
    watch: &KubeWatch,
    changes: &mpsc::Receiver<()>,
    what: &str,
    ok: impl Fn(&KubeSnapshot) -> bool,
) -> Arc<KubeSnapshot> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = watch.latest().filter(|s| ok(s)) {
            return s;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if changes.recv_timeout(left).is_err() {
            panic!(
                "timed out waiting for {what}; latest: {:#?}",
                watch.latest()
            );
        }
    }
}

fn backends(s: &KubeSnapshot, name: &str) -> Option<Vec<String>> {
    let svc = s.resolved.config.services.iter().find(|x| x.name == name)?;
    let mut v: Vec<String> = svc.backends.iter().map(|b| b.address.to_string()).collect();
    v.sort();
    Some(v)
}

fn names(s: &KubeSnapshot) -> Vec<&str> {
    s.resolved
        .config
        .services
        .iter()
        .map(|x| x.name.as_str())
        .collect()
}

#[test]
fn the_watch_follows_adds_updates_deletes_and_broken_or_expired_watches() {
    let api = FakeApi::start();
    for o in fixture("endpointslices.yaml")
        .into_iter()
        .chain(fixture("nodeport.yaml"))
    {
        api.apply(o);
    }
    // Another proxy's Service is filtered by the label selector (kube-proxy's).
    let mut other = fixture("nodeport.yaml").remove(0);
    other["metadata"]["name"] = json!("other");
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "cilium"});
    other["spec"]["clusterIP"] = json!("127.0.0.12");
    api.apply(other);
    api.apply(node("node-a", "zone-a"));

    let (watch, changes) = start_watch(&api, None);
    let first = watch.wait_synced(Duration::from_secs(20)).expect("synced");
    // A named targetPort resolved per slice: two slices, two port numbers; the terminating
    // endpoint is left out while others are ready.
    assert_eq!(
        backends(&first, "shop.web.http").unwrap(),
        ["127.0.7.1:8080", "127.0.7.3:8081"]
    );
    assert_eq!(
        backends(&first, "shop.web.metrics").unwrap(),
        ["127.0.7.1:9100"]
    );
    // Every endpoint terminating: the serving ones.
    assert_eq!(
        backends(&first, "shop.draining.http").unwrap(),
        ["127.0.8.1:8080"]
    );
    let np = first
        .resolved
        .config
        .services
        .iter()
        .find(|s| s.name == "shop.my-nodeport.80")
        .unwrap();
    assert!(
        np.listen.contains(&"127.0.0.100:30007".parse().unwrap()),
        "{np:?}"
    );
    assert!(
        !names(&first).iter().any(|n| n.contains("other")),
        "{:?}",
        names(&first)
    );

    // An update of one slice: only its Service is resolved again.
    api.apply(slice(
        "web-8081",
        "web",
        json!([{"addresses": ["127.0.7.3"], "conditions": {"ready": false, "serving": true, "terminating": true}}]),
        8081,
    ));
    let s = wait_for(&watch, &changes, "web-8081 terminating", |s| {
        backends(s, "shop.web.http").unwrap() == ["127.0.7.1:8080"]
    });
    assert_eq!(s.changed, ["shop/web"]);

    // A delete.
    api.delete(Kind::Service, "shop", "draining");
    wait_for(&watch, &changes, "draining deleted", |s| {
        backends(s, "shop.draining.http").is_none()
    });

    // The server closes the watch: the client watches again from its resourceVersion and
    // misses nothing that happened in between.
    let before = api.break_watches(Kind::Slice, false);
    api.apply(slice(
        "web-9000",
        "web",
        json!([{"addresses": ["127.0.7.4"], "nodeName": "node-a"}]),
        9000,
    ));
    wait_for(&watch, &changes, "slice added across a broken watch", |s| {
        backends(s, "shop.web.http").unwrap() == ["127.0.7.1:8080", "127.0.7.4:9000"]
    });
    assert!(api.watches(Kind::Slice) > before);

    // 410 Gone: the client lists again; a Service deleted meanwhile goes away.
    api.break_watches(Kind::Service, true);
    api.delete(Kind::Service, "shop", "my-nodeport");
    wait_for(&watch, &changes, "re-list after 410", |s| {
        !names(s).iter().any(|n| n.starts_with("shop.my-nodeport"))
    });
    drop(watch);
}

#[test]
fn service_proxy_name_selects_only_our_services_and_policy_local_keeps_local_endpoints() {
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    for (name, ip, label) in [
        ("ours", "127.0.0.60", Some("ringlb")),
        ("theirs", "127.0.0.61", None),
    ] {
        let mut meta = json!({"name": name, "namespace": "shop"});
        if let Some(l) = label {
            meta["labels"] = json!({"service.kubernetes.io/service-proxy-name": l});
        }
        api.apply(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        );
        let mut s = slice(
            &format!("{name}-1"),
            name,
            json!([{"addresses": ["127.0.9.1"], "nodeName": "node-a"},
                   {"addresses": ["127.0.9.2"], "nodeName": "node-b"}]),
            8080,
        );
        if let Some(l) = label {
            s["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!(l);
        }
        api.apply(s);
    }
    let (watch, _changes) = start_watch(&api, Some("ringlb"));
    let s = watch.wait_synced(Duration::from_secs(20)).expect("synced");
    assert_eq!(names(&s), ["shop.ours.http"]);
    assert_eq!(
        backends(&s, "shop.ours.http").unwrap(),
        ["127.0.9.1:8080"],
        "Local: node-a only"
    );
    drop(watch);

    let (watch, _changes) = start_watch(&api, None);
    let s = watch.wait_synced(Duration::from_secs(20)).expect("synced");
    assert_eq!(names(&s), ["shop.theirs.http"]);
    assert!(s
        .resolved
        .not_proxied
        .iter()
        .all(|n| !matches!(n.reason, NotProxiedReason::OtherProxy(_))));
}

/// KEP-3836, as kube-proxy's `SyncNode`: the node is not eligible for load balancer traffic
/// (its `/healthz` answers 503) while tainted `ToBeDeletedByClusterAutoscaler` or being
/// deleted, and is again once the taint goes.
#[test]
fn a_node_tainted_for_deletion_or_being_deleted_is_not_eligible() {
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    let (watch, _changes) = start_watch(&api, None);
    watch.wait_synced(Duration::from_secs(20)).expect("synced");
    let eligible = watch.node_eligibility();
    let becomes = |want: bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while eligible.load(std::sync::atomic::Ordering::Relaxed) != want {
            assert!(
                Instant::now() < deadline,
                "{what}: eligibility never became {want}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    becomes(true, "a plain node");

    let mut tainted = node("node-a", "zone-a");
    tainted["spec"] = json!({"taints": [
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1763800000", "effect": "NoSchedule"}]});
    api.apply(tainted);
    becomes(false, "the autoscaler's taint");

    api.apply(node("node-a", "zone-a"));
    becomes(true, "the taint removed");

    let mut deleting = node("node-a", "zone-a");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:00:00Z");
    deleting["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.apply(deleting);
    becomes(false, "a deletion timestamp");
}

/// `--nodeport-addresses primary` (the default without flags): NodePorts on the Node's
/// primary address of each family from its `status.addresses`, InternalIP first, followed as
/// the Node changes.
#[test]
fn node_ports_follow_the_primary_addresses_of_the_node() {
    let api = FakeApi::start();
    let with_addresses = |addresses: Value| {
        let mut n = node("node-a", "zone-a");
        n["status"] = json!({"addresses": addresses});
        n
    };
    api.apply(with_addresses(json!([
        {"type": "Hostname", "address": "node-a"},
        {"type": "ExternalIP", "address": "203.0.113.7"},
        // Listed after the ExternalIP, and still the primary address.
        {"type": "InternalIP", "address": "10.0.0.7"}])));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}}));
    let (tx, changes) = mpsc::channel();
    let options = KubeOptions {
        kubeconfig: Some(api.kubeconfig()),
        node: NodeOptions {
            node_name: "node-a".into(),
            ..NodeOptions::default()
        },
        primary_node_addresses: true,
    };
    let watch = Watch::start(options, move || {
        let _ = tx.send(());
    });
    let frontends = |s: &KubeSnapshot| {
        let svc = s
            .resolved
            .config
            .services
            .iter()
            .find(|x| x.name == "shop.web.http");
        let mut got: Vec<String> = svc
            .into_iter()
            .flat_map(|x| x.listen.iter().map(ToString::to_string))
            .collect();
        got.sort();
        got
    };
    wait_for(&watch, &changes, "the InternalIP at the node port", |s| {
        frontends(s) == ["10.0.0.7:30080", "10.96.0.1:80"]
    });
    api.apply(with_addresses(json!([
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "InternalIP", "address": "10.0.0.8"}])));
    wait_for(
        &watch,
        &changes,
        "a loopback primary address takes no node port",
        |s| frontends(s) == ["10.96.0.1:80"],
    );
    api.apply(with_addresses(
        json!([{"type": "InternalIP", "address": "10.0.0.8"}]),
    ));
    wait_for(
        &watch,
        &changes,
        "the new InternalIP at the node port",
        |s| frontends(s) == ["10.0.0.8:30080", "10.96.0.1:80"],
    );
    std::fs::remove_file(api.kubeconfig()).unwrap();
}

/// An address of this test process in 127.`second`.0.0/16: tests of this binary run side by
/// side, so each takes its own `second` octet, and test processes their own third octet.
fn own_ip(second: u8) -> IpAddr {
    let third = (std::process::id() % 200) as u8 + 20;
    IpAddr::V4(Ipv4Addr::new(127, second, third, 1))
}

/// [`own_ip`] at a free port.
fn own_address(second: u8) -> SocketAddr {
    let ip = own_ip(second);
    let port = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::new(ip, port)
}

/// Service `shop/web` on cluster IP `at` with one TCP port `http` to target port `web`.
fn web_service(at: SocketAddr) -> Value {
    let ip = at.ip().to_string();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": at.port(), "protocol": "TCP", "targetPort": "web"}]}})
}

/// Slice endpoints, one per address, ready and on no node.
fn eps(addrs: &[SocketAddr]) -> Value {
    addrs
        .iter()
        .map(|x| json!({"addresses": [x.ip().to_string()]}))
        .collect()
}
