//! A `healthCheckNodePort` under attack from a pod: slow clients hold no thread each and
//! never keep the load balancer's probe out.

use support::attack::{probe, proc_status, SlowClients};

use super::*;

/// 400 slow clients in the pod namespace (a byte of a request head that never ends every
/// 200 ms, each connecting again when closed) on the `healthCheckNodePort` of `lb`: ringlb's
/// thread count does not move, and kube-proxy's answer reaches a fresh probe during the
/// attack and after it.
#[test]
fn slow_clients_of_a_health_check_node_port_never_keep_a_probe_out() {
    let Some((pod, node, backend)) = pod_node_backend("hcpod", "hcnode", "hcbe") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    let api = FakeApi::start(&node.0, "health", objects());
    let proxy = node_proxy(&node, &api, &["--workers", "1"]);
    let hc: SocketAddr = "10.241.1.1:32100".parse().unwrap();
    let answered = |when: &str| match in_netns(&pod.0, move || probe(hc, "/any/path")) {
        Ok((200, body)) if body.contains("\"localEndpoints\": 1,") => {}
        other => panic!("healthCheckNodePort {when}: {other:?}"),
    };
    answered("before");
    let threads = proc_status(proxy.worker_pid(), "Threads");

    let slow = SlowClients::start(hc, 400, Duration::from_millis(200), true, Some(&pod.0));
    let mut peak = threads;
    for i in 0..10 {
        peak = peak.max(proc_status(proxy.worker_pid(), "Threads"));
        answered(&format!("during the attack (probe {i})"));
        // Pacing of the probes, not readiness: they spread over the attack.
        std::thread::sleep(Duration::from_millis(200));
    }
    let connects = slow.stop();
    eprintln!("threads {threads} before, at most {peak} during; {connects} slow connections");
    assert!(
        peak <= threads + 2,
        "{peak} threads during the attack, {threads} before"
    );
    answered("after");
}
