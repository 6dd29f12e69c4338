//! The UDP core of one worker: every decision about its flows, as code that performs no I/O.
//!
//! [`FlowManager`] takes the events of the flows' life (a client datagram at a time, a reply,
//! a timer tick, a table swap, a backend's refusal, a frontend or the worker stopping) and
//! says what to do: relay on a flow, open a flow to a backend ([`Admitted`]), drop the
//! datagram and count why ([`Refusal`]), end flows and why ([`End`]). Time comes in as an
//! argument. The node-wide facts a new flow depends on are asked in the order the rules put
//! them: the service's flow bound, a flow handed over by the previous process, the scheduler,
//! the descriptor budget. What a flow holds of them (its place under `max_flows`, its
//! descriptor, its backend's load) comes back as guards the flow keeps and gives back when it
//! ends, so a refused flow holds nothing.
//!
//! The shell (`mod.rs`, `clients.rs`, `replies.rs`) only performs the system calls and counts
//! what it is told; the seeded simulation in `sim.rs` drives this module step by step on a
//! virtual clock. It never touches a socket, reads the clock or allocates per datagram.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use balancers::{ConnectionGuard, Flow as Pick};
use config::{FrontendKey, ServiceEntry, Table};

use super::flows::{End, Flow, FlowId, FlowKey, FlowTable, Lookup};
use super::handover::HandedOver;
use crate::connect::{choose_traced, Choice};
use crate::fds::{is_exhaustion, FdBudget, Fds};
use crate::telemetry::{AffinityOutcome, CloseReason, Count};

/// A flow that ended, and why.
pub(crate) type Ended<T> = (Flow<T>, End);

/// What the manager needs to know of a flow's payload: the frontend it arrived on (a table
/// swap re-checks its backend against that frontend's service).
pub(crate) trait Payload {
    /// The frontend the flow arrived on.
    fn frontend(&self) -> &FrontendKey;
}

/// Where a client datagram goes.
pub(crate) enum Route<T> {
    /// On this live flow (now marked active).
    Relay(FlowId),
    /// The client has no live flow: the datagram asks for a new one ([`FlowManager::admit`]).
    /// The key's previous flow, if it just ran out its idle timeout, has ended.
    Open(Option<Ended<T>>),
}

/// A new flow's admission: what placement did (counted whether or not the flow opens) and the
/// verdict.
pub(crate) struct Admission {
    /// Whether session affinity answered, or the scheduler had to pick.
    pub(crate) affinity: AffinityOutcome,
    /// The flow to open, or why the datagram is dropped.
    pub(crate) verdict: Result<Admitted, Refusal>,
}

/// A flow to open: its backend and what it holds against node-wide state, given back when
/// this value (or the flow's payload that keeps its parts) is dropped.
pub(crate) struct Admitted {
    /// The backend's address.
    pub(crate) address: SocketAddr,
    /// Its place under the service's `max_flows`.
    pub(crate) place: FlowPlace,
    /// The descriptor of its upstream socket, in the data plane's budget.
    pub(crate) fds: Fds,
    /// Counts the flow as inactive on its backend (IPVS counts UDP as inactive).
    pub(crate) load: ConnectionGuard,
}

/// Why a datagram opened no flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The service has `max_flows` flows open, node-wide.
    MaxFlows,
    /// No backend is eligible (nothing is remembered: the next datagram asks again).
    NoBackend,
    /// No descriptor is left for the upstream socket: the data plane's budget, or the
    /// process's or the system's limit.
    Descriptors,
    /// The upstream socket could not be opened for another reason.
    Socket,
}

impl Refusal {
    /// What the refusal of a socket that failed with `e` is.
    pub(crate) fn of_socket_error(e: &io::Error) -> Refusal {
        if is_exhaustion(e) {
            Refusal::Descriptors
        } else {
            Refusal::Socket
        }
    }

    /// What the dropped datagram counts as in its service's counts.
    pub(crate) fn counts(self) -> &'static [Count] {
        match self {
            Refusal::MaxFlows => &[Count::FlowsRefused],
            Refusal::NoBackend => &[Count::NoBackend, Count::DatagramsDropped],
            Refusal::Descriptors => &[Count::FlowsNoDescriptors],
            Refusal::Socket => &[Count::DatagramsDropped],
        }
    }
}

impl End {
    /// How the decision log names the end.
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            End::Idle => CloseReason::IdleTimeout,
            End::Unusable | End::Refused => CloseReason::Rebalanced,
            End::FrontendClosed | End::Stopped => CloseReason::Stopped,
        }
    }

    /// What the end counts as in its service's counts, if anything.
    pub(crate) fn count(self) -> Option<Count> {
        match self {
            End::Idle => Some(Count::IdleTimeouts),
            End::Unusable | End::Refused => Some(Count::FlowsRebalanced),
            End::FrontendClosed | End::Stopped => None,
        }
    }
}

/// A place in a service's node-wide flow count (the gauge `max_flows` bounds), given back on
/// drop. It holds the service's entry, which the flow keeps for its life.
#[derive(Debug)]
pub(crate) struct FlowPlace(Arc<ServiceEntry>);

impl FlowPlace {
    /// The service the place is in.
    pub(crate) fn entry(&self) -> &Arc<ServiceEntry> {
        &self.0
    }
}

impl Drop for FlowPlace {
    fn drop(&mut self) {
        self.0.state.release_flow();
    }
}

/// One worker's flows and every decision about them.
pub(crate) struct FlowManager<T> {
    table: FlowTable<T>,
    /// Flows of the process this one replaced: their clients keep their backends.
    handed_over: Arc<HandedOver>,
    /// The data plane's share of the open-file limit: one descriptor per flow.
    fds: Arc<FdBudget>,
}

impl<T: Payload> FlowManager<T> {
    /// No flows; the table hashes with `seed`.
    pub(crate) fn new(seed: u64, handed_over: Arc<HandedOver>, fds: Arc<FdBudget>) -> Self {
        FlowManager {
            table: FlowTable::new(seed),
            handed_over,
            fds,
        }
    }

    /// A client datagram of flow `key` arrives at `now`. The hot path: one hash lookup and a
    /// store of the time.
    #[inline]
    pub(crate) fn datagram(&mut self, key: &FlowKey, now: Instant) -> Route<T> {
        match self.table.lookup(key, now) {
            Lookup::Live(id) => Route::Relay(id),
            Lookup::Expired(flow) => Route::Open(Some((flow, End::Idle))),
            Lookup::Missing => Route::Open(None),
        }
    }

    /// Decides whether the datagram of `key` that reached `frontend` at `now` opens a flow of
    /// `entry`'s service, and to which backend. In this order: a place under the service's
    /// `max_flows` (node-wide); the backend a handed-over flow of this client had, while it is
    /// usable (in the service, weight > 0); else session affinity and the scheduler; a
    /// descriptor for the upstream socket.
    pub(crate) fn admit(
        &self,
        entry: &Arc<ServiceEntry>,
        frontend: SocketAddr,
        key: &FlowKey,
        now: Instant,
    ) -> Admission {
        let refused = |affinity, why| Admission {
            affinity,
            verdict: Err(why),
        };
        if !entry.state.take_flow(u64::from(entry.service.max_flows)) {
            return refused(AffinityOutcome::Off, Refusal::MaxFlows);
        }
        // From here a refusal gives the place back by dropping it.
        let place = FlowPlace(Arc::clone(entry));
        let choice = match self.pinned(entry, frontend, key, now) {
            Some(backend) => Choice {
                backend: Some(backend),
                affinity: AffinityOutcome::Off,
            },
            None => {
                let pick = Pick {
                    client: key.client,
                    dest: key.local,
                };
                choose_traced(entry, &pick, now)
            }
        };
        let Some(backend) = choice.backend else {
            return refused(choice.affinity, Refusal::NoBackend);
        };
        let Some(fds) = self.fds.take(1) else {
            return refused(choice.affinity, Refusal::Descriptors);
        };
        Admission {
            affinity: choice.affinity,
            verdict: Ok(Admitted {
                address: entry.backends[backend].address,
                place,
                fds,
                load: entry.states[backend].udp_flow(),
            }),
        }
    }

    /// The backend (index) a flow handed over by the previous process pins this client to,
    /// if the pin is still within its time and its backend is usable now.
    fn pinned(
        &self,
        entry: &ServiceEntry,
        frontend: SocketAddr,
        key: &FlowKey,
        now: Instant,
    ) -> Option<usize> {
        let backend = self
            .handed_over
            .backend(frontend, key.client, key.local, now)?;
        entry
            .backends
            .iter()
            .position(|b| b.address == backend && b.weight > 0)
    }

    /// Files the flow the shell opened for an [`Admitted`] of `key`: it ends after `idle`
    /// without a datagram either way.
    pub(crate) fn insert(
        &mut self,
        key: FlowKey,
        backend: SocketAddr,
        idle: std::time::Duration,
        payload: T,
        now: Instant,
    ) -> FlowId {
        self.table.insert(key, backend, idle, payload, now)
    }

    /// A reply on flow `id` at `now`: the flow, marked active, or `None` once it has ended.
    #[inline]
    pub(crate) fn reply(&mut self, id: FlowId, now: Instant) -> Option<&mut Flow<T>> {
        self.table.touch(id, now)
    }

    /// The flow `id`, if it has not ended.
    #[inline]
    pub(crate) fn get(&self, id: FlowId) -> Option<&Flow<T>> {
        self.table.get(id)
    }

    /// Flow `id`'s backend refused it (ICMP unreachable on a send or a receive): it ends, so
    /// the client's next datagram is balanced afresh. `None` when it had ended already.
    pub(crate) fn refused(&mut self, id: FlowId) -> Option<Ended<T>> {
        Some((self.table.remove(id)?, End::Refused))
    }

    /// The timer: ends every flow idle for its whole timeout at `now`, into `out`.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Ended<T>>) {
        self.table.expire(now, out);
    }

    /// When the timer must look again (a lower bound: a flow may have been active since).
    pub(crate) fn next_check(&self) -> Option<Instant> {
        self.table.next_check()
    }

    /// A table swap: ends, into `out`, every flow whose backend is no longer usable for its
    /// frontend (removed from the service, weight 0, or the frontend left the table), so the
    /// client's next datagram is balanced again. Every other flow keeps its backend.
    pub(crate) fn revalidate(&mut self, table: &Table, out: &mut Vec<Ended<T>>) {
        let mut usable: HashMap<FrontendKey, HashSet<SocketAddr>> = HashMap::new();
        let keep = |f: &Flow<T>| {
            let key = *f.payload.frontend();
            usable
                .entry(key)
                .or_insert_with(|| {
                    table.lookup(&key).map_or_else(HashSet::new, |e| {
                        e.backends
                            .iter()
                            .filter(|b| b.weight > 0)
                            .map(|b| b.address)
                            .collect()
                    })
                })
                .contains(&f.backend)
        };
        self.table.retain(keep, End::Unusable, out);
    }

    /// Ends the flows to the backend whose node-wide state is `backend`, into `out`.
    pub(crate) fn end_flows_to(
        &mut self,
        table: &Table,
        backend: *const balancers::BackendState,
        out: &mut Vec<Ended<T>>,
    ) {
        let mut cut: HashMap<FrontendKey, Option<SocketAddr>> = HashMap::new();
        let keep = |f: &Flow<T>| {
            let key = *f.payload.frontend();
            let address = cut.entry(key).or_insert_with(|| {
                let entry = table.lookup(&key)?;
                let i = entry
                    .states
                    .iter()
                    .position(|s| std::ptr::eq(Arc::as_ptr(s), backend))?;
                Some(entry.backends[i].address)
            });
            *address != Some(f.backend)
        };
        self.table.retain(keep, End::Unusable, out);
    }

    /// The frontend `key` stopped on this worker: its flows end (their replies would have no
    /// socket to leave from), into `out`.
    pub(crate) fn frontend_closed(&mut self, key: &FrontendKey, out: &mut Vec<Ended<T>>) {
        self.table
            .retain(|f| f.payload.frontend() != key, End::FrontendClosed, out);
    }

    /// The worker stops: every flow ends, into `out`.
    pub(crate) fn clear(&mut self, out: &mut Vec<Ended<T>>) {
        self.table.clear(out);
    }

    /// Every live flow (in no particular order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow<T>> {
        self.table.iter()
    }

    /// The flow table, for the simulation's checks.
    #[cfg(test)]
    pub(crate) fn table(&self) -> &FlowTable<T> {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_count_as_the_metrics_say() {
        // ringlb_udp_flows_rebalanced_total: a backend gone from the table or refusing.
        for end in [End::Unusable, End::Refused] {
            assert_eq!(end.count(), Some(Count::FlowsRebalanced));
            assert_eq!(end.close_reason(), CloseReason::Rebalanced);
        }
        assert_eq!(End::Idle.count(), Some(Count::IdleTimeouts));
        assert_eq!(End::Idle.close_reason(), CloseReason::IdleTimeout);
        // A frontend or worker that stops is no fault of the backend's: counted nowhere.
        for end in [End::FrontendClosed, End::Stopped] {
            assert_eq!(end.count(), None);
            assert_eq!(end.close_reason(), CloseReason::Stopped);
        }
    }

    #[test]
    fn refusals_count_as_the_metrics_say() {
        assert_eq!(Refusal::MaxFlows.counts(), [Count::FlowsRefused]);
        assert_eq!(
            Refusal::NoBackend.counts(),
            [Count::NoBackend, Count::DatagramsDropped]
        );
        assert_eq!(Refusal::Descriptors.counts(), [Count::FlowsNoDescriptors]);
        assert_eq!(Refusal::Socket.counts(), [Count::DatagramsDropped]);
        let socket = |errno| Refusal::of_socket_error(&io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(socket(errno), Refusal::Descriptors);
        }
        assert_eq!(socket(libc::EACCES), Refusal::Socket);
    }
}
