//! The master's loop: starts the worker, restarts it when it dies, forwards signals, and
//! exits once the workers it stopped are gone. Upgrades and handovers are in
//! [`super::switch`].

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::handover::{self, Conn, Server};
use super::process::{inherited, lock, Role, WorkerProc};
use super::registry::Registry;
use super::upgrade::State;
use super::wire::FromWorker;
use super::{Event, HandoverPath, Sig};

/// Workers start at most this often: a worker that dies at once is started again a second
/// later, not in a loop; one that ran a while is replaced at once.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The master.
pub struct Master {
    pub(super) exe: PathBuf,
    /// Its own arguments, the program name first: every worker and the next image get them.
    pub(super) argv: Vec<OsString>,
    pub(super) registry: Arc<Mutex<Registry>>,
    pub(super) tx: UnboundedSender<Event>,
    rx: UnboundedReceiver<Event>,
    pub(super) workers: Vec<WorkerProc>,
    pub(super) next_id: u64,
    pub(super) handover: HandoverPath,
    pub(super) server: Option<Server>,
    /// SIGTERM or SIGINT came: the workers drain, nothing starts.
    pub(super) stopping: bool,
    /// No worker was ready yet: the first one failing fails the master.
    starting: bool,
    /// When to start a worker again after a crash.
    pub(super) restart_at: Option<Instant>,
    /// When the last worker started.
    last_spawn: Option<Instant>,
    pub(super) upgrade: Option<super::pending::Upgrade>,
    pub(super) handoff: Option<super::pending::HandOff>,
    /// The client that took the sockets ([`super::wire::Ask::TakeOver`]), which may switch.
    pub(super) taker: Option<Conn>,
    /// A new master serves the sockets now: this one waits for its workers to drain and
    /// then for SIGTERM (a supervisor that restarts what exits would start it again).
    pub(super) taken_over: bool,
    /// `ringlb reload` clients waiting for the worker (by id) they asked.
    pub(super) reloads: Vec<(u64, Conn)>,
    pub(super) exit: Option<u8>,
}

impl Master {
    /// The master of this process: the previous image's state after an upgrade in place,
    /// else a takeover from the master at an explicit handover socket, else a fresh start.
    /// Its first worker is running when this returns.
    pub fn start(
        exe: PathBuf,
        argv: Vec<OsString>,
        handover: HandoverPath,
        tx: UnboundedSender<Event>,
        rx: UnboundedReceiver<Event>,
    ) -> anyhow::Result<Master> {
        let mut master = Master {
            exe,
            argv,
            registry: Arc::default(),
            tx,
            rx,
            workers: Vec::new(),
            next_id: 1,
            handover,
            server: None,
            stopping: false,
            starting: true,
            restart_at: None,
            last_spawn: None,
            upgrade: None,
            handoff: None,
            taker: None,
            taken_over: false,
            reloads: Vec::new(),
            exit: None,
        };
        if let Some(state) = State::inherited().context("cannot read the previous image's state")? {
            master.restore(state)?;
            // Workers that exited while the binary was being executed.
            master.reap();
            return Ok(master);
        }
        match handover::connect_to(&master.handover.path) {
            Ok(Some(peer)) if master.handover.explicit => {
                master.take_over(peer)?;
                return Ok(master);
            }
            Ok(Some(_)) => tracing::warn!(
                path = %master.handover.path.display(),
                "another ringlb answers at the default handover socket: this one runs without \
                 one (give --handover-socket to take over from it, or to name its own)"
            ),
            Ok(None) => master.listen_handover(),
            Err(e) => tracing::warn!(
                path = %master.handover.path.display(), error = %e,
                "cannot reach the handover socket: this ringlb runs without one"
            ),
        }
        master.spawn(Role::Serving)?;
        Ok(master)
    }

    /// Listens on the handover socket (a failure is logged: the master serves without it).
    pub(super) fn listen_handover(&mut self) {
        match Server::bind(&self.handover.path, &self.tx) {
            Ok(server) => self.server = Some(server),
            Err(e) => tracing::warn!(
                path = %self.handover.path.display(), error = %e,
                "cannot listen on the handover socket: upgrades by SIGUSR2 only"
            ),
        }
    }

    /// Takes in what the previous image held, and starts the new worker to hand over to.
    fn restore(&mut self, state: State) -> anyhow::Result<()> {
        let mut registry = lock(&self.registry);
        for set in state.sets {
            // SAFETY: the previous image passed these descriptors to this one, and only
            // they name them.
            let fds = set.fds.iter().map(|&fd| unsafe { inherited(fd) }).collect();
            registry.adopt(set.spec, set.local_addr, fds, set.users);
        }
        drop(registry);
        for w in state.workers {
            // SAFETY: as above.
            let (sockets, control): (OwnedFd, OwnedFd) =
                unsafe { (inherited(w.kept.sockets), inherited(w.kept.control)) };
            let mut proc = WorkerProc::attach(
                (w.id, Pid::from_raw(w.pid), w.role),
                sockets,
                control,
                &self.registry,
                &self.tx,
            )
            .context("cannot take a worker over across the exec")?;
            proc.ready = w.ready;
            self.workers.push(proc);
        }
        self.next_id = state.next_id;
        self.starting = false;
        if let Some((fd, path)) = state.server {
            // SAFETY: as above.
            let fd = unsafe { inherited(fd) };
            match Server::adopt(path, fd, &self.tx) {
                Ok(server) => self.server = Some(server),
                Err(e) => tracing::warn!(error = %e, "cannot serve the handover socket"),
            }
        }
        let asker = match state.asker {
            Some(fd) => {
                // SAFETY: as above.
                let fd = unsafe { inherited(fd) };
                let channel = super::channel::AsyncChannel::new(super::Channel::from_owned(fd))
                    .context("cannot answer the upgrade's asker")?;
                super::pending::Asker::Client(Arc::new(channel))
            }
            None => super::pending::Asker::Log,
        };
        tracing::info!(
            workers = self.workers.len(),
            "running the new binary; starting its worker"
        );
        self.begin_upgrade(asker);
        Ok(())
    }

    /// Starts a worker of the next id in `role`.
    pub(super) fn spawn(&mut self, role: Role) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let args = &self.argv[1.min(self.argv.len())..];
        let proc = WorkerProc::spawn(&self.exe, args, id, role, &self.registry, &self.tx)?;
        self.workers.push(proc);
        self.last_spawn = Some(Instant::now());
        Ok(id)
    }

    pub(super) fn worker_mut(&mut self, id: u64) -> Option<&mut WorkerProc> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    /// Serves events until the master is done; its exit code.
    pub async fn run(mut self) -> u8 {
        loop {
            if let Some(code) = self.exit {
                self.leave();
                return code;
            }
            let event = match self.next_deadline() {
                Some(at) => tokio::select! {
                    event = self.rx.recv() => event,
                    () = tokio::time::sleep_until(at.into()) => None,
                },
                None => self.rx.recv().await,
            };
            match event {
                Some(event) => self.on_event(event).await,
                None => self.on_deadline().await,
            }
            if self.handoff.as_ref().is_some_and(|h| h.from.is_empty()) {
                self.finish_handoff().await;
            }
            self.keep_serving();
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Signal(Sig::Stop(signal)) => self.stop(signal),
            Event::Signal(Sig::Reload) => {
                for w in self.workers.iter().filter(|w| w.role == Role::Serving) {
                    w.signal(Signal::SIGHUP);
                }
            }
            Event::Signal(Sig::Upgrade) => self.upgrade(super::pending::Asker::Log),
            Event::Signal(Sig::Child) => self.reap(),
            Event::Worker(id, message) => self.heard(id, message).await,
            Event::Asked(ask, conn) => self.asked(ask, conn).await,
            Event::Switched(result) => self.switched(result).await,
        }
    }

    /// SIGTERM or SIGINT: every worker gets it and drains; the master exits after them.
    fn stop(&mut self, signal: Signal) {
        tracing::info!(%signal, workers = self.workers.len(), "stopping: the workers drain");
        self.stopping = true;
        self.restart_at = None;
        for w in &self.workers {
            w.signal(signal);
        }
        // From now on, each socket closes when the workers close theirs: a process that
        // shares a port (`--share-port`) gets all of its traffic at once.
        lock(&self.registry).clear();
        self.fail_upgrade("ringlb is stopping".to_owned());
        if self.workers.is_empty() {
            self.exit = Some(0);
        }
    }

    async fn heard(&mut self, id: u64, message: FromWorker) {
        let Some(worker) = self.worker_mut(id) else {
            return;
        };
        match message {
            FromWorker::Ready => {
                worker.ready = true;
                match worker.role {
                    Role::Serving => {
                        tracing::info!(worker = id, pid = worker.pid.as_raw(), "worker ready");
                        self.starting = false;
                        lock(&self.registry).collect();
                    }
                    Role::Candidate => self.candidate_ready(id).await,
                    Role::Draining => {}
                }
            }
            FromWorker::Failed(why) => worker.failure = Some(why),
            FromWorker::Flows(view) => {
                if let Some(h) = &mut self.handoff {
                    if h.from.remove(&id) {
                        h.flows.extend(view.flows);
                    }
                }
            }
            FromWorker::Reloaded(outcome) => self.reloaded(id, outcome),
        }
    }

    /// Reaps every child that exited (as PID 1 in a container, orphans too).
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.exited(pid, status);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn exited(&mut self, pid: Pid, status: WaitStatus) {
        let Some(at) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = self.workers.remove(at);
        lock(&self.registry).worker_gone(worker.id);
        let how = describe(status);
        let (id, pid) = (worker.id, pid.as_raw());
        self.forget_in_handoff(id);
        self.reloaded(id, Err(format!("the worker {how} before it reloaded")));
        match worker.role {
            Role::Candidate => {
                let why = worker.failure.unwrap_or_else(|| how.clone());
                tracing::warn!(worker = id, pid, "new worker {how}");
                self.fail_upgrade(format!("the new worker {how}: {why}"));
            }
            Role::Draining => tracing::info!(worker = id, pid, "drained worker {how}"),
            Role::Serving if self.stopping => tracing::info!(worker = id, pid, "worker {how}"),
            Role::Serving if self.starting && !worker.ready => {
                tracing::error!(worker = id, pid, "worker {how} before it served: stopping");
                self.exit = Some(exit_code(status));
            }
            Role::Serving => {
                let now = Instant::now();
                let at = self
                    .last_spawn
                    .map_or(now, |last| (last + RESTART_DELAY).max(now));
                let delay = at - now;
                tracing::error!(
                    worker = id,
                    pid,
                    ?delay,
                    "worker {how}: starting a new one on the same sockets"
                );
                self.restart_at = Some(at);
            }
        }
        if self.workers.is_empty() && (self.stopping || self.exit.is_some()) {
            self.exit.get_or_insert(0);
        } else if self.workers.is_empty() && self.taken_over {
            tracing::info!("every worker drained; waiting for SIGTERM to exit");
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let upgrade = self.upgrade.as_ref().map(|u| u.deadline);
        let handoff = self.handoff.as_ref().map(|h| h.deadline);
        [self.restart_at, upgrade, handoff]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            if let Err(e) = self.spawn(Role::Serving) {
                tracing::error!(error = %e, "cannot start a worker; trying again");
                self.restart_at = Some(now + RESTART_DELAY);
            }
        }
        self.upgrade_deadline(now);
        if self.handoff.as_ref().is_some_and(|h| h.deadline <= now) {
            tracing::warn!(
                "a worker did not hand over its UDP flows in time: going on without them"
            );
            self.finish_handoff().await;
        }
    }

    /// After every event: while nothing stops the master, some worker serves or is about
    /// to (a candidate that failed after its predecessors handed over leaves none).
    fn keep_serving(&mut self) {
        let someone = self
            .workers
            .iter()
            .any(|w| matches!(w.role, Role::Serving | Role::Candidate));
        if self.stopping || self.taken_over || self.exit.is_some() || someone {
            return;
        }
        if self.restart_at.is_none() {
            tracing::warn!("no worker serves: starting one");
            self.restart_at = Some(Instant::now());
        }
    }

    /// At exit: the handover socket goes (a new master finds nothing to take over).
    fn leave(&mut self) {
        if let Some(server) = self.server.take() {
            server.remove();
        }
    }

    /// The workers ids in `role`.
    pub(super) fn ids(&self, role: Role) -> BTreeSet<u64> {
        self.workers
            .iter()
            .filter(|w| w.role == role)
            .map(|w| w.id)
            .collect()
    }

    /// Sends `signal` to worker `id`.
    pub(super) fn signal(&self, id: u64, signal: Signal) {
        if let Some(w) = self.workers.iter().find(|w| w.id == id) {
            w.signal(signal);
        }
    }

    /// A pending handover stops waiting for `id`'s flows.
    fn forget_in_handoff(&mut self, id: u64) {
        if let Some(h) = &mut self.handoff {
            h.from.remove(&id);
        }
    }
}

/// How a worker ended, for the log.
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
        other => format!("ended ({other:?})"),
    }
}

/// The exit code the master takes from a worker that failed its start.
fn exit_code(status: WaitStatus) -> u8 {
    match status {
        WaitStatus::Exited(_, code) => u8::try_from(code).unwrap_or(1).max(1),
        WaitStatus::Signaled(_, signal, _) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}
