//! A Service losing and regaining its endpoints: refused, then served, never reset.

use super::*;

/// What one connection from a client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Try {
    /// Answered by the endpoint.
    Served,
    /// `ECONNREFUSED`: the kernel refused it (the `no-endpoints` reject).
    Refused,
    /// Accepted, then reset: a portal had no endpoint for it.
    Reset,
    /// Anything else (a timeout, a wrong answer).
    Other,
}

/// Connects from namespace `ns` to `to` again and again, one connection at a time, each read
/// to its end, until the last `run` tries all gave `until`; every outcome in order. Bounded
/// (10 s), so an outcome that never settles comes back for the caller to report.
fn tries_until(ns: &str, to: SocketAddr, until: Try, run: usize) -> Vec<Try> {
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tries = Vec::new();
        while Instant::now() < deadline {
            let got = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Try::Refused,
                Err(_) => Try::Other,
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut answer = String::new();
                    match std::io::Read::read_to_string(&mut s, &mut answer) {
                        Ok(_) if answer == "web\n" => Try::Served,
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => Try::Reset,
                        _ => Try::Other,
                    }
                }
            };
            tries.push(got);
            if tries.len() >= run && tries[tries.len() - run..].iter().all(|t| *t == until) {
                break;
            }
        }
        tries
    })
}

/// `tries` as runs, the first 40 of them: `Served×12 Refused×130`.
fn runs(tries: &[Try]) -> String {
    let mut out: Vec<(Try, usize)> = Vec::new();
    for t in tries {
        match out.last_mut() {
            Some((last, n)) if last == t => *n += 1,
            _ => out.push((*t, 1)),
        }
    }
    let mut text: Vec<String> = out
        .iter()
        .take(40)
        .map(|(t, n)| format!("{t:?}×{n}"))
        .collect();
    if out.len() > 40 {
        text.push(format!("and {} runs more", out.len() - 40));
    }
    text.join(" ")
}

/// A Service loses all its endpoints and gets them back, three times, while the node itself
/// keeps connecting to its cluster IP from a 128-port range, so the client soon reuses its
/// source ports (as a busy one does after some thousand connections). Each way the client
/// sees one switch and nothing else: served, then refused from the moment the `no-endpoints`
/// element is in; refused, then served from the moment the redirect is back. Never accepted
/// and reset: ringlb withdraws the redirect before its data plane drops the endpoints.
/// Before, the portal reset the clients of that window, and each reset (from the portal's
/// side, no FIN) left a conntrack entry in `CLOSE` that the kernel does not reopen for a new
/// SYN on the same ports: such a SYN skipped the `nat` chain and every `ct state new` check,
/// was reset again while the endpoints were gone and served early when they came back,
/// followed by refusals until the redirect was written.
#[test]
fn a_service_losing_and_regaining_its_endpoints_is_refused_then_served_never_reset() {
    let Some((pod, node, backend)) = pod_node_backend("churn-pod", "churn", "churn-be") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    node.sysctl("net.ipv4.ip_local_port_range=40000 40127");
    let api = in_netns(&node.0, fake_api::FakeApi::start);
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}));
    let slice = |endpoints: Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "shop",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": endpoints})
    };
    let endpoint = json!([{"addresses": ["10.241.2.2"], "nodeName": "node-a",
                           "conditions": {"ready": true}}]);
    api.apply(slice(endpoint.clone()));
    let kubeconfig = api.kubeconfig();
    let proxy = Ringlb::start_in_netns(
        &node.0,
        &[
            "run",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "node-a",
            "--nftables",
            "--admin",
            "off",
            "--workers",
            "1",
        ],
    );
    let front: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert_eq!(tries_until(&node.0, front, Try::Served, 1), [Try::Served]);
    // One switch from `from` to `to` (each try of the run is `from` until the first `to`,
    // then `to`), settled over the whole port range.
    let one_switch = |tries: &[Try], from: Try, to: Try| {
        let first = tries.iter().position(|t| *t == to).unwrap_or(tries.len());
        tries[..first].iter().all(|t| *t == from) && tries[first..].iter().all(|t| *t == to)
    };
    for round in 0..3 {
        api.apply(slice(json!([])));
        let gone = tries_until(&node.0, front, Try::Refused, 128);
        assert!(
            one_switch(&gone, Try::Served, Try::Refused) && gone.ends_with(&[Try::Refused; 128]),
            "round {round}, endpoints gone: {}\n{}",
            runs(&gone),
            proxy.stderr()
        );
        api.apply(slice(endpoint.clone()));
        let back = tries_until(&node.0, front, Try::Served, 128);
        assert!(
            one_switch(&back, Try::Refused, Try::Served) && back.ends_with(&[Try::Served; 128]),
            "round {round}, endpoints back: {}\n{}",
            runs(&back),
            proxy.stderr()
        );
    }
    drop(proxy);
    let _ = std::fs::remove_file(kubeconfig);
}
