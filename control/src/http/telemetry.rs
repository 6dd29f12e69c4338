//! The counters of the HTTP ports, by kind of port: what `/metrics` reports as
//! `ringlb_http_*`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Which kind of port a server is, for the `server` label of its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// The admin API.
    Admin,
    /// The node health server (`--healthz-bind-address`).
    Healthz,
    /// The `healthCheckNodePort` servers, counted together.
    HealthCheckNodePort,
}

impl ServerKind {
    /// Every kind, in the order of the exposition.
    pub const ALL: [ServerKind; 3] = [
        ServerKind::Admin,
        ServerKind::Healthz,
        ServerKind::HealthCheckNodePort,
    ];

    /// The value of the `server` label.
    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Admin => "admin",
            ServerKind::Healthz => "healthz",
            ServerKind::HealthCheckNodePort => "health_check_node_port",
        }
    }
}

/// The counters of one kind of port.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) started: AtomicBool,
    pub(super) accepted: AtomicU64,
    pub(super) shed: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) accept_errors: AtomicU64,
}

/// What a kind of port counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Connections admitted (some by shedding another).
    pub accepted: u64,
    /// Connections closed, idle, to make room for a new one.
    pub shed: u64,
    /// Connections closed at once because every other one was answering.
    pub refused: u64,
    /// Failed `accept` calls.
    pub accept_errors: u64,
}

/// The counters of every HTTP port of the process, by [`ServerKind`].
#[derive(Debug, Default)]
pub struct Telemetry {
    servers: [Counters; 3],
}

impl Telemetry {
    pub(super) fn of(&self, kind: ServerKind) -> &Counters {
        &self.servers[kind as usize]
    }

    /// The counts of each kind of port that has served at all.
    pub fn counts(&self) -> Vec<(ServerKind, Counts)> {
        ServerKind::ALL
            .into_iter()
            .filter(|kind| self.of(*kind).started.load(Relaxed))
            .map(|kind| {
                let c = self.of(kind);
                let counts = Counts {
                    accepted: c.accepted.load(Relaxed),
                    shed: c.shed.load(Relaxed),
                    refused: c.refused.load(Relaxed),
                    accept_errors: c.accept_errors.load(Relaxed),
                };
                (kind, counts)
            })
            .collect()
    }
}
