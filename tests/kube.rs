//! Kubernetes node mode against a fake API server that speaks the real list + watch protocol
//! over HTTP (lists with a resourceVersion, `watch=true` streams of JSON lines resumed from a
//! resourceVersion, `410 Gone` for an expired one, label and field selectors, outages), with
//! kube's client pointed at it by a kubeconfig file.

#[path = "kube/fake_api.rs"]
mod fake_api;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use config::k8s::{NodeOptions, NotProxiedReason};
use config::kube::{KubeOptions, KubeSnapshot, KubeWatch};
use fake_api::{FakeApi, Kind};
use serde_json::{json, Value};
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

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
}

/// Starts a watch and delivers every publication to the returned channel.
fn start_watch(api: &FakeApi, proxy_name: Option<&str>) -> (KubeWatch, mpsc::Receiver<()>) {
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
        },
        primary_node_addresses: false,
    };
    let watch = KubeWatch::start(options, move || {
        let _ = tx.send(());
    })
    .unwrap();
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

fn slice(name: &str, service: &str, endpoints: Value, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
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
    let watch = KubeWatch::start(options, move || {
        let _ = tx.send(());
    })
    .unwrap();
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

/// `ringlb run --kubernetes` as node `node-a` of the API in `kubeconfig`, one worker, no
/// admin API.
fn node_a(kubeconfig: &Path) -> Ringlb {
    node_a_in(None, kubeconfig)
}

/// [`node_a`], or with `--nftables` inside namespace `ns`.
fn node_a_in(ns: Option<&support::netns::Netns>, kubeconfig: &Path) -> Ringlb {
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

/// The real binary: `ringlb run --kubernetes --kubeconfig` serves real TCP to loopback
/// backends listed in EndpointSlices, on a Service cluster IP in 127.0.0.0/8, and follows a
/// slice change.
#[test]
fn ringlb_run_kubernetes_serves_a_cluster_ip_and_follows_endpoint_slices() {
    let (a, b) = (name_server("a"), name_server("b"));
    let cluster = own_address(91);
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    api.apply(web_service(cluster));
    // One slice per backend port, as the controller writes a named targetPort.
    api.apply(slice("web-a", "web", eps(&[a]), a.port()));
    api.apply(slice("web-b", "web", eps(&[b]), b.port()));
    let kubeconfig = api.kubeconfig();
    let proxy = node_a(&kubeconfig);
    assert_eq!(proxy.addrs, [cluster]);
    let mut seen: Vec<String> = (0..4).map(|_| answer(cluster)).collect();
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"], "round robin over both slices");

    api.delete(Kind::Slice, "shop", "web-a");
    proxy.wait_line("kubernetes version=");
    for _ in 0..3 {
        assert_eq!(answer(cluster), "b");
    }
    std::fs::remove_file(kubeconfig).unwrap();
}

/// A client that opens a connection to `addr` every 10 ms until stopped, and keeps every
/// answer (a failure as `error: ...`).
struct Prober {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Prober {
        use std::io::Read;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let mut text = String::new();
                let got = std::net::TcpStream::connect_timeout(&addr, PATIENCE)
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(PATIENCE))?;
                        s.read_to_string(&mut text)
                    })
                    .map(|_| text);
                answers.push(got.unwrap_or_else(|e| format!("error: {e}")));
                // Pacing, not readiness: a steady trickle of new connections.
                std::thread::sleep(Duration::from_millis(10));
            }
            answers
        });
        Prober { stop, thread }
    }

    /// Stops probing; every answer, in order.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The API server goes away while ringlb runs (its listener closed, its connections reset,
/// so the watches break and their retries are refused): the Service already served answers
/// the whole time, and a change made meanwhile takes effect once the API answers again on
/// the same address. Quick because the outage ends at the first refused retry: kube-rs's
/// backoff (ringlb keeps client-go's: 0.8 s doubling to 30 s, each delay up to twice as long
/// with jitter) then retries within 1.6-3.2 s.
#[test]
fn the_table_keeps_serving_while_the_api_is_unreachable_and_follows_it_when_it_returns() {
    let (a, b) = (name_server("a"), name_server("b"));
    let cluster = own_address(92);
    let api = FakeApi::start_on(own_ip(93));
    api.apply(node("node-a", "zone-a"));
    api.apply(web_service(cluster));
    api.apply(slice("web-a", "web", eps(&[a]), a.port()));
    let kubeconfig = api.kubeconfig();
    let proxy = node_a(&kubeconfig);
    assert_eq!(answer(cluster), "a");
    let prober = Prober::start(cluster);

    api.outage();
    // The watches were reset, and a retry was refused (the log names the causes).
    proxy.wait_stderr("Connection reset by peer");
    proxy.wait_stderr("Connection refused");
    assert_eq!(answer(cluster), "a", "served while the API is unreachable");
    // A new endpoint, written while ringlb cannot see the API.
    api.apply(slice("web-b", "web", eps(&[b]), b.port()));
    api.recover();
    proxy.wait_line("kubernetes version=");
    let answers = prober.stop();
    let failed: Vec<&String> = answers.iter().filter(|x| *x != "a" && *x != "b").collect();
    assert!(
        failed.is_empty(),
        "{} of {} probes failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    let mut seen: Vec<String> = (0..4).map(|_| answer(cluster)).collect();
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"], "the new endpoint is served");
    std::fs::remove_file(kubeconfig).unwrap();
}

/// Beside a normal Service `shop/web` on `web` (TCP port `http` to endpoint `a`), what
/// kube-proxy does not serve, each built so that only its rule keeps it off the air:
/// - web's SCTP port `sig` (web's slice has the port too);
/// - a slice of web labelled `service.kubernetes.io/headless`, with endpoint `x` (the
///   label selector leaves it out);
/// - the headless Service `shop/db` (`clusterIP: None`) and its slice;
/// - the ExternalName Service `shop/ext`, here with a cluster IP at `ext` (the API server
///   gives none to an ExternalName Service).
fn not_served_beside_web(
    web: SocketAddr,
    ext: SocketAddr,
    a: SocketAddr,
    x: SocketAddr,
) -> Vec<Value> {
    let service = |name: &str, spec: Value| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
    };
    let mut headless_slice = slice("web-headless", "web", eps(&[x]), x.port());
    headless_slice["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    let mut db_slice = slice("db-1", "db", eps(&[a]), a.port());
    db_slice["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    let (web_ip, ext_ip) = (web.ip().to_string(), ext.ip().to_string());
    vec![
        service(
            "web",
            json!({"clusterIP": web_ip, "clusterIPs": [web_ip], "ports": [
            {"name": "http", "port": web.port(), "protocol": "TCP"},
            {"name": "sig", "port": 9999, "protocol": "SCTP"}]}),
        ),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "shop",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": a.port(), "protocol": "TCP"},
                         {"name": "sig", "port": 9999, "protocol": "SCTP"}],
               "endpoints": eps(&[a])}),
        headless_slice,
        service(
            "db",
            json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"}]}),
        ),
        db_slice,
        service(
            "ext",
            json!({"type": "ExternalName", "externalName": "db.example.com",
            "clusterIP": ext_ip, "clusterIPs": [ext_ip], "ports": [
            {"name": "http", "port": ext.port(), "protocol": "TCP"}]}),
        ),
    ]
}

/// kube-proxy's label and type rules through the watch: headless and ExternalName Services,
/// slices labelled `service.kubernetes.io/headless` and SCTP ports are not served, each with
/// its reason, while the normal Service beside them is.
#[test]
fn headless_external_name_headless_slices_and_sctp_ports_are_not_served() {
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    for o in not_served_beside_web(
        at("127.0.0.70:80"),
        at("127.0.0.71:80"),
        at("127.0.9.1:8080"),
        at("127.0.9.9:8080"),
    ) {
        api.apply(o);
    }
    let (watch, _changes) = start_watch(&api, None);
    let s = watch.wait_synced(Duration::from_secs(20)).expect("synced");
    assert_eq!(names(&s), ["shop.web.http"]);
    assert_eq!(backends(&s, "shop.web.http").unwrap(), ["127.0.9.1:8080"]);
    let mut why: Vec<(&str, &NotProxiedReason)> = s
        .resolved
        .not_proxied
        .iter()
        .map(|n| (n.name.as_str(), &n.reason))
        .collect();
    why.sort_by_key(|(name, _)| *name);
    assert_eq!(
        why,
        [
            ("shop.db", &NotProxiedReason::Headless),
            (
                "shop.ext",
                &NotProxiedReason::ExternalName("db.example.com".into())
            ),
            ("shop.web.sig", &NotProxiedReason::Sctp),
        ]
    );
}

/// `ringlb run --kubernetes` as node `node-a`, one worker, with the admin API on a free
/// loopback port; returns the process and the admin address.
fn node_a_with_admin(kubeconfig: &Path) -> (Ringlb, SocketAddr) {
    let proxy = Ringlb::start(&[
        "run",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    let admin = support::admin::admin_addr(&proxy);
    (proxy, admin)
}

/// The names of the services `/config` shows.
fn served_names(admin: SocketAddr) -> Vec<String> {
    let config = support::admin::get_json(admin, "/config");
    config["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The stderr lines that mention `text`.
fn lines_with<'a>(stderr: &'a str, text: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(text)).collect()
}

/// The real binary with the objects of [`not_served_beside_web`]: only `shop.web.http` is in
/// the live table and only its endpoint answers; an SCTP port is warned of once, when it
/// first shows, and not again when its Service changes in other ways.
#[test]
fn ringlb_serves_none_of_them_and_warns_of_an_sctp_port_once() {
    let (a, b, x) = (name_server("a"), name_server("b"), name_server("x"));
    let (web, ext) = (own_address(94), own_address(95));
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    for o in not_served_beside_web(web, ext, a, x) {
        api.apply(o);
    }
    let kubeconfig = api.kubeconfig();
    let (proxy, admin) = node_a_with_admin(&kubeconfig);
    assert_eq!(served_names(admin), ["shop.web.http"]);
    assert_eq!(proxy.addrs, [web]);
    for _ in 0..4 {
        assert_eq!(answer(web), "a", "only the endpoint of web's own slice");
    }
    proxy.wait_stderr("shop.web.sig");
    let sctp = "SCTP is not supported";
    let first = proxy.stderr();
    let warned = lines_with(&first, "shop.web.sig");
    assert!(
        warned.len() == 1 && warned[0].contains("WARN") && warned[0].contains(sctp),
        "{warned:?}"
    );

    // web changes (a second endpoint): resolved again, its SCTP port is no news.
    api.apply(slice("web-b", "web", eps(&[b]), b.port()));
    proxy.wait_line("kubernetes version=");
    // A new Service's SCTP port is: its warning, logged after web's change, orders the log.
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "voice", "namespace": "shop"},
        "spec": {"clusterIP": "127.0.0.73", "clusterIPs": ["127.0.0.73"],
                 "ports": [{"port": 5060, "protocol": "SCTP"}]}}));
    proxy.wait_stderr("shop.voice.5060");
    let stderr = proxy.stderr();
    let voice = lines_with(&stderr, "shop.voice.5060");
    assert!(
        voice.len() == 1 && voice[0].contains("WARN") && voice[0].contains(sctp),
        "{voice:?}"
    );
    assert_eq!(lines_with(&stderr, "shop.web.sig").len(), 1, "{stderr}");
    std::fs::remove_file(kubeconfig).unwrap();
}

/// `sessionAffinity: ClientIP` through the API: a client keeps its endpoint among three,
/// another client gets another, `timeoutSeconds` reaches the live table (`/config`) and is
/// honoured (the pin is gone one timeout after the client's last connection), and a new
/// timeout written to the Service replaces it.
#[test]
fn session_affinity_client_ip_keeps_a_client_on_one_endpoint_for_timeout_seconds() {
    let backends = [name_server("a"), name_server("b"), name_server("c")];
    let web = own_address(96);
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    let affine = |timeout: u32| {
        let mut svc = web_service(web);
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        svc
    };
    api.apply(affine(1));
    for (i, b) in backends.iter().enumerate() {
        api.apply(slice(&format!("web-{i}"), "web", eps(&[*b]), b.port()));
    }
    let kubeconfig = api.kubeconfig();
    let (proxy, admin) = node_a_with_admin(&kubeconfig);
    let affinity = |admin| {
        let config = support::admin::get_json(admin, "/config");
        let svc = &config["services"][0];
        (
            svc["session_affinity"].as_str().unwrap().to_owned(),
            svc["session_affinity_timeout"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(affinity(admin), ("client_ip".to_owned(), "1s".to_owned()));
    let from = |client: u8| {
        let mut s = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 3, client)), web);
        let mut name = String::new();
        std::io::Read::read_to_string(&mut s, &mut name).unwrap();
        name
    };
    let first = from(7);
    for _ in 0..3 {
        assert_eq!(from(7), first, "one client, one endpoint");
    }
    let other = from(8);
    assert_ne!(
        other, first,
        "another client is picked for (round robin moved on)"
    );
    assert_eq!(from(8), other);
    // Waiting out the 1 s timeout (not readiness): the pin of 127.0.3.7 has expired, so the
    // scheduler picks again, and round robin gives the endpoint neither client has.
    std::thread::sleep(Duration::from_millis(1100));
    let again = from(7);
    assert!(
        again != first && again != other,
        "{again} after {first}, {other}"
    );

    api.apply(affine(300));
    proxy.wait_line("kubernetes version=");
    assert_eq!(affinity(admin), ("client_ip".to_owned(), "5m".to_owned()));
    std::fs::remove_file(kubeconfig).unwrap();
}

/// Topology hints through the API: with every ready endpoint hinted, this node takes those
/// hinted for the zone in its own Node's `topology.kubernetes.io/zone` label, and a change
/// of the label (or its removal) resolves the Service again.
#[test]
fn topology_hints_follow_the_zone_label_of_this_node() {
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    api.apply(web_service("127.0.0.80:80".parse().unwrap()));
    let hinted = |ip: &str, zone: &str| json!({"addresses": [ip], "zone": zone, "hints": {"forZones": [{"name": zone}]}});
    api.apply(slice(
        "web-1",
        "web",
        json!([hinted("127.0.9.1", "zone-a"), hinted("127.0.9.2", "zone-b")]),
        8080,
    ));
    let (watch, changes) = start_watch(&api, None);
    let s = watch.wait_synced(Duration::from_secs(20)).expect("synced");
    assert_eq!(backends(&s, "shop.web.http").unwrap(), ["127.0.9.1:8080"]);

    api.apply(node("node-a", "zone-b"));
    let s = wait_for(&watch, &changes, "the endpoint of zone-b", |s| {
        backends(s, "shop.web.http").unwrap() == ["127.0.9.2:8080"]
    });
    assert_eq!(s.changed, ["shop/web"]);

    // No zone label: no zone to prefer, every ready endpoint.
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    wait_for(&watch, &changes, "every endpoint without a zone", |s| {
        backends(s, "shop.web.http").unwrap() == ["127.0.9.1:8080", "127.0.9.2:8080"]
    });
}

/// Without `--node-name` ringlb is the node named by `NODE_NAME` (as a DaemonSet sets it from
/// `spec.nodeName`); the flag wins over the variable; with neither it does not start. Seen
/// through `internalTrafficPolicy: Local`: only this node's endpoint answers.
#[test]
fn the_node_name_comes_from_node_name_unless_the_flag_gives_it() {
    let (a, b) = (name_server("a"), name_server("b"));
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    api.apply(node("node-b", "zone-a"));
    // Each run on a cluster address of its own: a killed io_uring process holds its port
    // for a moment.
    let local_web = |at: SocketAddr| {
        let mut svc = web_service(at);
        svc["spec"]["internalTrafficPolicy"] = json!("Local");
        api.apply(svc);
    };
    for (name, backend, on) in [("web-a", a, "node-a"), ("web-b", b, "node-b")] {
        let ep = json!([{"addresses": [backend.ip().to_string()], "nodeName": on}]);
        api.apply(slice(name, "web", ep, backend.port()));
    }
    let kubeconfig = api.kubeconfig();
    let run = |flag: Option<&str>, env: Option<&str>| {
        let mut args = vec![
            "run",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--workers",
            "1",
        ];
        if let Some(name) = flag {
            args.extend(["--node-name", name]);
        }
        let mut cmd = ringlb_command(&args);
        match env {
            Some(name) => cmd.env("NODE_NAME", name),
            None => cmd.env_remove("NODE_NAME"),
        };
        Ringlb::try_start_command(cmd)
    };
    let web = own_address(97);
    local_web(web);
    let proxy = run(None, Some("node-b")).expect("starts as node-b");
    for _ in 0..3 {
        assert_eq!(answer(web), "b", "NODE_NAME=node-b");
    }
    drop(proxy);
    let web = own_address(98);
    local_web(web);
    let proxy = run(Some("node-a"), Some("node-b")).expect("starts as node-a");
    for _ in 0..3 {
        assert_eq!(answer(web), "a", "--node-name node-a");
    }
    drop(proxy);
    let failed = run(None, None).err().expect("no node name: no start");
    assert!(!failed.status.success());
    assert!(
        failed.stderr.contains("--node-name") && failed.stderr.contains("NODE_NAME"),
        "{}",
        failed.stderr
    );
    std::fs::remove_file(kubeconfig).unwrap();
}

/// Every (API group, resource, verb) the ClusterRole of `deploy/rbac.yaml` grants.
fn cluster_role_grants() -> std::collections::BTreeSet<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = serde_saphyr::from_multiple::<Value>(&text).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// `deploy/rbac.yaml` grants ringlb exactly what it asks of the API server: the requests the
/// binary makes while it lists, watches and follows a change are all granted, and every
/// grant is used (the Node is listed and watched by name, never fetched with `get`).
#[test]
fn the_cluster_role_grants_exactly_what_ringlb_asks_for() {
    let a = name_server("a");
    let web = own_address(99);
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    api.apply(web_service(web));
    api.apply(slice("web-a", "web", eps(&[a]), a.port()));
    let kubeconfig = api.kubeconfig();
    let proxy = node_a(&kubeconfig);
    let b = name_server("b");
    api.apply(slice("web-b", "web", eps(&[b]), b.port()));
    proxy.wait_line("kubernetes version=");
    let granted = cluster_role_grants();
    // The watches start after the lists; wait for the requests to reach the grants.
    let deadline = Instant::now() + PATIENCE;
    while api.rbac_requests() != granted {
        assert!(
            Instant::now() < deadline,
            "requests {:#?}\ngrants {granted:#?}",
            api.rbac_requests()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(kubeconfig).unwrap();
}

/// Benchmark, not a test (`cargo test --release --test kube -- --ignored --nocapture`): with
/// 10,000 Services watched through the fake API server, the time from an EndpointSlice
/// change (written to the API) to the first new connection that reaches the new endpoint,
/// through the real binary. Each Service has its own cluster IP in 127.10.0.0/16, bound
/// directly (without `--nftables` ringlb listens on them; with it an endpoint change touches
/// no nftables element, since the portal stays). Prints the numbers; bounded in time.
#[test]
#[ignore = "benchmark: 10,000 Services; run with --ignored --nocapture"]
fn endpoint_slice_change_to_traffic_at_ten_thousand_services() {
    ten_thousand_services(None);
}

/// The same with `--nftables`, in a network namespace of its own (API server, endpoints,
/// ringlb and clients all inside it): also the time from a Service losing all its endpoints
/// to refused connections and back (one nftables element each way), and how many ports
/// the portals hold.
#[test]
#[ignore = "benchmark: 10,000 Services with --nftables; run with --ignored --nocapture"]
fn endpoint_slice_change_to_traffic_at_ten_thousand_services_with_nftables() {
    match support::netns::Netns::create("kbench") {
        Ok(ns) => {
            support::netns::require_nft_and_conntrack();
            ten_thousand_services(Some(&ns));
        }
        Err(why) => println!("skipped: {why}"),
    }
}

/// Runs `f` in namespace `ns`, or here.
fn within<T: Send + 'static>(
    ns: Option<&support::netns::Netns>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match ns {
        Some(ns) => support::netns::in_netns(&ns.0, f),
        None => f(),
    }
}

/// Connects to `front` (from `ns`) until it answers `want`, or with `None` until it is
/// refused; how long that took. Bounded in time. Every try is a plain connection from the
/// node, so the client soon reuses its source ports, as a busy one does (ringlb withdraws a
/// redirect before its portal drops the endpoints, so no reset leaves a closed conntrack
/// entry that a reused port would join; see the README's node-mode limits).
fn until_answer(
    ns: Option<&support::netns::Netns>,
    front: SocketAddr,
    want: Option<&'static str>,
) -> Duration {
    within(ns, move || {
        let started = Instant::now();
        loop {
            let got = match std::net::TcpStream::connect(front) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut text);
                    Some(text)
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
                Err(e) => Some(e.to_string()),
            };
            if got.as_deref() == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{front} never answered {want:?}; last {got:?}"
            );
        }
    })
}

fn ten_thousand_services(ns: Option<&support::netns::Netns>) {
    raise_nofile();
    const SERVICES: u32 = 10_000;
    const CHANGES: usize = 10;
    let ip_of = |i: u32| IpAddr::V4(Ipv4Addr::from(0x7f0a_0000 + i)); // 127.10.0.0 + i
    let port = within(ns, move || {
        std::net::TcpListener::bind(SocketAddr::new(ip_of(0), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let (a, b) = within(ns, || (name_server("a"), name_server("b")));
    let api = within(ns, FakeApi::start);
    api.apply(node("node-a", "zone-a"));
    let started = Instant::now();
    for i in 0..SERVICES {
        let ip = ip_of(i).to_string();
        api.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}));
        // Every other Service's endpoint is never dialled.
        let backend = if i == 0 {
            a
        } else {
            "127.0.0.1:9".parse().unwrap()
        };
        let mut s = slice(
            &format!("svc-{i}-1"),
            &format!("svc-{i}"),
            json!([{"addresses": [backend.ip().to_string()]}]),
            backend.port(),
        );
        s["metadata"]["namespace"] = json!("bench");
        api.apply(s);
    }
    let kubeconfig = api.kubeconfig();
    // One worker: one listening socket per Service and worker, and 10,000 stay under the
    // usual 20,000-descriptor hard limit.
    let proxy = node_a_in(ns, &kubeconfig);
    let listed = started.elapsed();
    assert_eq!(proxy.addrs.len(), SERVICES as usize);
    let front = SocketAddr::new(ip_of(0), port);
    until_answer(ns, front, Some("a"));

    let svc_0 = |to: Value, port: u16| {
        let mut s = slice("svc-0-1", "svc-0", to, port);
        s["metadata"]["namespace"] = json!("bench");
        s
    };
    let mut took = Vec::with_capacity(CHANGES);
    for round in 0..CHANGES {
        let (to, name) = if round % 2 == 0 { (b, "b") } else { (a, "a") };
        let changed = Instant::now();
        api.apply(svc_0(
            json!([{"addresses": [to.ip().to_string()]}]),
            to.port(),
        ));
        until_answer(ns, front, Some(name));
        took.push(changed.elapsed());
    }
    took.sort();
    println!(
        "{SERVICES} Services{}: listed and serving {listed:?} after the API held them; \
         EndpointSlice change to traffic over {CHANGES} changes: min {:?}, median {:?}, max {:?} \
         (includes the watch's {:?} settle window)",
        if ns.is_some() { " with --nftables" } else { "" },
        took[0],
        took[CHANGES / 2],
        took[CHANGES - 1],
        config::kube::SETTLE
    );
    if let Some(ns) = ns {
        // All endpoints gone: the frontend is rejected (an nftables element); then back.
        let mut gone = Vec::with_capacity(CHANGES);
        let mut back = Vec::with_capacity(CHANGES);
        for _ in 0..CHANGES {
            let changed = Instant::now();
            api.apply(svc_0(json!([]), a.port()));
            until_answer(Some(ns), front, None);
            gone.push(changed.elapsed());
            let changed = Instant::now();
            api.apply(svc_0(
                json!([{"addresses": [a.ip().to_string()]}]),
                a.port(),
            ));
            until_answer(Some(ns), front, Some("a"));
            back.push(changed.elapsed());
        }
        gone.sort();
        back.sort();
        let listening = ns.exec(&["ss", "-Htln"]);
        let range = ns.exec(&["sysctl", "-n", "net.ipv4.ip_local_port_range"]);
        println!(
            "all endpoints gone to refused: median {:?}, max {:?}; back to traffic: median \
             {:?}, max {:?}; {} TCP listening sockets, ip_local_port_range {}",
            gone[CHANGES / 2],
            gone[CHANGES - 1],
            back[CHANGES / 2],
            back[CHANGES - 1],
            String::from_utf8_lossy(&listening.stdout).lines().count(),
            String::from_utf8_lossy(&range.stdout).trim()
        );
    }
    std::fs::remove_file(kubeconfig).unwrap();
}
