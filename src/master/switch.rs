//! How the master hands its sockets from workers to a successor: an upgrade in place
//! (SIGUSR2, `ringlb upgrade`: the binary executed again, a new worker started), a takeover
//! by a new master through the handover socket, and on both sides the handover itself.
//!
//! The order is the same everywhere, and a failure before its last step leaves the old
//! workers serving as before: the successor worker starts on the same sockets with its UDP
//! frontends held; once it is ready, the old workers stop reading every frontend (the
//! sockets stay open: what is queued is the successor's) and send their UDP flows; the
//! successor pins those clients to their backends and opens its UDP frontends; the old
//! workers drain.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use super::channel::{AsyncChannel, Channel};
use super::handover::{answer, Conn};
use super::pending::{Asker, HandOff, HandTo, Upgrade};
use super::process::{lock, Role};
use super::supervise::Master;
use super::upgrade::{exec, SavedSet, SavedWorker, State};
use super::wire::{Answer, Ask, HeldSet, ToWorker};
use super::Event;
use crate::admin::{UdpFlowView, UdpFlowsView};

/// How long a new worker may take to be ready (node mode first lists the API).
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long the old workers may take to send their UDP flows.
const FLOWS_WAIT: Duration = Duration::from_secs(5);
/// How long a new master waits for the old one's sockets.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

impl Master {
    /// Upgrade in place: executes the binary again with everything this master holds. Only
    /// returns if that failed (said to `asker`).
    pub(super) fn upgrade(&mut self, asker: Asker) {
        if let Some(why) = self.busy() {
            return tell(asker, Err(format!("cannot upgrade now: {why}")));
        }
        let state = self.save(match &asker {
            Asker::Client(conn) => Some(conn.as_fd().as_raw_fd()),
            _ => None,
        });
        let error = exec(&self.exe, &self.argv, &state);
        let why = format!("cannot execute {}: {error}", self.exe.display());
        tracing::error!("upgrade failed, the running worker keeps serving: {why}");
        tell(asker, Err(why));
    }

    /// Why no upgrade or handover can start now.
    fn busy(&self) -> Option<&'static str> {
        if self.stopping {
            Some("ringlb is stopping")
        } else if self.taken_over {
            Some("a new master serves the sockets")
        } else if self.upgrade.is_some() || self.handoff.is_some() {
            Some("an upgrade is under way")
        } else {
            None
        }
    }

    /// Everything held, by descriptor number, for the next image.
    fn save(&self, asker: Option<i32>) -> State {
        let sets = lock(&self.registry)
            .entries()
            .map(|e| SavedSet {
                spec: e.spec.clone(),
                local_addr: e.local_addr,
                fds: e.fds(None),
                users: e.users(),
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .map(|w| SavedWorker {
                id: w.id,
                pid: w.pid.as_raw(),
                role: w.role,
                ready: w.ready,
                kept: w.kept,
            })
            .collect();
        State {
            sets,
            workers,
            next_id: self.next_id,
            server: self
                .server
                .as_ref()
                .map(|s| (s.raw_fd(), s.path().to_owned())),
            asker,
        }
    }

    /// Starts the worker to hand over to, its UDP frontends held.
    pub(super) fn begin_upgrade(&mut self, asker: Asker) {
        match self.spawn(Role::Candidate) {
            Ok(candidate) => {
                self.upgrade = Some(Upgrade {
                    candidate,
                    deadline: Instant::now() + READY_WAIT,
                    asker,
                });
            }
            Err(e) => {
                let why = format!("cannot start the new worker: {e}");
                self.upgrade = Some(Upgrade {
                    candidate: 0,
                    deadline: Instant::now(),
                    asker,
                });
                self.fail_upgrade(why);
            }
        }
    }

    /// The upgrade failed: the old workers keep serving; its asker hears why.
    pub(super) fn fail_upgrade(&mut self, why: String) {
        let Some(upgrade) = self.upgrade.take() else {
            return;
        };
        self.signal(upgrade.candidate, Signal::SIGTERM);
        if matches!(upgrade.asker, Asker::Peer(_)) {
            tracing::error!("cannot take over, the running ringlb keeps serving: {why}");
            self.exit = Some(1);
            self.stopping = true;
            return;
        }
        tracing::error!("upgrade failed, the running worker keeps serving: {why}");
        tell(upgrade.asker, Err(why));
    }

    /// The candidate missed its deadline: it is killed (and the upgrade fails at its exit).
    pub(super) fn upgrade_deadline(&mut self, now: Instant) {
        let Some(upgrade) = self.upgrade.as_ref().filter(|u| u.deadline <= now) else {
            return;
        };
        let candidate = upgrade.candidate;
        if let Some(w) = self.worker_mut(candidate) {
            w.failure = Some(format!("not ready within {READY_WAIT:?}"));
            w.signal(Signal::SIGKILL);
        }
        // The exit reports it; until then, no second kill.
        if let Some(u) = &mut self.upgrade {
            u.deadline = now + READY_WAIT;
        }
    }

    /// The candidate serves: the old workers hand over to it (or the old master does).
    pub(super) async fn candidate_ready(&mut self, id: u64) {
        tracing::info!(worker = id, "new worker ready: handing over");
        let from = self.ids(Role::Serving);
        if !from.is_empty() {
            self.hand_off(from, HandTo::Candidate).await;
            return;
        }
        match self.upgrade.as_ref().map(|u| &u.asker) {
            Some(Asker::Peer(conn)) => {
                let (conn, tx) = (Arc::clone(conn), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Event::Switched(switch(&conn).await));
                });
            }
            _ => self.promote(Vec::new()).await,
        }
    }

    /// The old workers `from` stop reading and send their flows, for `to`.
    async fn hand_off(&mut self, from: BTreeSet<u64>, to: HandTo) {
        for id in &from {
            lock(&self.registry).worker_gone(*id);
            if let Some(w) = self.worker_mut(*id) {
                w.role = Role::Draining;
                w.send(&ToWorker::HandOver).await;
            }
        }
        self.handoff = Some(HandOff {
            from,
            flows: Vec::new(),
            deadline: Instant::now() + FLOWS_WAIT,
            to,
        });
    }

    /// Every old worker handed over (or exited, or missed the deadline).
    pub(super) async fn finish_handoff(&mut self) {
        let Some(handoff) = self.handoff.take() else {
            return;
        };
        match handoff.to {
            HandTo::Candidate => self.promote(handoff.flows).await,
            HandTo::Peer(conn) => {
                let flows = handoff.flows.len();
                answer(
                    &conn,
                    Answer::Switched(UdpFlowsView {
                        draining: true,
                        flows: handoff.flows,
                    }),
                    Vec::new(),
                );
                if let Some(server) = self.server.take() {
                    server.close();
                }
                // The new master holds what it serves; a socket it closes must not live on here.
                lock(&self.registry).clear();
                self.taken_over = true;
                tracing::info!(flows, "a new master serves the sockets: the workers drain");
            }
        }
    }

    /// The candidate serves: its UDP frontends open with `flows` pinned.
    async fn promote(&mut self, flows: Vec<UdpFlowView>) {
        let Some(upgrade) = self.upgrade.take() else {
            return;
        };
        let count = flows.len();
        let Some(w) = self.worker_mut(upgrade.candidate) else {
            return;
        };
        w.role = Role::Serving;
        let pid = w.pid.as_raw();
        w.send(&ToWorker::Pins(UdpFlowsView {
            draining: false,
            flows,
        }))
        .await;
        lock(&self.registry).collect();
        tracing::info!(
            worker = upgrade.candidate,
            pid,
            udp_flows = count,
            "upgrade done: the new worker serves"
        );
        crate::announce::announce_line(&format!("upgraded worker={pid}"));
        if matches!(upgrade.asker, Asker::Peer(_)) {
            self.listen_handover();
        }
        tell(upgrade.asker, Ok(pid));
    }

    /// The old master answered the switch.
    pub(super) async fn switched(&mut self, result: Result<UdpFlowsView, String>) {
        match result {
            Ok(view) => self.promote(view.flows).await,
            Err(why) => self.fail_upgrade(format!("the running master did not switch: {why}")),
        }
    }

    /// A client of the handover socket asked.
    pub(super) async fn asked(&mut self, ask: Ask, conn: Conn) {
        match ask {
            Ask::Upgrade => self.upgrade(Asker::Client(conn)),
            Ask::Reload => self.reload(conn).await,
            Ask::TakeOver => match self.busy() {
                Some(why) => answer(&conn, Answer::Failed(why.to_owned()), Vec::new()),
                None => {
                    let (sets, fds) = self.export();
                    tracing::info!(sets = sets.len(), "a new master asked for the sockets");
                    answer(&conn, Answer::Sockets(sets), fds);
                    self.taker = Some(conn);
                }
            },
            Ask::Switch => {
                let asked_first = self.taker.as_ref().is_some_and(|t| Arc::ptr_eq(t, &conn));
                match self.busy() {
                    _ if !asked_first => {
                        let why = "ask for the sockets first".to_owned();
                        answer(&conn, Answer::Failed(why), Vec::new());
                    }
                    Some(why) => answer(&conn, Answer::Failed(why.to_owned()), Vec::new()),
                    None => {
                        self.restart_at = None;
                        let from = self.ids(Role::Serving);
                        self.hand_off(from, HandTo::Peer(conn)).await;
                    }
                }
            }
        }
    }

    /// Every socket set held, with copies of their descriptors.
    fn export(&self) -> (Vec<HeldSet>, Vec<OwnedFd>) {
        let registry = lock(&self.registry);
        let mut sets = Vec::new();
        let mut fds = Vec::new();
        for entry in registry.entries() {
            let copies: Vec<OwnedFd> = entry
                .sockets
                .iter()
                .filter_map(|s| s.try_clone().ok())
                .collect();
            sets.push(HeldSet {
                spec: entry.spec.clone(),
                local_addr: entry.local_addr,
                count: copies.len(),
            });
            fds.extend(copies);
        }
        (sets, fds)
    }

    /// Takes every socket of the master at the other end of `peer`, and starts the worker
    /// that will serve them; the switch follows once it is ready.
    pub(super) fn take_over(&mut self, peer: Channel) -> anyhow::Result<()> {
        let path = self.handover.path.display().to_string();
        peer.set_read_timeout(TAKEOVER_WAIT)?;
        peer.send(&Ask::TakeOver, &[])
            .with_context(|| format!("cannot ask the ringlb at {path} for its sockets"))?;
        let reply = peer
            .recv()
            .with_context(|| format!("no answer from the ringlb at {path}"))?
            .with_context(|| format!("the ringlb at {path} closed the connection"))?;
        let answer = reply.parse::<Answer>()?;
        let mut fds = reply.fds.into_iter();
        let sets = match answer {
            Answer::Sockets(sets) => sets,
            Answer::Failed(why) => bail!("the ringlb at {path} will not hand over: {why}"),
            other => bail!("the ringlb at {path} answered {other:?}"),
        };
        let mut registry = lock(&self.registry);
        for set in sets {
            let sockets: Vec<OwnedFd> = fds.by_ref().take(set.count).collect();
            registry.adopt(set.spec, set.local_addr, sockets, Vec::new());
        }
        drop(registry);
        tracing::info!(
            path,
            "took the sockets of the running ringlb; starting the worker"
        );
        let peer = Arc::new(AsyncChannel::new(peer)?);
        self.begin_upgrade(Asker::Peer(peer));
        if self.upgrade.is_none() {
            bail!("cannot start a worker");
        }
        Ok(())
    }
}

/// Asks the old master at `conn` to switch; its workers' flows.
async fn switch(conn: &AsyncChannel) -> Result<UdpFlowsView, String> {
    conn.send(&Ask::Switch, &[])
        .await
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(FLOWS_WAIT * 2, conn.recv())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the connection closed".to_owned())?;
    match reply.parse::<Answer>().map_err(|e| e.to_string())? {
        Answer::Switched(view) => Ok(view),
        Answer::Failed(why) => Err(why),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Tells `asker` how the upgrade went (`Ok`: the new worker's PID).
fn tell(asker: Asker, outcome: Result<i32, String>) {
    let conn = match asker {
        Asker::Client(conn) => conn,
        Asker::Log | Asker::Peer(_) => return,
    };
    let reply = match outcome {
        Ok(worker) => Answer::Upgraded {
            master: std::process::id().try_into().unwrap_or(i32::MAX),
            worker,
        },
        Err(why) => Answer::Failed(why),
    };
    answer(&conn, reply, Vec::new());
}
