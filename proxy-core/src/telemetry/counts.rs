//! The counters of a service: connections, bytes, UDP flows and datagrams. Every worker keeps
//! its own ([`Counts`], one writer each) and the scraper sums them ([`CountsSnapshot`]), so no
//! event on the data plane costs a shared atomic.

use super::histogram::Counter;

/// One counter of a service, as `/metrics`, `/stats` and the exit totals show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// Client connections accepted.
    Accepted,
    /// Client connections open now: a gauge, raised at accept and lowered at close by the
    /// worker that serves the connection.
    Active,
    /// Connect attempts to backends (first tries and retries).
    ConnectAttempts,
    /// Connect attempts after a failed one (retries).
    ConnectRetries,
    /// Client connections reset because every attempt failed.
    ConnectFailed,
    /// Client connections reset, or UDP datagrams dropped, because no backend was eligible.
    NoBackend,
    /// Client connections reset at accept because the data plane's share of the open-file
    /// limit was used up.
    NoDescriptors,
    /// Connections and UDP flows closed by the idle timeout.
    IdleTimeouts,
    /// Bytes relayed client to backend.
    BytesToBackend,
    /// Bytes relayed backend to client.
    BytesToClient,
    /// UDP flows opened.
    FlowsOpened,
    /// UDP datagrams dropped because they would have opened a flow past `max_flows`.
    FlowsRefused,
    /// UDP datagrams dropped because they would have opened a flow and no descriptor was left
    /// for its upstream socket (the data plane's share of the open-file limit, or the limit).
    FlowsNoDescriptors,
    /// UDP flows ended because their backend stopped being usable (removed, weight 0) or
    /// refused them (ICMP port unreachable).
    FlowsRebalanced,
    /// UDP datagrams relayed client to backend.
    DatagramsToBackend,
    /// UDP datagrams relayed backend to client.
    DatagramsToClient,
    /// UDP datagrams dropped: no eligible backend, a full socket buffer, or a send error.
    DatagramsDropped,
    /// Client connections reset for want of a valid PROXY protocol header.
    ProxyHeader,
    /// Client connections reset because they came from outside `accept_proxy_protocol`.
    ProxyUntrusted,
}

impl Count {
    /// Every counter, in index order.
    pub const ALL: [Count; 19] = [
        Count::Accepted,
        Count::Active,
        Count::ConnectAttempts,
        Count::ConnectRetries,
        Count::ConnectFailed,
        Count::NoBackend,
        Count::NoDescriptors,
        Count::IdleTimeouts,
        Count::BytesToBackend,
        Count::BytesToClient,
        Count::FlowsOpened,
        Count::FlowsRefused,
        Count::FlowsNoDescriptors,
        Count::FlowsRebalanced,
        Count::DatagramsToBackend,
        Count::DatagramsToClient,
        Count::DatagramsDropped,
        Count::ProxyHeader,
        Count::ProxyUntrusted,
    ];
}

/// One worker's counters of one service. Only that worker writes them.
#[derive(Debug, Default)]
pub(crate) struct Counts([Counter; Count::ALL.len()]);

impl Counts {
    /// Adds `n` to `count`.
    #[inline]
    pub(crate) fn add(&self, count: Count, n: u64) {
        self.0[count as usize].add(n);
    }

    /// Takes `n` from the gauge `count`. A worker only lowers what it raised, so its own value
    /// never goes below zero, and neither does the sum.
    #[inline]
    pub(crate) fn sub(&self, count: Count, n: u64) {
        self.0[count as usize].sub(n);
    }
}

/// Counters summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsSnapshot([u64; Count::ALL.len()]);

impl CountsSnapshot {
    /// All zero.
    pub(crate) const EMPTY: CountsSnapshot = CountsSnapshot([0; Count::ALL.len()]);

    /// Adds one worker's counters.
    pub(crate) fn add(&mut self, counts: &Counts) {
        for (total, c) in self.0.iter_mut().zip(&counts.0) {
            // Modulo 2^64 as the counters themselves count: a scrape never panics.
            *total = total.wrapping_add(c.get());
        }
    }

    /// The value of `count`.
    pub fn get(&self, count: Count) -> u64 {
        self.0[count as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_has_its_own_index() {
        for (i, c) in Count::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn workers_add_up_and_a_gauge_goes_down() {
        let (a, b) = (Counts::default(), Counts::default());
        a.add(Count::Accepted, 2);
        b.add(Count::Accepted, 3);
        a.add(Count::Active, 2);
        a.sub(Count::Active, 1);
        b.add(Count::Active, 1);
        b.add(Count::BytesToClient, 1 << 40);
        let mut total = CountsSnapshot::default();
        total.add(&a);
        total.add(&b);
        assert_eq!(total.get(Count::Accepted), 5);
        assert_eq!(total.get(Count::Active), 2);
        assert_eq!(total.get(Count::BytesToClient), 1 << 40);
        assert_eq!(total.get(Count::DatagramsDropped), 0);
    }
}
