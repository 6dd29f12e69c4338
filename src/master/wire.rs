//! What ringlb's master and its worker processes say to each other.
//!
//! Two channels per worker: the descriptor channel ([`super::channel`], `SOCK_SEQPACKET`),
//! on which the worker asks for listening sockets and the master answers with them; and the
//! control channel, a stream of JSON lines both ways (readiness, handover, UDP flows, which
//! can be long).

use std::net::SocketAddr;

use config::Protocol;
use proxy_core::{ProxyError, SocketKind, SocketSpec};
use serde::{Deserialize, Serialize};

use crate::admin::UdpFlowsView;

/// A [`SocketSpec`] as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub key: String,
    pub kind: Kind,
    pub addr: SocketAddr,
}

/// A [`SocketKind`] as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Frontend {
        udp: bool,
        workers: usize,
        share: bool,
    },
    Http {
        dual_stack: bool,
    },
}

impl From<&SocketSpec> for Spec {
    fn from(s: &SocketSpec) -> Spec {
        let kind = match s.kind {
            SocketKind::Frontend {
                protocol,
                workers,
                share,
            } => Kind::Frontend {
                udp: protocol == Protocol::Udp,
                workers,
                share,
            },
            SocketKind::Http { dual_stack } => Kind::Http { dual_stack },
        };
        Spec {
            key: s.key.clone(),
            kind,
            addr: s.addr,
        }
    }
}

impl From<&Spec> for SocketSpec {
    fn from(s: &Spec) -> SocketSpec {
        let kind = match s.kind {
            Kind::Frontend {
                udp,
                workers,
                share,
            } => SocketKind::Frontend {
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                workers,
                share,
            },
            Kind::Http { dual_stack } => SocketKind::Http { dual_stack },
        };
        SocketSpec {
            key: s.key.clone(),
            kind,
            addr: s.addr,
        }
    }
}

/// A worker's request on the descriptor channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The sockets of this spec (bound now, or the ones the master holds under its key).
    Open(Spec),
    /// The sockets of this key are not needed any more.
    Release(String),
}

/// The master's answer to [`Request::Open`]; the sockets travel with it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Opened { local_addr: SocketAddr },
    Failed { addr: SocketAddr, failure: Failure },
}

/// Why the master could not bind, as the worker reports it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    InUse,
    NoFreePort,
    /// An OS error, by number.
    Os(i32),
    Other(String),
}

impl Failure {
    /// What the master's bind said.
    pub fn of(error: &ProxyError) -> Failure {
        match error {
            ProxyError::AddressInUse { .. } => Failure::InUse,
            ProxyError::NoFreePort { .. } => Failure::NoFreePort,
            ProxyError::Bind { source, .. } => source
                .raw_os_error()
                .map_or_else(|| Failure::Other(source.to_string()), Failure::Os),
            other => Failure::Other(other.to_string()),
        }
    }

    /// The error the worker's bind would have given for `addr`.
    pub fn into_error(self, addr: SocketAddr) -> ProxyError {
        match self {
            Failure::InUse => ProxyError::AddressInUse { addr },
            Failure::NoFreePort => ProxyError::NoFreePort { addr },
            Failure::Os(errno) => ProxyError::Bind {
                addr,
                source: std::io::Error::from_raw_os_error(errno),
            },
            Failure::Other(message) => ProxyError::Bind {
                addr,
                source: std::io::Error::other(message),
            },
        }
    }
}

/// What the master tells a worker on its control channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// A successor serves the same sockets now: stop reading every frontend, send back the
    /// UDP flows, drain and exit.
    HandOver,
    /// The UDP flows of the predecessor: keep their clients on their backends, then start
    /// reading the UDP frontends.
    Pins(UdpFlowsView),
    /// Read the config again (`ringlb reload`) and say how it went.
    Reload,
}

/// What a worker tells its master on its control channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// Every listener is served (the `ready` line is out).
    Ready,
    /// It could not start, and why (it exits next).
    Failed(String),
    /// The answer to [`ToWorker::HandOver`].
    Flows(UdpFlowsView),
    /// The answer to [`ToWorker::Reload`]: the table version now served, or why the last
    /// good config keeps serving.
    Reloaded(Result<u64, String>),
}

/// What a client asks a master on its handover socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// Execute the binary again and hand everything over to it (`ringlb upgrade`).
    Upgrade,
    /// The asker is a new master: send it every listening socket held.
    TakeOver,
    /// The asker serves the sockets now: hand over the workers' UDP flows, drain.
    Switch,
    /// Have the serving worker read its config again (`ringlb reload`).
    Reload,
}

/// A held socket set as it travels to a new master; its descriptors follow in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldSet {
    pub spec: Spec,
    pub local_addr: SocketAddr,
    pub count: usize,
}

/// A master's answer on its handover socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The upgrade is done: the master (same PID) runs the new binary, and so does its
    /// serving worker.
    Upgraded { master: i32, worker: i32 },
    /// What was asked did not happen, and why; the running processes serve as before.
    Failed(String),
    /// Every socket set held ([`Ask::TakeOver`]).
    Sockets(Vec<HeldSet>),
    /// The workers stopped reading ([`Ask::Switch`]); these were their UDP flows.
    Switched(UdpFlowsView),
    /// The config was read again ([`Ask::Reload`]); this table version serves.
    Reloaded { version: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_travels_unchanged() {
        let specs = [
            SocketSpec::frontend("web", Protocol::Udp, "0.0.0.0:0".parse().unwrap(), 4, true),
            SocketSpec {
                key: "admin 127.0.0.1:9901".into(),
                kind: SocketKind::Http { dual_stack: true },
                addr: "127.0.0.1:9901".parse().unwrap(),
            },
        ];
        for spec in specs {
            let json = serde_json::to_string(&Spec::from(&spec)).unwrap();
            let back: Spec = serde_json::from_str(&json).unwrap();
            assert_eq!(SocketSpec::from(&back), spec, "{json}");
        }
    }
}
