//! Ways a running ringlb is upgraded, restarted or crashed, for the tests and the benchmark
//! that put a load through them ([`super::load`]).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::{parent_of, pid_of, ringlb_command, Ringlb, PATIENCE};

/// How an upgrade is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Ask {
    /// `kill -USR2 MASTER`.
    Signal,
    /// `ringlb upgrade --handover-socket PATH`.
    Command,
}

/// Upgrades `proxy` in place and waits until the new worker serves; returns its PID. Asserts
/// the master kept its PID and the worker changed.
pub fn upgrade(proxy: &Ringlb, worker: i32, ask: Ask) -> i32 {
    match ask {
        Ask::Signal => proxy.signal(libc::SIGUSR2),
        Ask::Command => {
            let out = ringlb_command(&["upgrade", "--handover-socket", proxy.handover_socket()])
                .output()
                .expect("run ringlb upgrade");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "ringlb upgrade: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                said.starts_with(&format!("upgraded master={} worker=", proxy.pid())),
                "{said}"
            );
        }
    }
    let line = proxy.wait_line("upgraded worker=");
    let new = pid_of(&line.replace("worker=", "pid="));
    assert_ne!(new, worker, "a new worker serves after the upgrade");
    assert_eq!(parent_of(new), Some(proxy.pid()), "the master kept its PID");
    new
}

/// A worker crash: when it was killed, when the master had reaped it, and when its
/// successor said it was ready.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub killed: Instant,
    pub dead: Instant,
    pub ready: Instant,
}

/// `SIGKILL`s the worker `worker` of `proxy`, waits until the master has reaped it and its
/// successor is ready; returns the successor's PID and the crash's times.
pub fn kill_worker(proxy: &Ringlb, worker: i32) -> (i32, Crash) {
    let killed = Instant::now();
    // SAFETY: kill(2) with the PID of a worker of the master this test started.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let deadline = killed + PATIENCE;
    while parent_of(worker) == Some(proxy.pid()) {
        assert!(
            Instant::now() < deadline,
            "the master never reaped {worker}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let dead = Instant::now();
    let next = pid_of(&proxy.wait_line("ready"));
    let ready = Instant::now();
    assert_eq!(parent_of(next), Some(proxy.pid()), "the master started it");
    (
        next,
        Crash {
            killed,
            dead,
            ready,
        },
    )
}

/// Today's restart without a master's help: a second `ringlb run ARGS --share-port` joins the
/// port groups, is ready, then the old one is told to stop and drains. Returns the new one.
pub fn share_port_restart(old: Ringlb, args: &[&str]) -> Ringlb {
    let mut with = args.to_vec();
    with.push("--share-port");
    let new = Ringlb::start(&with);
    let mut old = old;
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit().success(), "{}", old.stderr());
    new
}

/// `nft list table FAMILY ringlb` from within network namespace `ns`, every 10 ms until
/// `stop`: the times it found the table missing, or without `must_contain`.
pub fn poll_table(
    ns: &str,
    family: &'static str,
    must_contain: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<(u64, Vec<String>)> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        super::netns::enter(&ns);
        let mut polls = 0;
        let mut missing = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let out = Command::new("nft")
                .args(["list", "table", family, "ringlb"])
                .output()
                .expect("run nft");
            polls += 1;
            let table = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !table.contains(must_contain) {
                missing.push(format!("{}{}", table, String::from_utf8_lossy(&out.stderr)));
            }
            thread::sleep(Duration::from_millis(10));
        }
        (polls, missing)
    })
}
