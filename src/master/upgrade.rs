//! The master's upgrade in place (`kill -USR2`, `ringlb upgrade`), as HAProxy's master does
//! it: the master executes the binary at its path again with the same arguments, keeping
//! its PID, and passes across the `exec` every descriptor it holds (listening sockets, its
//! workers' channels, the handover socket, the asker's connection), named in [`STATE`]. The
//! new image adopts them, starts a worker of the new binary on the same sockets and hands
//! over to it; the old workers drain.

use std::ffi::{CString, OsString};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::process::{set_cloexec, Kept, Role, STATE};
use super::wire::Spec;

/// Everything a master holds, by descriptor number.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub sets: Vec<SavedSet>,
    pub workers: Vec<SavedWorker>,
    pub next_id: u64,
    /// The listening handover socket and its path.
    pub server: Option<(RawFd, PathBuf)>,
    /// The connection of the `ringlb upgrade` that asked, to answer once it is done.
    pub asker: Option<RawFd>,
}

/// A held socket set.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSet {
    pub spec: Spec,
    pub local_addr: SocketAddr,
    pub fds: Vec<RawFd>,
    pub users: Vec<u64>,
}

/// A running worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedWorker {
    pub id: u64,
    pub pid: i32,
    pub role: Role,
    pub ready: bool,
    pub kept: Kept,
}

impl State {
    /// Every descriptor it names.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sets.iter().flat_map(|s| s.fds.clone()).collect();
        for w in &self.workers {
            fds.extend([w.kept.sockets, w.kept.control]);
        }
        fds.extend(self.server.as_ref().map(|(fd, _)| *fd));
        fds.extend(self.asker);
        fds
    }

    /// The state the previous image left, if this process is a master executed again.
    pub fn inherited() -> io::Result<Option<State>> {
        let Some(text) = std::env::var_os(STATE) else {
            return Ok(None);
        };
        // Not for the workers this image starts.
        std::env::remove_var(STATE);
        let state: State = serde_json::from_slice(text.as_bytes()).map_err(io::Error::other)?;
        // Back to close-on-exec: nothing of it goes to a worker by accident.
        for fd in state.fds() {
            set_cloexec(fd, true)?;
        }
        Ok(Some(state))
    }
}

/// Executes `exe` with `args` (the first is the program name) and `state`: returns only if
/// that failed, with every descriptor back to close-on-exec.
pub fn exec(exe: &Path, args: &[OsString], state: &State) -> io::Error {
    let fds = state.fds();
    let error = (|| -> io::Result<()> {
        let text = serde_json::to_string(state).map_err(io::Error::other)?;
        let c = |s: &[u8]| CString::new(s).map_err(io::Error::other);
        let path = c(exe.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut env = std::env::vars_os()
            .filter(|(k, _)| k != STATE)
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        env.push(c(format!("{STATE}={text}").as_bytes())?);
        for &fd in &fds {
            set_cloexec(fd, false)?;
        }
        tracing::info!(exe = %exe.display(), "executing the binary again");
        match nix::unistd::execve(&path, &argv, &env) {
            Ok(never) => match never {},
            Err(e) => Err(e.into()),
        }
    })()
    .err()
    .unwrap_or_else(|| io::Error::other("exec returned"));
    for fd in fds {
        let _ = set_cloexec(fd, true);
    }
    error
}
