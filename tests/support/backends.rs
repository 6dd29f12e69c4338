//! Small backends for the tests: threads serving loopback listeners.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

/// Spawns `handler` for every connection accepted on a fresh loopback listener.
pub fn serve<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let h = Arc::clone(&handler);
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || h(stream))
                .expect("spawn handler");
        }
    });
    addr
}

/// An echo backend: returns every byte, and on end of stream half-closes its side.
pub fn echo_server() -> SocketAddr {
    serve(|mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A backend that answers every connection with its `name` and closes.
pub fn name_server(name: &'static str) -> SocketAddr {
    serve(move |mut s| {
        let _ = s.write_all(name.as_bytes());
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = [0u8; 64];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Deterministic pseudo-random bytes (xorshift), so corruption cannot hide in a pattern.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A backend that sends `name` and a newline, then echoes until end of stream, then half-closes.
pub fn named_echo(name: &'static str) -> SocketAddr {
    serve(move |mut s| {
        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A backend that answers exactly `accepts` connections with `name`, then closes its listener
/// (later connections are refused).
pub fn name_server_for(name: &'static str, accepts: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for _ in 0..accepts {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.write_all(name.as_bytes());
        }
    });
    addr
}

/// A UDP backend that answers every datagram with `name`, a space and the datagram.
pub fn udp_named(name: &'static str) -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = format!("{name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}
