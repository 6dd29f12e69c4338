use std::net::TcpListener;

use config::{Backend, Config, Probe, Protocol, Service};

use super::*;

fn table(backends: &[SocketAddr], check: Option<HealthCheck>) -> Table {
    let mut svc = Service::with_defaults(
        "web",
        Protocol::Tcp,
        vec!["127.0.0.1:0".parse().unwrap()],
        backends.iter().map(|a| Backend::new(*a, 1)).collect(),
        balancers::SchedulerConfig::new(balancers::SchedulerKind::Rr),
    );
    svc.health = check;
    Table::build(
        &Config {
            services: vec![svc],
        },
        None,
    )
}

#[test]
fn fall_failures_take_a_backend_down_and_rise_successes_bring_it_up() {
    let mut t = Tally::new(true, 2, 3);
    // A failure run broken by a success does not count.
    for passed in [false, false, true, false, false] {
        assert_eq!(t.record(passed), None);
    }
    assert_eq!(t.record(false), Some(false), "the third failure in a row");
    assert_eq!(t.record(true), None, "one success is not enough");
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(true), Some(true), "the second success in a row");
    assert!(t.up);
}

#[tokio::test]
async fn the_checks_follow_the_table() {
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let check = HealthCheck::new(Probe::Tcp);
    let mut running = HashMap::new();
    let published = Arc::new(ArcSwap::from_pointee(Table::default()));
    let hooks = Hooks {
        cut: Arc::new(|_| {}),
        telemetry: Arc::new(proxy_core::Telemetry::new(1, false)),
    };
    let first = table(&[a, b], Some(check.clone()));
    follow(&published, &hooks, &first, &mut running);
    assert_eq!(running.len(), 2);
    // The same backends and checks in a new table: the same tasks.
    let again = Table::build(
        &Config {
            services: first.services().iter().map(|e| e.service.clone()).collect(),
        },
        Some(&first),
    );
    let before: Vec<_> = running.values().map(|r| r.task.id()).collect();
    follow(&published, &hooks, &again, &mut running);
    let mut after: Vec<_> = running.values().map(|r| r.task.id()).collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after);
    // A backend leaves; then the checks are switched off, the backend staying (its state
    // carried over), marked down by its last check.
    let only_b = table(&[b], Some(check));
    follow(&published, &hooks, &only_b, &mut running);
    assert_eq!(running.keys().map(|k| k.1).collect::<Vec<_>>(), vec![b]);
    let mut services: Vec<Service> = only_b
        .services()
        .iter()
        .map(|e| e.service.clone())
        .collect();
    services[0].health = None;
    let unchecked = Table::build(&Config { services }, Some(&only_b));
    let state = &unchecked.services()[0].states[0];
    state.set_down(true);
    follow(&published, &hooks, &unchecked, &mut running);
    assert!(running.is_empty());
    assert!(
        !state.is_down(),
        "without checks nothing would bring it up again"
    );
}

#[test]
fn jitter_stays_within_ten_percent() {
    let mut jitter = Jitter::for_key(&("web".to_owned(), "127.0.0.1:1".parse().unwrap()));
    let d = Duration::from_secs(2);
    for _ in 0..1000 {
        let t = jitter.around(d);
        assert!(t >= d.mul_f64(0.9) && t < d.mul_f64(1.1), "{t:?}");
        assert!(jitter.within(d) < d);
    }
}

#[tokio::test]
async fn probes_pass_on_a_listener_and_fail_on_a_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let check = HealthCheck::new(Probe::Tcp);
    assert_eq!(probe::check(&check, open).await, Ok(()));
    drop(listener);
    let refused = probe::check(&check, open).await.unwrap_err();
    assert!(refused.starts_with("connect:"), "{refused}");
}

/// A connect that is not over at once waits on the runtime: to a listener whose accept
/// queue is full the SYN is dropped, and the check ends at its timeout; once the queue has
/// room, the same wait sees the connect through.
#[tokio::test]
async fn a_connect_that_waits_is_awaited_within_the_timeout() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (a backlog of 0 holds one connection).
    let fillers: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .collect();
    assert!(fillers.iter().any(Result::is_ok));
    let mut check = HealthCheck::new(Probe::Tcp);
    check.timeout = Duration::from_millis(300);
    let waited = probe::check(&check, addr).await.unwrap_err();
    assert!(waited.starts_with("no answer within"), "{waited}");
    // Room again: a check that has to wait for the handshake (the SYN retransmitted) passes.
    check.timeout = Duration::from_secs(5);
    let pending = tokio::spawn(async move { probe::check(&check, addr).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let listener: std::net::TcpListener = listener.into();
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    drop(fillers);
    assert_eq!(pending.await.unwrap(), Ok(()));
}

/// A backend that answers whatever it is sent with `answer`, once.
fn answering(answer: &'static [u8]) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer);
        }
    });
    addr
}

#[tokio::test]
async fn a_tcp_check_with_send_and_expect_passes_only_on_the_expected_answer() {
    let mut check = HealthCheck::new(Probe::Tcp);
    check.send = b"PING\r\n".to_vec();
    check.expect = b"+PONG".to_vec();
    assert_eq!(probe::check(&check, answering(b"+PONG\r\n")).await, Ok(()));
    let wrong = probe::check(&check, answering(b"-ERR\r\n"))
        .await
        .unwrap_err();
    assert_eq!(wrong, "expected \"+PONG\", got \"-ERR\\r\\n\"");
}

#[tokio::test]
async fn an_http_check_passes_on_a_status_in_its_range() {
    let teapot = b"HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n";
    let mut check = HealthCheck::new(Probe::Http {
        path: "/health".into(),
    });
    let refused = probe::check(&check, answering(teapot)).await.unwrap_err();
    assert_eq!(refused, "HTTP status 418");
    check.status = 400..=499;
    assert_eq!(probe::check(&check, answering(teapot)).await, Ok(()));
}
