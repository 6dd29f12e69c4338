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
    /// `ct state new` check (see the limits in docs/node-mode.md).
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
    skeleton_sets(family, line);
    skeleton_chains(family, line);
}

/// The table (replacing a stale one) with its maps and sets, still empty.
fn skeleton_sets(family: Family, line: &mut impl FnMut(String)) {
    let t = family.table();
    let key = format!("{} . inet_proto . inet_service", family.addr_type());
    line(format!("add table {t}"));
    line(format!("delete table {t}"));
    line(format!(
        "add table {t} {{ comment \"owned by ringlb; replaced at start, kept for the next ringlb, deleted by ringlb cleanup\" ; }}"
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
}

/// The chains and their rules, which never change after the first transaction.
fn skeleton_chains(family: Family, line: &mut impl FnMut(String)) {
    let t = family.table();
    let lookup = format!("{} . meta l4proto . th dport", family.daddr());
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
mod tests;
