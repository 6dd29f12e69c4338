//! Small OS helpers: file descriptor limit, socket option access (resets, the original
//! destination of a redirected connection).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt};
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

/// The destination a connection had before netfilter redirected it (`SO_ORIGINAL_DST` on an
/// IPv4 socket, `IP6T_SO_ORIGINAL_DST` on an IPv6 one: `ipv6` says which the socket is), or
/// `None` when it was not translated. Node mode's steering redirects a service's frontends to
/// its portal listener; this tells them apart.
pub(crate) fn original_dst<S: AsRawFd>(socket: &S, ipv6: bool) -> Option<SocketAddr> {
    let fd = socket.as_raw_fd();
    if ipv6 {
        let addr = getsockopt(fd, sockopt::Ip6tOriginalDst).ok()?;
        if i32::from(addr.sin6_family) != libc::AF_INET6 {
            return None;
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Some(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, 0).into())
    } else {
        let addr = getsockopt(fd, sockopt::OriginalDst).ok()?;
        if i32::from(addr.sin_family) != libc::AF_INET {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)).into())
    }
}

/// Accepts one connection from the listening socket `fd` without blocking: the new socket is
/// non-blocking and close-on-exec, with its peer's address. `WouldBlock` when none waits.
///
/// A readiness wait plus this call, rather than an io_uring accept operation: a pending
/// readiness wait takes no connection, so a worker that stops reading a listener shared with
/// a successor process leaves every queued connection to the successor (see `stop.rs`).
pub(crate) fn accept(
    fd: std::os::fd::RawFd,
) -> std::io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    use std::os::fd::FromRawFd;
    // SAFETY: `try_init` hands the closure a zeroed `sockaddr_storage` and its length; the
    // kernel writes at most that many bytes and the address's length, as `try_init` expects.
    let (accepted, peer) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }?;
    // SAFETY: `accept4` returned a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(accepted) };
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a connection that is not IP"))?;
    Ok((stream, peer))
}
