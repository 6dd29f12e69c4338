//! A worker's side of its master: its listening sockets come from the master
//! ([`MasterSockets`]), and on the control channel it says when it serves and hears when to
//! hand over ([`Link`]).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use proxy_core::{Opened, ProxyError, SocketSource, SocketSpec};
use socket2::Socket;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;

use crate::admin::UdpFlowsView;
use crate::master::wire::{FromWorker, Reply, Request, Spec, ToWorker};
use crate::master::{Channel, CONTROL_FD, HELD, MASTER_PID, ROLE, SOCKETS_FD};

/// How long the master may take to answer a socket request.
const MASTER_WAIT: Duration = Duration::from_secs(10);

/// This process is worker `id` of a master.
#[derive(Debug)]
pub struct Link {
    pub sockets: Arc<MasterSockets>,
    /// Its UDP frontends wait for [`ToWorker::Pins`].
    pub held: bool,
    control: Option<OwnedFd>,
}

impl Link {
    /// The link this process was started with, if it is a worker. Its descriptors are kept
    /// from the processes it starts (`nft`), and it ends when the master does.
    pub fn from_env() -> anyhow::Result<Option<Link>> {
        let Some(id) = std::env::var_os(ROLE) else {
            return Ok(None);
        };
        id.to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .context("the worker id from the master is not a number")?;
        let fd = |name: &str| -> anyhow::Result<OwnedFd> {
            let raw: RawFd = std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{name} from the master is not a descriptor"))?;
            crate::master::set_cloexec(raw, true)
                .with_context(|| format!("{name} from the master is not open"))?;
            // SAFETY: the master passed this descriptor to this process for this purpose;
            // nothing else in it owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let sockets = Channel::from_owned(fd(SOCKETS_FD)?);
        let control = fd(CONTROL_FD)?;
        let held = std::env::var_os(HELD).is_some();
        end_with_parent()?;
        for name in [ROLE, SOCKETS_FD, CONTROL_FD, HELD, MASTER_PID] {
            std::env::remove_var(name);
        }
        sockets.set_read_timeout(MASTER_WAIT)?;
        Ok(Some(Link {
            sockets: Arc::new(MasterSockets {
                channel: Mutex::new(sockets),
            }),
            held,
            control: Some(control),
        }))
    }

    /// Starts listening to the master in a task on the current runtime: what it says goes
    /// to `heard`. Returns where to answer.
    pub fn listen(
        &mut self,
        heard: impl Fn(ToWorker) + Send + 'static,
    ) -> anyhow::Result<ToMaster> {
        let fd = self
            .control
            .take()
            .context("the control channel is taken")?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(stream)?.into_split();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(message) => heard(message),
                    Err(e) => tracing::warn!(error = %e, "unreadable message from the master"),
                }
            }
        });
        Ok(ToMaster {
            write: Arc::new(tokio::sync::Mutex::new(write)),
        })
    }

    /// Where to say that this worker could not start.
    pub fn reporter(&self) -> Reporter {
        Reporter {
            control: self.control.as_ref().and_then(|fd| fd.try_clone().ok()),
        }
    }
}

/// Tells the master why a worker could not start (the master reports it to whoever asked
/// for the upgrade).
#[derive(Debug)]
pub struct Reporter {
    control: Option<OwnedFd>,
}

impl Reporter {
    /// Says `why`, before the worker exits.
    pub fn failed(self, why: &str) {
        let Some(fd) = self.control else {
            return;
        };
        let mut stream = std::os::unix::net::UnixStream::from(fd);
        // The other copy of the descriptor may be non-blocking (the control runtime's).
        let _ = stream.set_nonblocking(false);
        if let Ok(mut line) = serde_json::to_vec(&FromWorker::Failed(why.to_owned())) {
            line.push(b'\n');
            let _ = io::Write::write_all(&mut stream, &line);
        }
    }
}

/// Where a worker answers its master.
#[derive(Clone, Debug)]
pub struct ToMaster {
    write: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl ToMaster {
    /// Says `message` (a master that is gone is logged: the worker ends with it).
    pub async fn say(&self, message: &FromWorker) {
        let sent = match serde_json::to_vec(message) {
            Ok(mut line) => {
                line.push(b'\n');
                self.write.lock().await.write_all(&line).await
            }
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot write to the master");
        }
    }

    /// Every listener is served.
    pub async fn ready(&self) {
        self.say(&FromWorker::Ready).await;
    }

    /// The flows handed over.
    pub async fn flows(&self, view: UdpFlowsView) {
        self.say(&FromWorker::Flows(view)).await;
    }
}

/// The worker gets SIGTERM when the master dies (and drains, rather than serving sockets
/// nobody supervises); if the master is gone already, it does not start.
fn end_with_parent() -> anyhow::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("cannot follow the master's exit");
    }
    // The master could have died before the call: then this process was re-parented.
    if std::env::var_os(MASTER_PID)
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        .is_some_and(|master| master != std::os::unix::process::parent_id())
    {
        bail!("the master exited before this worker started");
    }
    Ok(())
}

/// Listening sockets from the master, by key.
#[derive(Debug)]
pub struct MasterSockets {
    channel: Mutex<Channel>,
}

impl SocketSource for MasterSockets {
    fn open(&self, spec: &SocketSpec) -> Result<Opened, ProxyError> {
        let lost = |e: io::Error| ProxyError::Bind {
            addr: spec.addr,
            source: io::Error::other(format!("the master did not answer: {e}")),
        };
        let channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        channel
            .send(&Request::Open(Spec::from(spec)), &[])
            .map_err(lost)?;
        let reply = channel
            .recv()
            .map_err(lost)?
            .ok_or_else(|| lost(io::ErrorKind::UnexpectedEof.into()))?;
        match reply.parse::<Reply>().map_err(lost)? {
            Reply::Opened { local_addr } => Ok(Opened {
                local_addr,
                sockets: reply.fds.into_iter().map(Socket::from).collect(),
            }),
            Reply::Failed { addr, failure } => Err(failure.into_error(addr)),
        }
    }

    fn release(&self, key: &str) {
        let channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = channel.send(&Request::Release(key.to_owned()), &[]) {
            tracing::warn!(key, error = %e, "cannot tell the master a socket is not needed");
        }
    }
}
