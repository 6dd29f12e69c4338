//! The handover socket: a unix `SOCK_SEQPACKET` socket at a path (`--handover-socket`) on
//! which a master answers `ringlb upgrade` and hands its listening sockets to a new master
//! (a new pod of the DaemonSet on the same node), as HAProxy's `expose-fd listeners` socket
//! and Envoy's hot-restart domain socket do.
//!
//! Only the same user (or root) may connect: the directory a default path lives in is made
//! private, the socket file is `0600`, and every peer's credentials are checked.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, SockFlag, SockType,
    UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use super::channel::{AsyncChannel, Channel};
use super::wire::Ask;
use super::Event;

/// Connections waiting to be accepted at most.
const BACKLOG: usize = 16;

/// The handover socket's path when `--handover-socket` is not given: under systemd's
/// `RUNTIME_DIRECTORY`, else `XDG_RUNTIME_DIR`, else `/run` for root and the temporary
/// directory for other users.
pub fn default_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("ringlb")))
        .unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/run/ringlb")
            } else {
                std::env::temp_dir().join(format!("ringlb-{}", nix::unistd::geteuid()))
            }
        });
    dir.join("handover.sock")
}

/// A connection to the master at `path`, or `None` where none answers there (no file, or a
/// file left by a master that is gone).
pub fn connect_to(path: &Path) -> io::Result<Option<Channel>> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `socket` returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = UnixAddr::new(path)?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(Some(Channel::from_owned(fd))),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The listening handover socket of this master.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    fd: Arc<AsyncFd<OwnedFd>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Listens at `path` (a file left there by a master that is gone is replaced; the caller
    /// checked that none answers) and sends what clients ask to `events`.
    pub fn bind(path: &Path, events: &UnboundedSender<Event>) -> io::Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // SAFETY: `socket` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listen(fd.as_raw_fd(), BACKLOG)?;
        Server::adopt(path.to_owned(), fd, events)
    }

    /// Serves the listening socket `fd` at `path` (bound before an `exec`).
    pub fn adopt(
        path: PathBuf,
        fd: OwnedFd,
        events: &UnboundedSender<Event>,
    ) -> io::Result<Server> {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the `OwnedFd` keeps its descriptor open and the same for as long as the
        // `AsyncFd` holds it.
        let fd = Arc::new(unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?);
        let task = tokio::spawn(accept_loop(Arc::clone(&fd), events.clone()));
        tracing::info!(path = %path.display(), "handover socket listening");
        Ok(Server { path, fd, task })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its descriptor, to keep across an `exec`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Stops listening and removes the path (at exit, with no successor).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Stops listening and leaves the path to the new master that took over.
    pub fn close(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(fd: Arc<AsyncFd<OwnedFd>>, events: UnboundedSender<Event>) {
    loop {
        let accepted = match fd.readable().await {
            Ok(mut ready) => match ready.try_io(|fd| {
                accept4(fd.get_ref().as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)
            }) {
                Ok(result) => result,
                Err(_would_block) => continue,
            },
            Err(e) => {
                tracing::error!(error = %e, "handover socket failed");
                return;
            }
        };
        match accepted {
            Ok(raw) => {
                // SAFETY: `accept4` returned a new descriptor that nothing else owns.
                let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                if let Err(e) = admit(&conn) {
                    tracing::warn!(error = %e, "handover socket: connection refused");
                    continue;
                }
                match AsyncChannel::new(Channel::from_owned(conn)) {
                    Ok(channel) => {
                        tokio::spawn(read_asks(Arc::new(channel), events.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "handover socket: connection lost"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Only this master's user, or root, may ask it anything.
fn admit(conn: &OwnedFd) -> io::Result<()> {
    let peer = getsockopt(conn.as_raw_fd(), sockopt::PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() == 0 || peer.uid() == me {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("uid {} is neither root nor this master's user", peer.uid()),
        ))
    }
}

/// A connection on the handover socket, shared by the task reading it and the master's
/// answers.
pub type Conn = Arc<AsyncChannel>;

/// Forwards every ask of `conn` to the master until it closes.
async fn read_asks(conn: Conn, events: UnboundedSender<Event>) {
    loop {
        let ask = match conn.recv().await {
            Ok(Some(message)) => message.parse::<Ask>(),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket: connection failed");
                return;
            }
        };
        match ask {
            Ok(ask) => {
                if events.send(Event::Asked(ask, Arc::clone(&conn))).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "handover socket: unreadable request"),
        }
    }
}

/// Answers `answer` on `conn` (with `fds`), in a task: the master's loop does not wait for a
/// slow asker.
pub fn answer(conn: &Conn, answer: super::wire::Answer, fds: Vec<OwnedFd>) {
    let conn = Arc::clone(conn);
    tokio::spawn(async move {
        let raw: Vec<RawFd> = fds.iter().map(AsFd::as_fd).map(|f| f.as_raw_fd()).collect();
        if let Err(e) = conn.send(&answer, &raw).await {
            tracing::warn!(error = %e, "handover socket: cannot answer");
        }
    });
}
