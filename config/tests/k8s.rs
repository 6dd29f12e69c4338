//! Kubernetes manifests: every fixture, resolution into the model, not-proxied reporting and
//! located problems.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use balancers::SchedulerKind;
use config::k8s::{
    load_dir_or_file, parse_manifests, resolve, NotProxiedReason, Object, Resolved,
    StandaloneOptions, TargetPort, TrafficPolicy,
};
use config::{ConfigError, Protocol, Service};

fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/config/k8s")
        .join(kind)
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = fixture_dir(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn node_options() -> StandaloneOptions {
    StandaloneOptions {
        node_addresses: vec![ip("127.0.0.100"), ip("127.0.0.101")],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sas(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| sa(s)).collect()
}

fn load(name: &str) -> Resolved {
    let path = fixture_dir("valid").join(name);
    load_dir_or_file(&path, &node_options()).unwrap_or_else(|e| panic!("{e}"))
}

fn service<'a>(r: &'a Resolved, name: &str) -> &'a Service {
    r.config
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {:?}", names(r)))
}

fn names(r: &Resolved) -> Vec<&str> {
    r.config.services.iter().map(|s| s.name.as_str()).collect()
}

fn backends(s: &Service) -> Vec<SocketAddr> {
    s.backends.iter().map(|b| b.address).collect()
}

fn resolve_text(text: &str, options: &StandaloneOptions) -> Result<Resolved, ConfigError> {
    resolve(&parse_manifests("inline.yaml", text)?, options)
}

#[test]
fn every_valid_fixture_resolves() {
    let files = fixtures("valid");
    assert!(files.len() >= 7, "valid fixtures missing: {files:?}");
    for f in files {
        let r = load_dir_or_file(&f, &node_options())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            !r.config.services.is_empty() || !r.not_proxied.is_empty(),
            "{}: resolved to nothing",
            f.display()
        );
        assert_eq!(r.config.services.len(), r.ports.len());
        for s in &r.config.services {
            assert!(!s.listen.is_empty() && !s.backends.is_empty(), "{s:?}");
        }
    }
}

/// Each invalid fixture lists in `# expect: file:line:column: path: reason` lines every
/// problem it must produce.
#[test]
fn every_invalid_fixture_reports_each_expected_problem_with_its_location() {
    let files = fixtures("invalid");
    assert!(files.len() >= 8, "invalid fixtures missing: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no '# expect:' line",
            f.display()
        );
        let err = match load_dir_or_file(&f, &node_options()) {
            Ok(r) => panic!("{} must be rejected, got {:?}", f.display(), names(&r)),
            Err(e) => e,
        };
        let rendered = err.to_string();
        for e in &expects {
            assert!(
                rendered.contains(e),
                "{}: expected {e:?} in:\n{rendered}",
                f.display()
            );
        }
        assert_eq!(
            err.problems().len(),
            expects.len(),
            "{}: every problem is expected:\n{rendered}",
            f.display()
        );
        for p in err.problems() {
            assert!(p.line.is_some() && p.column.is_some(), "unlocated: {p}");
        }
    }
}

#[test]
fn multi_port_service_gets_one_service_per_port_without_not_ready_addresses() {
    let r = load("multi-port.yaml");
    assert_eq!(
        names(&r),
        ["default.my-service.http", "default.my-service.https"]
    );
    let http = service(&r, "default.my-service.http");
    assert_eq!(http.listen, sas(&["127.0.0.10:80"]));
    assert_eq!(backends(http), sas(&["127.0.1.1:9376", "127.0.1.2:9376"]));
    let https = service(&r, "default.my-service.https");
    assert_eq!(https.listen, sas(&["127.0.0.10:443"]));
    assert_eq!(backends(https), sas(&["127.0.1.1:9377", "127.0.1.2:9377"]));
    assert_eq!(http.scheduler.kind, SchedulerKind::Rr);
    assert_eq!(http.session_affinity, None);
    assert_eq!(http.protocol, Protocol::Tcp);
    // The not-ready address is kept on the Kubernetes side, not as a backend.
    let port = &r.ports[0];
    assert_eq!(port.service, "default/my-service");
    assert_eq!(port.port_name, "http");
    let not_ready = port
        .endpoints
        .iter()
        .find(|e| e.address == sa("127.0.1.3:9376"))
        .unwrap();
    assert!(!not_ready.usable && !not_ready.conditions.ready);
    assert_eq!(port.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert!(r.not_proxied.is_empty());
}

#[test]
fn node_ports_listen_on_every_node_address_given() {
    let r = load("nodeport.yaml");
    let s = service(&r, "shop.my-nodeport.80");
    assert_eq!(
        s.listen,
        sas(&["127.0.0.11:80", "127.0.0.100:30007", "127.0.0.101:30007"])
    );
    assert_eq!(backends(s), sas(&["127.0.3.1:80", "127.0.3.2:80"]));
    assert_eq!(r.ports[0].endpoints[1].zone.as_deref(), Some("zone-b"));

    let path = fixture_dir("valid").join("nodeport.yaml");
    let r = load_dir_or_file(&path, &StandaloneOptions::default()).unwrap();
    assert_eq!(r.config.services[0].listen, sas(&["127.0.0.11:80"]));
}

#[test]
fn load_balancer_listens_on_vip_ingress_only() {
    let r = load("loadbalancer.yaml");
    let s = service(&r, "default.my-lb.80");
    assert_eq!(
        s.listen,
        sas(&[
            "127.0.0.20:80",
            "127.0.0.21:80",
            "127.0.0.100:30080",
            "127.0.0.101:30080"
        ]),
        "127.0.0.22 has ipMode Proxy and the hostname is never listened on"
    );
    assert_eq!(backends(s), sas(&["127.0.4.1:9376"]));
    assert_eq!(s.scheduler.kind, SchedulerKind::Wlc);
    assert_eq!(r.ports[0].external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(r.ports[0].internal_traffic_policy, TrafficPolicy::Cluster);
}

#[test]
fn headless_and_external_name_services_are_reported_as_dns_only() {
    let r = load("dns-only.yaml");
    assert!(r.config.services.is_empty());
    let got: Vec<(String, String)> = r
        .not_proxied
        .iter()
        .map(|n| (n.name.clone(), n.reason.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "prod.my-database".to_owned(),
                "ExternalName my.database.example.com: DNS only".to_owned()
            ),
            (
                "default.my-headless".to_owned(),
                "headless (clusterIP: None): DNS only".to_owned()
            ),
        ]
    );
    assert_eq!(
        r.not_proxied[0].reason,
        NotProxiedReason::ExternalName("my.database.example.com".into())
    );
}

#[test]
fn a_service_without_selector_uses_its_hand_written_endpoints() {
    let r = load("without-selector.yaml");
    let s = service(&r, "default.my-vms.http");
    assert_eq!(s.listen, sas(&["127.0.0.30:80", "127.0.0.31:80"]));
    // Each subset brings its own port.
    assert_eq!(
        backends(s),
        sas(&["127.0.5.1:9376", "127.0.5.2:9376", "127.0.5.3:9380"])
    );
    let text = std::fs::read_to_string(fixture_dir("valid").join("without-selector.yaml")).unwrap();
    let objects = parse_manifests("without-selector.yaml", &text).unwrap();
    let Object::Service(svc) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert!(!svc.has_selector);
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(9376));
}

#[test]
fn client_ip_affinity_and_scheduler_annotations_reach_the_model() {
    let r = load("client-ip-affinity.yaml");
    let s = service(&r, "default.sticky.https");
    assert_eq!(s.session_affinity, Some(Duration::from_secs(600)));
    assert_eq!(s.scheduler.kind, SchedulerKind::Sh);
    assert!(s.scheduler.sh_fallback && s.scheduler.sh_port);
    assert!(!s.scheduler.mh_port);
    assert_eq!(backends(s), sas(&["127.0.6.1:8443", "127.0.6.2:8443"]));

    let default_timeout = resolve_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 127.0.0.1\n  \
         sessionAffinity: ClientIP\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Endpoints\n\
         metadata: {name: s}\nsubsets: [{addresses: [{ip: 127.0.0.2}], ports: [{port: 8080}]}]\n",
        &StandaloneOptions::default(),
    )
    .unwrap();
    assert_eq!(
        default_timeout.config.services[0].session_affinity,
        Some(Duration::from_secs(10_800))
    );
}

#[test]
fn named_target_port_resolves_per_slice_and_terminating_endpoints_are_a_fallback() {
    let r = load("endpointslices.yaml");
    assert_eq!(
        names(&r),
        ["shop.web.http", "shop.web.metrics", "shop.draining.http"]
    );
    let web = service(&r, "shop.web.http");
    assert_eq!(web.listen, sas(&["127.0.0.50:80"]));
    // One named port, two numbers; the terminating 127.0.7.2 is not used while others are
    // ready; the stale Endpoints (127.0.7.99) lose to the slices.
    assert_eq!(backends(web), sas(&["127.0.7.1:8080", "127.0.7.3:8081"]));
    let terminating = r.ports[0]
        .endpoints
        .iter()
        .find(|e| e.address.ip() == ip("127.0.7.2"))
        .unwrap();
    assert!(terminating.conditions.terminating && terminating.conditions.serving);
    assert!(!terminating.usable);
    assert_eq!(terminating.node_name.as_deref(), Some("node-b"));

    let metrics = service(&r, "shop.web.metrics");
    assert_eq!(metrics.protocol, Protocol::Udp);
    assert_eq!(backends(metrics), sas(&["127.0.7.1:9100"]));

    // No endpoint ready: the serving and terminating one takes traffic, the other not.
    let draining = service(&r, "shop.draining.http");
    assert_eq!(backends(draining), sas(&["127.0.8.1:8080"]));

    let text = std::fs::read_to_string(fixture_dir("valid").join("endpointslices.yaml")).unwrap();
    let objects = parse_manifests("endpointslices.yaml", &text).unwrap();
    let Object::Service(svc) = &objects[0] else {
        panic!()
    };
    assert_eq!(svc.ports[0].target_port, TargetPort::Name("web".into()));
}

#[test]
fn a_list_with_server_side_fields_is_read() {
    let r = load("list.yaml");
    let s = service(&r, "default.api.grpc");
    assert_eq!(s.listen, sas(&["127.0.0.60:50051"]));
    assert_eq!(backends(s), sas(&["127.0.9.1:50051"]));
}

#[test]
fn slice_conditions_take_kubernetes_defaults() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s-1\n  \
                labels: {kubernetes.io/service-name: s}\naddressType: IPv6\nendpoints:\n  \
                - addresses: [\"::1\", \"::2\"]\n  - addresses: [\"::3\"]\n    conditions: \
                {ready: false}\nports: [{port: 80}, {name: x}]\n";
    let objects = parse_manifests("s.yaml", text).unwrap();
    let Object::EndpointSlice(slice) = &objects[0] else {
        panic!()
    };
    assert_eq!(slice.service_name, "s");
    assert_eq!(slice.endpoints[0].address, ip("::1"), "addresses[0] only");
    let c = slice.endpoints[0].conditions;
    assert!(c.ready && c.serving && !c.terminating);
    let c = slice.endpoints[1].conditions;
    assert!(!c.ready && c.serving && !c.terminating);
    assert_eq!(slice.ports[1].port, None);
    assert_eq!(slice.meta.namespace, "default");
    assert_eq!(slice.meta.origin.loc.line, 1);
}

#[test]
fn ports_without_endpoints_or_listen_address_are_not_proxied() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec:
  clusterIP: 127.0.0.1
  ports: [{name: a, port: 80}, {name: b, port: 81}, {name: c, port: 82}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: lonely}
subsets:
  - notReadyAddresses: [{ip: 127.0.0.2}]
    ports: [{name: a, port: 8080}]
  - addresses: [{ip: 127.0.0.3}]
    ports: [{name: c, port: 8082}]
---
apiVersion: v1
kind: Service
metadata: {name: nowhere}
spec:
  type: NodePort
  ports: [{port: 80, nodePort: 30001}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  clusterIP: 127.0.0.4
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: elsewhere
  labels: {service.kubernetes.io/service-proxy-name: cilium}
spec:
  clusterIP: 127.0.0.5
  ports: [{port: 80}]
";
    let r = resolve_text(text, &StandaloneOptions::default()).unwrap();
    assert_eq!(names(&r), ["default.lonely.c"]);
    let got: Vec<String> = r
        .not_proxied
        .iter()
        .map(|n| format!("{}: {}", n.name, n.reason))
        .collect();
    assert_eq!(
        got,
        [
            "default.lonely.a: no usable endpoints: no endpoint is ready, nor serving and terminating",
            "default.lonely.b: no usable endpoints: no endpoint port named \"b\" with protocol TCP",
            "default.nowhere.80: no address to listen on (no clusterIP, externalIPs or load \
             balancer IP, and no nodePort with node addresses)",
            "default.nothing.80: no usable endpoints: no Endpoints or EndpointSlice for this Service",
            "default.elsewhere: service.kubernetes.io/service-proxy-name=cilium: served by another proxy",
        ]
    );
    // With node addresses, the NodePort service has somewhere to listen (but no endpoints).
    let r = resolve_text(text, &node_options()).unwrap();
    assert!(r
        .not_proxied
        .iter()
        .any(|n| n.name == "default.nowhere.80"
            && matches!(n.reason, NotProxiedReason::NoEndpoints(_))));
}

#[test]
fn a_directory_resolves_all_files_together() {
    let r = load_dir_or_file(&fixture_dir("valid"), &node_options()).unwrap();
    let per_file: usize = fixtures("valid")
        .iter()
        .map(|f| {
            load_dir_or_file(f, &node_options())
                .unwrap()
                .config
                .services
                .len()
        })
        .sum();
    assert_eq!(r.config.services.len(), per_file);
    assert!(names(&r).contains(&"default.my-vms.http"));
    assert!(names(&r).contains(&"shop.web.http"));
}

#[test]
fn problems_of_several_files_name_each_file_with_line_and_column() {
    let err = load_dir_or_file(&fixture_dir("invalid"), &node_options()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sctp.yaml:10:17: Service default/sctp-app: spec.ports[0].protocol: SCTP is not supported"), "{text}");
    assert!(
        text.contains("fqdn-slice.yaml:9:14: EndpointSlice default/ext-1: addressType"),
        "{text}"
    );
    // Only parse problems: resolution waits until every file parses.
    assert!(!text.contains("already a frontend"), "{text}");
}

#[test]
fn duplicates_empty_texts_and_missing_files_are_clear() {
    let dup = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 127.0.0.1, \
               ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n\
               spec: {clusterIP: 127.0.0.2, ports: [{port: 80}]}\n";
    let err = resolve_text(dup, &StandaloneOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("inline.yaml:6:1: Service default/a: metadata.name: duplicate Service default/a (also inline.yaml:1:1)"),
        "{err}"
    );
    let err = parse_manifests("empty.yaml", "# nothing\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("empty.yaml: no Kubernetes objects"),
        "{err}"
    );
    let err = load_dir_or_file(Path::new("/nonexistent/k8s"), &node_options()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}

#[test]
fn a_scheduler_that_cannot_serve_its_endpoints_is_located_at_the_annotation() {
    // One endpoint more than the default mh table (4093 slots) holds.
    let addresses: Vec<String> = (1..=4094)
        .map(|i| format!("{{ip: 127.1.{}.{}}}", i / 256, i % 256))
        .collect();
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  annotations:\n    \
         ringlb.io/scheduler: mh\nspec:\n  clusterIP: 127.0.0.1\n  ports: [{{port: 80}}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {{name: big}}\nsubsets: [{{addresses: [{}], \
         ports: [{{port: 80}}]}}]\n",
        addresses.join(", ")
    );
    let err = resolve_text(&text, &StandaloneOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(
            "inline.yaml:6:26: Service default/big: metadata.annotations[\"ringlb.io/scheduler\"]: \
             scheduler mh cannot serve the 4094 endpoints of default.big.80: 4094 backends do not \
             fit an mh table of 4093 slots"
        ),
        "{err}"
    );
}

#[test]
fn resolution_problems_across_files_name_each_file() {
    let dir = std::env::temp_dir().join(format!("ringlb-k8s-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
             clusterIP: 127.0.0.1\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: Endpoints\n\
             metadata: {{name: {name}}}\nsubsets: [{{addresses: [{{ip: 127.0.0.2}}], ports: [{{port: 8080}}]}}]\n"
        )
    };
    std::fs::write(dir.join("a.yaml"), svc("a")).unwrap();
    std::fs::write(dir.join("b.yml"), svc("b")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    let endpoints_again = svc("a").split("---\n").nth(1).unwrap().to_owned();
    std::fs::write(dir.join("c.yaml"), endpoints_again).unwrap();
    let err = load_dir_or_file(&dir, &StandaloneOptions::default()).unwrap_err();
    let text = err.to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    // Problems in two files: the error names the directory, each problem its file.
    let d = dir.display();
    assert_eq!(err.problems().len(), 2, "{text}");
    assert!(
        text.contains(&format!(
            "{d}: {d}/b.yml:6:11: Service default/b: spec.ports[0]: tcp 127.0.0.1:80 is \
             already a frontend of default.a.80"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{d}: {d}/c.yaml:1:1: Endpoints default/a: metadata.name: duplicate Endpoints \
             default/a (also {d}/a.yaml:8:1)"
        )),
        "{text}"
    );
}
