//! `sources`: each connection of a load comes from its own client address, which is what a
//! scheduler that hashes the client (`sh`, `mh`) needs to see many clients.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{run, Load, Mode, Scenario};

#[test]
fn each_connection_comes_from_its_own_source_address() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let peers: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
    let seen = Arc::clone(&peers);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if let Ok(peer) = s.peer_addr() {
                seen.lock().unwrap().insert(peer.ip());
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                // One answer per request head read (keep-alive, wrk-like GETs fit one read).
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let sources: Vec<IpAddr> = (11..=14).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let load = Load {
        target,
        scenario: Scenario::Rr,
        mode: Mode::open(100.0),
        connections: 4,
        threads: 1,
        cpus: Vec::new(),
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(2),
        sources: sources.clone(),
        start: None,
        progress: false,
    };
    let report = run(&load).unwrap();
    assert_eq!(report.errors.total(), 0, "{report:?}");
    assert!(report.requests >= 45, "{report:?}");
    let seen = peers.lock().unwrap().clone();
    assert_eq!(seen, sources.into_iter().collect::<HashSet<_>>());
}
