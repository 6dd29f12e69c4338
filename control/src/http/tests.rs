//! The server through real sockets on a control runtime: shedding spares a connection that
//! is answering, a port of busy connections refuses, the keep-alive limit closes, and a head
//! over the limit is answered 431.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;

use hyper::StatusCode;
use tokio::sync::Notify;

use super::*;
use crate::runtime::Plane;

const WAIT: Duration = Duration::from_secs(10);

/// A control runtime run by a thread of the test's own, so the test thread can be the
/// blocking client; the runtime stops when this is dropped.
struct Background {
    plane: Plane,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start() -> Background {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plane = Plane::new(runtime.handle().clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = runtime.block_on(stopped);
        });
        Background {
            plane,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn plane(&self) -> &Plane {
        &self.plane
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// A server of `limits` answering `ok`, except `/slow`: that one tells `started` and waits for
/// `release` first.
fn server(
    control: &Background,
    limits: Limits,
    started: mpsc::Sender<()>,
    release: Arc<Notify>,
) -> HttpServer {
    let started = Mutex::new(started);
    let handler: Handler = Arc::new(move |req| {
        let slow = req.uri().path() == "/slow";
        let started = started.lock().unwrap().clone();
        let release = Arc::clone(&release);
        Box::pin(async move {
            if slow {
                let _ = started.send(());
                release.notified().await;
            }
            Response::new(Body::from("ok"))
        })
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = Spec {
        kind: ServerKind::Admin,
        name: "test".into(),
        limits,
    };
    HttpServer::start(control.plane(), listener, spec, handler).unwrap()
}

fn client(server: &HttpServer) -> TcpStream {
    let s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn send(s: &mut TcpStream, path: &str) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
}

/// Everything until the server closes (a reset counts as a close).
fn rest(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn counts(control: &Background) -> Counts {
    control.plane().http.counts()[0].1
}

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        ..Limits::ADMIN
    }
}

#[test]
fn at_the_cap_an_idle_connection_is_shed_and_one_answering_is_not() {
    let control = Background::start();
    let (started, busy) = mpsc::channel();
    let release = Arc::new(Notify::new());
    let server = server(&control, limits(2), started, Arc::clone(&release));
    let mut answering = client(&server);
    send(&mut answering, "/slow");
    busy.recv_timeout(WAIT).unwrap();
    let mut idle = client(&server);
    // The idle one, accepted after the answering one, is the one to go.
    let mut new = client(&server);
    assert_eq!(
        rest(&mut idle),
        "",
        "the idle connection is closed unanswered"
    );
    send(&mut new, "/");
    let mut head = [0u8; 12];
    new.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    release.notify_one();
    let mut answered = [0u8; 12];
    answering.read_exact(&mut answered).unwrap();
    assert_eq!(&answered, b"HTTP/1.1 200");
    let c = counts(&control);
    assert_eq!((c.accepted, c.shed, c.refused), (3, 1, 0));
    control.plane().handle.block_on(server.stop());
}

#[test]
fn when_every_connection_is_answering_a_new_one_is_refused() {
    let control = Background::start();
    let (started, busy) = mpsc::channel();
    let release = Arc::new(Notify::new());
    let server = server(&control, limits(1), started, Arc::clone(&release));
    let mut answering = client(&server);
    send(&mut answering, "/slow");
    busy.recv_timeout(WAIT).unwrap();
    let mut refused = client(&server);
    assert_eq!(rest(&mut refused), "");
    release.notify_one();
    let mut answered = [0u8; 12];
    answering.read_exact(&mut answered).unwrap();
    assert_eq!(&answered, b"HTTP/1.1 200");
    let c = counts(&control);
    assert_eq!((c.accepted, c.shed, c.refused), (1, 0, 1));
}

#[test]
fn the_last_request_a_connection_may_make_is_answered_with_connection_close() {
    let control = Background::start();
    let (started, _) = mpsc::channel();
    let limits = Limits {
        max_requests: 2,
        ..Limits::ADMIN
    };
    let server = server(&control, limits, started, Arc::new(Notify::new()));
    let mut s = client(&server);
    send(&mut s, "/");
    send(&mut s, "/");
    let both = rest(&mut s);
    let answers: Vec<&str> = both.split("HTTP/1.1 200 OK").skip(1).collect();
    assert_eq!(answers.len(), 2, "{both}");
    assert!(!answers[0].contains("connection: close"), "{both}");
    assert!(answers[1].contains("connection: close"), "{both}");
}

#[test]
fn a_request_head_over_the_limit_is_answered_431_and_closed() {
    let control = Background::start();
    let (started, _) = mpsc::channel();
    let server = server(&control, Limits::HEALTH, started, Arc::new(Notify::new()));
    let mut s = client(&server);
    let long = "a".repeat(Limits::HEALTH.max_head);
    // The server may close before it has read all of it.
    let _ = write!(s, "GET /{long} HTTP/1.1\r\n\r\n");
    let answer = rest(&mut s);
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {}", status.as_u16())),
        "{answer:?}"
    );
}
