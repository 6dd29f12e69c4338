//! The processes and threads of a running node-mode ringlb are the ones
//! `docs/architecture.md` draws, and no others: the master, one thread; its worker process
//! with its main thread (`ringlb`, the control runtime, on which every control-plane source
//! runs as a task), one per worker thread, and the decision-log writer.

use super::*;

/// The names of the threads of process `pid` (`/proc/PID/task/*/comm`), sorted. The kernel's
/// own io_uring workers (`iou-wrk-…`, `iou-sqp-…`) run in the process too: they are not
/// ringlb's and are left out.
fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|comm| comm.trim().to_owned())
        .filter(|name| !name.starts_with("iou-"))
        .collect();
    names.sort();
    names
}

/// Node mode with every control-plane source at work: the API watch, nftables and conntrack
/// (a UDP Service), host address polling (`--nodeport-addresses` as a range), the node health
/// port and `healthCheckNodePort`s, the admin API, a decision log, while a pod's connection
/// goes through a cluster IP.
#[test]
fn a_node_mode_ringlb_is_a_one_thread_master_and_a_worker_with_its_threads_only() {
    let Some((pod, node, backend)) = pod_node_backend("thpod", "thnode", "thbe") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    let api = FakeApi::start(&node.0, "threads", objects());
    let decisions = std::env::temp_dir().join(format!(
        "ringlb-test-{}-threads-decisions.jsonl",
        std::process::id()
    ));
    let proxy = node_proxy(
        &node,
        &api,
        &[
            "--nodeport-addresses",
            "10.241.0.0/16",
            "--healthz-bind-address",
            "10.241.1.1:10256",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--decision-log",
            decisions.to_str().unwrap(),
        ],
    );
    // Ready means steered: the first tables are written before the `ready` line.
    assert_eq!(ask(&pod.0, "10.96.0.10:80").unwrap(), "web");
    wait_decision_line(&decisions, "10.96.0.10:80");
    assert!(http_get(&pod.0, "10.241.1.1:10256").starts_with("HTTP/1.1 200"));

    assert_eq!(
        thread_names(proxy.pid()),
        ["ringlb"],
        "the master is one thread"
    );
    assert_eq!(parent_of(proxy.worker_pid()), Some(proxy.pid()));
    // The kernel keeps 15 bytes of a name: `ringlb-decisions` shows as `ringlb-decision`.
    assert_eq!(
        thread_names(proxy.worker_pid()),
        [
            "ringlb",
            "ringlb-decision",
            "ringlb-worker-0",
            "ringlb-worker-1"
        ],
        "the threads of docs/architecture.md, and no others"
    );
    let _ = std::fs::remove_file(&decisions);
}
