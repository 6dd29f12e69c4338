//! The health ports' lives: the node health server and one server per wanted
//! `healthCheckNodePort`, bound here and served on the control runtime by [`control::http`]
//! with [`Limits::HEALTH`].
//!
//! A port that cannot be bound does not stop ringlb (Services must not go down for it): it is
//! logged, reported to [`control::Readiness`] (so `/readyz` says so) and tried again
//! at the next sync, and the problem is cleared once it binds or is no longer wanted.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use config::k8s::Resolved;

use super::{node_handler, service_handler, wanted, Health, NodeHealth};
use control::http::{HttpServer, Limits, ServerKind, Spec};
use control::Plane;

/// The node health server (`--healthz-bind-address`), once it could be bound.
#[derive(Debug)]
pub struct NodeServer {
    addr: SocketAddr,
    health: Arc<NodeHealth>,
    plane: Plane,
    running: Option<HttpServer>,
    /// The last bind failed (logged once).
    failing: bool,
}

impl NodeServer {
    /// Not serving yet; [`NodeServer::ensure`] binds `addr`.
    pub fn new(addr: SocketAddr, health: Arc<NodeHealth>, plane: Plane) -> NodeServer {
        NodeServer {
            addr,
            health,
            plane,
            running: None,
            failing: false,
        }
    }

    /// Serves the port unless it does already. Bound now, it returns the address bound (for
    /// the caller to announce); not, the problem is logged (once) and reported to readiness
    /// until a later call binds it.
    pub fn ensure(&mut self) -> Option<SocketAddr> {
        if self.running.is_some() {
            return None;
        }
        let name = format!("healthz {}", self.addr);
        let spec = Spec {
            kind: ServerKind::Healthz,
            name: name.clone(),
            limits: Limits::HEALTH,
        };
        let handler = node_handler(Arc::clone(&self.health));
        match self
            .plane
            .http_listener(name.clone(), self.addr, false)
            .and_then(|l| HttpServer::start(&self.plane, l, spec, handler))
        {
            Ok(server) => {
                self.plane.readiness.clear(&name);
                self.failing = false;
                let bound = server.local_addr();
                self.running = Some(server);
                Some(bound)
            }
            Err(e) => {
                let problem = format!("cannot listen: {e}");
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(addr = %self.addr, error = %e, "cannot serve the node /healthz; trying again at the next change from the API");
                }
                self.plane.readiness.set(name, problem);
                None
            }
        }
    }
}

/// One served `healthCheckNodePort`.
#[derive(Debug)]
struct Served {
    /// What it answers, kept up to date by [`HealthChecks::sync`].
    health: Arc<Mutex<Health>>,
    /// Dropped: it stops.
    _server: HttpServer,
}

/// The running health check servers of this node.
pub struct HealthChecks {
    node: String,
    health: Arc<NodeHealth>,
    plane: Plane,
    servers: HashMap<u16, Served>,
    /// Wanted ports that could not be bound.
    failing: BTreeSet<u16>,
}

/// The readiness key (and log name) of `healthCheckNodePort` `port`.
fn port_name(port: u16) -> String {
    format!("healthCheckNodePort {port}")
}

impl HealthChecks {
    /// None running yet; `node` is this node's name, `health` what `serviceProxyHealthy`
    /// reports.
    pub fn new(node: String, health: Arc<NodeHealth>, plane: Plane) -> HealthChecks {
        HealthChecks {
            node,
            health,
            plane,
            servers: HashMap::new(),
            failing: BTreeSet::new(),
        }
    }

    /// Serves exactly the `healthCheckNodePort`s of `resolved`, with their current counts. A
    /// port that cannot be bound is logged, reported to readiness and tried again at the next
    /// change.
    pub fn sync(&mut self, resolved: &Resolved) {
        let wanted = wanted(resolved, &self.node);
        let sockets = &self.plane.sockets;
        self.servers.retain(|port, _| {
            let keep = wanted.contains_key(port);
            if !keep {
                // Its listener goes with it (the master keeps nothing nobody serves).
                sockets.release(&port_name(*port));
            }
            keep
        });
        let readiness = &self.plane.readiness;
        self.failing.retain(|port| {
            let keep = wanted.contains_key(port);
            if !keep {
                readiness.clear(&port_name(*port));
            }
            keep
        });
        for (port, health) in wanted {
            if let Some(served) = self.servers.get(&port) {
                *served.health.lock().expect("health lock") = health;
                continue;
            }
            self.start(port, health);
        }
    }

    fn start(&mut self, port: u16, health: Health) {
        let service = format!("{}/{}", health.namespace, health.name);
        let name = port_name(port);
        let health = Arc::new(Mutex::new(health));
        let spec = Spec {
            kind: ServerKind::HealthCheckNodePort,
            name: name.clone(),
            limits: Limits::HEALTH,
        };
        let handler = service_handler(Arc::clone(&health), Arc::clone(&self.health));
        match self
            .plane
            .http_listener(
                port_name(port),
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                true,
            )
            .and_then(|l| HttpServer::start(&self.plane, l, spec, handler))
        {
            Ok(server) => {
                tracing::info!(%service, port, "serving healthCheckNodePort");
                if self.failing.remove(&port) {
                    self.plane.readiness.clear(&name);
                }
                let served = Served {
                    health,
                    _server: server,
                };
                self.servers.insert(port, served);
            }
            Err(e) => {
                if self.failing.insert(port) {
                    tracing::error!(%service, port, error = %e, "cannot serve healthCheckNodePort; trying again at the next change");
                }
                let problem = format!("{service}: cannot listen: {e}");
                self.plane.readiness.set(name, problem);
            }
        }
    }
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("node", &self.node)
            .field("ports", &self.servers.keys().collect::<Vec<_>>())
            .field("failing", &self.failing)
            .finish()
    }
}
