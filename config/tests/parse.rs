//! The ringlb YAML format: checked values, defaults, located errors, and the table builder.

use std::sync::Arc;
use std::time::Duration;

use config::{parse_yaml, FrontendKey, Protocol, ServiceDefaults, Table};

const TWO: &str = "\
services:
  - name: web
    listen: [\"127.0.0.1:8080\", \"[::1]:8080\"]
    connect_timeout: 250ms
    idle_timeout: 2m
    max_connect_attempts: 5
    backends:
      - address: 10.0.0.1:80
        weight: 3
      - address: \"[fd00::2]:80\"
  - name: db
    listen: [\"127.0.0.1:5432\"]
    backends: [{address: 10.0.0.9:5432}]
";

#[test]
fn parses_values_and_applies_defaults() {
    let c = parse_yaml("two.yaml", TWO).unwrap();
    let web = &c.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(
        web.listen,
        vec![
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8080".parse().unwrap()
        ]
    );
    assert_eq!(web.connect_timeout, Duration::from_millis(250));
    assert_eq!(web.idle_timeout, Duration::from_secs(120));
    assert_eq!(web.max_connect_attempts.get(), 5);
    assert_eq!(web.backends[0].weight, 3);
    assert_eq!(web.backends[1].weight, ServiceDefaults::WEIGHT);
    let db = &c.services[1];
    assert_eq!(db.connect_timeout, ServiceDefaults::CONNECT_TIMEOUT);
    assert_eq!(db.idle_timeout, ServiceDefaults::IDLE_TIMEOUT);
    assert_eq!(
        db.max_connect_attempts,
        ServiceDefaults::MAX_CONNECT_ATTEMPTS
    );
}

#[test]
fn reports_every_problem_with_line_column_and_path() {
    let text = "services:\n  - name: a\n    listen: [\"nope\"]\n    backends: [{address: 1.2.3.4:80, weight: 70000}]\n";
    let err = parse_yaml("bad.yaml", text).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert_eq!((problems[0].line, problems[0].column), (Some(3), Some(14)));
    assert_eq!(problems[0].path, "services[0].listen[0]");
    assert_eq!(problems[1].path, "services[0].backends[0].weight");
    assert_eq!(problems[1].line, Some(4));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "bad.yaml:3:14: services[0].listen[0]: \"nope\" is not an IP:port address"
        ),
        "{text}"
    );
}

#[test]
fn table_maps_frontends_and_carries_state_across_rebuilds() {
    let c = parse_yaml("two.yaml", TWO).unwrap();
    let t1 = Table::build(&c, None);
    assert_eq!(t1.version(), 1);
    let key = FrontendKey {
        protocol: Protocol::Tcp,
        addr: "[::1]:8080".parse().unwrap(),
    };
    let web = Arc::clone(t1.lookup(&key).expect("frontend maps to web"));
    assert_eq!(web.service.name, "web");
    let guard = web.states[0].connect();
    assert!(web.state.take_flow(1));

    // Rebuild with the first backend kept, the second removed and a new one added.
    let changed = TWO.replace("\"[fd00::2]:80\"", "10.0.0.3:80");
    let t2 = Table::build(&parse_yaml("two.yaml", &changed).unwrap(), Some(&t1));
    assert_eq!(t2.version(), 2);
    let web2 = t2.lookup(&key).unwrap();
    assert!(
        Arc::ptr_eq(&web.states[0], &web2.states[0]),
        "same backend keeps its state"
    );
    assert_eq!(
        web2.states[0].active(),
        1,
        "the open connection is still counted"
    );
    assert_eq!(web2.states[1].active(), 0, "a new backend starts empty");
    assert!(
        Arc::ptr_eq(&web.state, &web2.state),
        "the service keeps its identity, by which workers key their counters"
    );
    assert_eq!(web2.state.flows(), 1, "the open flow is still counted");
    assert!(!web2.state.take_flow(1), "and still bounds new ones");
    web2.state.release_flow();
    assert!(web2.state.take_flow(1));
    drop(guard);
    assert_eq!(web2.states[0].active(), 0);
}

#[test]
fn affinity_and_limits_follow_backends_across_rebuilds() {
    let yaml = |backends: &str| {
        format!(
            "services:\n  - name: s\n    listen: [\"127.0.0.1:1\"]\n    session_affinity: client_ip\n    \
             backends: [{backends}]\n"
        )
    };
    let t1 = Table::build(
        &parse_yaml(
            "a.yaml",
            &yaml("{address: 10.0.0.1:80}, {address: 10.0.0.2:80, max_connections: 2}"),
        )
        .unwrap(),
        None,
    );
    let s1 = &t1.services()[0];
    let aff = s1.affinity.as_ref().expect("affinity configured");
    assert_eq!(aff.timeout(), ServiceDefaults::AFFINITY_TIMEOUT);
    let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let now = std::time::Instant::now();
    aff.record(client, 1, now);
    assert_eq!(s1.states[1].max_connections(), Some(2));

    // Same backends: the very same table is kept.
    let t2 = Table::build(
        &parse_yaml(
            "a.yaml",
            &yaml("{address: 10.0.0.1:80}, {address: 10.0.0.2:80, max_connections: 5}"),
        )
        .unwrap(),
        Some(&t1),
    );
    assert!(Arc::ptr_eq(
        aff,
        t2.services()[0].affinity.as_ref().unwrap()
    ));
    assert_eq!(
        t2.services()[0].states[1].max_connections(),
        Some(5),
        "limit updated in place"
    );

    // The first backend removed: the client follows 10.0.0.2 to index 0.
    let t3 = Table::build(
        &parse_yaml("a.yaml", &yaml("{address: 10.0.0.2:80}")).unwrap(),
        Some(&t2),
    );
    let aff3 = t3.services()[0].affinity.as_ref().unwrap();
    assert_eq!(aff3.lookup(client, now, |_| true), Some(0));
}

#[test]
fn apply_changes_one_service_and_shares_the_rest() {
    let c = parse_yaml("two.yaml", TWO).unwrap();
    let t1 = Table::build(&c, None);
    let mut web = c.services[0].clone();
    web.backends.truncate(1);
    let t2 = t1.apply(&[web], &["db"]);
    assert_eq!(t2.version(), 2);
    assert_eq!(t2.services().len(), 1);
    assert_eq!(t2.services()[0].backends.len(), 1);
    assert!(
        Arc::ptr_eq(&t1.services()[0].states[0], &t2.services()[0].states[0]),
        "state carried"
    );
    let db = FrontendKey {
        protocol: Protocol::Tcp,
        addr: "127.0.0.1:5432".parse().unwrap(),
    };
    assert!(
        t1.lookup(&db).is_some() && t2.lookup(&db).is_none(),
        "removed service's frontend is gone"
    );
    let t3 = t2.apply(&[c.services[1].clone()], &[]);
    assert!(t3.lookup(&db).is_some(), "added back");
}
