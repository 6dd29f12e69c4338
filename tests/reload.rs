//! Live config changes: file watch and SIGHUP, under load, with bad edits and backend drains.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

fn service(name: &str, listen: &str, backends: &[(SocketAddr, u32)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{address: \"{a}\", weight: {w}}}"))
        .collect();
    format!(
        "  - name: {name}\n    listen: [\"{listen}\"]\n    scheduler: wrr\n    backends: [{}]\n",
        list.join(", ")
    )
}

fn config_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-reload-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ringlb.yaml")
}

/// One echo round trip on a new connection; `Err` on any failure.
fn round_trip(addr: SocketAddr, n: u64) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    let msg = format!("hello {n}\n");
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = String::new();
    s.read_to_string(&mut back)?;
    if back == msg {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("got {back:?}")))
    }
}

#[test]
fn dozens_of_reloads_under_load_fail_no_connection() {
    raise_nofile();
    let echoes: Vec<SocketAddr> = (0..4).map(|_| echo_server()).collect();
    let path = config_path("load");
    // A fixed free port, so the load can target it across reloads.
    let web = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut yaml = format!(
        "services:\n{}",
        service("web", &web.to_string(), &[(echoes[0], 1)])
    );
    std::fs::write(&path, &yaml).unwrap();
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "2"]);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    match round_trip(web, c * 1_000_000 + n) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.push(e.to_string());
                            0
                        }
                    };
                    n += 1;
                }
                failures
            })
        })
        .collect();

    for round in 1..=30u32 {
        // Backends added, removed and re-weighted; a second service comes and goes.
        let k = 1 + (round as usize % echoes.len());
        let backends: Vec<(SocketAddr, u32)> =
            echoes.iter().take(k).map(|&a| (a, 1 + round % 3)).collect();
        yaml = format!("services:\n{}", service("web", &web.to_string(), &backends));
        if round % 3 == 0 {
            yaml += &service("extra", &extra.to_string(), &[(echoes[1], 1)]);
        }
        replace_file(&path, &yaml);
        let line = proxy.wait_line("reloaded");
        assert!(line.contains("version="), "{line}");
        if round % 3 == 0 {
            round_trip(extra, u64::from(round)).expect("the service added by the reload serves");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        ok.load(Ordering::Relaxed) > 30,
        "the load made too few round trips to mean anything"
    );
    assert!(
        failures.is_empty(),
        "{} failed connections: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_bad_edit_is_reported_and_the_last_good_config_keeps_serving() {
    let (a, b) = (name_server("a"), name_server("b"));
    let path = config_path("bad");
    let good = |backend: SocketAddr| {
        format!("services:\n  - name: s\n    listen: [\"127.0.0.1:0\"]\n    backends: [{{address: \"{backend}\"}}]\n")
    };
    std::fs::write(&path, good(a)).unwrap();
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "1"]);
    let answer = || support::answer(proxy.addr());
    assert_eq!(answer(), "a");
    replace_file(&path, "services:\n  - name: s\n    listen: [\"127.0.0.1:0\"]\n    backends: [{address: \"nowhere\"}]\n");
    proxy.wait_line("reload-failed");
    proxy.wait_stderr("ringlb.yaml:4:26: services[0].backends[0].address");
    assert_eq!(answer(), "a", "still serving the last good config");
    replace_file(&path, &good(b));
    proxy.wait_line("reloaded");
    assert_eq!(answer(), "b");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn sighup_reloads_and_a_removed_backend_drains() {
    let (a, b) = (named_echo("a"), named_echo("b"));
    let path = config_path("hup");
    let with = |backends: &[SocketAddr]| {
        let list: Vec<String> = backends
            .iter()
            .map(|x| format!("{{address: \"{x}\"}}"))
            .collect();
        format!(
            "services:\n  - name: s\n    listen: [\"127.0.0.1:0\"]\n    backends: [{}]\n",
            list.join(", ")
        )
    };
    std::fs::write(&path, with(&[a])).unwrap();
    let proxy = Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--workers",
        "1",
        "--no-watch",
        "--backend-drain-timeout",
        "500ms",
    ]);
    let mut old = connect(proxy.addr());
    assert_eq!(read_name(&mut old), "a");

    std::fs::write(&path, with(&[b])).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_line("reloaded");
    let mut new = connect(proxy.addr());
    assert_eq!(
        read_name(&mut new),
        "b",
        "new connections go to the new backend"
    );

    // The established connection keeps its backend for now...
    old.write_all(b"still here\n").unwrap();
    let mut buf = [0u8; 11];
    old.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here\n");
    // ...and is closed by the drain deadline, though it is not idle.
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = old.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain deadline not applied"
    );
    // The connection to the remaining backend is untouched.
    new.write_all(b"ping\n").unwrap();
    let mut pong = [0u8; 5];
    new.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping\n");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// `ringlb reload ARGS` against `proxy`: its exit code, stdout and stderr.
fn ringlb_reload(proxy: &Ringlb) -> (Option<i32>, String, String) {
    let out = ringlb_command(&["reload", "--handover-socket", proxy.handover_socket()])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `ringlb reload` goes through the master to the worker and says how it went: the version
/// now served, or the reason the last good config keeps serving (exit 1).
#[test]
fn ringlb_reload_says_how_the_reload_went() {
    let (a, b) = (name_server("a"), name_server("b"));
    let path = config_path("command");
    let web = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &path,
        format!("services:\n{}", service("web", &web.to_string(), &[(a, 1)])),
    )
    .unwrap();
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--no-watch"]);
    assert_eq!(answer(web), "a");

    std::fs::write(
        &path,
        format!("services:\n{}", service("web", &web.to_string(), &[(b, 1)])),
    )
    .unwrap();
    let (code, stdout, stderr) = ringlb_reload(&proxy);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("reloaded version="), "{stdout}");
    assert_eq!(answer(web), "b");

    let bad = service("web", &web.to_string(), &[(b, 1)]).replace(&b.to_string(), "b:http");
    std::fs::write(&path, format!("services:\n{bad}")).unwrap();
    let (code, _, stderr) = ringlb_reload(&proxy);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("last good config keeps serving"),
        "{stderr}"
    );
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("services[0].backends[0].address"),
        "names the field: {stderr}"
    );
    assert_eq!(answer(web), "b");

    // From flags there is no file to read again.
    let quick = Ringlb::start(&["run", "--listen", "127.0.0.1:0", "--to", &a.to_string()]);
    let (code, _, stderr) = ringlb_reload(&quick);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing to reload"), "{stderr}");
}
