//! `healthCheckNodePort` servers, answered exactly as kube-proxy answers them
//! (`pkg/proxy/healthcheck/service_health.go`): on every path, 200 when the Service has at
//! least one ready endpoint on this node and the proxy is healthy, else 503, with the same
//! JSON body and headers, so cloud load balancers send external traffic only to nodes that
//! can serve it locally (`externalTrafficPolicy: Local`).
//!
//! One small blocking thread per port: these are probed every few seconds by a load
//! balancer, never on the data path.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::k8s::Resolved;

/// How long a prober may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head lines read at most.
const MAX_HEADER_LINES: usize = 100;

/// What one port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

/// The response kube-proxy sends: status, then the body (no trailing newline).
fn response(h: &Health, proxy_healthy: bool) -> (u16, String) {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        q(&h.namespace),
        q(&h.name),
        h.local_endpoints,
        proxy_healthy
    );
    let status = if h.local_endpoints != 0 && proxy_healthy {
        200
    } else {
        503
    };
    (status, body)
}

/// The wanted health check ports of `resolved`: each Service's `healthCheckNodePort` with its
/// ready endpoints on `node` (the most of any of its ports, by address).
fn wanted(resolved: &Resolved, node: &str) -> BTreeMap<u16, Health> {
    let mut out: BTreeMap<u16, Health> = BTreeMap::new();
    for port in &resolved.ports {
        let Some(hc) = port.health_check_node_port else {
            continue;
        };
        let local = port
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready && e.node_name.as_deref() == Some(node))
            .count();
        let (namespace, name) = port
            .service
            .split_once('/')
            .unwrap_or(("", port.service.as_str()));
        let entry = out.entry(hc).or_insert_with(|| Health {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            local_endpoints: 0,
        });
        entry.local_endpoints = entry.local_endpoints.max(local);
    }
    out
}

struct Server {
    health: Arc<Mutex<Health>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Server {
    fn start(port: u16, health: Health) -> std::io::Result<Server> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        let addr = listener.local_addr()?;
        let health = Arc::new(Mutex::new(health));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&health), Arc::clone(&stop));
        std::thread::Builder::new()
            .name(format!("ringlb-hc-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let snapshot = h.lock().expect("health lock").clone();
                    std::thread::spawn(move || answer(conn, &snapshot));
                }
            })?;
        Ok(Server { health, stop, addr })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port()),
            Duration::from_secs(1),
        );
    }
}

/// Reads the request head and answers it (any method, any path, as kube-proxy).
fn answer(conn: TcpStream, health: &Health) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = BufReader::new(&conn);
    for _ in 0..MAX_HEADER_LINES {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 2 => {}
            _ => break,
        }
    }
    let (status, body) = response(health, true);
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let mut conn = &conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        health.local_endpoints,
        body.len()
    );
}

/// The running health check servers of this node.
pub struct HealthChecks {
    node: String,
    servers: HashMap<u16, Server>,
}

impl HealthChecks {
    /// None running yet; `node` is this node's name.
    pub fn new(node: String) -> HealthChecks {
        HealthChecks {
            node,
            servers: HashMap::new(),
        }
    }

    /// Serves exactly the `healthCheckNodePort`s of `resolved`, with their current counts. A
    /// port that cannot be bound is logged and tried again at the next change.
    pub fn sync(&mut self, resolved: &Resolved) {
        let wanted = wanted(resolved, &self.node);
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                server.stop();
            }
            keep
        });
        for (port, health) in wanted {
            if let Some(server) = self.servers.get(&port) {
                *server.health.lock().expect("health lock") = health;
                continue;
            }
            let service = format!("{}/{}", health.namespace, health.name);
            match Server::start(port, health) {
                Ok(server) => {
                    tracing::info!(%service, port, "serving healthCheckNodePort");
                    self.servers.insert(port, server);
                }
                Err(e) => {
                    tracing::error!(%service, port, error = %e, "cannot serve healthCheckNodePort")
                }
            }
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.stop();
        }
    }
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("node", &self.node)
            .field("ports", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_kube_proxys() {
        let h = Health {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let (status, body) = response(&h, true);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let none = Health {
            local_endpoints: 0,
            ..h
        };
        assert_eq!(response(&none, true).0, 503);
        assert_eq!(response(&none, true).1.lines().count(), 8);
    }
}
