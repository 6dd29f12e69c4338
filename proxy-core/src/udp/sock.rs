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
    recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};

/// A socket for one worker of a UDP frontend: `SO_REUSEPORT`, non-blocking. A wildcard
/// frontend turns packet info on to learn each datagram's destination; on a frontend bound to
/// one address it would only cost a control message per datagram.
///
/// No `SO_REUSEADDR`: on a UDP socket it lets any other socket with the option bind the same
/// address and port and take a share of its datagrams (UDP has no `TIME_WAIT` for it to
/// help with). Only `SO_REUSEPORT` sockets of the same user join, on purpose.
pub(crate) fn frontend_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    let wildcard = addr.ip().is_unspecified();
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        if wildcard {
            setsockopt(socket.as_raw_fd(), sockopt::Ipv6RecvPacketInfo, &true)?;
        }
    } else if wildcard {
        setsockopt(socket.as_raw_fd(), sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A flow's upstream socket: an ephemeral port connected to `backend`, so the kernel filters
/// replies to that backend and reports its ICMP errors (`ECONNREFUSED`) on this socket.
/// With `source` (the client's address, same family), bound to it instead
/// (`IP_TRANSPARENT`; `SO_REUSEADDR` since one client may have flows to several services):
/// the backend sees the client, and steering's policy routing brings its replies back here.
pub(crate) fn upstream_socket(
    backend: SocketAddr,
    source: Option<SocketAddr>,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    if let Some(source) = source.filter(|s| s.is_ipv4() == backend.is_ipv4()) {
        socket.set_ip_transparent(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&source.into())?;
    }
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

impl Received {
    /// A placeholder for batch arrays.
    pub(crate) const EMPTY: Received = Received {
        len: 0,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        dest: None,
    };
}

/// Datagrams received (and sent as one segmented send) per system call.
pub(crate) const BATCH: usize = 32;
/// Bytes per datagram slot of a batch buffer: more than the largest UDP payload (65,507 bytes
/// over IPv4), so a datagram never truncates.
const SLOT: usize = 65_536;

/// A worker's receive buffer: one slot per datagram of a batch.
pub(crate) fn batch_buffer() -> Box<[u8]> {
    vec![0; BATCH * SLOT].into_boxed_slice()
}

/// Datagram `i` of a batch received into `bufs`.
pub(crate) fn slot(bufs: &[u8], i: usize, len: usize) -> &[u8] {
    &bufs[i * SLOT..i * SLOT + len]
}

/// One frontend socket's `recvmmsg` headers. nix keeps the address and control lengths the
/// kernel wrote into each header for the next call, so each socket (one address family, one
/// kind of packet info) has its own.
pub(crate) struct RecvHeaders(MultiHeaders<SockaddrStorage>);

impl RecvHeaders {
    pub(crate) fn new() -> Self {
        Self(MultiHeaders::preallocate(BATCH, Some(cmsg_buffer())))
    }
}

/// Receives up to [`BATCH`] client datagrams with one system call: datagram `i` lands in
/// [`slot`] `i` of `bufs` and is described by `out[i]`. Returns how many arrived.
pub(crate) fn recv_batch(
    fd: RawFd,
    headers: &mut RecvHeaders,
    bufs: &mut [u8],
    out: &mut [Received; BATCH],
) -> io::Result<usize> {
    let mut slots = bufs.chunks_mut(SLOT);
    let iovs: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(slots.next().expect("BATCH slots"))]);
    let msgs = recvmmsg(
        fd,
        &mut headers.0,
        iovs.iter(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    let mut n = 0;
    for msg in msgs {
        let client = msg
            .address
            .as_ref()
            .and_then(to_std)
            .ok_or_else(|| io::Error::other("datagram without an IP source address"))?;
        out[n] = Received {
            len: msg.bytes,
            client,
            dest: packet_info(msg.cmsgs()),
        };
        n += 1;
    }
    Ok(n)
}

/// Datagrams `range` of a batch received into `bufs`, as the I/O vectors of one send, in
/// `iov` (no allocation on the datagram path). Returns the filled part.
pub(crate) fn gather<'a, 'b>(
    bufs: &'a [u8],
    received: &[Received; BATCH],
    range: std::ops::Range<usize>,
    iov: &'b mut [IoSlice<'a>; BATCH],
) -> &'b [IoSlice<'a>] {
    let count = range.len();
    for (slice, i) in iov.iter_mut().zip(range) {
        *slice = IoSlice::new(slot(bufs, i, received[i].len));
    }
    &iov[..count]
}

/// Sends `datagrams` (all of `size` bytes but the last, which may be shorter) on a connected
/// socket as one UDP GSO send (`UDP_SEGMENT`): one trip down the stack, still separate
/// datagrams on the wire and at the receiver.
pub(crate) fn send_segments(fd: RawFd, datagrams: &[IoSlice<'_>], size: u16) -> io::Result<usize> {
    let cmsg = [ControlMessage::UdpGsoSegments(&size)];
    Ok(sendmsg::<SockaddrStorage>(
        fd,
        datagrams,
        &cmsg,
        MsgFlags::MSG_DONTWAIT,
        None,
    )?)
}

/// Sends one datagram made of `header` then `data` on a connected socket (a PROXY protocol
/// header before the client's bytes), without copying either.
pub(crate) fn send_with_header(fd: RawFd, header: &[u8], data: &[u8]) -> io::Result<usize> {
    let iov = [IoSlice::new(header), IoSlice::new(data)];
    Ok(sendmsg::<SockaddrStorage>(
        fd,
        &iov,
        &[],
        MsgFlags::MSG_DONTWAIT,
        None,
    )?)
}

/// Whether a failed segmented send says this socket or device cannot segment at all (then
/// the worker sends one by one from now on). `EINVAL` is not such a sign: it also means one
/// run's segments did not fit the route's MTU, which the next run's may.
pub(crate) fn disables_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// The destination address from packet info among `cmsgs`.
fn packet_info(cmsgs: impl Iterator<Item = ControlMessageOwned>) -> Option<IpAddr> {
    let mut dest = None;
    for c in cmsgs {
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
    dest
}

/// A control buffer large enough for either family's packet info.
pub(crate) fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::in6_pktinfo)
}

/// Sends `datagrams` to `client`: one datagram, or with `segment` several of that size (the
/// last may be shorter) as one UDP GSO send. With `source`, from that local address (a
/// wildcard frontend's reply must come from the address the client sent to, or the client
/// drops it).
pub(crate) fn send_to_client(
    fd: RawFd,
    datagrams: &[IoSlice<'_>],
    client: SocketAddr,
    source: Option<IpAddr>,
    segment: Option<u16>,
) -> io::Result<usize> {
    let to = SockaddrStorage::from(client);
    let v4 = match source {
        Some(IpAddr::V4(ip)) => Some(libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        }),
        _ => None,
    };
    let v6 = match source {
        Some(IpAddr::V6(ip)) => Some(libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            ipi6_ifindex: 0,
        }),
        _ => None,
    };
    let info = match (&v4, &v6) {
        (Some(info), _) => Some(ControlMessage::Ipv4PacketInfo(info)),
        (_, Some(info)) => Some(ControlMessage::Ipv6PacketInfo(info)),
        _ => None,
    };
    let gso = segment.as_ref().map(ControlMessage::UdpGsoSegments);
    // At most two control messages, kept on the stack.
    let mut cmsgs = [ControlMessage::UdpGsoSegments(&0); 2];
    let mut count = 0;
    for c in [info, gso].into_iter().flatten() {
        cmsgs[count] = c;
        count += 1;
    }
    Ok(sendmsg(
        fd,
        datagrams,
        &cmsgs[..count],
        MsgFlags::MSG_DONTWAIT,
        Some(&to),
    )?)
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
