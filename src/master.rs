//! `ringlb run` is a master process and its workers, as HAProxy's master-worker mode.
//!
//! The master is small on purpose: no data plane, no Kubernetes client, no config beyond
//! its flags. It holds every listening socket (frontends, node-mode portals, the admin and
//! health ports) in a [`registry::Registry`] and runs the data plane as a worker process:
//! the same binary, told by its environment that it is a worker. The worker asks the
//! master for its sockets by key over a descriptor channel ([`channel`]) and gets the
//! master's own socket objects, so when it dies the next one serves the same sockets and
//! what the kernel queued on them meanwhile. SIGHUP goes to the worker, SIGTERM and SIGINT
//! to every worker (the master exits when they have drained), SIGUSR2 executes the binary
//! again with everything handed over ([`upgrade`]); a new master can also take everything
//! over through the handover socket ([`handover`]).

mod channel;
pub mod client;
mod handover;
mod pending;
mod process;
mod registry;
mod reload;
mod supervise;
mod switch;
mod upgrade;
pub mod wire;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

pub use channel::Channel;
pub use handover::{connect_to, default_path, Conn};
pub use process::{set_cloexec, CONTROL_FD, HELD, MASTER_PID, ROLE, SOCKETS_FD};
use wire::{Ask, FromWorker};

use crate::admin::UdpFlowsView;

/// What the master's loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A signal to the master.
    Signal(Sig),
    /// What worker `id` said.
    Worker(u64, FromWorker),
    /// What a client of the handover socket asked, and where to answer.
    Asked(Ask, Conn),
    /// The master this one takes over from answered the switch.
    Switched(Result<UdpFlowsView, String>),
}

/// The signals the master handles.
#[derive(Clone, Copy, Debug)]
pub enum Sig {
    /// SIGTERM or SIGINT: the workers drain, then the master exits.
    Stop(nix::sys::signal::Signal),
    /// SIGHUP: the serving worker reloads its config.
    Reload,
    /// SIGUSR2: upgrade in place.
    Upgrade,
    /// SIGCHLD: a worker (or, as PID 1, any orphan) exited.
    Child,
}

/// Where the handover socket is: the path given, else [`default_path`].
pub struct HandoverPath {
    pub path: PathBuf,
    pub explicit: bool,
}

impl HandoverPath {
    pub fn new(given: Option<&Path>) -> HandoverPath {
        match given {
            Some(path) => HandoverPath {
                path: path.to_owned(),
                explicit: true,
            },
            None => HandoverPath {
                path: default_path(),
                explicit: false,
            },
        }
    }
}

/// Runs the master of `ringlb run` until its workers are gone; its exit code is the
/// first worker's when that one could not start.
pub fn run(handover: HandoverPath) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the master's runtime")?;
    let exe = std::env::current_exe().context("cannot find the path of this binary")?;
    let argv: Vec<OsString> = std::env::args_os().collect();
    runtime.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        listen_signals(&tx).context("cannot install signal handlers")?;
        let master = supervise::Master::start(exe, argv, handover, tx, rx)?;
        Ok(ExitCode::from(master.run().await))
    })
}

/// Turns the master's signals into [`Event::Signal`]s, in a task.
fn listen_signals(tx: &UnboundedSender<Event>) -> std::io::Result<()> {
    use nix::sys::signal::Signal;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut child = signal(SignalKind::child())?;
    let tx = tx.clone();
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = term.recv() => Sig::Stop(Signal::SIGTERM),
                _ = int.recv() => Sig::Stop(Signal::SIGINT),
                _ = hup.recv() => Sig::Reload,
                _ = usr2.recv() => Sig::Upgrade,
                _ = child.recv() => Sig::Child,
            };
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    Ok(())
}
