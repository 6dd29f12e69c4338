//! Schedulers and ClientIP affinity through real sockets.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};

use support::*;

/// ringlb in front of `a` and `b` with ClientIP affinity (`extra` adds service keys).
fn sticky(tag: &str, a: SocketAddr, b: SocketAddr, extra: &str, workers: &str) -> Ringlb {
    let path = write_config(
        tag,
        &format!(
            "services:\n  - name: sticky\n    listen: [\"127.0.0.1:0\"]\n    session_affinity: client_ip\n{extra}    \
             backends: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]\n"
        ),
    );
    let proxy = Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--workers",
        workers,
    ]);
    std::fs::remove_file(&path).unwrap();
    proxy
}

/// Closes `s` the way a client ends cleanly, and waits until ringlb has closed its side too.
fn close(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
}

#[test]
fn lc_sends_new_connections_to_the_backend_with_fewer_open_ones() {
    for driver in ["uring", "epoll"] {
        let (a, b) = (named_echo("a"), named_echo("b"));
        // One worker: when the client sees its connection closed, ringlb has already released
        // the backend's count, before it can accept anything new.
        let to = format!("{a},{b}");
        let proxy = Ringlb::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--scheduler",
            "lc",
            "--workers",
            "1",
            "--io-driver",
            driver,
        ]);
        let mut open: Vec<(String, TcpStream)> = Vec::new();
        for _ in 0..5 {
            let mut s = connect(proxy.addr());
            open.push((read_name(&mut s), s));
        }
        let names: Vec<&str> = open.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "a", "b", "a"],
            "{driver}: ties go to the earlier backend"
        );
        // Close b's two connections: b has 0 open, a has 3.
        let (b_conns, a_conns): (Vec<_>, Vec<_>) = open.into_iter().partition(|(n, _)| n == "b");
        for (_, s) in b_conns {
            close(s);
        }
        let mut next = Vec::new();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = connect(proxy.addr());
            next.push(read_name(&mut s));
            held.push(s);
        }
        assert_eq!(
            next,
            ["b", "b", "b", "a"],
            "{driver}: b fills up to a's 3, then the tie goes to a"
        );
        drop(a_conns);
    }
}

#[test]
fn client_ip_affinity_sticks_across_workers_and_moves_off_a_dead_backend() {
    let a = name_server_for("a", 1_000);
    let b = name_server_for("b", 1_000);
    let proxy = sticky("affinity", a, b, "    session_affinity_timeout: 1h\n", "2");
    let answer = |client: u8| {
        let mut s = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, client)), proxy.addr());
        let mut name = String::new();
        s.read_to_string(&mut name).unwrap();
        name
    };
    // Round robin places new clients; each then keeps its backend for every connection, on
    // whichever worker the kernel hands the connection to.
    let firsts: Vec<String> = (1..=4).map(answer).collect();
    assert!(
        firsts.contains(&"a".into()) && firsts.contains(&"b".into()),
        "{firsts:?}"
    );
    for round in 0..5 {
        for (i, want) in firsts.iter().enumerate() {
            assert_eq!(&answer(i as u8 + 1), want, "client {} round {round}", i + 1);
        }
    }
}

#[test]
fn affinity_never_sends_a_client_to_a_backend_that_stopped_answering() {
    // `a` answers once and then refuses; `b` always answers.
    let a = name_server_for("a", 1);
    let b = name_server_for("b", 1_000);
    let proxy = sticky("affinity-dead", a, b, "", "1");
    let answer = || support::answer(proxy.addr());
    assert_eq!(answer(), "a", "first client pinned to a by round robin");
    for i in 0..5 {
        assert_eq!(
            answer(),
            "b",
            "connection {i}: a refuses, the client moves to b and stays"
        );
    }
}

#[test]
fn sh_keeps_a_client_address_on_one_backend() {
    let backends: Vec<_> = ["a", "b", "c"].into_iter().map(named_echo).collect();
    let to = backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let proxy = Ringlb::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--scheduler",
        "sh",
        "--workers",
        "2",
    ]);
    let mut seen = std::collections::BTreeSet::new();
    for client in 1..=12u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, client));
        let first = read_name(&mut connect_from(ip, proxy.addr()));
        for _ in 0..3 {
            let mut s = connect_from(ip, proxy.addr());
            assert_eq!(read_name(&mut s), first, "client {ip}");
            s.write_all(b"x").unwrap();
        }
        seen.insert(first);
    }
    assert!(
        seen.len() >= 2,
        "12 client addresses all hashed to one backend: {seen:?}"
    );
}
