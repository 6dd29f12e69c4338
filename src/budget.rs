//! The descriptor budget: how much of the open-file limit the data plane may hold.
//!
//! A relayed TCP connection holds two descriptors, a UDP flow one. The data plane may use the
//! limit less what the rest of the process holds (listeners, rings, the control plane's own
//! sockets) less a reserve, so that the admin API and the health ports still accept when the
//! data plane is full (see `proxy_core::FdBudget`, which enforces it). The cap is computed at
//! start and again after every change of the table (listeners come and go), and the operator
//! is warned, with numbers, when the configuration asks for more than it allows.

use std::sync::Arc;

use config::{Config, Protocol};
use proxy_core::FdBudget;

/// Descriptors kept back from the data plane for the control plane: admin and health-port
/// connections (each port caps its own), the Kubernetes and DNS clients, `nft` and its pipes,
/// log files. At most a quarter of the limit, so a small limit still leaves a data plane.
const CONTROL_RESERVE: usize = 256;

/// One computation of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// The soft open-file limit.
    limit: usize,
    /// Descriptors held by everything but connections and flows.
    others: usize,
    /// Kept back for the control plane.
    reserve: usize,
    /// What connections and flows may hold.
    cap: usize,
}

impl Plan {
    fn new(limit: u64, open: usize, data_plane: usize) -> Plan {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let others = open.saturating_sub(data_plane);
        let reserve = CONTROL_RESERVE.min(limit / 4);
        Plan {
            limit,
            others,
            reserve,
            cap: limit.saturating_sub(others.saturating_add(reserve)),
        }
    }

    /// Why `config` may need more than the cap, with numbers; `None` when it fits (or asks
    /// for no bound it can be held to).
    fn shortfall(&self, config: &Config) -> Option<String> {
        let flows: u64 = config
            .services
            .iter()
            .filter(|s| s.protocol == Protocol::Udp)
            .map(|s| u64::from(s.max_flows))
            .sum();
        // TCP connections are bounded only where every backend of a service has
        // `max_connections`.
        let connections: u64 = config
            .services
            .iter()
            .filter(|s| s.protocol == Protocol::Tcp)
            .filter_map(|s| {
                s.backends
                    .iter()
                    .map(|b| b.max_connections.map(u64::from))
                    .sum::<Option<u64>>()
            })
            .sum();
        let wanted = flows + 2 * connections;
        if wanted <= self.cap as u64 {
            return None;
        }
        let mut asked = Vec::new();
        if flows > 0 {
            asked.push(format!("{flows} UDP flows (max_flows, 1 descriptor each)"));
        }
        if connections > 0 {
            asked.push(format!(
                "{connections} TCP connections (backends' max_connections, 2 descriptors each)"
            ));
        }
        Some(format!(
            "the config allows {} = {wanted} descriptors, but the data plane has {} (open-file \
             limit {}, {} held by listeners and the rest of the process, {} kept for the admin \
             and health ports): past that, new connections are reset and new UDP flows refused; \
             raise the limit (ulimit -n, LimitNOFILE) or lower max_flows / max_connections",
            asked.join(" + "),
            self.cap,
            self.limit,
            self.others,
            self.reserve
        ))
    }
}

/// Keeps the data plane's cap in step with the process.
#[derive(Debug)]
pub struct DescriptorBudget {
    budget: Arc<FdBudget>,
    last: Option<Plan>,
    /// The table version the cap was computed for.
    version: Option<u64>,
    warned: Option<String>,
}

impl DescriptorBudget {
    /// Manages `budget`, the one the data plane was started with.
    pub fn new(budget: Arc<FdBudget>) -> DescriptorBudget {
        DescriptorBudget {
            budget,
            last: None,
            version: None,
            warned: None,
        }
    }

    /// Sets the cap from what the process holds now, logs it the first time, and warns when
    /// `config` (what is served) may need more than it (once per distinct shortfall). Only
    /// once per table `version`: listeners change only with the table, and counting again
    /// at other times would count the control plane's passing connections (which the reserve
    /// is for) against the data plane.
    pub fn refresh(&mut self, config: &Config, version: u64) {
        if self.version.replace(version) == Some(version) {
            return;
        }
        let (limit, open) = match (proxy_core::nofile_limit(), proxy_core::open_descriptors()) {
            (Ok(limit), Ok(open)) => (limit, open),
            (Err(e), _) | (_, Err(e)) => {
                if self.last.is_none() && self.warned.is_none() {
                    tracing::warn!(error = %e, "cannot read the open-file limit or the open descriptors: the data plane's descriptors are not capped");
                    self.warned = Some(e.to_string());
                }
                return;
            }
        };
        let plan = Plan::new(limit, open, self.budget.used());
        self.budget.set_cap(plan.cap);
        if self.last.is_none() {
            tracing::info!(
                limit = plan.limit,
                held = plan.others,
                reserve = plan.reserve,
                data_plane = plan.cap,
                "descriptor budget: {} for the data plane ({} TCP connections or {} UDP flows)",
                plan.cap,
                plan.cap / 2,
                plan.cap
            );
        }
        self.last = Some(plan);
        let shortfall = plan.shortfall(config);
        if shortfall.is_some() && shortfall != self.warned {
            tracing::warn!("{}", shortfall.as_deref().unwrap_or_default());
        }
        self.warned = shortfall;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancers::SchedulerConfig;
    use config::{Backend, Service};

    fn service(protocol: Protocol, max_flows: u32, max_connections: &[Option<u32>]) -> Service {
        let backends = max_connections
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let mut b = Backend::new(format!("127.0.0.1:{}", 1000 + i).parse().unwrap(), 1);
                b.max_connections = m;
                b
            })
            .collect();
        let mut s = Service::with_defaults(
            "s",
            protocol,
            vec!["127.0.0.1:80".parse().unwrap()],
            backends,
            SchedulerConfig::default(),
        );
        s.max_flows = max_flows;
        s
    }

    #[test]
    fn the_data_plane_gets_the_limit_less_what_is_held_less_the_reserve() {
        let plan = Plan::new(20_000, 100, 40);
        assert_eq!((plan.others, plan.reserve), (60, 256));
        assert_eq!(plan.cap, 20_000 - 60 - 256);
        // A small limit keeps a quarter back, not more.
        let small = Plan::new(300, 30, 0);
        assert_eq!((small.reserve, small.cap), (75, 195));
        // More held than the limit: nothing for the data plane, no underflow.
        assert_eq!(Plan::new(100, 500, 0).cap, 0);
        // No limit at all (RLIM_INFINITY).
        assert!(Plan::new(u64::MAX, 100, 0).cap > 1 << 40);
    }

    #[test]
    fn a_config_that_asks_for_more_is_named_with_numbers() {
        let plan = Plan::new(20_000, 100, 0);
        let udp = Config {
            services: vec![service(Protocol::Udp, 65_536, &[None])],
        };
        let why = plan.shortfall(&udp).expect("65,536 flows do not fit");
        assert!(why.contains("65536 UDP flows"), "{why}");
        assert!(why.contains("the data plane has 19644"), "{why}");
        assert!(why.contains("open-file limit 20000"), "{why}");

        let fits = Config {
            services: vec![service(Protocol::Udp, 1_000, &[None])],
        };
        assert_eq!(plan.shortfall(&fits), None);

        // TCP counts only where every backend is bounded.
        let unbounded = Config {
            services: vec![service(Protocol::Tcp, 0, &[Some(50_000), None])],
        };
        assert_eq!(plan.shortfall(&unbounded), None);
        let bounded = Config {
            services: vec![service(Protocol::Tcp, 0, &[Some(5_000), Some(5_000)])],
        };
        let why = plan
            .shortfall(&bounded)
            .expect("20,000 descriptors do not fit");
        assert!(why.contains("10000 TCP connections"), "{why}");
    }
}
