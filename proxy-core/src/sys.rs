//! Small OS helpers: file descriptor limit, socket option access.

use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockRef;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Runs `f` with socket2's view of a monoio socket (which has `AsRawFd` but not `AsFd`).
pub(crate) fn with_socket<S: AsRawFd, R>(socket: &S, f: impl FnOnce(&SockRef<'_>) -> R) -> R {
    // SAFETY: `socket` owns the descriptor and is borrowed for the whole call, so the
    // descriptor stays open while `f` uses it; `f` cannot keep the borrow past the call.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    f(&SockRef::from(&fd))
}

/// Makes the next close of `socket` send a reset instead of a FIN (`SO_LINGER` 0).
pub(crate) fn set_reset_on_close<S: AsRawFd>(socket: &S) {
    let _ = with_socket(socket, |s| s.set_linger(Some(std::time::Duration::ZERO)));
}
