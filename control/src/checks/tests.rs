use std::net::TcpListener;

use config::{Backend, Config, Probe, Protocol, Service};

use super::*;

fn table(backends: &[SocketAddr], check: HealthCheck) -> Table {
    let mut svc = Service::with_defaults(
        "web",
        Protocol::Tcp,
        vec!["127.0.0.1:0".parse().unwrap()],
        backends.iter().map(|a| Backend::new(*a, 1)).collect(),
        balancers::SchedulerConfig::new(balancers::SchedulerKind::Rr),
    );
    svc.health = Some(check);
    Table::build(
        &Config {
            services: vec![svc],
        },
        None,
    )
}

#[test]
fn fall_failures_take_a_backend_down_and_rise_successes_bring_it_up() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut check = HealthCheck::new(Probe::Tcp);
    check.fall = 3;
    check.rise = 2;
    let table = table(&[addr], check);
    let state = &table.services()[0].states[0];
    let mut backends = HashMap::new();
    let mut jitter = Jitter::new();
    follow(&table, &mut backends, &mut jitter, Instant::now());
    let key = ("web".to_owned(), addr);
    let mut result = |ok: bool| {
        let b = backends.get_mut(&key).unwrap();
        let outcome = if ok {
            Ok(())
        } else {
            Err("refused".to_owned())
        };
        record(&table, &key, b, outcome, &mut jitter);
        state.is_down()
    };
    // A failure run broken by a success does not count.
    assert!(!result(false) && !result(false) && !result(true));
    assert!(!result(false) && !result(false));
    assert!(result(false), "the third failure in a row");
    assert!(result(true), "one success is not enough");
    assert!(result(false) && result(true));
    assert!(!result(true), "the second success in a row");
}

#[test]
fn a_reload_starts_and_ends_checks_with_its_backends() {
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let check = HealthCheck::new(Probe::Tcp);
    let mut backends = HashMap::new();
    let mut jitter = Jitter::new();
    let now = Instant::now();
    follow(
        &table(&[a, b], check.clone()),
        &mut backends,
        &mut jitter,
        now,
    );
    assert_eq!(backends.len(), 2);
    for backend in backends.values() {
        assert!(
            backend.next < now + check.interval,
            "the first check within an interval"
        );
    }
    follow(&table(&[b], check), &mut backends, &mut jitter, now);
    assert_eq!(backends.keys().map(|k| k.1).collect::<Vec<_>>(), vec![b]);
}

#[test]
fn jitter_stays_within_ten_percent() {
    let mut jitter = Jitter::new();
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
