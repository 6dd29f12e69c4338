//! The text of ringlb's nftables tables, as pure functions of the steering [`State`]: the
//! whole tables ([`full_ruleset`]), the elements that changed ([`diff_ruleset`]), their removal
//! ([`delete_ruleset`]), and the UDP frontends whose conntrack entries went stale
//! ([`stale_udp`]). See the parent module for what the tables do.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use config::Protocol;

use ipnet::IpNet;

/// What happens to new traffic for one frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Redirect to the local portal listener on this port (of the frontend's family).
    Redirect(u16),
    /// No endpoint anywhere: refuse (TCP reset, ICMP port unreachable).
    Reject,
    /// Policy `Local` and no endpoint on this node: drop, as kube-proxy does.
    Drop,
}

/// One frontend of a service and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteerEntry {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address clients use (cluster IP, external IP, LB IP or node address, and port).
    pub frontend: SocketAddr,
    /// What to do with it.
    pub verdict: Verdict,
    /// The portal (of the frontend's family) for traffic from this node and from the pod
    /// ranges instead: kube-proxy's short-circuit of policy `Local` external frontends to
    /// the cluster-wide endpoints. It overrides `verdict` for that traffic.
    pub local_portal: Option<u16>,
    /// `loadBalancerSourceRanges`: only these sources may open new flows (an empty list
    /// admits no one); `None` admits everyone.
    pub sources: Option<Vec<IpNet>>,
}

impl SteerEntry {
    /// An entry with `verdict` for everyone.
    pub fn new(protocol: Protocol, frontend: SocketAddr, verdict: Verdict) -> SteerEntry {
        SteerEntry {
            protocol,
            frontend,
            verdict,
            local_portal: None,
            sources: None,
        }
    }
}

/// An address family, with its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The table, as nft names it.
    fn table(self) -> &'static str {
        match self {
            Family::V4 => "ip ringlb",
            Family::V6 => "ip6 ringlb",
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    fn daddr(self) -> &'static str {
        match self {
            Family::V4 => "ip daddr",
            Family::V6 => "ip6 daddr",
        }
    }

    fn saddr(self) -> &'static str {
        match self {
            Family::V4 => "ip saddr",
            Family::V6 => "ip6 saddr",
        }
    }

    /// The families whose tables ringlb writes.
    fn written(ipv6: bool) -> &'static [Family] {
        if ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }
}

/// A map key: `ip daddr . meta l4proto . th dport` (`ip6 daddr` for IPv6).
type Key = (IpAddr, Proto, u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The steering state: every steered frontend with its verdict (and its short-circuit
/// portal and admitted sources, if any), every cluster IP, the service CIDRs, the pod ranges,
/// and whether the IPv6 table is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    frontends: BTreeMap<Key, Verdict>,
    local_portals: BTreeMap<Key, u16>,
    /// Guarded frontends (`firewall-ips`).
    firewalled: BTreeSet<Key>,
    /// What they admit (`firewall-allow`): frontend and source range.
    admitted: BTreeSet<(Key, IpNet)>,
    cluster_ips: BTreeSet<IpAddr>,
    /// Normalized (see [`disjoint`]).
    service_cidrs: BTreeSet<IpNet>,
    /// Where this node's pods are (`--cluster-cidr`), normalized.
    pod_cidrs: BTreeSet<IpNet>,
    /// The packet mark for replies to sockets that connected from a client's address
    /// (`--preserve-client-ip`).
    client_ip_mark: Option<u32>,
    ipv6: bool,
}

/// `ranges` of the written families, host bits cleared, without those inside another (an
/// interval set refuses overlapping elements).
fn disjoint(ranges: &[IpNet], ipv6: bool) -> BTreeSet<IpNet> {
    let nets: Vec<IpNet> = ranges
        .iter()
        .filter(|c| ipv6 || matches!(c, IpNet::V4(_)))
        .map(IpNet::trunc)
        .collect();
    nets.iter()
        .filter(|c| !nets.iter().any(|o| o != *c && o.contains(*c)))
        .copied()
        .collect()
}

impl State {
    /// The protocol and port of every portal of `family` some frontend is redirected to.
    fn portal_ports(&self, family: Family) -> BTreeSet<(Proto, u16)> {
        let redirects = self.frontends.iter().filter_map(|(k, v)| match v {
            Verdict::Redirect(port) => Some((k, *port)),
            _ => None,
        });
        redirects
            .chain(self.local_portals.iter().map(|(k, port)| (k, *port)))
            .filter(|((ip, _, _), _)| Family::of(ip) == family)
            .map(|(&(_, proto, _), port)| (proto, port))
            .collect()
    }

    /// Builds the state from `entries`, the services' `cluster_ips`, the cluster's
    /// `service_cidrs` and the ranges of this node's pods (`pod_cidrs`, for the
    /// short-circuit), with the IPv6 table if `ipv6`; returns it with the entries that cannot
    /// be steered (IPv6 frontends without it). A frontend listed twice keeps its first entry.
    pub fn new(
        entries: &[SteerEntry],
        cluster_ips: &[IpAddr],
        service_cidrs: &[IpNet],
        pod_cidrs: &[IpNet],
        ipv6: bool,
    ) -> (State, Vec<SteerEntry>) {
        let steered = |ip: &IpAddr| ipv6 || ip.is_ipv4();
        let mut state = State {
            cluster_ips: cluster_ips.iter().copied().filter(steered).collect(),
            service_cidrs: disjoint(service_cidrs, ipv6),
            pod_cidrs: disjoint(pod_cidrs, ipv6),
            ipv6,
            ..State::default()
        };
        let mut unsteered = Vec::new();
        for e in entries {
            let proto = match e.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
            };
            let key = (e.frontend.ip(), proto, e.frontend.port());
            if !steered(&key.0) {
                unsteered.push(e.clone());
                continue;
            }
            if state.frontends.contains_key(&key) {
                continue;
            }
            state.frontends.insert(key, e.verdict);
            if let Some(port) = e.local_portal {
                state.local_portals.insert(key, port);
            }
            if let Some(sources) = &e.sources {
                state.firewalled.insert(key);
                let family = Family::of(&key.0);
                let of_family: Vec<IpNet> = sources
                    .iter()
                    .filter(|s| Family::of(&s.addr()) == family)
                    .copied()
                    .collect();
                let ranges = disjoint(&of_family, true);
                state.admitted.extend(ranges.into_iter().map(|s| (key, s)));
            }
        }
        (state, unsteered)
    }

    /// The state with replies to transparent sockets (connected from a client's address)
    /// marked `mark` on arrival, for the policy routing that delivers them locally.
    pub fn with_client_ip_mark(mut self, mark: Option<u32>) -> State {
        self.client_ip_mark = mark;
        self
    }

    /// How many frontends are steered.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    /// Whether no frontend is steered.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// This state with only the withdrawals on the way to `next`: every frontend that is
    /// redirected here and rejected or dropped in `next` (its service lost its endpoints)
    /// takes its new verdict, and every short-circuit portal that `next` no longer has goes.
    /// Everything else (new redirects, moved portals, sets) stays as it is here.
    ///
    /// Written before the data plane stops serving what it withdraws, so that no portal is
    /// left to accept a steered client it has no endpoint for and reset it: a reset from the
    /// portal's side leaves a conntrack entry in `CLOSE` that the kernel does not reopen for
    /// a new SYN on the same addresses and ports, which then skips the `nat` chains and every
    /// `ct state new` check (see the README's node-mode limits).
    pub fn withdrawn(&self, next: &State) -> State {
        let mut out = self.clone();
        for (key, verdict) in &self.frontends {
            let now = next.frontends.get(key);
            if let (Verdict::Redirect(_), Some(v @ (Verdict::Reject | Verdict::Drop))) =
                (verdict, now)
            {
                out.frontends.insert(*key, *v);
            }
        }
        out.local_portals
            .retain(|key, _| next.local_portals.contains_key(key));
        out
    }
}

/// The table, map and element text of one frontend.
fn element(key: &Key, verdict: Verdict) -> (&'static str, &'static str, String) {
    let (map, k) = key_only(key, verdict);
    let e = match verdict {
        Verdict::Redirect(to) => format!("{k} : {to}"),
        Verdict::Reject => format!("{k} : goto reject-chain"),
        Verdict::Drop => format!("{k} : drop"),
    };
    (Family::of(&key.0).table(), map, e)
}

fn key_only(key: &Key, verdict: Verdict) -> (&'static str, String) {
    let map = match verdict {
        Verdict::Redirect(_) => "portals",
        Verdict::Reject | Verdict::Drop => "no-endpoints",
    };
    (map, key_text(key))
}

/// `ip . proto . port`, as the maps and sets key it.
fn key_text((ip, proto, port): &Key) -> String {
    format!("{ip} . {} . {port}", proto.name())
}

/// The table of `cidr`'s family.
fn cidr_table(cidr: &IpNet) -> &'static str {
    Family::of(&cidr.addr()).table()
}

/// The elements of the sets and the `local-portals` map, as (table, set or map, element)
/// lines: everything but the frontends' verdicts.
fn set_elements(state: &State) -> BTreeSet<(&'static str, &'static str, String)> {
    let mut out = BTreeSet::new();
    for ip in &state.cluster_ips {
        out.insert((Family::of(ip).table(), "cluster-ips", ip.to_string()));
    }
    for cidr in &state.service_cidrs {
        out.insert((cidr_table(cidr), "service-cidrs", cidr.to_string()));
    }
    for cidr in &state.pod_cidrs {
        out.insert((cidr_table(cidr), "pod-cidrs", cidr.to_string()));
    }
    for &family in Family::written(state.ipv6) {
        for (proto, port) in state.portal_ports(family) {
            let e = format!("{} . {port}", proto.name());
            out.insert((family.table(), "portal-ports", e));
        }
    }
    for (k, port) in &state.local_portals {
        let e = format!("{} : {port}", key_text(k));
        out.insert((Family::of(&k.0).table(), "local-portals", e));
    }
    for k in &state.firewalled {
        out.insert((Family::of(&k.0).table(), "firewall-ips", key_text(k)));
    }
    for (k, source) in &state.admitted {
        let e = format!("{} . {source}", key_text(k));
        out.insert((Family::of(&k.0).table(), "firewall-allow", e));
    }
    out
}

/// The fixed part of one family's table: created empty (after deleting whatever a previous
/// ringlb left in it), its maps and sets, and its chains.
fn skeleton(family: Family, line: &mut impl FnMut(String)) {
    let t = family.table();
    let key = format!("{} . inet_proto . inet_service", family.addr_type());
    let lookup = format!("{} . meta l4proto . th dport", family.daddr());
    line(format!("add table {t}"));
    line(format!("delete table {t}"));
    line(format!(
        "add table {t} {{ comment \"owned by ringlb; replaced at start, deleted at exit\" ; }}"
    ));
    line(format!(
        "add map {t} portals {{ type {key} : inet_service ; }}"
    ));
    line(format!(
        "add map {t} no-endpoints {{ type {key} : verdict ; }}"
    ));
    line(format!(
        "add set {t} cluster-ips {{ type {} ; }}",
        family.addr_type()
    ));
    line(format!(
        "add set {t} portal-ports {{ type inet_proto . inet_service ; }}"
    ));
    line(format!(
        "add set {t} service-cidrs {{ type {} ; flags interval ; }}",
        family.addr_type()
    ));
    line(format!(
        "add set {t} pod-cidrs {{ type {} ; flags interval ; }}",
        family.addr_type()
    ));
    line(format!(
        "add map {t} local-portals {{ type {key} : inet_service ; }}"
    ));
    line(format!("add set {t} firewall-ips {{ type {key} ; }}"));
    line(format!(
        "add set {t} firewall-allow {{ type {key} . {} ; flags interval ; }}",
        family.addr_type()
    ));
    line(format!("add chain {t} reject-chain"));
    // TCP gets a reset, the rest ICMP port unreachable (see the module docs).
    line(format!(
        "add rule {t} reject-chain meta l4proto tcp reject with tcp reset"
    ));
    line(format!("add rule {t} reject-chain reject"));
    line(format!("add chain {t} cluster-ips-check"));
    line(format!(
        "add rule {t} cluster-ips-check {} @cluster-ips goto reject-chain",
        family.daddr()
    ));
    line(format!(
        "add rule {t} cluster-ips-check {} @service-cidrs drop",
        family.daddr()
    ));
    // loadBalancerSourceRanges, before any translation (kube-proxy's `firewall-check`).
    line(format!("add chain {t} firewall-check"));
    line(format!(
        "add rule {t} firewall-check {lookup} @firewall-ips {lookup} . {} != @firewall-allow drop",
        family.saddr()
    ));
    // The short-circuit comes first: from the pod ranges (prerouting) and from the node
    // itself (output, all of it local).
    let from_pods = format!("{} @pod-cidrs ", family.saddr());
    for (chain, hook, local) in [
        ("nat-prerouting", "prerouting", from_pods.as_str()),
        ("nat-output", "output", ""),
    ] {
        line(format!(
            "add chain {t} {chain} {{ type nat hook {hook} priority -100 ; }}"
        ));
        line(format!(
            "add rule {t} {chain} {local}meta l4proto {{ tcp, udp }} redirect to : {lookup} map @local-portals"
        ));
        line(format!(
            "add rule {t} {chain} meta l4proto {{ tcp, udp }} redirect to : {lookup} map @portals"
        ));
    }
    for hook in ["prerouting", "input", "forward", "output"] {
        line(format!(
            "add chain {t} filter-{hook} {{ type filter hook {hook} priority -110 ; }}"
        ));
    }
    for hook in ["prerouting", "output"] {
        line(format!(
            "add rule {t} filter-{hook} ct state new jump firewall-check"
        ));
    }
    // The node's own traffic is checked after its nat chain, which short-circuits some of
    // what policy `Local` would drop.
    line(format!(
        "add chain {t} filter-output-post-dnat {{ type filter hook output priority -90 ; }}"
    ));
    for chain in ["filter-input", "filter-forward", "filter-output-post-dnat"] {
        line(format!(
            "add rule {t} {chain} ct state new {lookup} vmap @no-endpoints"
        ));
    }
    line(format!(
        "add rule {t} filter-input ct state new ct status ! dnat meta l4proto . th dport @portal-ports goto reject-chain"
    ));
    // After the nat chains: what they redirected no longer goes to a cluster IP.
    line(format!(
        "add rule {t} filter-forward ct state new jump cluster-ips-check"
    ));
    line(format!(
        "add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check"
    ));
}

/// Both tables (the IPv6 one if `state` has it) as one transaction: each is created (so the
/// `delete` cannot fail), deleted with whatever a previous ringlb left in it, and written
/// again with `state`.
pub fn full_ruleset(state: &State) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    for &family in Family::written(state.ipv6) {
        skeleton(family, &mut line);
        if let Some(mark) = state.client_ip_mark {
            // At mangle priority, before the routing decision: a reply from a backend to a
            // client address, for a socket ringlb connected from that address.
            let t = family.table();
            line(format!(
                "add chain {t} mangle-prerouting {{ type filter hook prerouting priority -150 ; }}"
            ));
            line(format!(
                "add rule {t} mangle-prerouting meta l4proto {{ tcp, udp }} socket transparent 1 meta mark set meta mark or {mark:#x}"
            ));
        }
    }
    for (k, v) in &state.frontends {
        let (t, map, e) = element(k, *v);
        line(format!("add element {t} {map} {{ {e} }}"));
    }
    for (t, set, e) in set_elements(state) {
        line(format!("add element {t} {set} {{ {e} }}"));
    }
    out
}

/// The transaction that turns `old` into `new` (both with the same tables): deletes the
/// elements that left or changed, adds those that came or changed. Empty when nothing
/// changed.
pub fn diff_ruleset(old: &State, new: &State) -> String {
    debug_assert_eq!(old.ipv6, new.ipv6, "a diff cannot add or remove a table");
    debug_assert_eq!(
        old.client_ip_mark, new.client_ip_mark,
        "the chains are fixed"
    );
    let mut out = String::new();
    for (k, v) in &old.frontends {
        if new.frontends.get(k) != Some(v) {
            let (map, e) = key_only(k, *v);
            let t = Family::of(&k.0).table();
            out.push_str(&format!("delete element {t} {map} {{ {e} }}\n"));
        }
    }
    for (k, v) in &new.frontends {
        if old.frontends.get(k) != Some(v) {
            let (t, map, e) = element(k, *v);
            out.push_str(&format!("add element {t} {map} {{ {e} }}\n"));
        }
    }
    // Deletions first: a range may give way to a wider or narrower one, a portal of a
    // `local-portals` key may change.
    let (old_sets, new_sets) = (set_elements(old), set_elements(new));
    for (t, set, e) in old_sets.difference(&new_sets) {
        let e = e.split(" : ").next().unwrap_or(e);
        out.push_str(&format!("delete element {t} {set} {{ {e} }}\n"));
    }
    for (t, set, e) in new_sets.difference(&old_sets) {
        out.push_str(&format!("add element {t} {set} {{ {e} }}\n"));
    }
    out
}

/// UDP frontends whose conntrack entries may be stale: after the first sync (`old` is
/// `None`) every UDP frontend, since entries may point at a previous process's portals; after
/// later ones, every UDP frontend whose verdict or short-circuit portal changed, came or went.
/// That covers the service-proxy spec's two cases (a frontend that lost its endpoints or
/// moved, and one that gained endpoints, whose client may hold an entry made before, e.g. one
/// forwarded untranslated while the cluster IP was not yet served).
pub fn stale_udp(old: Option<&State>, new: &State) -> Vec<(IpAddr, u16)> {
    let empty = State::default();
    let old = old.unwrap_or(&empty);
    let steering =
        |s: &State, k: &Key| (s.frontends.get(k).copied(), s.local_portals.get(k).copied());
    let keys: BTreeSet<&Key> = old.frontends.keys().chain(new.frontends.keys()).collect();
    keys.into_iter()
        .filter(|k| k.1 == Proto::Udp && steering(old, k) != steering(new, k))
        .map(|&(ip, _, port)| (ip, port))
        .collect()
}

/// The transaction that removes the tables (the IPv6 one too if `ipv6`).
pub fn delete_ruleset(ipv6: bool) -> String {
    Family::written(ipv6)
        .iter()
        .map(|f| format!("add table {t}\ndelete table {t}\n", t = f.table()))
        .collect()
}

#[cfg(test)]
mod tests {
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
add table {t} {{ comment \"owned by ringlb; replaced at start, deleted at exit\" ; }}
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
}
