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

/// Resets a TCP connection now, both ways: the peer gets a reset at once, and every read or
/// write pending on `socket` (an io_uring operation or an epoll wait) wakes with an error.
///
/// `connect(2)` with an `AF_UNSPEC` address disconnects a TCP socket (`tcp_disconnect`: the
/// reset is sent and waiters are woken), where `close(2)` with `SO_LINGER` 0 alone would only
/// reset once the ring let go of the descriptor. The linger setting stays as a fallback, so
/// the final close resets too if the disconnect failed.
pub(crate) fn abort<S: AsRawFd>(socket: &S) {
    set_reset_on_close(socket);
    // SAFETY: an all-zero `sockaddr` is a valid value (family `AF_UNSPEC` is 0).
    let mut unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: `socket` is borrowed for the call, so its descriptor is open; the address points
    // to a live `sockaddr` of `len` bytes, which the kernel only reads.
    let _ = unsafe { libc::connect(socket.as_raw_fd(), &unspec, len) };
}
