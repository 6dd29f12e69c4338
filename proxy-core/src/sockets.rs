//! Where listening sockets come from: bound in this process ([`LocalSockets`]), or handed over
//! by ringlb's master process, which owns them across worker restarts and upgrades (the
//! binary's [`SocketSource`]).
//!
//! A socket set is named by its [`SocketSpec::key`]: asking again with the same key gives the
//! same socket objects, so a worker that restarts, or a new version, serves exactly the
//! sockets its predecessor did (the same ports for port-0 frontends, nothing reset in an
//! accept queue).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use config::Protocol;
use socket2::{Domain, Socket, Type};

use crate::listener::bind_group;
use crate::ProxyError;

/// What kind of listening socket a spec asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A frontend: one socket per worker in one `SO_REUSEPORT` group (TCP listeners or UDP
    /// sockets); `share`: join another process's group on purpose.
    Frontend {
        /// TCP or UDP.
        protocol: Protocol,
        /// Sockets in the group, one per worker thread.
        workers: usize,
        /// Join a group another process already has on the address.
        share: bool,
    },
    /// An HTTP port of the control plane (admin API, health ports): one TCP listener. With
    /// `dual_stack`, `[::]` at the spec's port taking both families (or `0.0.0.0` where the
    /// host has no IPv6); the spec's address then only gives the port.
    Http {
        /// One listener for both families.
        dual_stack: bool,
    },
}

/// A set of listening sockets to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSpec {
    /// Names the set across worker restarts and upgrades: the same key, the same sockets.
    pub key: String,
    /// What to bind.
    pub kind: SocketKind,
    /// Where (port 0: a free port, kept for as long as the key is).
    pub addr: SocketAddr,
}

impl SocketSpec {
    /// The spec of a frontend of `service` at `addr` (as configured): fixed addresses are
    /// named by protocol and address, port-0 ones by the service too (each has its own port).
    pub fn frontend(
        service: &str,
        protocol: Protocol,
        addr: SocketAddr,
        workers: usize,
        share: bool,
    ) -> SocketSpec {
        let key = if addr.port() == 0 {
            format!("{protocol} {addr} {service}")
        } else {
            format!("{protocol} {addr}")
        };
        SocketSpec {
            key,
            kind: SocketKind::Frontend {
                protocol,
                workers,
                share,
            },
            addr,
        }
    }
}

/// Sockets opened for a spec.
#[derive(Debug)]
pub struct Opened {
    /// The address bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// Non-blocking (frontends) or blocking (HTTP ports) sockets, listening where TCP.
    pub sockets: Vec<Socket>,
}

/// Where listening sockets come from.
pub trait SocketSource: Send + Sync + std::fmt::Debug {
    /// The sockets of `spec`: bound now, or the ones already bound under its key.
    fn open(&self, spec: &SocketSpec) -> Result<Opened, ProxyError>;

    /// The sockets of `key` are not needed any more (their frontend left the config).
    fn release(&self, key: &str);
}

/// Binds in this process; nothing outlives it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalSockets;

impl SocketSource for LocalSockets {
    fn open(&self, spec: &SocketSpec) -> Result<Opened, ProxyError> {
        bind(spec)
    }

    fn release(&self, _key: &str) {}
}

/// Binds `spec` here: what [`LocalSockets`] does, and what ringlb's master does for its workers.
pub fn bind(spec: &SocketSpec) -> Result<Opened, ProxyError> {
    match spec.kind {
        SocketKind::Frontend {
            protocol,
            workers,
            share,
        } => {
            let (local_addr, sockets) = bind_group(protocol, spec.addr, workers, share)?;
            Ok(Opened {
                local_addr,
                sockets,
            })
        }
        SocketKind::Http { dual_stack } => {
            let bind_err = |source| ProxyError::Bind {
                addr: spec.addr,
                source,
            };
            let socket = if dual_stack {
                any_address(spec.addr.port())
            } else {
                http_listener(spec.addr)
            }
            .map_err(bind_err)?;
            let local_addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| bind_err(io::Error::other("bound address is not an IP address")))?;
            Ok(Opened {
                local_addr,
                sockets: vec![socket],
            })
        }
    }
}

/// A plain TCP listener on `addr`, as `std::net::TcpListener::bind` makes it.
fn http_listener(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket)
}

/// A listener on every address of both families at `port` (one dual-stack `[::]` socket, as
/// kube-proxy's `:port` listener), or on `0.0.0.0` where the host has no IPv6: load balancers
/// probe over whichever family they reach the node by.
fn any_address(port: u16) -> io::Result<Socket> {
    let dual = || -> io::Result<Socket> {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
        socket.listen(128)?;
        Ok(socket)
    };
    match dual() {
        Ok(socket) => Ok(socket),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            http_listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_are_named_by_address_or_by_service_for_a_free_port() {
        let fixed = SocketSpec::frontend(
            "web",
            Protocol::Tcp,
            "127.0.0.1:80".parse().unwrap(),
            2,
            false,
        );
        assert_eq!(fixed.key, "tcp 127.0.0.1:80");
        let free =
            SocketSpec::frontend("web", Protocol::Udp, "0.0.0.0:0".parse().unwrap(), 2, false);
        assert_eq!(free.key, "udp 0.0.0.0:0 web");
    }

    #[test]
    fn an_http_port_is_one_listener_and_a_frontend_one_per_worker() {
        let http = SocketSpec {
            key: "admin".into(),
            kind: SocketKind::Http { dual_stack: false },
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let opened = bind(&http).unwrap();
        assert_eq!(opened.sockets.len(), 1);
        assert_ne!(opened.local_addr.port(), 0);
        let front = SocketSpec::frontend(
            "web",
            Protocol::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            3,
            false,
        );
        let opened = LocalSockets.open(&front).unwrap();
        assert_eq!(opened.sockets.len(), 3);
    }
}
