//! Binding one `SO_REUSEPORT` socket per worker for a frontend (TCP listeners, UDP sockets).

use std::io;
use std::net::SocketAddr;

use config::FrontendKey;
use socket2::{Domain, Protocol, Socket, Type};

use crate::udp::sock::frontend_socket;
use crate::ProxyError;

/// Kernel accept queue length asked for (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// One worker's socket of a frontend.
#[derive(Debug)]
pub(crate) enum ListenSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// The sockets of one frontend, one per worker, all bound to the same address.
#[derive(Debug)]
pub(crate) struct ListenGroup {
    pub(crate) key: FrontendKey,
    pub(crate) local_addr: SocketAddr,
    pub(crate) sockets: Vec<ListenSocket>,
}

impl ListenGroup {
    /// The group of `protocol` made of `opened` (from a [`crate::SocketSource`]).
    pub(crate) fn new(protocol: config::Protocol, opened: crate::Opened) -> ListenGroup {
        let udp = protocol == config::Protocol::Udp;
        ListenGroup {
            key: FrontendKey {
                protocol,
                addr: opened.local_addr,
            },
            local_addr: opened.local_addr,
            sockets: opened
                .sockets
                .into_iter()
                .map(|s| {
                    if udp {
                        ListenSocket::Udp(s.into())
                    } else {
                        ListenSocket::Tcp(s.into())
                    }
                })
                .collect(),
        }
    }
}

/// Binds `workers` sockets for `protocol` on `addr` in one `SO_REUSEPORT` group.
///
/// `SO_REUSEPORT` lets any socket of the same user join the group, so a second ringlb would
/// silently split traffic with us. Unless `share` is set, a probe bind *without* the option
/// first checks that nobody listens there (it fails against any bound listener, ours included,
/// so a second instance started later fails in the same way).
pub(crate) fn bind_group(
    protocol: config::Protocol,
    addr: SocketAddr,
    workers: usize,
    share: bool,
) -> Result<(SocketAddr, Vec<Socket>), ProxyError> {
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 {
            ProxyError::NoFreePort { addr }
        } else if source.kind() == io::ErrorKind::AddrInUse {
            ProxyError::AddressInUse { addr }
        } else {
            ProxyError::Bind { addr, source }
        }
    };
    let udp = protocol == config::Protocol::Udp;
    if !share && addr.port() != 0 {
        let probe = if udp {
            frontend_socket(addr, false)
        } else {
            new_socket(addr, false, true)
        }
        .map_err(err)?;
        probe.bind(&addr.into()).map_err(err)?;
        drop(probe);
    }
    // A port the kernel picks (node mode's portals) is new, so no TIME_WAIT connection holds
    // it, and `SO_REUSEADDR` would only slow the pick: with it the kernel searches the lower
    // half of the ephemeral range first, and once that half is taken (some 7,000 listeners)
    // every bind scans all of it (about 1.4 ms each, measured; without it, 0.01 ms up to
    // 14,000 listeners).
    let reuse_addr = addr.port() != 0;
    let open = |addr: SocketAddr| -> io::Result<Socket> {
        if udp {
            let socket = frontend_socket(addr, true)?;
            socket.bind(&addr.into())?;
            Ok(socket)
        } else {
            listen(addr, reuse_addr)
        }
    };
    let first = open(addr).map_err(err)?;
    let local_addr = first
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(io::Error::other("bound address is not an IP address")))?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(open(local_addr).map_err(err)?);
    }
    Ok((local_addr, sockets))
}

fn new_socket(addr: SocketAddr, reuse_port: bool, reuse_addr: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(reuse_addr)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `[::]:80` must not also take `0.0.0.0:80`; each family is configured on its own.
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn listen(addr: SocketAddr, reuse_addr: bool) -> io::Result<Socket> {
    let socket = new_socket(addr, true, reuse_addr)?;
    // monoio's `from_std` keeps the blocking flag as it is; an epoll worker needs O_NONBLOCK.
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}
