//! DNS-named backends in ringlb YAML: parsing, the `dns:` key, and re-resolution through the
//! table builder (state of addresses that stay is carried, unchanged services are shared).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use config::{parse_yaml, Answers, BackendAddress, DnsConfig, HostName, Table};

const NAMED: &str = "\
services:
  - name: web
    listen: [\"127.0.0.1:8080\"]
    session_affinity: client_ip
    backends:
      - address: 10.0.0.1:80
      - address: Web.Example.TEST:8080
        weight: 3
        max_connections: 10
  - name: db
    listen: [\"127.0.0.1:5432\"]
    backends: [{address: 10.0.0.9:5432}]
dns:
  nameservers: [\"127.0.0.1:5353\", \"10.0.0.53\", \"[fd00::53]:53\"]
  min_ttl: 2s
  max_ttl: 1m
  timeout: 500ms
";

fn web_test() -> HostName {
    HostName::parse("web.example.test").unwrap()
}

fn answers(ips: &[&str]) -> Answers {
    let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    Answers::from([(web_test(), ips)])
}

#[test]
fn named_backends_are_kept_as_written_until_expanded() {
    let c = parse_yaml("named.yaml", NAMED).unwrap();
    let web = &c.services[0];
    assert_eq!(web.targets.len(), 2);
    assert_eq!(
        web.targets[1].address,
        BackendAddress::Name(web_test(), 8080),
        "names are stored in lower case"
    );
    assert_eq!(
        web.backends.len(),
        1,
        "before any answer only the IP backend serves"
    );
    assert!(
        c.services[1].targets.is_empty(),
        "an IP-only list needs no expansion"
    );
    assert_eq!(c.host_names().into_iter().collect::<Vec<_>>(), [web_test()]);
}

#[test]
fn the_dns_key_is_read_with_defaults_for_what_it_leaves_out() {
    let dir = std::env::temp_dir().join(format!("ringlb-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("named.yaml");
    std::fs::write(&path, NAMED).unwrap();
    let loaded = config::load(&path, &[]).unwrap();
    assert_eq!(
        loaded.dns,
        DnsConfig {
            nameservers: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.53:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap(),
            ],
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
        }
    );
    std::fs::write(&path, NAMED.split("dns:").next().unwrap()).unwrap();
    assert_eq!(config::load(&path, &[]).unwrap().dns, DnsConfig::default());
    std::fs::write(&path, format!("{NAMED}  retries: 3\n")).unwrap();
    let err = config::load(&path, &[]).unwrap_err().to_string();
    assert!(err.contains(":18:3: unknown field `retries`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn re_resolution_carries_the_state_of_addresses_that_stay() {
    let c = parse_yaml("named.yaml", NAMED).unwrap();
    let t1 = Table::build(&c.expand(&answers(&["10.0.0.2", "10.0.0.3"])), None);
    let web1 = Arc::clone(&t1.services()[0]);
    let db1 = Arc::clone(&t1.services()[1]);
    let addrs = |s: &config::ServiceEntry| -> Vec<String> {
        s.backends.iter().map(|b| b.address.to_string()).collect()
    };
    assert_eq!(
        addrs(&web1),
        ["10.0.0.1:80", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    assert_eq!(web1.backends[1].weight, 3);
    assert_eq!(web1.states[1].max_connections(), Some(10));
    let open = web1.states[2].connect();
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    let now = std::time::Instant::now();
    web1.affinity.as_ref().unwrap().record(client, 2, now);

    // 10.0.0.2 leaves, 10.0.0.4 arrives; 10.0.0.3 stays with its connection and its clients.
    let t2 = Table::build(&c.expand(&answers(&["10.0.0.4", "10.0.0.3"])), Some(&t1));
    let web2 = &t2.services()[0];
    assert_eq!(
        addrs(web2),
        ["10.0.0.1:80", "10.0.0.3:8080", "10.0.0.4:8080"]
    );
    assert!(Arc::ptr_eq(&web1.states[0], &web2.states[0]));
    assert!(Arc::ptr_eq(&web1.states[2], &web2.states[1]));
    assert_eq!(
        web2.states[1].active(),
        1,
        "the open connection still counts"
    );
    assert_eq!(web2.states[2].active(), 0, "a new address starts empty");
    let aff = web2.affinity.as_ref().unwrap();
    assert_eq!(
        aff.lookup(client, now, |_| true),
        Some(1),
        "the pinned client follows its address to its new index"
    );
    assert!(
        Arc::ptr_eq(&db1, &t2.services()[1]),
        "a service without names is not rebuilt"
    );
    drop(open);

    // A failed lookup keeps the last answer: the caller expands with the same addresses, and
    // the service compares equal, so its entry is kept as it is.
    let t3 = Table::build(&c.expand(&answers(&["10.0.0.3", "10.0.0.4"])), Some(&t2));
    assert!(Arc::ptr_eq(&t2.services()[0], &t3.services()[0]));
}
