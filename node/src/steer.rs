//! Traffic steering for node mode: one nftables table per address family owned by ringlb
//! (`ip ringlb` and `ip6 ringlb`, as kube-proxy keeps `ip kube-proxy` and `ip6 kube-proxy`)
//! that sends traffic for service frontends (cluster IPs, external IPs, load balancer IPs,
//! node addresses at node ports) to the local listener that serves it, rejects traffic for
//! services without endpoints and drops traffic that policy `Local` cannot serve on this node.
//!
//! The design is kube-proxy's nftables mode in miniature (`pkg/proxy/nftables/proxier.go`):
//! fixed chains written once, and all per-service state in maps keyed by
//! `ip daddr . meta l4proto . th dport` (`ip6 daddr` in the IPv6 table), so an update is a
//! handful of `add element` / `delete element` lines. Every change goes to `nft -f -` as one
//! transaction, both tables included, which the kernel applies atomically or not at all (a
//! change that withdraws redirects as two: [`Steering::withdraw`], then [`Steering::sync`]).
//!
//! - `portals`: frontend → port of ringlb's *portal* listener for that service (a wildcard
//!   socket on `0.0.0.0:port`, or `[::]:port` for IPv6 frontends). Chains at the `nat`
//!   prerouting (traffic from pods and other hosts) and output (the node itself) hooks
//!   `redirect` there; conntrack undoes the translation on replies, for TCP and UDP alike. A
//!   portal serves exactly one service, so the listener the connection arrives on names the
//!   service; the original destination (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, which the
//!   data plane's workers read) tells its frontends apart.
//! - `local-portals`: frontend → the portal for traffic from this node (`nat-output`) and from
//!   the `pod-cidrs` ranges (`--cluster-cidr`, in `nat-prerouting`), looked up before
//!   `portals`. Set for the external frontends of an `externalTrafficPolicy: Local` service:
//!   such traffic goes to the service's cluster-wide endpoints (its cluster IP part's portal),
//!   as kube-proxy short-circuits it, and a pod reaching its own load balancer IP on a node
//!   without a local endpoint is served, as the service-proxy spec asks.
//! - `firewall-ips` and `firewall-allow` (`loadBalancerSourceRanges`): new traffic to a
//!   guarded load balancer IP and port from a source outside its ranges is dropped before any
//!   translation (filter chains at the prerouting and output hooks), as kube-proxy's
//!   `firewall-check`. One interval set keyed `frontend . source range` holds every
//!   service's ranges, so a change is element updates, not per-service chains.
//! - `no-endpoints`: frontend → `goto reject-chain` (no endpoint anywhere) or `drop` (policy
//!   `Local`, none on this node), checked for new connections in filter chains at the input
//!   and forward hooks, as kube-proxy does, and for the node's own traffic after its `nat`
//!   chain (so the short-circuit is not dropped). `reject-chain` answers TCP with a reset
//!   and everything else with ICMP port unreachable. (kube-proxy's plain `reject` answers TCP
//!   with ICMP too; the client gets `ECONNREFUSED` either way, but an ICMPv6 error that
//!   reaches a pod on this node while its `connect` still holds the socket lock is set aside
//!   by the kernel (`TcpExtLockDroppedIcmps`), and the refusal then waits for the SYN's
//!   retransmission a second later. A reset is never set aside.) When a service loses its
//!   last endpoint, its element is written before the data plane drops the endpoints
//!   ([`Steering::withdraw`]), so no portal accepts a client it has nothing for and resets it.
//! - `portal-ports`: the portals' protocol and port. Portals listen on the wildcard address,
//!   so a client could reach `<node address>:<portal>` directly and bypass the maps (and
//!   policy `Local`); new traffic to a portal port that no redirect translated is rejected in
//!   the input hook, which traffic from pods and from the node itself both pass.
//! - `cluster-ips`: every cluster IP. New traffic to one that nothing redirected (a port or
//!   protocol the service does not have) is rejected, from pods (forward hook) and from the
//!   node (output, after the `nat` chains), as kube-proxy's `cluster-ips-check` does.
//! - `service-cidrs` (an interval set): the cluster's service CIDRs (`ServiceCIDR` objects).
//!   In the same check, new traffic to an address of theirs that is no cluster IP (an
//!   unallocated one) is dropped, as kube-proxy drops it.
//! - Stale UDP conntrack entries: conntrack keeps a UDP flow's translation for as long as the
//!   client keeps sending (120 s after the last datagram once answered), so a client whose
//!   entry points at a portal that no longer serves its frontend (the service's portal
//!   changed, ringlb restarted with new portals, or the frontend lost its endpoints) would be
//!   black-holed for as long as it keeps trying: kube-proxy's longest-lived UDP bug class. So
//!   would a client that sent before its frontend was served at all (its datagrams then
//!   left untranslated, by the default route). After each transaction, [`Steering::sync`]
//!   deletes the UDP entries of every frontend whose verdict or short-circuit portal changed,
//!   came or went (all of them after the first, whole-table transaction), with `conntrack -D`
//!   in a task of its own, as kube-proxy's conntrack cleanup does after its syncs. TCP needs
//!   none of this: a stale TCP entry draws a reset, and a new connection gets a new entry,
//!   except one that reuses the addresses and ports of a connection a reset from the
//!   portal's side ended less than 10 s before (see [`State::withdrawn`]).
//!
//! The IPv6 table is written only where the host has IPv6 (`/proc/sys/net/ipv6`); without it
//! IPv6 frontends are reported by [`Steering::sync`] and not steered.
//!
//! The text is generated by pure functions ([`full_ruleset`], [`diff_ruleset`]) and tested as
//! golden text; [`Steering`] only feeds it to `nft`, a child process awaited on the control
//! runtime (a transaction holds no thread; removing the tables at exit waits for `nft` on the
//! spot, there being nothing else to serve then). This module never touches other tables.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use ipnet::IpNet;

mod ruleset;
mod served;

pub use ruleset::{
    delete_ruleset, diff_ruleset, full_ruleset, stale_udp, State, SteerEntry, Verdict,
};
pub use served::Tables;

/// The table ringlb owns, once in family `ip` and once in family `ip6`.
pub const TABLE: &str = "ringlb";

/// Why the tables could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// `nft` could not be run (not installed, not in `PATH`).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the transaction (nothing changed).
    #[error("nft refused the transaction ({status}): {stderr}")]
    Refused {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// `ip` refused a policy-routing change (`--preserve-client-ip`).
    #[error("`ip {command}` failed ({status}): {stderr}")]
    Routing {
        /// The arguments.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// What one [`Steering::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole table was written (first sync), else only changed elements.
    pub full: bool,
    /// Lines sent to `nft` (0: nothing changed, `nft` not run).
    pub lines: usize,
    /// How long `nft` took.
    pub took: Duration,
    /// Frontends steered.
    pub steered: usize,
    /// Frontends that cannot be steered (IPv6 ones on a host without IPv6).
    pub unsteered: Vec<SteerEntry>,
    /// UDP frontends whose conntrack entries are being deleted (see [`stale_udp`]).
    pub conntrack_flushes: usize,
}

/// The tables as ringlb last wrote them, and the program that writes them.
#[derive(Debug)]
pub struct Steering {
    nft: String,
    conntrack: String,
    ipv6: bool,
    pod_cidrs: Vec<IpNet>,
    client_ip_mark: Option<u32>,
    current: Option<State>,
}

impl Steering {
    /// Steering through the `nft` program (`nft` from `PATH` by default), with the IPv6 table
    /// where this host (the caller's network namespace) has IPv6. Nothing is written until
    /// the first [`Steering::sync`].
    pub fn new(nft: impl Into<String>) -> Steering {
        Steering {
            nft: nft.into(),
            conntrack: "conntrack".into(),
            ipv6: std::path::Path::new("/proc/sys/net/ipv6").exists(),
            pod_cidrs: Vec::new(),
            client_ip_mark: None,
            current: None,
        }
    }

    /// Replies from backends to sockets that connected from a client's address
    /// (`--preserve-client-ip`) are delivered locally: marked `mark` in a `mangle-prerouting`
    /// chain (`socket transparent 1`), and a policy rule sends that mark to routing table
    /// [`CLIENT_IP_TABLE`], which routes everything to `lo`, as for TPROXY. The rule and
    /// table are written with the first tables and removed with them.
    pub fn with_client_ip_mark(mut self, mark: u32) -> Steering {
        self.client_ip_mark = Some(mark);
        self
    }

    /// Traffic from these ranges (kube-proxy's `--cluster-cidr`: this node's pods) to the
    /// external frontends of a policy `Local` service is short-circuited like the node's own
    /// (see [`SteerEntry::local_portal`]); without them only the node's own is.
    pub fn with_pod_cidrs(mut self, cidrs: Vec<IpNet>) -> Steering {
        self.pod_cidrs = cidrs;
        self
    }

    /// Whether IPv6 frontends are steered (the `ip6 ringlb` table is written).
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// Makes the tables steer `entries`, reject unserved ports of `cluster_ips` and drop
    /// unallocated addresses of `service_cidrs`: the first call replaces any tables a
    /// previous ringlb left behind with complete ones, later calls change only the elements
    /// that differ. Each call is one atomic transaction; on failure the tables are as before,
    /// and the next call writes them whole again.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: dropped while `nft` runs, the transaction may or may not be in effect
    /// and the next call writes the tables whole only if it failed. Await it to the end.
    pub async fn sync(
        &mut self,
        entries: &[SteerEntry],
        cluster_ips: &[IpAddr],
        service_cidrs: &[IpNet],
    ) -> Result<SyncReport, SteerError> {
        let (state, unsteered) = self.state(entries, cluster_ips, service_cidrs);
        self.write(state, unsteered).await
    }

    /// The first half of a change that [`Steering::sync`] completes: only what stops going
    /// to a portal (see [`State::withdrawn`]): frontends rejected or dropped now that their
    /// service lost its endpoints, and short-circuit portals that go. Called before the data
    /// plane drops those endpoints, so the kernel refuses new connections from then on and
    /// no portal accepts one only to reset it. Only the frontends' verdicts and
    /// short-circuit portals of `entries` count (the sets change with the `sync`). Nothing is
    /// written before the first `sync`, nor when nothing is withdrawn.
    ///
    /// # Cancel safety
    ///
    /// As [`Steering::sync`]: await it to the end.
    pub async fn withdraw(&mut self, entries: &[SteerEntry]) -> Result<SyncReport, SteerError> {
        let Some(current) = &self.current else {
            return Ok(SyncReport::default());
        };
        let (next, unsteered) = self.state(entries, &[], &[]);
        let state = current.withdrawn(&next);
        self.write(state, unsteered).await
    }

    /// The state of `entries`, with this steering's pod ranges, mark and families.
    fn state(
        &self,
        entries: &[SteerEntry],
        cluster_ips: &[IpAddr],
        service_cidrs: &[IpNet],
    ) -> (State, Vec<SteerEntry>) {
        let (state, unsteered) = State::new(
            entries,
            cluster_ips,
            service_cidrs,
            &self.pod_cidrs,
            self.ipv6,
        );
        (state.with_client_ip_mark(self.client_ip_mark), unsteered)
    }

    /// Makes the tables `state`: whole the first time, else the elements that differ.
    async fn write(
        &mut self,
        state: State,
        unsteered: Vec<SteerEntry>,
    ) -> Result<SyncReport, SteerError> {
        let (full, text) = match &self.current {
            Some(old) => (false, diff_ruleset(old, &state)),
            None => (true, full_ruleset(&state)),
        };
        let mut report = SyncReport {
            full,
            lines: text.lines().count(),
            steered: state.len(),
            unsteered,
            ..SyncReport::default()
        };
        if !text.is_empty() {
            let started = Instant::now();
            let result = self.run(&text).await;
            report.took = started.elapsed();
            if let Err(e) = result {
                self.current = None;
                return Err(e);
            }
        }
        if let (true, Some(mark)) = (full, self.client_ip_mark) {
            for step in self.client_ip_routing(mark, true) {
                step.run().await?;
            }
        }
        let stale = stale_udp(self.current.as_ref(), &state);
        report.conntrack_flushes = stale.len();
        if !stale.is_empty() {
            flush_udp_conntrack(self.conntrack.clone(), stale);
        }
        self.current = Some(state);
        Ok(report)
    }

    /// Deletes the tables and the client-address routing, waiting for `nft` and `ip` on the
    /// spot. Idempotent.
    pub fn remove(&mut self) -> Result<(), SteerError> {
        self.current = None;
        if let Some(mark) = self.client_ip_mark {
            for step in self.client_ip_routing(mark, false) {
                step.run_now()?;
            }
        }
        let text = delete_ruleset(self.ipv6);
        let spawned = self.nft_command().spawn().and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                // A write error means nft exited early; its status and stderr say why.
                let _ = stdin.write_all(text.as_bytes());
            }
            child.wait_with_output()
        });
        self.checked_nft(spawned)
    }

    /// What replaces (`add`) or removes the policy rule and the local route of
    /// [`Steering::with_client_ip_mark`], in each family written: the rules and routes an
    /// earlier run left go first.
    fn client_ip_routing(&self, mark: u32, add: bool) -> Vec<IpStep> {
        let table = CLIENT_IP_TABLE.to_string();
        let fwmark = format!("{mark:#x}/{mark:#x}");
        let families: &[(&'static str, &str)] = if self.ipv6 {
            &[("-4", "0.0.0.0/0"), ("-6", "::/0")]
        } else {
            &[("-4", "0.0.0.0/0")]
        };
        let mut steps = Vec::new();
        for (family, everything) in families {
            let step = |how, words: &[&str]| IpStep {
                family,
                args: words.iter().map(|w| (*w).to_owned()).collect(),
                how,
            };
            steps.push(step(
                IpHow::UntilFails,
                &["rule", "del", "fwmark", &fwmark, "lookup", &table],
            ));
            steps.push(step(IpHow::Try, &["route", "flush", "table", &table]));
            if add {
                let pref = CLIENT_IP_TABLE.to_string();
                steps.push(step(
                    IpHow::Must,
                    &[
                        "rule", "add", "fwmark", &fwmark, "lookup", &table, "pref", &pref,
                    ],
                ));
                steps.push(step(
                    IpHow::Must,
                    &[
                        "route", "replace", "local", everything, "dev", "lo", "table", &table,
                    ],
                ));
            }
        }
        steps
    }

    /// `nft -f -`, its input piped, its errors kept.
    fn nft_command(&self) -> Command {
        let mut nft = Command::new(&self.nft);
        nft.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        nft
    }

    /// Feeds `text` to `nft` as one transaction, awaiting it.
    async fn run(&self, text: &str) -> Result<(), SteerError> {
        let spawned = match tokio::process::Command::from(self.nft_command()).spawn() {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    // A write error means nft exited early; its status and stderr say why.
                    let _ = stdin.write_all(text.as_bytes()).await;
                }
                child.wait_with_output().await
            }
            Err(e) => Err(e),
        };
        self.checked_nft(spawned)
    }

    /// What `nft` made of a transaction.
    fn checked_nft(&self, out: std::io::Result<Output>) -> Result<(), SteerError> {
        let out = out.map_err(|source| SteerError::Spawn {
            program: self.nft.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SteerError::Refused {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// Deletes what node mode leaves in the kernel for its successor (`ringlb cleanup`, as
/// kube-proxy's `--cleanup`): both tables, and the policy rule and routes of
/// `client_ip_mark`. Deleting what is not there is not an error.
pub fn cleanup(client_ip_mark: u32) -> Result<(), SteerError> {
    Steering::new("nft")
        .with_client_ip_mark(client_ip_mark)
        .remove()
}

/// The routing table (and policy rule preference) of [`Steering::with_client_ip_mark`].
pub const CLIENT_IP_TABLE: u32 = 2400;

/// Stale policy rules deleted at most (one per earlier run that left one).
const STALE_RULES: usize = 64;

/// How an `ip` step's failure counts.
#[derive(Clone, Copy, Debug)]
enum IpHow {
    /// Repeated until it fails (deleting stale rules: it fails once none is left).
    UntilFails,
    /// Its failure does not matter (flushing a table that is not there).
    Try,
    /// Its failure is an error.
    Must,
}

/// One `ip FAMILY ARGS…` (iproute2) of the client-address routing.
#[derive(Debug)]
struct IpStep {
    family: &'static str,
    args: Vec<String>,
    how: IpHow,
}

impl IpStep {
    fn command(&self) -> Command {
        let mut ip = Command::new("ip");
        ip.arg(self.family).args(&self.args).stdin(Stdio::null());
        ip
    }

    /// Runs it as a child process awaited on the current runtime.
    async fn run(&self) -> Result<(), SteerError> {
        for _ in 0..self.repeats() {
            let out = tokio::process::Command::from(self.command()).output().await;
            if !self.went_on(out)? {
                break;
            }
        }
        Ok(())
    }

    /// Runs it, waiting on the spot.
    fn run_now(&self) -> Result<(), SteerError> {
        for _ in 0..self.repeats() {
            if !self.went_on(self.command().output())? {
                break;
            }
        }
        Ok(())
    }

    fn repeats(&self) -> usize {
        match self.how {
            IpHow::UntilFails => STALE_RULES,
            IpHow::Try | IpHow::Must => 1,
        }
    }

    /// Whether it succeeded; an error when it must have and did not.
    fn went_on(&self, out: std::io::Result<Output>) -> Result<bool, SteerError> {
        let out = out.map_err(|source| SteerError::Spawn {
            program: "ip".into(),
            source,
        })?;
        match (out.status.success(), self.how) {
            (true, _) => Ok(true),
            (false, IpHow::UntilFails | IpHow::Try) => Ok(false),
            (false, IpHow::Must) => Err(SteerError::Routing {
                command: format!("{} {}", self.family, self.args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    }
}

/// Deletes the UDP conntrack entries of `frontends` (original destination address and port),
/// one `conntrack -D` each, in a task of its own on the current runtime, so a large first sync
/// does not hold up the control plane. Deleting an entry that was still right is harmless: the
/// flow's next datagram creates it again, to the same portal.
fn flush_udp_conntrack(program: String, frontends: Vec<(IpAddr, u16)>) {
    tokio::spawn(async move {
        let started = Instant::now();
        for (ip, port) in &frontends {
            let out = tokio::process::Command::new(&program)
                .args(["-D", "-p", "udp", "--orig-dst"])
                .arg(ip.to_string())
                .arg("--orig-port-dst")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .output()
                .await;
            match out {
                // Exit status 1 with "0 flow entries": nothing to delete.
                Ok(o)
                    if o.status.success()
                        || String::from_utf8_lossy(&o.stderr).contains("flow entries") => {}
                Ok(o) => {
                    tracing::warn!(frontend = %ip, port, status = %o.status, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "conntrack refused to delete stale UDP entries")
                }
                Err(e) => {
                    tracing::warn!(program, error = %e, "cannot run conntrack: stale UDP conntrack entries stay until they time out (apt-get install conntrack)");
                    return;
                }
            }
        }
        tracing::debug!(frontends = frontends.len(), took = ?started.elapsed(), "stale UDP conntrack entries deleted");
    });
}
