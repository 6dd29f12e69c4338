//! HAProxy's PROXY protocol: the header ringlb sends backends (`--proxy-protocol`,
//! `proxy_protocol:`), checked byte for byte by an echo backend, and the one it reads from a
//! front load balancer (`--accept-proxy-protocol`), refused from elsewhere and when malformed.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};

use support::admin::{admin_addr, scrape, value};
use support::*;

const DRIVERS: [&str; 2] = ["uring", "epoll"];
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Sends `bytes`, ends the stream, and returns everything the echo backend sent back (the
/// header ringlb wrote to it, then the bytes); `Err` when ringlb reset the connection.
fn through(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(bytes)?;
    stream.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back)?;
    Ok(back)
}

/// Whether `e` says ringlb reset the connection: on the read, or, when the reset came before
/// the client was done writing, on its write or its half-close.
fn reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::NotConnected | ErrorKind::BrokenPipe
    )
}

fn v2_ipv4(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    v2_ipv4_of(0x11, client, dest)
}

/// The v2 header of `transport` (`0x11` TCP over IPv4, `0x12` UDP over IPv4).
fn v2_ipv4_of(transport: u8, client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(d)) = (client.ip(), dest.ip()) else {
        panic!("IPv4 only");
    };
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, transport, 0, 12]);
    h.extend(c.octets());
    h.extend(d.octets());
    h.extend(client.port().to_be_bytes());
    h.extend(dest.port().to_be_bytes());
    h
}

#[test]
fn backends_get_a_header_naming_the_client_before_its_bytes() {
    let echo = echo_server();
    for driver in DRIVERS {
        for version in ["v1", "v2"] {
            let proxy = quick(driver, &[echo], &["--proxy-protocol", version]);
            let mut s = connect(proxy.addr());
            let client = s.local_addr().unwrap();
            let back = through(&mut s, b"hello").unwrap();
            let mut want = if version == "v1" {
                format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    client.ip(),
                    proxy.addr().ip(),
                    client.port(),
                    proxy.addr().port()
                )
                .into_bytes()
            } else {
                v2_ipv4(client, proxy.addr())
            };
            want.extend_from_slice(b"hello");
            assert_eq!(back, want, "{driver} {version}");
        }
    }
}

/// A UDP service with `--proxy-protocol v2`: every datagram reaches the backend after a v2
/// header (transport `DGRAM`) naming the client and the address it sent to; the backend's
/// replies reach the client as they are.
#[test]
fn a_udp_backend_gets_a_v2_header_before_every_datagram() {
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    for driver in DRIVERS {
        let args = ["--proto", "udp", "--proxy-protocol", "v2"];
        let proxy = quick(driver, &[backend_addr], &args);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        let header = v2_ipv4_of(0x12, client.local_addr().unwrap(), proxy.addr());
        for payload in [&b"first"[..], b"second, in the same flow"] {
            client.send_to(payload, proxy.addr()).unwrap();
            let mut buf = [0u8; 2048];
            let n = client.recv(&mut buf).unwrap();
            let mut want = header.clone();
            want.extend_from_slice(payload);
            assert_eq!(&buf[..n], &want[..], "{driver}");
        }
    }
}

#[test]
fn a_front_load_balancer_s_header_names_the_client_and_is_refused_from_elsewhere() {
    let echo = echo_server();
    for driver in DRIVERS {
        let proxy = quick(
            driver,
            &[echo],
            &[
                "--accept-proxy-protocol",
                "127.0.0.1/32,10.0.0.0/8",
                "--proxy-protocol",
                "v1",
                "--admin",
                "127.0.0.1:0",
            ],
        );
        let front = proxy.addr();
        let said_client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let said_dest: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let onward = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello".to_vec();
        // v1, in one write and cut in two; v2.
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello".to_vec();
        let mut v2 = v2_ipv4(said_client, said_dest);
        v2.extend_from_slice(b"hello");
        for header in [&v1, &v2] {
            let back = through(&mut connect(front), header).unwrap();
            assert_eq!(back, onward, "{driver}");
        }
        let mut split = connect(front);
        split.write_all(&v1[..9]).unwrap();
        split.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(through(&mut split, &v1[9..]).unwrap(), onward, "{driver}");

        // From a source outside the ranges: reset, header or not.
        let outsider = "127.0.0.2".parse().unwrap();
        for bytes in [&v1[..], b"hello"] {
            let mut s = connect_from(outsider, front);
            let refused = through(&mut s, bytes).unwrap_err();
            assert!(reset(&refused), "{driver}: {refused}");
        }
        // Malformed: not a header, cut short, an oversized v2, a v2 whose addresses do not fit
        // its family.
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend([0x21, 0x11, 0xff, 0xff]);
        let mut wrong_family = V2_SIGNATURE.to_vec();
        wrong_family.extend([0x21, 0x21, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        let malformed: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 192.0.2",
            &oversized,
            &wrong_family,
        ];
        for bytes in malformed {
            let refused = through(&mut connect(front), bytes);
            assert!(
                refused.as_ref().is_err_and(reset),
                "{driver} {bytes:?}: {refused:?}"
            );
        }
        // Counted, by reason, once the connections are closed.
        let admin = admin_addr(&proxy);
        let failed = |reason| {
            let labels = [("service", "default"), ("reason", reason)];
            value(&scrape(admin), "ringlb_connections_failed_total", &labels)
        };
        wait_until(|| failed("proxy_header") == 4.0 && failed("proxy_untrusted") == 2.0);
    }
}

/// Waits (at most `PATIENCE`) until `done`.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_config_keys_are_checked_with_located_errors() {
    check_fails_saying(
        "proxy-keys",
        "services:\n  - name: web\n    listen: [\"127.0.0.1:8080\"]\n    \
         proxy_protocol: v3\n    accept_proxy_protocol: [\"10.0.0.0/8\", \"lb-1\"]\n    \
         backends: [{address: \"127.0.0.1:9\"}]\n  - name: dns\n    protocol: udp\n    \
         listen: [\"127.0.0.1:5353\"]\n    proxy_protocol: v1\n    \
         backends: [{address: \"127.0.0.1:53\"}]\n",
        &[
            ":4:21: services[0].proxy_protocol: unknown PROXY protocol version \"v3\" (v1 or v2)",
            "services[0].accept_proxy_protocol[1]: \"lb-1\" is not an address range",
            "services[1].proxy_protocol: a UDP service sends v2 (its header starts every datagram); v1 is for TCP",
        ],
    );
}
