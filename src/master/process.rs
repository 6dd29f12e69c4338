//! One worker process as the master sees it: how it is started (the same binary, told by its
//! environment that it is a worker and which descriptors reach the master), the task that
//! answers its requests for listening sockets, and its control channel.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc::UnboundedSender;

use super::channel::{AsyncChannel, Channel};
use super::registry::Registry;
use proxy_core::ProxyError;

use super::wire::{Failure, FromWorker, Reply, Request, ToWorker};
use super::Event;

/// The environment that makes the binary a worker, and its descriptors to the master.
/// The environment variable that carries the master's state across the `exec`.
pub const STATE: &str = "RINGLB_MASTER_STATE";
pub const ROLE: &str = "RINGLB_WORKER";
/// The worker's end of the descriptor channel.
pub const SOCKETS_FD: &str = "RINGLB_SOCKETS_FD";
/// The worker's end of the control channel.
pub const CONTROL_FD: &str = "RINGLB_CONTROL_FD";
/// Set: the worker holds its UDP frontends until its predecessor's flows are pinned.
pub const HELD: &str = "RINGLB_UDP_HELD";
/// The master's PID, for the worker to see that it is still its parent.
pub const MASTER_PID: &str = "RINGLB_MASTER_PID";

/// What a worker is to its master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It serves (or is starting to, the first time or after a crash).
    Serving,
    /// Started by an upgrade; serves once it is ready and its predecessors handed over.
    Candidate,
    /// Handed over to a successor: drains its connections and exits.
    Draining,
}

/// A running worker process.
#[derive(Debug)]
pub struct WorkerProc {
    pub id: u64,
    pub pid: Pid,
    pub role: Role,
    /// It said it serves.
    pub ready: bool,
    /// Why it could not start, as it said before exiting.
    pub failure: Option<String>,
    /// The master's end of its control channel, for writing.
    control: OwnedWriteHalf,
    /// The descriptors the master keeps for it (across an `exec` of the master).
    pub kept: Kept,
    /// Its socket channel, open for as long as this is (see [`WorkerProc::attach`]).
    _sockets: Arc<AsyncChannel>,
}

/// The raw descriptors of a worker's two channels on the master's side.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub sockets: RawFd,
    pub control: RawFd,
}

impl WorkerProc {
    /// Starts `exe` with `args` as worker `id` (`held`: its UDP frontends wait for pins). Its
    /// socket requests are answered from `registry`; what it says goes to `events`.
    pub fn spawn(
        exe: &Path,
        args: &[OsString],
        id: u64,
        role: Role,
        registry: &Arc<Mutex<Registry>>,
        events: &UnboundedSender<Event>,
    ) -> io::Result<WorkerProc> {
        let (sockets, sockets_child) = Channel::pair()?;
        let (control, control_child) = std::os::unix::net::UnixStream::pair()?;
        let inherit = [sockets_child.as_raw_fd(), control_child.as_raw_fd()];
        for fd in inherit {
            set_cloexec(fd, false)?;
        }
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env(ROLE, id.to_string())
            .env(SOCKETS_FD, inherit[0].to_string())
            .env(CONTROL_FD, inherit[1].to_string())
            .env(MASTER_PID, std::process::id().to_string())
            .env_remove(STATE);
        // A candidate's UDP frontends wait for its predecessors' flows.
        if role == Role::Candidate {
            cmd.env(HELD, "1");
        } else {
            cmd.env_remove(HELD);
        }
        let child = cmd.spawn()?;
        // The child has its copies; ours close here.
        drop((sockets_child, control_child));
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        // Reaped by the master's SIGCHLD handling, not through `Child`.
        drop(child);
        tracing::info!(worker = id, pid = pid.as_raw(), ?role, "worker started");
        WorkerProc::attach(
            (id, pid, role),
            sockets.into_owned(),
            control.into(),
            registry,
            events,
        )
    }

    /// Takes over the channels of worker `id` (running as `pid` in `role`): answers its
    /// socket requests and listens to it.
    pub fn attach(
        (id, pid, role): (u64, Pid, Role),
        sockets: OwnedFd,
        control: OwnedFd,
        registry: &Arc<Mutex<Registry>>,
        events: &UnboundedSender<Event>,
    ) -> io::Result<WorkerProc> {
        let kept = Kept {
            sockets: sockets.as_raw_fd(),
            control: control.as_raw_fd(),
        };
        // Held here too, not only by the task that answers on it: the task ends when the
        // worker closes its end, and the descriptor must stay open (and its number ours) for
        // as long as `kept` names it, which an `exec` of the master relies on.
        let sockets = Arc::new(AsyncChannel::new(Channel::from_owned(sockets))?);
        let control = std::os::unix::net::UnixStream::from(control);
        control.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(control)?.into_split();
        tokio::spawn(serve_sockets(
            id,
            Arc::clone(&sockets),
            Arc::clone(registry),
        ));
        tokio::spawn(read_control(id, read, events.clone()));
        Ok(WorkerProc {
            id,
            pid,
            role,
            ready: false,
            failure: None,
            control: write,
            kept,
            _sockets: sockets,
        })
    }

    /// Tells the worker `message`; a worker that stopped listening is logged, not an error
    /// (its exit is what the master acts on).
    pub async fn send(&mut self, message: &ToWorker) {
        let sent = match serde_json::to_vec(message) {
            Ok(mut line) => {
                line.push(b'\n');
                self.control.write_all(&line).await
            }
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = sent {
            tracing::warn!(worker = self.id, error = %e, "cannot write to the worker");
        }
    }

    /// Sends the worker `signal` (a worker already gone is not an error).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid, signal);
    }
}

/// Answers worker `id`'s requests for listening sockets until its channel closes.
async fn serve_sockets(id: u64, channel: Arc<AsyncChannel>, registry: Arc<Mutex<Registry>>) {
    loop {
        let request = match channel.recv().await {
            Ok(Some(message)) => message.parse::<Request>(),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "socket channel failed");
                return;
            }
        };
        let (reply, fds) = match request {
            Ok(Request::Open(spec)) => open(&registry, &spec, id),
            Ok(Request::Release(key)) => {
                lock(&registry).release(&key, id);
                continue;
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "unreadable socket request");
                continue;
            }
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if let Err(e) = channel.send(&reply, &raw).await {
            tracing::warn!(worker = id, error = %e, "cannot answer a socket request");
            return;
        }
    }
}

/// The registry's answer to an open request, with copies of its descriptors (the registry
/// may close its own while the answer waits to be sent).
fn open(registry: &Mutex<Registry>, spec: &super::wire::Spec, id: u64) -> (Reply, Vec<OwnedFd>) {
    let mut registry = lock(registry);
    match registry.open(spec, id) {
        Ok(entry) => {
            let wanted = match spec.kind {
                super::wire::Kind::Frontend { workers, .. } => Some(workers),
                super::wire::Kind::Http { .. } => None,
            };
            match entry.copies(wanted) {
                Ok(fds) => (
                    Reply::Opened {
                        local_addr: entry.local_addr,
                    },
                    fds,
                ),
                Err(e) => failed(
                    spec.addr,
                    &ProxyError::Bind {
                        addr: spec.addr,
                        source: e,
                    },
                ),
            }
        }
        Err(e) => failed(spec.addr, &e),
    }
}

fn failed(addr: std::net::SocketAddr, error: &ProxyError) -> (Reply, Vec<OwnedFd>) {
    (
        Reply::Failed {
            addr,
            failure: Failure::of(error),
        },
        Vec::new(),
    )
}

/// Forwards what worker `id` says to the master's loop until its channel closes.
async fn read_control(
    id: u64,
    read: tokio::net::unix::OwnedReadHalf,
    events: UnboundedSender<Event>,
) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<FromWorker>(&line) {
            Ok(message) => {
                if events.send(Event::Worker(id, message)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(worker = id, error = %e, "unreadable message from a worker"),
        }
    }
}

pub fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets or clears close-on-exec on `fd` (a descriptor passed to a child or across `exec`).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// The descriptor `fd` inherited by number (from the environment of an `exec`).
///
/// # Safety
/// `fd` must be an open descriptor that nothing else in this process owns.
pub unsafe fn inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: as the caller promises.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race an upgrade met: a worker exits, the task answering its socket requests sees
    /// the channel close and ends, and the master, not yet told of the exit by SIGCHLD,
    /// saves the worker's descriptors for the `exec`. They must still be open, and its own.
    #[tokio::test]
    async fn a_worker_s_descriptors_stay_open_until_it_is_forgotten() {
        let (ours, theirs) = Channel::pair().unwrap();
        let (control, control_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let registry = Arc::default();
        let worker = WorkerProc::attach(
            (1, Pid::from_raw(1), Role::Serving),
            ours.into_owned(),
            control.into(),
            &registry,
            &events,
        )
        .unwrap();
        // The worker is gone: its ends close, the tasks see it and end.
        drop((theirs, control_theirs));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        for fd in [worker.kept.sockets, worker.kept.control] {
            // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
            let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_ne!(
                rc, -1,
                "descriptor {fd} closed while the worker is still known"
            );
        }
        drop(worker);
    }
}
