//! `ringlb run --kubernetes`, the real binary, against the fake API server: serving, outages,
//! what is not served, session affinity, topology hints, the node name and the RBAC it needs.

use super::*;

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
