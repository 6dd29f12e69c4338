//! Datagram system calls the runtime does not offer: receiving with the destination address
//! (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and replying from a chosen source address, so that a
//! frontend bound to a wildcard address answers from the address the client sent to.
//!
//! All calls are non-blocking (`MSG_DONTWAIT`) and made after the runtime reported the socket
//! readable; `WouldBlock` means drained.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload (IPv4: 65,535 - 8 - 20); a buffer this big never truncates.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// A socket for one worker of a UDP frontend: `SO_REUSEPORT`, non-blocking, with packet info
/// on so a wildcard frontend learns each datagram's destination.
pub(crate) fn frontend_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        setsockopt(socket.as_raw_fd(), sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket.as_raw_fd(), sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A flow's upstream socket: an ephemeral port connected to `backend`, so the kernel filters
/// replies to that backend and reports its ICMP errors (`ECONNREFUSED`) on this socket.
pub(crate) fn upstream_socket(backend: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    socket.connect(&backend.into())?;
    Ok(socket.into())
}

/// One datagram from a client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) client: SocketAddr,
    /// The destination address the client used (from packet info), when known.
    pub(crate) dest: Option<IpAddr>,
}

/// Receives one datagram into `buf`; `cmsg` is a reusable control buffer from [`cmsg_buffer`].
pub(crate) fn recv_from_client(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let client = msg
        .address
        .as_ref()
        .and_then(to_std)
        .ok_or_else(|| io::Error::other("datagram without an IP source address"))?;
    let mut dest = None;
    for c in msg.cmsgs() {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(pi) => {
                dest = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
            }
            ControlMessageOwned::Ipv6PacketInfo(pi) => {
                dest = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    Ok(Received {
        len: msg.bytes,
        client,
        dest,
    })
}

/// A control buffer large enough for either family's packet info.
pub(crate) fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::in6_pktinfo)
}

/// Sends `data` to `client`; with `source`, from that local address (a wildcard frontend's
/// reply must come from the address the client sent to, or the client drops it).
pub(crate) fn send_to_client(
    fd: RawFd,
    data: &[u8],
    client: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let to = SockaddrStorage::from(client);
    let sent = match source {
        None => sendmsg(fd, &iov, &[], MsgFlags::MSG_DONTWAIT, Some(&to)),
        Some(IpAddr::V4(ip)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
            sendmsg(fd, &iov, &cmsg, MsgFlags::MSG_DONTWAIT, Some(&to))
        }
        Some(IpAddr::V6(ip)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
            sendmsg(fd, &iov, &cmsg, MsgFlags::MSG_DONTWAIT, Some(&to))
        }
    };
    Ok(sent?)
}

/// Receives one datagram on a connected socket.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::sys::socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT)?)
}

/// Sends one datagram on a connected socket.
pub(crate) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    Ok(nix::sys::socket::send(fd, data, MsgFlags::MSG_DONTWAIT)?)
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(v4.ip())),
            v4.port(),
        ));
    }
    let v6 = addr.as_sockaddr_in6()?;
    Some(SocketAddr::V6(std::net::SocketAddrV6::new(
        v6.ip(),
        v6.port(),
        v6.flowinfo(),
        v6.scope_id(),
    )))
}

/// Whether `e` means the peer is unreachable (an ICMP error reported on a connected socket).
pub(crate) fn is_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}
