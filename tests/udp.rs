//! UDP end to end through the real binary: request/response pairing over many clients, idle
//! expiry, re-balancing when a backend goes away, replies from the address the client used on
//! a wildcard frontend, and a real DNS server (dnsmasq) queried with a real client (dig).
//! Every data-plane test runs under both I/O drivers.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const DRIVERS: [&str; 2] = ["uring", "epoll"];

/// How long a client waits for one answer before it counts the datagram as lost.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A UDP backend answering every datagram with `NAME PORT PAYLOAD`, where PORT is the source
/// port it came from (one per flow: each flow has its own upstream socket).
fn udp_backend(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = format!("{name} {} ", from.port()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

/// A UDP port nothing listens on (datagrams to it draw ICMP port unreachable).
fn closed_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    c
}

/// Sends `msg` to `to` and returns the backend's answer: (backend name, its source port).
fn ask(c: &UdpSocket, to: SocketAddr, msg: &str) -> (String, u16) {
    c.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 65_536];
    let (n, from) = c.recv_from(&mut buf).expect("an answer through the proxy");
    assert_eq!(from, to, "the answer comes from the frontend address");
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    let mut parts = text.splitn(3, ' ');
    let name = parts.next().unwrap().to_owned();
    let port = parts.next().unwrap().parse().unwrap();
    assert_eq!(
        parts.next().unwrap(),
        msg,
        "the answer pairs with its request"
    );
    (name, port)
}

/// As [`ask`], resending while answers are lost (the datagram that draws an ICMP error from a
/// dead backend is lost, as UDP may).
fn ask_until_answered(c: &UdpSocket, to: SocketAddr, msg: &str) -> (String, u16) {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 65_536];
    while Instant::now() < deadline {
        c.send_to(msg.as_bytes(), to).unwrap();
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut parts = text.splitn(3, ' ');
            let name = parts.next().unwrap().to_owned();
            let port = parts.next().unwrap().parse().unwrap();
            c.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
            return (name, port);
        }
    }
    panic!("no answer for {msg:?} within {PATIENCE:?}");
}

#[test]
fn many_clients_get_their_own_answers_from_one_backend_each() {
    for driver in DRIVERS {
        many_clients(driver, &[]);
    }
}

#[test]
fn the_low_latency_mode_serves_the_same() {
    for driver in DRIVERS {
        many_clients(driver, &["--busy-poll", "200us"]);
    }
}

/// 48 clients x 40 requests through a 3-backend UDP service: every answer pairs with its
/// request, every client stays on one backend and one upstream socket.
fn many_clients(driver: &str, extra: &[&str]) {
    {
        let backends = [udp_backend("a"), udp_backend("b"), udp_backend("c")];
        let mut args = vec!["--proto", "udp"];
        args.extend_from_slice(extra);
        let proxy = quick(driver, &backends, &args);
        let to = proxy.addr();
        let clients: Vec<_> = (0..48)
            .map(|i| {
                thread::spawn(move || {
                    let c = client();
                    let mut seen = HashMap::new();
                    for j in 0..40 {
                        let msg = format!("client {i} request {j} {}", "x".repeat(j * 7));
                        let (name, port) = ask(&c, to, &msg);
                        *seen.entry((name, port)).or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut per_backend: HashMap<String, usize> = HashMap::new();
        for c in clients {
            let seen = c.join().expect("client thread");
            assert_eq!(
                seen.len(),
                1,
                "{driver}: a flow keeps its backend and upstream socket: {seen:?}"
            );
            let ((name, _), _) = seen.into_iter().next().unwrap();
            *per_backend.entry(name).or_default() += 1;
        }
        // rr over 48 flows on two workers: every backend serves some.
        assert_eq!(per_backend.len(), 3, "{driver}: {per_backend:?}");
    }
}

/// A burst from one client is received in batches and sent on as segmented sends (UDP GSO):
/// the backend must still see each datagram on its own, whole, in order of the run, including
/// where sizes change mid-burst.
#[test]
fn a_burst_from_one_client_arrives_datagram_by_datagram() {
    for driver in DRIVERS {
        let backend = udp_backend("a");
        let proxy = quick(driver, &[backend], &["--proto", "udp"]);
        let c = client();
        let sizes: Vec<usize> = (0..120)
            .map(|i| if i < 80 { 100 } else { 20 + (i % 7) * 50 })
            .collect();
        let sent: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| format!("{i:04}{}", "z".repeat(n - 4)))
            .collect();
        for msg in &sent {
            c.send_to(msg.as_bytes(), proxy.addr()).unwrap();
        }
        let mut answered = vec![false; sent.len()];
        let mut buf = [0u8; 65_536];
        for _ in 0..sent.len() {
            let (n, _) = c
                .recv_from(&mut buf)
                .expect("every datagram of the burst answered");
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let payload = text.splitn(3, ' ').nth(2).unwrap();
            let i: usize = payload[..4].parse().unwrap();
            assert_eq!(
                payload, sent[i],
                "{driver}: datagram {i} arrived whole and alone"
            );
            assert!(!answered[i], "{driver}: datagram {i} once");
            answered[i] = true;
        }
    }
}

/// A backend answering one request with a burst (replies are read in batches and sent to the
/// client as segmented sends): the client gets every reply whole and alone.
#[test]
fn a_burst_of_replies_reaches_the_client_datagram_by_datagram() {
    for driver in DRIVERS {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let backend = socket.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                for i in 0..90usize {
                    let size = if i < 60 { 300 } else { 40 + i };
                    let reply = format!("{i:04}{}", "r".repeat(size - 4));
                    let _ = socket.send_to(reply.as_bytes(), from);
                }
            }
        });
        let proxy = quick(driver, &[backend], &["--proto", "udp"]);
        let c = client();
        c.send_to(b"go", proxy.addr()).unwrap();
        let mut seen = [false; 90];
        let mut buf = [0u8; 65_536];
        for _ in 0..90 {
            let (n, from) = c.recv_from(&mut buf).expect("every reply of the burst");
            assert_eq!(from, proxy.addr());
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let i: usize = text[..4].parse().unwrap();
            let size = if i < 60 { 300 } else { 40 + i };
            assert_eq!(n, size, "{driver}: reply {i} arrived whole and alone");
            assert!(!seen[i], "{driver}: reply {i} once");
            seen[i] = true;
        }
    }
}

/// `UDP_SEGMENT` from `linux/udp.h` (the libc crate has it only for uClibc).
const UDP_SEGMENT: libc::c_int = 103;

/// A client whose every send of `n * size` bytes leaves as `n` datagrams of `size` bytes,
/// segmented in one go (UDP GSO): the proxy's frontend finds the whole burst queued at once.
fn segmenting_client(size: u16) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let c = client();
    let size = libc::c_int::from(size);
    // SAFETY: a valid socket descriptor, and a pointer to a c_int of the given length that
    // lives through the call.
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    c
}

/// Receive coalescing (on by default): bursts that find a socket behind its traffic make it
/// pause before it is read again (counted in `ringlb_udp_coalesce_pauses_total`), and every
/// datagram still arrives whole and once, each answer paired with its request. With
/// `--udp-coalesce 0` nothing pauses.
#[test]
fn bursts_are_coalesced_and_every_datagram_arrives_whole() {
    const SIZE: usize = 64;
    const PER_BURST: usize = 16;
    for driver in DRIVERS {
        for coalesce in [true, false] {
            let backend = udp_backend("a");
            let mut args = vec!["--proto", "udp", "--admin", "127.0.0.1:0"];
            if !coalesce {
                args.extend(["--udp-coalesce", "0"]);
            }
            let proxy = quick(driver, &[backend], &args);
            let admin = admin::admin_addr(&proxy);
            let c = segmenting_client(SIZE as u16);
            let pauses = || {
                let m = admin::scrape(admin);
                admin::value(&m, "ringlb_udp_coalesce_pauses_total", &[])
            };
            // Without coalescing a fixed number of bursts; with it, until one paused (each
            // burst queues 16 datagrams at once, so nearly every burst does).
            let mut buf = [0u8; 65_536];
            let deadline = Instant::now() + PATIENCE;
            for burst in 0..200 {
                let mut payload = Vec::with_capacity(SIZE * PER_BURST);
                for i in 0..PER_BURST {
                    let head = format!("{burst:04} {i:02} ");
                    payload.extend_from_slice(head.as_bytes());
                    payload.extend(std::iter::repeat_n(b'p', SIZE - head.len()));
                }
                c.send_to(&payload, proxy.addr()).unwrap();
                let mut answered = [false; PER_BURST];
                for _ in 0..PER_BURST {
                    let (n, _) = c.recv_from(&mut buf).expect("every datagram answered");
                    let text = std::str::from_utf8(&buf[..n]).unwrap();
                    let echoed = text.splitn(3, ' ').nth(2).unwrap();
                    assert_eq!(echoed.len(), SIZE, "{driver}: {text:?} whole and alone");
                    let (b, i) = (&echoed[..4], echoed[5..7].parse::<usize>().unwrap());
                    assert_eq!(
                        b,
                        format!("{burst:04}"),
                        "{driver}: answers pair with requests"
                    );
                    assert_eq!(
                        &echoed.as_bytes()[..SIZE],
                        &payload[i * SIZE..(i + 1) * SIZE]
                    );
                    assert!(!answered[i], "{driver}: datagram {burst}/{i} once");
                    answered[i] = true;
                }
                let checked = burst >= 30 && burst % 10 == 0;
                if checked && (!coalesce || pauses() > 0.0 || Instant::now() > deadline) {
                    break;
                }
            }
            let paused = pauses();
            if coalesce {
                assert!(paused > 0.0, "{driver}: no burst made a socket pause");
            } else {
                assert_eq!(paused, 0.0, "{driver}: paused with --udp-coalesce 0");
            }
        }
    }
}

#[test]
fn an_idle_flow_expires_and_the_next_datagram_opens_a_new_one() {
    for driver in DRIVERS {
        let backend = udp_backend("a");
        let proxy = quick(
            driver,
            &[backend],
            &["--proto", "udp", "--idle-timeout", "300ms"],
        );
        let c = client();
        let (_, first) = ask(&c, proxy.addr(), "one");
        let (_, again) = ask(&c, proxy.addr(), "two");
        assert_eq!(first, again, "{driver}: same flow while active");
        // The idle timeout has to pass; nothing to wait on but the clock.
        thread::sleep(Duration::from_millis(450));
        let (_, after) = ask(&c, proxy.addr(), "three");
        assert_ne!(
            first, after,
            "{driver}: the idle flow ended; a new one opened"
        );
    }
}

#[test]
fn a_backend_that_refuses_loses_its_flows_to_a_live_one() {
    for driver in DRIVERS {
        let dead = closed_udp_port();
        let live = udp_backend("live");
        // rr: the first flow goes to the dead backend, which answers with ICMP unreachable.
        let proxy = quick(driver, &[dead, live], &["--proto", "udp"]);
        let c = client();
        let (name, _) = ask_until_answered(&c, proxy.addr(), "hello");
        assert_eq!(name, "live", "{driver}");
    }
}

fn sticky_config(backends: &[(SocketAddr, u32)]) -> String {
    let mut yaml = String::from(
        "services:\n  - name: dns\n    protocol: udp\n    listen: [\"127.0.0.1:0\"]\n    \
         idle_timeout: 1h\n    backends:\n",
    );
    for (addr, weight) in backends {
        yaml.push_str(&format!(
            "      - {{ address: \"{addr}\", weight: {weight} }}\n"
        ));
    }
    yaml
}

#[test]
fn a_removed_or_quiesced_backend_loses_its_flows_at_once() {
    for driver in DRIVERS {
        let a = udp_backend("a");
        let b = udp_backend("b");
        let c_ = udp_backend("c");
        let path = write_config(
            &format!("udp-rebalance-{driver}"),
            &sticky_config(&[(a, 1)]),
        );
        let path_s = path.to_str().unwrap();
        let proxy = Ringlb::start(&[
            "run",
            "--config",
            path_s,
            "--io-driver",
            driver,
            "--workers",
            "2",
        ]);
        let to = proxy.addr();
        let c = client();
        let other = client();
        assert_eq!(ask(&c, to, "1").0, "a");
        assert_eq!(ask(&other, to, "1").0, "a");

        // a leaves, b arrives: the flows on a end now, not after the hour of idle timeout.
        // The frontend keeps its port: the file names port 0, which the proxy resolved once.
        replace_file(&path, &sticky_config(&[(b, 1)]));
        proxy.wait_line("reloaded version=2");
        assert_eq!(
            ask(&c, to, "2").0,
            "b",
            "{driver}: re-balanced after removal"
        );

        // b is quiesced (weight 0) while c arrives: b's flows end too.
        replace_file(&path, &sticky_config(&[(b, 0), (c_, 1)]));
        proxy.wait_line("reloaded version=3");
        assert_eq!(
            ask(&c, to, "3").0,
            "c",
            "{driver}: re-balanced after quiescing"
        );

        // A change that leaves c usable does not disturb its flows.
        let (_, port) = ask(&c, to, "4");
        replace_file(&path, &sticky_config(&[(c_, 2), (a, 1)]));
        proxy.wait_line("reloaded version=4");
        assert_eq!(
            ask(&c, to, "5"),
            ("c".to_owned(), port),
            "{driver}: flow kept"
        );
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_service_with_no_backend_serves_as_soon_as_one_arrives() {
    let a = udp_backend("a");
    let path = write_config("udp-zero", &sticky_config(&[(a, 0)]));
    let path_s = path.to_str().unwrap();
    let proxy = Ringlb::start(&["run", "--config", path_s, "--workers", "1"]);
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(b"nobody", proxy.addr()).unwrap();
    assert!(
        c.recv_from(&mut [0u8; 64]).is_err(),
        "no eligible backend: dropped"
    );
    replace_file(&path, &sticky_config(&[(a, 1)]));
    proxy.wait_line("reloaded version=2");
    c.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    assert_eq!(ask(&c, proxy.addr(), "now").0, "a", "no stale drop entry");
    let _ = std::fs::remove_file(&path);
}

/// A dnsmasq process answering `example.test` with 127.0.0.9, killed (by PID) on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the system tools a test needs exist; without them the test fails under `CI` (which
/// installs them) and is skipped with the reason elsewhere (see [`require`]).
fn have(tool: &str, package: &str) -> bool {
    let how = format!("apt-get install {package}");
    require(program(tool), tool, &how).is_some()
}

/// Starts dnsmasq on a free port of 127.0.0.1, in `netns` when given.
fn dnsmasq(netns: Option<&str>) -> Dnsmasq {
    for _ in 0..10 {
        // A port free for UDP and TCP (dnsmasq binds both) right now.
        let port = {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if UdpSocket::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            port
        };
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "dnsmasq"]);
                c
            }
            None => Command::new("dnsmasq"),
        };
        let child = cmd
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--address=/example.test/127.0.0.9",
                "--pid-file=",
                "--user=root",
                &format!("--port={port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        let mut d = Dnsmasq { child, port };
        // Ready once it answers (bounded).
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = d.child.try_wait() {
                break; // port taken: try another
            }
            if dig(netns, "127.0.0.1", port, 1).as_deref() == Some("127.0.0.9") {
                return d;
            }
        }
        let _ = d.child.kill();
    }
    panic!("dnsmasq did not start");
}

/// Asks for `example.test` A at `server`:`port` with dig (in `netns`), one try of `secs`.
fn dig(netns: Option<&str>, server: &str, port: u16, secs: u32) -> Option<String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dig"]);
            c
        }
        None => Command::new("dig"),
    };
    let out = cmd
        .args([
            &format!("@{server}"),
            "-p",
            &port.to_string(),
            "example.test",
            "A",
            "+short",
            "+tries=1",
            &format!("+time={secs}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty() && !text.starts_with(";;")).then_some(text)
}

#[test]
fn dig_resolves_through_the_proxy_to_dnsmasq() {
    if !have("dnsmasq", "dnsmasq-base") || !have("dig", "bind9-dnsutils") {
        return;
    }
    let server = dnsmasq(None);
    for driver in DRIVERS {
        let backend: SocketAddr = ([127, 0, 0, 1], server.port).into();
        let proxy = quick(driver, &[backend], &["--proto", "udp"]);
        let port = proxy.addr().port();
        for _ in 0..5 {
            assert_eq!(
                dig(None, "127.0.0.1", port, 5).as_deref(),
                Some("127.0.0.9"),
                "{driver}"
            );
        }
    }
}

/// With the frontend on `0.0.0.0`, a client that sent to 127.0.0.3 gets its answer from
/// 127.0.0.3 (dig drops answers from any other source). Without `IP_PKTINFO` the kernel would
/// answer from 127.0.0.1. In a namespace of its own, so the wildcard socket sees loopback only.
#[test]
fn a_wildcard_frontend_answers_from_the_address_the_client_used() {
    if !have("dnsmasq", "dnsmasq-base") || !have("dig", "bind9-dnsutils") {
        return;
    }
    let Some(ns) = netns::netns("udp-wild") else {
        return;
    };
    let server = dnsmasq(Some(&ns.0));
    let backend = format!("127.0.0.1:{}", server.port);
    for driver in DRIVERS {
        let proxy = Ringlb::start_in_netns(
            &ns.0,
            &[
                "run",
                "--listen",
                "0.0.0.0:0",
                "--to",
                &backend,
                "--proto",
                "udp",
                "--io-driver",
                driver,
                "--workers",
                "2",
            ],
        );
        let port = proxy.addr().port();
        for dest in ["127.0.0.3", "127.0.0.1", "127.0.0.77"] {
            assert_eq!(
                dig(Some(&ns.0), dest, port, 5).as_deref(),
                Some("127.0.0.9"),
                "{driver}: answer to {dest} from {dest}"
            );
        }
        drop(proxy);
    }
    drop(server);
}

/// A zero-downtime restart with `--takeover`: the new process reads the old one's UDP flows
/// (`GET /udp/flows`) before it joins the port, so after the old one stops every client's next
/// datagram reaches the backend it had. The clients ask again in an order a fresh round robin
/// could not reproduce (both `a` clients first), so a restart that re-balanced would fail.
#[test]
fn a_restart_with_takeover_keeps_each_udp_client_on_its_backend() {
    for driver in DRIVERS {
        let backends = [udp_backend("a"), udp_backend("b")];
        let old = quick(
            driver,
            &backends,
            &[
                "--proto",
                "udp",
                "--scheduler",
                "rr",
                "--admin",
                "127.0.0.1:0",
            ],
        );
        let old_admin = support::admin::admin_addr(&old);
        let front = old.addr();
        let clients: Vec<UdpSocket> = (0..8).map(|_| client()).collect();
        let before: Vec<String> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| ask(c, front, &format!("hello {i}")).0)
            .collect();
        assert!(before.iter().any(|b| b == "a") && before.iter().any(|b| b == "b"));

        let listed = support::admin::get_json(old_admin, "/udp/flows");
        assert_eq!(listed["draining"], false);
        let flows = listed["flows"].as_array().unwrap();
        assert_eq!(flows.len(), 8, "{listed}");
        for (c, name) in clients.iter().zip(&before) {
            let client = c.local_addr().unwrap().to_string();
            let flow = flows
                .iter()
                .find(|f| f["client"] == client.as_str())
                .unwrap_or_else(|| panic!("no flow of {client} in {listed}"));
            let backend = if name == "a" {
                backends[0]
            } else {
                backends[1]
            };
            assert_eq!(flow["backend"], backend.to_string().as_str());
            assert_eq!(flow["frontend"], front.to_string().as_str());
            assert_eq!(flow["service"], "default");
        }

        let front_arg = front.to_string();
        let to = format!("{},{}", backends[0], backends[1]);
        let old_admin_arg = old_admin.to_string();
        let mut new = Ringlb::start(&[
            "run",
            "--listen",
            &front_arg,
            "--to",
            &to,
            "--proto",
            "udp",
            "--scheduler",
            "rr",
            "--io-driver",
            driver,
            "--workers",
            "2",
            "--takeover",
            &old_admin_arg,
        ]);
        new.wait_stderr("took over UDP flows");
        let mut old = old;
        old.signal(libc::SIGTERM);
        assert!(old.wait_exit().success());

        // Both `a` clients first, then the `b` ones.
        let mut order: Vec<usize> = (0..8).filter(|&i| before[i] == "a").collect();
        order.extend((0..8).filter(|&i| before[i] == "b"));
        for i in order {
            let (name, _) = ask(&clients[i], front, &format!("again {i}"));
            assert_eq!(
                name, before[i],
                "client {i} moved after the restart ({driver})"
            );
        }
        new.signal(libc::SIGTERM);
        assert!(new.wait_exit().success());
    }
}
