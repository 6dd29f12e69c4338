//! UDP flows across a restart. A process serving UDP keeps its flows in memory, so a plain
//! zero-downtime restart (a new process joins the `SO_REUSEPORT` group, the old one drains)
//! would re-balance every client: fine for DNS, a broken session for QUIC, games or VoIP. So
//! the new process first reads the old one's flows ([`UdpFlowInfo`], listed through
//! [`crate::FlowList`]) and keeps each of those clients on its backend ([`HandedOver`]) when
//! its next datagram arrives, whichever worker the kernel hands it to. The flow gets a new
//! upstream socket (a new source port towards the backend); its backend stays.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// One live UDP flow, as a worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFlowInfo {
    /// The service's name.
    pub service: String,
    /// The frontend the flow arrived on (its configured address).
    pub frontend: SocketAddr,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The local address the client sent to (differs from `frontend` on a wildcard frontend).
    pub local: SocketAddr,
    /// The backend the flow is pinned to.
    pub backend: SocketAddr,
    /// Time since the flow's last datagram in either direction.
    pub idle_for: Duration,
    /// The flow ends after this long without a datagram.
    pub idle_timeout: Duration,
}

/// What identifies a flow across processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PinKey {
    frontend: SocketAddr,
    client: SocketAddr,
    local: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
struct Pin {
    backend: SocketAddr,
    /// When the flow would have expired in the old process, had no datagram come.
    until: Instant,
}

/// Flows handed over by the process this one replaces: client → backend, each until the flow
/// would have gone idle. Written by the control plane, read lock-free by workers when a
/// datagram opens a flow.
#[derive(Debug, Default)]
pub struct HandedOver {
    pins: ArcSwap<HashMap<PinKey, Pin>>,
}

impl HandedOver {
    /// No flows handed over.
    pub fn new() -> Arc<HandedOver> {
        Arc::new(HandedOver::default())
    }

    /// Adds (or refreshes) `flows`, as listed at `listed`. Pins past their time are dropped.
    pub fn add(&self, flows: &[UdpFlowInfo], listed: Instant) {
        let mut pins: HashMap<PinKey, Pin> = (**self.pins.load()).clone();
        pins.retain(|_, pin| pin.until > listed);
        for f in flows {
            let key = PinKey {
                frontend: f.frontend,
                client: f.client,
                local: f.local,
            };
            // The list comes from another process (JSON over HTTP): held to the limit of a
            // configured timeout, so no `Instant + Duration` overflows.
            let left = f.idle_timeout.saturating_sub(f.idle_for);
            let until = listed + left.min(config::MAX_DURATION);
            pins.insert(
                key,
                Pin {
                    backend: f.backend,
                    until,
                },
            );
        }
        self.pins.store(Arc::new(pins));
    }

    /// Flows pinned now (expired ones included until the next [`HandedOver::add`]).
    pub fn len(&self) -> usize {
        self.pins.load().len()
    }

    /// Whether nothing was handed over.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend of the handed-over flow `(frontend, client, local)`, if it is still within
    /// its idle timeout at `now`.
    pub(crate) fn backend(
        &self,
        frontend: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        let pins = self.pins.load();
        if pins.is_empty() {
            return None;
        }
        pins.get(&PinKey {
            frontend,
            client,
            local,
        })
        .filter(|pin| pin.until > now)
        .map(|pin| pin.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: &str, backend: &str, idle_for: u64) -> UdpFlowInfo {
        UdpFlowInfo {
            service: "dns".into(),
            frontend: "127.0.0.1:53".parse().unwrap(),
            client: client.parse().unwrap(),
            local: "127.0.0.1:53".parse().unwrap(),
            backend: backend.parse().unwrap(),
            idle_for: Duration::from_secs(idle_for),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_pin_lasts_as_long_as_the_flow_would_have() {
        let handed = HandedOver::new();
        let t0 = Instant::now();
        handed.add(
            &[
                info("10.0.0.1:4000", "10.1.0.1:53", 0),
                info("10.0.0.2:4000", "10.1.0.2:53", 50),
            ],
            t0,
        );
        let frontend: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let at = |client: &str, secs: u64| {
            handed.backend(
                frontend,
                client.parse().unwrap(),
                frontend,
                t0 + Duration::from_secs(secs),
            )
        };
        assert_eq!(
            at("10.0.0.1:4000", 59),
            Some("10.1.0.1:53".parse().unwrap())
        );
        assert_eq!(at("10.0.0.1:4000", 60), None);
        assert_eq!(at("10.0.0.2:4000", 9), Some("10.1.0.2:53".parse().unwrap()));
        assert_eq!(
            at("10.0.0.2:4000", 10),
            None,
            "it was idle for 50 s already"
        );
        assert_eq!(at("10.0.0.3:4000", 0), None, "not handed over");
        // Another port of the same client is another flow.
        assert_eq!(at("10.0.0.1:4001", 0), None);
    }

    #[test]
    fn listing_again_refreshes_and_drops_the_expired() {
        let handed = HandedOver::new();
        let t0 = Instant::now();
        handed.add(&[info("10.0.0.1:4000", "10.1.0.1:53", 0)], t0);
        handed.add(
            &[info("10.0.0.2:4000", "10.1.0.2:53", 0)],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(
            handed.len(),
            2,
            "a flow missing from a later list keeps its pin"
        );
        handed.add(&[], t0 + Duration::from_secs(61));
        assert_eq!(handed.len(), 1, "the first pin ran out");
    }

    #[test]
    fn an_endless_idle_timeout_in_the_list_is_held_to_the_longest_timer() {
        let handed = HandedOver::new();
        let t0 = Instant::now();
        let endless = UdpFlowInfo {
            idle_timeout: Duration::MAX,
            ..info("10.0.0.1:4000", "10.1.0.1:53", 0)
        };
        handed.add(&[endless], t0);
        let frontend: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let client = "10.0.0.1:4000".parse().unwrap();
        let at = |t| handed.backend(frontend, client, frontend, t);
        let last = t0 + config::MAX_DURATION - Duration::from_secs(1);
        assert_eq!(at(last), Some("10.1.0.1:53".parse().unwrap()));
        assert_eq!(at(t0 + config::MAX_DURATION), None);
    }
}
