//! DNS-named backends against a real name server (dnsmasq on a free loopback port): a name is
//! re-resolved on its TTL, new connections follow the new address while an open connection
//! keeps its backend, and a name that does not resolve yet costs only its own backends.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// The zone the test name server answers for (authoritatively: other names are NXDOMAIN).
const ZONE: &str = "ringlb.test";
const NAME: &str = "backend.ringlb.test";

/// A dnsmasq answering from a hosts file with TTL 1 s; killed by its PID on drop (also when a
/// test panics).
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    dir: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq serving `hosts` (hosts-file lines); `None` (skipped) when it is not
    /// installed here, a failure under `CI` (see [`require`]).
    fn start(tag: &str, hosts: &str) -> Option<Dnsmasq> {
        let installed = Path::new(DNSMASQ)
            .is_file()
            .then_some(())
            .ok_or_else(|| format!("no {DNSMASQ}"));
        require(installed, "dnsmasq", "apt-get install dnsmasq-base")?;
        let dir = std::env::temp_dir().join(format!("ringlb-dns-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts).unwrap();
        // Another process may take the port between the probe and dnsmasq's bind: try again.
        for _ in 0..10 {
            let port = free_udp_and_tcp_port();
            let mut cmd = Command::new(DNSMASQ);
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--log-facility=-",
                "--local-ttl=1",
            ])
            .arg(format!("--local=/{ZONE}/"))
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_file.display()));
            // As root dnsmasq would switch to `nobody`, who may not read the hosts file.
            if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
                cmd.arg("--user=root");
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let mut server = Dnsmasq {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                hosts: hosts_file.clone(),
                dir: dir.clone(),
            };
            if server.wait_ready() {
                return Some(server);
            }
        }
        panic!("dnsmasq did not start on any of 10 free ports");
    }

    /// Waits until dnsmasq accepts TCP on its port (it binds UDP first); `false` when it exited.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.child.try_wait().expect("try_wait dnsmasq").is_some() {
                return false;
            }
            if TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            assert!(Instant::now() < deadline, "dnsmasq never listened");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replaces the hosts file and has dnsmasq read it again (SIGHUP).
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the PID of the dnsmasq child this test started and owns.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP to dnsmasq failed");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Listeners on the same free port of each of `ips`, so one `name:port` can reach any of them.
fn listeners_on_one_port(ips: &[IpAddr]) -> (u16, Vec<TcpListener>) {
    'retry: loop {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => all.push(l),
                Err(_) => continue 'retry,
            }
        }
        return (port, all);
    }
}

/// A backend that sends `name` and a newline, then echoes until end of stream.
fn named_echo_on(listener: TcpListener, name: &'static str) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            thread::spawn(move || {
                if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
}

/// The name of the backend a new connection through `proxy` reaches.
fn backend_of_new_connection(proxy: SocketAddr) -> String {
    let mut s = connect(proxy);
    read_name(&mut s)
}

/// Polls new connections until one reaches `want` (bounded by the test's patience).
fn wait_for_backend(proxy: SocketAddr, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if backend_of_new_connection(proxy) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never reached {want}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn config(tag: &str, dns: SocketAddr, backends: &str) -> PathBuf {
    write_config(
        tag,
        &format!(
            "services:\n  - name: web\n    listen: [\"127.0.0.1:0\"]\n    backends: [{backends}]\n\
             dns:\n  nameservers: [\"{dns}\"]\n  timeout: 1s\n"
        ),
    )
}

#[test]
fn a_changed_answer_moves_new_connections_and_keeps_open_ones() {
    let ips: [IpAddr; 2] = [[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
    let (port, mut listeners) = listeners_on_one_port(&ips);
    named_echo_on(listeners.remove(0), "a");
    named_echo_on(listeners.remove(0), "b");
    let Some(dns) = Dnsmasq::start("move", &format!("127.0.0.2 {NAME}\n")) else {
        return;
    };
    let path = config(
        "dns-move",
        dns.addr,
        &format!("{{address: \"{NAME}:{port}\"}}"),
    );
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "2"]);
    // The first answer is in before `ready`: the name's address serves at once.
    assert_eq!(backend_of_new_connection(proxy.addr()), "a");
    let mut held = connect(proxy.addr());
    assert_eq!(read_name(&mut held), "a");

    dns.set_hosts(&format!("127.0.0.3 {NAME}\n"));
    wait_for_backend(proxy.addr(), "b");
    assert!(proxy.wait_line("resolved version=").starts_with("resolved"));
    for _ in 0..5 {
        assert_eq!(backend_of_new_connection(proxy.addr()), "b");
    }
    // Opened before the change, the connection still talks to its backend.
    held.write_all(b"still here\n").unwrap();
    let mut back = [0u8; 11];
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here\n");
    proxy.wait_stderr("DNS answers changed; services rebuilt");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unresolved_name_costs_only_its_own_backends_until_it_resolves() {
    let ips: [IpAddr; 2] = [[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
    let (port, mut listeners) = listeners_on_one_port(&ips);
    named_echo_on(listeners.remove(0), "a");
    named_echo_on(listeners.remove(0), "b");
    // The zone is dnsmasq's own: the name is NXDOMAIN until the hosts file lists it.
    let Some(dns) = Dnsmasq::start("late", "") else {
        return;
    };
    let path = config(
        "dns-late",
        dns.addr,
        &format!("{{address: \"{NAME}:{port}\"}}, {{address: \"127.0.0.3:{port}\"}}"),
    );
    let proxy = Ringlb::start(&["run", "--config", path.to_str().unwrap(), "--workers", "2"]);
    proxy.wait_stderr("DNS name not resolved yet");
    for _ in 0..4 {
        assert_eq!(backend_of_new_connection(proxy.addr()), "b");
    }

    dns.set_hosts(&format!("127.0.0.2 {NAME}\n"));
    // Retries back off from 1 s; once resolved, round robin reaches the name's address too.
    wait_for_backend(proxy.addr(), "a");
    let _ = std::fs::remove_file(&path);
}
