//! Building a worker's monoio runtime on io_uring or epoll.

use std::fmt;
use std::str::FromStr;

use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Which I/O driver to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel has it (with the best ring flags it accepts), else epoll.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

impl FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoDriver::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            other => Err(format!(
                "unknown I/O driver {other:?} (auto, uring or epoll)"
            )),
        }
    }
}

/// The driver a worker actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriverKind {
    /// io_uring with COOP_TASKRUN, SINGLE_ISSUER and DEFER_TASKRUN.
    UringDeferTaskrun,
    /// io_uring with COOP_TASKRUN and SINGLE_ISSUER (kernel without DEFER_TASKRUN).
    UringCoopTaskrun,
    /// io_uring with default flags (old kernel).
    UringPlain,
    /// epoll.
    Epoll,
}

impl fmt::Display for IoDriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoDriverKind::UringDeferTaskrun => "io_uring (coop+single-issuer+defer-taskrun)",
            IoDriverKind::UringCoopTaskrun => "io_uring (coop+single-issuer)",
            IoDriverKind::UringPlain => "io_uring (default flags)",
            IoDriverKind::Epoll => "epoll",
        })
    }
}

/// A worker's runtime: io_uring or epoll, with timers.
pub type WorkerRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Builds a runtime on the calling thread as a worker's is built (`driver` chooses), for
/// monoio code outside the data plane: `ringlb demo`'s backends and load client.
pub fn runtime(driver: IoDriver) -> std::io::Result<WorkerRuntime> {
    build(driver, false).map(|(rt, _)| rt)
}

/// Builds the runtime on the calling thread (the ring must be created by the thread that uses
/// it, for SINGLE_ISSUER). `busy_poll` (the low-latency mode) leaves DEFER_TASKRUN out: with
/// it, completions are only posted when the thread waits in the ring, never while it spins
/// on other system calls between tasks.
pub(crate) fn build(
    driver: IoDriver,
    busy_poll: bool,
) -> std::io::Result<(WorkerRuntime, IoDriverKind)> {
    match driver {
        IoDriver::Epoll => Ok((epoll()?, IoDriverKind::Epoll)),
        IoDriver::Uring => uring(busy_poll),
        IoDriver::Auto => {
            if monoio::utils::detect_uring() {
                match uring(busy_poll) {
                    Ok(rt) => return Ok(rt),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring unavailable, falling back to epoll")
                    }
                }
            }
            Ok((epoll()?, IoDriverKind::Epoll))
        }
    }
}

fn epoll() -> std::io::Result<WorkerRuntime> {
    Ok(RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()?
        .into())
}

/// Tries the ring flags from best to plainest. Without COOP_TASKRUN every completion interrupts
/// the thread, which measured ~30% slower than epoll on keep-alive requests here; with it (and
/// DEFER_TASKRUN) io_uring came out ahead.
fn uring(busy_poll: bool) -> std::io::Result<(WorkerRuntime, IoDriverKind)> {
    let attempts = [
        IoDriverKind::UringDeferTaskrun,
        IoDriverKind::UringCoopTaskrun,
        IoDriverKind::UringPlain,
    ];
    let mut last_err = None;
    let skip = usize::from(busy_poll);
    for kind in attempts.into_iter().skip(skip) {
        let mut urb = io_uring::IoUring::builder();
        match kind {
            IoDriverKind::UringDeferTaskrun => {
                urb.setup_coop_taskrun()
                    .setup_single_issuer()
                    .setup_defer_taskrun();
            }
            IoDriverKind::UringCoopTaskrun => {
                urb.setup_coop_taskrun().setup_single_issuer();
            }
            _ => {}
        }
        match RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(urb)
            .enable_timer()
            .build()
        {
            Ok(rt) => return Ok((rt.into(), kind)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("io_uring setup failed")))
}
