//! Unit tests of the ruleset text: what each transaction writes for a steering state.

use super::*;

#[test]
fn stale_udp_frontends_are_those_whose_steering_changed() {
    let udp = |f: &str, v| entry(Protocol::Udp, f, v);
    let tcp = |f: &str, v| entry(Protocol::Tcp, f, v);
    let (old, _) = State::new(
        &[
            udp("10.96.0.10:53", Verdict::Redirect(40001)),
            udp("10.96.0.11:53", Verdict::Redirect(40002)),
            udp("10.96.0.12:53", Verdict::Redirect(40003)),
            udp("10.96.0.13:53", Verdict::Redirect(40004)),
            udp("10.96.0.14:53", Verdict::Reject),
            tcp("10.96.0.15:80", Verdict::Redirect(40005)),
            SteerEntry {
                local_portal: Some(40011),
                ..udp("10.96.0.16:53", Verdict::Drop)
            },
            udp("[fd00::10]:53", Verdict::Redirect(40007)),
            udp("[fd00::11]:53", Verdict::Redirect(40008)),
        ],
        &[],
        &[],
        &[],
        true,
    );
    let (new, _) = State::new(
        &[
            udp("10.96.0.10:53", Verdict::Redirect(40001)),
            udp("10.96.0.11:53", Verdict::Redirect(40009)),
            udp("10.96.0.12:53", Verdict::Reject),
            udp("10.96.0.14:53", Verdict::Redirect(40006)),
            tcp("10.96.0.15:80", Verdict::Redirect(40010)),
            SteerEntry {
                local_portal: Some(40012),
                ..udp("10.96.0.16:53", Verdict::Drop)
            },
            udp("[fd00::10]:53", Verdict::Drop),
            udp("[fd00::11]:53", Verdict::Redirect(40008)),
        ],
        &[],
        &[],
        &[],
        true,
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        stale_udp(Some(&old), &new),
        vec![
            (ip("10.96.0.11"), 53),
            (ip("10.96.0.12"), 53),
            (ip("10.96.0.13"), 53),
            (ip("10.96.0.14"), 53),
            (ip("10.96.0.16"), 53),
            (ip("fd00::10"), 53)
        ],
        "portal moved (or its short-circuit portal), lost its endpoints, removed, newly \
         served; unchanged and TCP are not"
    );
    assert_eq!(
        stale_udp(None, &new),
        vec![
            (ip("10.96.0.10"), 53),
            (ip("10.96.0.11"), 53),
            (ip("10.96.0.12"), 53),
            (ip("10.96.0.14"), 53),
            (ip("10.96.0.16"), 53),
            (ip("fd00::10"), 53),
            (ip("fd00::11"), 53)
        ],
        "after the first sync: every UDP frontend"
    );
}

fn entry(protocol: Protocol, frontend: &str, verdict: Verdict) -> SteerEntry {
    SteerEntry::new(protocol, frontend.parse().unwrap(), verdict)
}

fn nets(ranges: &[&str]) -> Vec<IpNet> {
    ranges.iter().map(|c| c.parse().unwrap()).collect()
}

/// Pod ranges: one inside another, one with host bits.
fn pod_cidrs() -> Vec<IpNet> {
    nets(&["10.244.0.0/16", "10.244.1.0/24", "fd00:244::1/64"])
}

/// IPv4 frontends on portals 40000 (TCP) and 40001 (UDP), IPv6 ones on the IPv6 portals
/// 40000 (TCP: the same number, another socket) and 40100 (UDP).
fn entries() -> Vec<SteerEntry> {
    vec![
        entry(Protocol::Tcp, "10.96.0.10:80", Verdict::Redirect(40000)),
        entry(Protocol::Udp, "10.96.0.10:53", Verdict::Redirect(40001)),
        entry(Protocol::Tcp, "192.168.1.5:30080", Verdict::Redirect(40000)),
        entry(Protocol::Tcp, "10.96.0.11:80", Verdict::Reject),
        entry(Protocol::Tcp, "10.96.0.12:443", Verdict::Drop),
        entry(Protocol::Tcp, "[fd00::10]:80", Verdict::Redirect(40000)),
        entry(Protocol::Udp, "[fd00::10]:53", Verdict::Redirect(40100)),
        entry(Protocol::Tcp, "[fd00:1::5]:30080", Verdict::Redirect(40000)),
        entry(Protocol::Tcp, "[fd00::11]:80", Verdict::Reject),
        entry(Protocol::Tcp, "[fd00::12]:443", Verdict::Drop),
        // Policy Local without a local endpoint, short-circuited to the cluster IP's
        // portal; guarded by source ranges (a node address among them lets the VIP in).
        SteerEntry {
            local_portal: Some(40000),
            sources: Some(nets(&[
                "192.168.0.0/16",
                "10.96.0.99/32",
                "192.168.7.0/24", // inside the first: left out (sets refuse overlaps)
                "fd00::/8",
            ])),
            ..entry(Protocol::Tcp, "10.96.0.99:80", Verdict::Drop)
        },
        SteerEntry {
            sources: Some(Vec::new()),
            ..entry(Protocol::Tcp, "[fd00::99]:80", Verdict::Redirect(40000))
        },
    ]
}

fn cluster_ips() -> Vec<IpAddr> {
    [
        "10.96.0.10",
        "10.96.0.11",
        "10.96.0.12",
        "fd00::10",
        "fd00::11",
        "fd00::12",
    ]
    .iter()
    .map(|ip| ip.parse().unwrap())
    .collect()
}

/// Service CIDRs as a cluster may have them: one inside another, one with host bits.
fn service_cidrs() -> Vec<IpNet> {
    [
        "10.96.0.0/12",
        "10.96.0.0/24",
        "fd00::/108",
        "192.168.0.1/16",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect()
}

/// One family's fixed part, `ip` / `ip ringlb` style names filled in.
fn skeleton_text(family: &str, addr: &str, daddr: &str) -> String {
    let t = format!("{family} ringlb");
    let saddr = daddr.replace("daddr", "saddr");
    let lookup = format!("{daddr} . meta l4proto . th dport");
    format!(
        "\
add table {t}
delete table {t}
add table {t} {{ comment \"owned by ringlb; replaced at start, kept for the next ringlb, deleted by ringlb cleanup\" ; }}
add map {t} portals {{ type {addr} . inet_proto . inet_service : inet_service ; }}
add map {t} no-endpoints {{ type {addr} . inet_proto . inet_service : verdict ; }}
add set {t} cluster-ips {{ type {addr} ; }}
add set {t} portal-ports {{ type inet_proto . inet_service ; }}
add set {t} service-cidrs {{ type {addr} ; flags interval ; }}
add set {t} pod-cidrs {{ type {addr} ; flags interval ; }}
add map {t} local-portals {{ type {addr} . inet_proto . inet_service : inet_service ; }}
add set {t} firewall-ips {{ type {addr} . inet_proto . inet_service ; }}
add set {t} firewall-allow {{ type {addr} . inet_proto . inet_service . {addr} ; flags interval ; }}
add chain {t} reject-chain
add rule {t} reject-chain meta l4proto tcp reject with tcp reset
add rule {t} reject-chain reject
add chain {t} cluster-ips-check
add rule {t} cluster-ips-check {daddr} @cluster-ips goto reject-chain
add rule {t} cluster-ips-check {daddr} @service-cidrs drop
add chain {t} firewall-check
add rule {t} firewall-check {lookup} @firewall-ips {lookup} . {saddr} != @firewall-allow drop
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add rule {t} nat-prerouting {saddr} @pod-cidrs meta l4proto {{ tcp, udp }} redirect to : {lookup} map @local-portals
add rule {t} nat-prerouting meta l4proto {{ tcp, udp }} redirect to : {lookup} map @portals
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add rule {t} nat-output meta l4proto {{ tcp, udp }} redirect to : {lookup} map @local-portals
add rule {t} nat-output meta l4proto {{ tcp, udp }} redirect to : {lookup} map @portals
add chain {t} filter-prerouting {{ type filter hook prerouting priority -110 ; }}
add chain {t} filter-input {{ type filter hook input priority -110 ; }}
add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}
add chain {t} filter-output {{ type filter hook output priority -110 ; }}
add rule {t} filter-prerouting ct state new jump firewall-check
add rule {t} filter-output ct state new jump firewall-check
add chain {t} filter-output-post-dnat {{ type filter hook output priority -90 ; }}
add rule {t} filter-input ct state new {lookup} vmap @no-endpoints
add rule {t} filter-forward ct state new {lookup} vmap @no-endpoints
add rule {t} filter-output-post-dnat ct state new {lookup} vmap @no-endpoints
add rule {t} filter-input ct state new ct status ! dnat meta l4proto . th dport @portal-ports goto reject-chain
add rule {t} filter-forward ct state new jump cluster-ips-check
add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check
"
    )
}

#[test]
fn the_full_ruleset_is_golden() {
    let (state, unsteered) = State::new(
        &entries(),
        &cluster_ips(),
        &service_cidrs(),
        &pod_cidrs(),
        true,
    );
    assert!(unsteered.is_empty(), "{unsteered:?}");
    let want = skeleton_text("ip", "ipv4_addr", "ip daddr")
        + &skeleton_text("ip6", "ipv6_addr", "ip6 daddr")
        + "\
add element ip ringlb portals { 10.96.0.10 . tcp . 80 : 40000 }
add element ip ringlb portals { 10.96.0.10 . udp . 53 : 40001 }
add element ip ringlb no-endpoints { 10.96.0.11 . tcp . 80 : goto reject-chain }
add element ip ringlb no-endpoints { 10.96.0.12 . tcp . 443 : drop }
add element ip ringlb no-endpoints { 10.96.0.99 . tcp . 80 : drop }
add element ip ringlb portals { 192.168.1.5 . tcp . 30080 : 40000 }
add element ip6 ringlb portals { fd00::10 . tcp . 80 : 40000 }
add element ip6 ringlb portals { fd00::10 . udp . 53 : 40100 }
add element ip6 ringlb no-endpoints { fd00::11 . tcp . 80 : goto reject-chain }
add element ip6 ringlb no-endpoints { fd00::12 . tcp . 443 : drop }
add element ip6 ringlb portals { fd00::99 . tcp . 80 : 40000 }
add element ip6 ringlb portals { fd00:1::5 . tcp . 30080 : 40000 }
add element ip ringlb cluster-ips { 10.96.0.10 }
add element ip ringlb cluster-ips { 10.96.0.11 }
add element ip ringlb cluster-ips { 10.96.0.12 }
add element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 10.96.0.99/32 }
add element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 192.168.0.0/16 }
add element ip ringlb firewall-ips { 10.96.0.99 . tcp . 80 }
add element ip ringlb local-portals { 10.96.0.99 . tcp . 80 : 40000 }
add element ip ringlb pod-cidrs { 10.244.0.0/16 }
add element ip ringlb portal-ports { tcp . 40000 }
add element ip ringlb portal-ports { udp . 40001 }
add element ip ringlb service-cidrs { 10.96.0.0/12 }
add element ip ringlb service-cidrs { 192.168.0.0/16 }
add element ip6 ringlb cluster-ips { fd00::10 }
add element ip6 ringlb cluster-ips { fd00::11 }
add element ip6 ringlb cluster-ips { fd00::12 }
add element ip6 ringlb firewall-ips { fd00::99 . tcp . 80 }
add element ip6 ringlb pod-cidrs { fd00:244::/64 }
add element ip6 ringlb portal-ports { tcp . 40000 }
add element ip6 ringlb portal-ports { udp . 40100 }
add element ip6 ringlb service-cidrs { fd00::/108 }
";
    assert_eq!(full_ruleset(&state), want);
    assert_eq!(
        delete_ruleset(true),
        "add table ip ringlb\ndelete table ip ringlb\nadd table ip6 ringlb\ndelete table ip6 ringlb\n"
    );
}

#[test]
fn without_ipv6_only_the_ip_table_is_written_and_ipv6_frontends_are_reported() {
    let (state, unsteered) = State::new(
        &entries(),
        &cluster_ips(),
        &service_cidrs(),
        &pod_cidrs(),
        false,
    );
    let reported: Vec<String> = unsteered.iter().map(|e| e.frontend.to_string()).collect();
    assert_eq!(
        reported,
        [
            "[fd00::10]:80",
            "[fd00::10]:53",
            "[fd00:1::5]:30080",
            "[fd00::11]:80",
            "[fd00::12]:443",
            "[fd00::99]:80"
        ]
    );
    let want = skeleton_text("ip", "ipv4_addr", "ip daddr")
        + "\
add element ip ringlb portals { 10.96.0.10 . tcp . 80 : 40000 }
add element ip ringlb portals { 10.96.0.10 . udp . 53 : 40001 }
add element ip ringlb no-endpoints { 10.96.0.11 . tcp . 80 : goto reject-chain }
add element ip ringlb no-endpoints { 10.96.0.12 . tcp . 443 : drop }
add element ip ringlb no-endpoints { 10.96.0.99 . tcp . 80 : drop }
add element ip ringlb portals { 192.168.1.5 . tcp . 30080 : 40000 }
add element ip ringlb cluster-ips { 10.96.0.10 }
add element ip ringlb cluster-ips { 10.96.0.11 }
add element ip ringlb cluster-ips { 10.96.0.12 }
add element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 10.96.0.99/32 }
add element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 192.168.0.0/16 }
add element ip ringlb firewall-ips { 10.96.0.99 . tcp . 80 }
add element ip ringlb local-portals { 10.96.0.99 . tcp . 80 : 40000 }
add element ip ringlb pod-cidrs { 10.244.0.0/16 }
add element ip ringlb portal-ports { tcp . 40000 }
add element ip ringlb portal-ports { udp . 40001 }
add element ip ringlb service-cidrs { 10.96.0.0/12 }
add element ip ringlb service-cidrs { 192.168.0.0/16 }
";
    assert_eq!(full_ruleset(&state), want);
    assert_eq!(
        delete_ruleset(false),
        "add table ip ringlb\ndelete table ip ringlb\n"
    );
}

#[test]
fn a_diff_touches_only_changed_elements() {
    let (old, _) = State::new(
        &entries(),
        &cluster_ips(),
        &service_cidrs(),
        &pod_cidrs(),
        true,
    );
    let mut changed = entries();
    changed[0].verdict = Verdict::Reject; // endpoints gone; tcp 40000 still serves 30080
    changed.remove(3); // service deleted
    changed.push(entry(
        Protocol::Udp,
        "10.96.0.20:53",
        Verdict::Redirect(40002),
    ));
    // IPv6: a portal moved (the IPv4 UDP portal's number stays in the ip table), a
    // service lost its endpoints, a cluster IP went and one came.
    changed[5].verdict = Verdict::Redirect(40101); // [fd00::10]:53
    changed[6].verdict = Verdict::Drop; // [fd00:1::5]:30080
                                        // The short-circuit portal moved, a source range narrowed, a guard went.
    changed[9].local_portal = Some(40003); // 10.96.0.99:80
    changed[9].sources = Some(nets(&["192.168.0.0/24", "10.96.0.99/32"]));
    changed[10].sources = None; // [fd00::99]:80
    let mut ips = cluster_ips();
    ips.retain(|ip| {
        *ip != IpAddr::from([10, 96, 0, 11]) && *ip != "fd00::12".parse::<IpAddr>().unwrap()
    });
    ips.push(IpAddr::from([10, 96, 0, 20]));
    ips.push("fd00::20".parse().unwrap());
    // The IPv4 service CIDR narrowed (10.96.0.0/24 was inside it), 192.168/16 went.
    let cidrs: Vec<IpNet> = ["10.96.0.0/16", "fd00::/108"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let (new, _) = State::new(&changed, &ips, &cidrs, &pod_cidrs(), true);
    let want = "\
delete element ip ringlb portals { 10.96.0.10 . tcp . 80 }
delete element ip ringlb no-endpoints { 10.96.0.11 . tcp . 80 }
delete element ip6 ringlb portals { fd00::10 . udp . 53 }
delete element ip6 ringlb portals { fd00:1::5 . tcp . 30080 }
add element ip ringlb no-endpoints { 10.96.0.10 . tcp . 80 : goto reject-chain }
add element ip ringlb portals { 10.96.0.20 . udp . 53 : 40002 }
add element ip6 ringlb portals { fd00::10 . udp . 53 : 40101 }
add element ip6 ringlb no-endpoints { fd00:1::5 . tcp . 30080 : drop }
delete element ip ringlb cluster-ips { 10.96.0.11 }
delete element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 192.168.0.0/16 }
delete element ip ringlb local-portals { 10.96.0.99 . tcp . 80 }
delete element ip ringlb service-cidrs { 10.96.0.0/12 }
delete element ip ringlb service-cidrs { 192.168.0.0/16 }
delete element ip6 ringlb cluster-ips { fd00::12 }
delete element ip6 ringlb firewall-ips { fd00::99 . tcp . 80 }
delete element ip6 ringlb portal-ports { udp . 40100 }
add element ip ringlb cluster-ips { 10.96.0.20 }
add element ip ringlb firewall-allow { 10.96.0.99 . tcp . 80 . 192.168.0.0/24 }
add element ip ringlb local-portals { 10.96.0.99 . tcp . 80 : 40003 }
add element ip ringlb portal-ports { tcp . 40003 }
add element ip ringlb portal-ports { udp . 40002 }
add element ip ringlb service-cidrs { 10.96.0.0/16 }
add element ip6 ringlb cluster-ips { fd00::20 }
add element ip6 ringlb portal-ports { udp . 40101 }
";
    assert_eq!(diff_ruleset(&old, &new), want);
    assert_eq!(diff_ruleset(&new, &new), "", "no change, no transaction");
}

#[test]
fn replies_to_transparent_sockets_are_marked_only_when_asked() {
    let (state, _) = State::new(&entries(), &[], &[], &[], true);
    assert!(!full_ruleset(&state).contains("mangle"));
    let marked = full_ruleset(&state.with_client_ip_mark(Some(0x200000)));
    for t in ["ip ringlb", "ip6 ringlb"] {
        let chain = format!(
            "add chain {t} mangle-prerouting {{ type filter hook prerouting priority -150 ; }}\n\
             add rule {t} mangle-prerouting meta l4proto {{ tcp, udp }} socket transparent 1 meta mark set meta mark or 0x200000\n"
        );
        assert!(marked.contains(&chain), "{marked}");
    }
}

#[test]
fn only_what_stops_going_to_a_portal_is_withdrawn_first() {
    let tcp = |f: &str, v| entry(Protocol::Tcp, f, v);
    let short = |f: &str, v, portal| SteerEntry {
        local_portal: Some(portal),
        ..tcp(f, v)
    };
    let (old, _) = State::new(
        &[
            tcp("10.96.0.10:80", Verdict::Redirect(40000)),
            tcp("10.96.0.11:80", Verdict::Redirect(40001)),
            tcp("10.96.0.12:80", Verdict::Redirect(40002)),
            tcp("10.96.0.13:80", Verdict::Redirect(40003)),
            tcp("10.96.0.14:80", Verdict::Reject),
            short("192.168.1.5:30080", Verdict::Drop, 40004),
            short("192.168.1.5:30081", Verdict::Drop, 40005),
            tcp("10.96.0.16:80", Verdict::Redirect(40006)),
        ],
        &cluster_ips(),
        &[],
        &[],
        false,
    );
    let (new, _) = State::new(
        &[
            tcp("10.96.0.10:80", Verdict::Reject), // lost its endpoints
            tcp("10.96.0.11:80", Verdict::Drop),   // lost its local endpoints
            tcp("10.96.0.12:80", Verdict::Redirect(40002)),
            tcp("10.96.0.13:80", Verdict::Redirect(40007)), // a new portal
            tcp("10.96.0.14:80", Verdict::Redirect(40008)), // endpoints again
            tcp("192.168.1.5:30080", Verdict::Drop),        // short-circuit gone
            short("192.168.1.5:30081", Verdict::Drop, 40005),
            // 10.96.0.16:80 deleted; a new frontend:
            tcp("10.96.0.17:80", Verdict::Redirect(40009)),
        ],
        &[],
        &[],
        &[],
        false,
    );
    let first = old.withdrawn(&new);
    assert_eq!(
        diff_ruleset(&old, &first),
        "\
delete element ip ringlb portals { 10.96.0.10 . tcp . 80 }
delete element ip ringlb portals { 10.96.0.11 . tcp . 80 }
add element ip ringlb no-endpoints { 10.96.0.10 . tcp . 80 : goto reject-chain }
add element ip ringlb no-endpoints { 10.96.0.11 . tcp . 80 : drop }
delete element ip ringlb local-portals { 192.168.1.5 . tcp . 30080 }
delete element ip ringlb portal-ports { tcp . 40000 }
delete element ip ringlb portal-ports { tcp . 40001 }
delete element ip ringlb portal-ports { tcp . 40004 }
",
        "rejected, dropped and short-circuit portals go first; redirects, new portals, \
         deletions and the sets wait for the swap"
    );
    assert_eq!(
        diff_ruleset(&first, &new),
        "\
delete element ip ringlb portals { 10.96.0.13 . tcp . 80 }
delete element ip ringlb no-endpoints { 10.96.0.14 . tcp . 80 }
delete element ip ringlb portals { 10.96.0.16 . tcp . 80 }
add element ip ringlb portals { 10.96.0.13 . tcp . 80 : 40007 }
add element ip ringlb portals { 10.96.0.14 . tcp . 80 : 40008 }
add element ip ringlb portals { 10.96.0.17 . tcp . 80 : 40009 }
delete element ip ringlb cluster-ips { 10.96.0.10 }
delete element ip ringlb cluster-ips { 10.96.0.11 }
delete element ip ringlb cluster-ips { 10.96.0.12 }
delete element ip ringlb portal-ports { tcp . 40003 }
delete element ip ringlb portal-ports { tcp . 40006 }
add element ip ringlb portal-ports { tcp . 40007 }
add element ip ringlb portal-ports { tcp . 40008 }
add element ip ringlb portal-ports { tcp . 40009 }
"
    );
    assert_eq!(new.withdrawn(&new), new, "nothing left to withdraw");
    assert_eq!(stale_udp(Some(&old), &first), vec![], "TCP only here");
}

#[test]
fn the_first_of_two_claims_on_a_frontend_wins() {
    let (state, _) = State::new(
        &[
            entry(Protocol::Tcp, "10.96.0.10:80", Verdict::Redirect(1)),
            entry(Protocol::Tcp, "10.96.0.10:80", Verdict::Reject),
        ],
        &[],
        &[],
        &[],
        false,
    );
    assert_eq!(state.len(), 1);
    assert!(full_ruleset(&state).contains("10.96.0.10 . tcp . 80 : 1 }"));
}
