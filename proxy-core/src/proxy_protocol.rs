//! HAProxy's PROXY protocol, through the `ppp` crate: the header ringlb sends a backend
//! before the client's bytes ([`header`]), and the one it reads from a front load balancer
//! ([`read`]), bounded in bytes and time.

use std::net::SocketAddr;
use std::time::Duration;

use balancers::Flow;
use config::{ProxyProtocol, ServiceEntry};
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use ppp::PartialResult;

use crate::telemetry::CloseReason;

/// The longest v1 header (the specification's 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 header read: the 16 fixed bytes and at most this many of addresses and
/// TLVs (AWS, GCP and Azure load balancers send a few hundred). A longer one is refused
/// rather than buffered.
const V2_MAX_PAYLOAD: usize = 4096;
/// The v2 signature, and the length of the fixed part.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

/// The header telling a backend that `client` connected to `dest` (IPv4-mapped addresses
/// as IPv4; across address families v1 says `UNKNOWN` and v2 `LOCAL`, which tell the
/// backend to use the connection's own addresses).
pub(crate) fn header(version: ProxyProtocol, client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    match version {
        ProxyProtocol::V1 => ppp::v1::Addresses::from((canonical(client), canonical(dest)))
            .to_string()
            .into_bytes(),
        ProxyProtocol::V2 => v2(ppp::v2::Protocol::Stream, client, dest),
    }
}

/// The v2 header that starts every datagram of a UDP flow from `client` to `dest` sent to a
/// backend (transport `DGRAM`); across address families, `LOCAL`.
pub(crate) fn datagram_header(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    v2(ppp::v2::Protocol::Datagram, client, dest)
}

fn v2(transport: ppp::v2::Protocol, client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
    let addresses = Addresses::from((canonical(client), canonical(dest)));
    let (command, protocol) = match addresses {
        Addresses::Unspecified => (Command::Local, Protocol::Unspecified),
        _ => (Command::Proxy, transport),
    };
    Builder::with_addresses(Version::Two | command, protocol, addresses)
        .build()
        .unwrap_or_default()
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What a front load balancer's header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// The client and the address it dialled; `None` for a header without addresses (v1
    /// `UNKNOWN`, v2 `LOCAL` or another family): then the connection's own apply.
    pub(crate) addresses: Option<(SocketAddr, SocketAddr)>,
    /// The client's bytes that came after the header in the same reads.
    pub(crate) rest: Vec<u8>,
}

/// Why a connection's header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("not a PROXY protocol header")]
    Malformed,
    #[error("a PROXY protocol header longer than {} bytes", V2_FIXED + V2_MAX_PAYLOAD)]
    TooLong,
    #[error("the connection ended before its PROXY protocol header did")]
    Closed,
    #[error("no whole PROXY protocol header in time")]
    TimedOut,
    #[error("reading the PROXY protocol header failed")]
    Io,
}

/// What the bytes so far make of a header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole header of `len` bytes, naming these addresses (if any).
    Header {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not yet decided; at most this many bytes in all will decide it.
    Incomplete {
        at_most: usize,
    },
    Bad(HeaderError),
}

/// Decides what `buf` (the first bytes of a connection) holds: a header, too few bytes yet,
/// or something that can never become a valid header. Pure: no I/O, and never a panic.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2_prefix] == V2_SIGNATURE[..v2_prefix] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1_prefix = buf.len().min(6);
    if buf[..v1_prefix] != b"PROXY "[..v1_prefix] {
        return Parsed::Bad(HeaderError::Malformed);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n").map(|at| at + 2) else {
        return if buf.len() >= V1_MAX {
            Parsed::Bad(HeaderError::Malformed)
        } else {
            Parsed::Incomplete { at_most: V1_MAX }
        };
    };
    if end > V1_MAX {
        return Parsed::Bad(HeaderError::Malformed);
    }
    match ppp::v1::Header::try_from(&buf[..end]) {
        Ok(h) => Parsed::Header {
            len: end,
            addresses: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            },
        },
        Err(_) => Parsed::Bad(HeaderError::Malformed),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < V2_FIXED {
        return Parsed::Incomplete {
            at_most: V2_FIXED + V2_MAX_PAYLOAD,
        };
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Parsed::Bad(HeaderError::TooLong);
    }
    let len = V2_FIXED + payload;
    if buf.len() < len {
        return Parsed::Incomplete { at_most: len };
    }
    let header = ppp::v2::Header::try_from(&buf[..len]);
    if header.is_incomplete() {
        // The length says the header is whole: nothing more can complete it.
        return Parsed::Bad(HeaderError::Malformed);
    }
    let Ok(h) = header else {
        return Parsed::Bad(HeaderError::Malformed);
    };
    let addresses = match (h.command, h.addresses) {
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        _ => None,
    };
    Parsed::Header { len, addresses }
}

/// Reads a connection's PROXY protocol header within `limit`: no more bytes than the
/// longest header can take, so a client cannot make this hold more.
pub(crate) async fn read(client: &mut TcpStream, limit: Duration) -> Result<Received, HeaderError> {
    match monoio::time::timeout(limit, read_header(client)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::TimedOut),
    }
}

async fn read_header(client: &mut TcpStream) -> Result<Received, HeaderError> {
    let mut got: Vec<u8> = Vec::with_capacity(V1_MAX + 1);
    let mut want = V1_MAX;
    loop {
        let room = want.saturating_sub(got.len()).max(1);
        let (read, chunk) = client.read(Vec::with_capacity(room)).await;
        match read {
            Ok(0) => return Err(HeaderError::Closed),
            Ok(_) => got.extend_from_slice(&chunk),
            Err(_) => return Err(HeaderError::Io),
        }
        match parse(&got) {
            Parsed::Header { len, addresses } => {
                let rest = got.split_off(len);
                return Ok(Received { addresses, rest });
            }
            Parsed::Incomplete { at_most } => want = at_most,
            Parsed::Bad(e) => return Err(e),
        }
    }
}

/// Who the client is and what a backend gets before its bytes: with `accept_proxy_protocol`
/// the front load balancer's header says who (read within the connect timeout; a connection
/// from outside the ranges, or without a valid header, is refused), and the client's bytes
/// that came with the header follow; with `proxy_protocol` a header for the backend leads.
pub(crate) async fn preface(
    client: &mut TcpStream,
    entry: &ServiceEntry,
    mut flow: Flow,
) -> Result<(Flow, Vec<u8>), CloseReason> {
    let svc = &entry.service;
    let peer = flow.client;
    let mut early = Vec::new();
    if !svc.accept_proxy_protocol.is_empty() {
        let from = peer.ip().to_canonical();
        if !svc
            .accept_proxy_protocol
            .iter()
            .any(|net| net.contains(&from))
        {
            tracing::debug!(service = %svc.name, client = %peer, "not an allowed PROXY protocol source: reset");
            return Err(CloseReason::ProxyUntrusted);
        }
        let got = read(client, svc.connect_timeout)
            .await
            .map_err(|e| {
                tracing::debug!(service = %svc.name, client = %peer, error = %e, "PROXY protocol header refused: reset");
                CloseReason::ProxyHeader
            })?;
        if let Some((client, dest)) = got.addresses {
            flow = Flow { client, dest };
        }
        early = got.rest;
    }
    let mut preface = match svc.proxy_protocol {
        Some(version) => header(version, flow.client, flow.dest),
        None => Vec::new(),
    };
    preface.extend_from_slice(&early);
    Ok((flow, preface))
}

#[cfg(test)]
mod tests;
