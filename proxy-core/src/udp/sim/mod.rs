//! A seeded, deterministic simulation of the UDP core on a virtual clock: the flow manager over
//! real tables (UDP services with `max_flows`, weights, removed backends, session affinity),
//! a real descriptor budget and real handed-over pins, driven by random datagrams, replies,
//! refusals, clock jumps, sweeps, reloads, budget changes and frontend stops. After every step
//! a model written straight from the rules of `LIFECYCLE.md` is checked against the manager,
//! and every node-wide count the flows hold (the service's flow gauge, the descriptor budget,
//! the backends' counts) against the model's flows.

mod world;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancers::SchedulerConfig;
use config::{Backend, Config, FrontendKey, Protocol, Service, Table};
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::flows::{End, FlowId, FlowKey};
use super::handover::{HandedOver, UdpFlowInfo};
use super::manager::{Admitted, Ended, FlowManager, Refusal, Route};
use crate::fds::FdBudget;
use crate::telemetry::AffinityOutcome;
use world::{
    backend, client, frontend, frontend_of, Model, Pin, Seen, SimFlow, BACKENDS, CLIENTS, SERVICES,
};

struct Sim {
    rng: TestRng,
    start: Instant,
    now: Duration,
    manager: FlowManager<SimFlow>,
    table: Table,
    fds: Arc<FdBudget>,
    handed_over: Arc<HandedOver>,
    pins: HashMap<(FrontendKey, SocketAddr), Pin>,
    model: HashMap<FlowKey, Model>,
    /// Handles of ended flows: they must never reach a flow again.
    dead: Vec<FlowId>,
    seen: Seen,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let handed_over = HandedOver::new();
        let fds = Arc::new(FdBudget::new(20));
        let mut sim = Self {
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            start: Instant::now(),
            now: Duration::ZERO,
            manager: FlowManager::new(seed, Arc::clone(&handed_over), Arc::clone(&fds)),
            table: Table::default(),
            fds,
            handed_over,
            pins: HashMap::new(),
            model: HashMap::new(),
            dead: Vec::new(),
            seen: Seen::default(),
        };
        let config = sim.config();
        sim.table = Table::build(&config, None);
        sim.hand_over();
        sim
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn at(&self) -> Instant {
        self.start + self.now
    }

    /// A random configuration: each service on its own frontend, some of the backend pool
    /// with random weights (0 included), a small `max_flows`; the second with session
    /// affinity. Now and then a service is left out (removed by the reload).
    fn config(&mut self) -> Config {
        let mut services = Vec::new();
        for s in 0..SERVICES {
            if self.below(8) == 0 {
                continue;
            }
            let mut backends = Vec::new();
            for b in 0..BACKENDS {
                if self.below(5) != 0 {
                    backends.push(Backend::new(backend(b), self.below(3) as u32));
                }
            }
            let mut svc = Service::with_defaults(
                format!("s{s}"),
                Protocol::Udp,
                vec![frontend(s).addr],
                backends,
                SchedulerConfig::default(),
            );
            svc.max_flows = 1 + self.below(12) as u32;
            svc.idle_timeout = Duration::from_millis(100 * (1 + self.below(30)));
            if s == 1 {
                svc.session_affinity = Some(Duration::from_secs(10));
            }
            services.push(svc);
        }
        Config { services }
    }

    /// The previous process hands its flows over: pins for random clients, each until its
    /// flow would have gone idle.
    fn hand_over(&mut self) {
        let mut flows = Vec::new();
        for _ in 0..self.below(CLIENTS) {
            let s = self.below(SERVICES as u64) as usize;
            let c = client(self.below(CLIENTS));
            flows.push(UdpFlowInfo {
                service: format!("s{s}"),
                frontend: frontend(s).addr,
                client: c,
                local: frontend(s).addr,
                backend: backend(self.below(BACKENDS as u64) as usize),
                idle_for: Duration::from_millis(self.below(1_000)),
                idle_timeout: Duration::from_millis(500 + self.below(5_000)),
            });
        }
        let now = self.now;
        self.handed_over.add(&flows, self.at());
        self.pins.retain(|_, pin| pin.until > now);
        for f in flows {
            let until = now + f.idle_timeout.saturating_sub(f.idle_for);
            let pin = Pin {
                backend: f.backend,
                until,
            };
            self.pins.insert((frontend_of(f.frontend), f.client), pin);
        }
    }

    fn end(&mut self, ended: Ended<SimFlow>, why: End) {
        let (flow, end) = ended;
        assert_eq!(end, why);
        let m = self
            .model
            .remove(&flow.key)
            .expect("an ended flow was live");
        assert_eq!(flow.backend, m.backend);
        self.dead.push(m.id);
    }

    /// The backends of `frontend`'s service that may take a new flow now (`None`: the
    /// frontend is not in the table).
    fn usable(&self, frontend: &FrontendKey) -> Option<Vec<SocketAddr>> {
        let entry = self.table.lookup(frontend)?;
        Some(
            entry
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| b.address)
                .collect(),
        )
    }

    /// A client datagram: rides its live flow, or (its flow expired, or it has none) asks
    /// for a new one, which the manager admits by the rules or refuses for the right reason.
    fn datagram(&mut self) {
        let s = self.below(SERVICES as u64) as usize;
        let fk = frontend(s);
        let key = FlowKey {
            client: client(self.below(CLIENTS)),
            local: fk.addr,
        };
        let expected = self.model.get(&key).copied();
        match self.manager.datagram(&key, self.at()) {
            Route::Relay(id) => {
                let m = expected.expect("a live flow is in the model");
                assert_eq!(id, m.id);
                assert!(m.last + m.idle > self.now, "live within its idle timeout");
                let flow = self.manager.get(id).expect("a live flow's handle works");
                assert_eq!(flow.backend, m.backend, "a flow keeps its backend");
                self.model.get_mut(&key).unwrap().last = self.now;
                return;
            }
            Route::Open(Some(ended)) => {
                let m = expected.expect("an expired flow was in the model");
                assert!(m.last + m.idle <= self.now, "only an idle flow expires");
                self.seen.expired_on_datagram += 1;
                self.end(ended, End::Idle);
            }
            Route::Open(None) => assert!(expected.is_none(), "every model flow is live"),
        }
        self.open(fk, key);
    }

    /// What the manager must decide for a new flow of `key`, checked, then filed (or, now and
    /// then, its socket fails).
    fn open(&mut self, fk: FrontendKey, key: FlowKey) {
        let Some(usable) = self.usable(&fk) else {
            return; // the shell drops it before asking: the frontend left the table
        };
        let entry = Arc::clone(self.table.lookup(&fk).expect("usable() found it"));
        let flows = self.model.values().filter(|m| m.frontend == fk).count() as u64;
        assert_eq!(
            entry.state.flows(),
            flows,
            "the gauge counts the service's flows"
        );
        let pin = self
            .pins
            .get(&(fk, key.client))
            .filter(|p| p.until > self.now)
            .copied();
        let pinned = pin.filter(|p| usable.contains(&p.backend));
        let expected = if flows >= u64::from(entry.service.max_flows) {
            Err(Refusal::MaxFlows)
        } else if usable.is_empty() {
            Err(Refusal::NoBackend)
        } else if self.fds.used() + 1 > self.fds.cap() {
            Err(Refusal::Descriptors)
        } else {
            Ok(())
        };
        let admission = self.manager.admit(&entry, fk.addr, &key, self.at());
        let admitted = match (admission.verdict, expected) {
            (Err(got), Err(want)) => return self.refused(got, want, admission.affinity),
            (Ok(admitted), Ok(())) => admitted,
            (got, want) => panic!("admission {:?}, expected {want:?}", got.map(|a| a.address)),
        };
        if entry.affinity.is_none() || pinned.is_some() {
            assert_eq!(admission.affinity, AffinityOutcome::Off);
        }
        match (pin, pinned) {
            (_, Some(p)) => {
                assert_eq!(
                    admitted.address, p.backend,
                    "a pin keeps its usable backend"
                );
                self.seen.pinned += 1;
            }
            (Some(_), None) => self.seen.pin_fell_back += 1,
            (None, None) => {}
        }
        assert!(usable.contains(&admitted.address), "only a usable backend");
        self.file(fk, key, entry.service.idle_timeout, admitted);
    }

    fn refused(&mut self, got: Refusal, want: Refusal, affinity: AffinityOutcome) {
        assert_eq!(got, want);
        match got {
            Refusal::MaxFlows => {
                assert_eq!(affinity, AffinityOutcome::Off, "no placement was asked");
                self.seen.max_flows += 1;
            }
            Refusal::NoBackend => self.seen.no_backend += 1,
            Refusal::Descriptors => self.seen.descriptors += 1,
            Refusal::Socket => unreachable!("the manager opens no socket"),
        }
    }

    /// The shell opens the admitted flow's socket and files the flow; one in sixteen sockets
    /// fails instead (out of descriptors, or another error), and the flow holds nothing.
    fn file(&mut self, fk: FrontendKey, key: FlowKey, idle: Duration, admitted: Admitted) {
        if self.below(16) == 0 {
            let errno = if self.below(2) == 0 {
                libc::EMFILE
            } else {
                libc::EACCES
            };
            let why = Refusal::of_socket_error(&std::io::Error::from_raw_os_error(errno));
            let want = if errno == libc::EMFILE {
                Refusal::Descriptors
            } else {
                Refusal::Socket
            };
            assert_eq!(why, want);
            self.seen.socket += 1;
            return; // `admitted` drops: the step's checks see everything given back
        }
        let Admitted {
            address,
            place,
            fds,
            load,
        } = admitted;
        let payload = SimFlow {
            frontend: fk,
            _place: place,
            _fds: fds,
            _load: load,
        };
        let id = self.manager.insert(key, address, idle, payload, self.at());
        let m = Model {
            frontend: fk,
            backend: address,
            last: self.now,
            idle,
            id,
        };
        self.model.insert(key, m);
        self.seen.opened += 1;
    }

    /// A backend reply on a random live flow (or on a dead handle, which must miss).
    fn reply(&mut self) {
        let at = self.at();
        if !self.dead.is_empty() && self.below(4) == 0 {
            let i = self.below(self.dead.len() as u64) as usize;
            let id = self.dead[i];
            assert!(
                self.manager.reply(id, at).is_none(),
                "an ended flow's handle is dead"
            );
            return;
        }
        let Some(key) = self.some_flow() else { return };
        let m = self.model[&key];
        if m.last + m.idle <= self.now {
            return; // the shell's reply task would race the sweeper; nothing to check
        }
        let flow = self
            .manager
            .reply(m.id, at)
            .expect("a live flow's handle works");
        assert_eq!(flow.key, key);
        self.model.get_mut(&key).unwrap().last = self.now;
    }

    /// A random live flow of the model.
    fn some_flow(&mut self) -> Option<FlowKey> {
        let mut keys: Vec<FlowKey> = self.model.keys().copied().collect();
        keys.sort_by_key(|k| (k.client, k.local));
        let i = self.below(keys.len().max(1) as u64) as usize;
        keys.get(i).copied()
    }

    /// A flow's backend refuses (ICMP unreachable): it ends, once.
    fn refuse(&mut self) {
        let Some(key) = self.some_flow() else { return };
        let id = self.model[&key].id;
        let ended = self
            .manager
            .refused(id)
            .expect("a live flow can be refused");
        self.end(ended, End::Refused);
        assert!(
            self.manager.refused(id).is_none(),
            "ending twice is a no-op"
        );
        self.seen.refused += 1;
    }

    fn sweep(&mut self) {
        let mut ended = Vec::new();
        self.manager.expire(self.at(), &mut ended);
        for e in ended {
            let m = self.model[&e.0.key];
            assert!(
                m.last + m.idle <= self.now,
                "expired no earlier than its timeout"
            );
            self.seen.swept += 1;
            self.end(e, End::Idle);
        }
        for (k, m) in &self.model {
            assert!(
                m.last + m.idle > self.now,
                "{k:?} outlived its idle timeout"
            );
        }
        if let Some(next) = self.manager.next_check() {
            assert!(next > self.at(), "nothing is left due after a sweep");
            let earliest = self.model.values().map(|m| m.last + m.idle).min().unwrap();
            assert!(
                next <= self.start + earliest,
                "the sweeper wakes no later than the first flow can expire"
            );
        }
    }

    /// A reload: a new table built over the old one; flows whose backend is no longer usable
    /// for their frontend end, every other flow is untouched.
    fn reload(&mut self) {
        let config = self.config();
        self.table = Table::build(&config, Some(&self.table));
        let mut ended = Vec::new();
        self.manager.revalidate(&self.table, &mut ended);
        let unusable: Vec<FlowKey> = self
            .model
            .iter()
            .filter(|(_, m)| {
                !self
                    .usable(&m.frontend)
                    .unwrap_or_default()
                    .contains(&m.backend)
            })
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            ended.len(),
            unusable.len(),
            "exactly the unusable flows end"
        );
        for e in ended {
            assert!(unusable.contains(&e.0.key));
            self.end(e, End::Unusable);
            self.seen.unusable += 1;
        }
        self.seen.kept_across_reload += self.model.len() as u64;
    }

    /// A backend marked down has its sessions shut: its flows end (on every frontend of its
    /// service), the others stay.
    fn cut_backend(&mut self) {
        let fk = frontend(self.below(SERVICES as u64) as usize);
        let Some(entry) = self.table.lookup(&fk).cloned() else {
            return;
        };
        if entry.states.is_empty() {
            return;
        }
        let i = self.below(entry.states.len() as u64) as usize;
        let state = Arc::as_ptr(&entry.states[i]);
        let mut ended = Vec::new();
        self.manager.end_flows_to(&self.table, state, &mut ended);
        let of_it = |m: &&Model| {
            self.table.lookup(&m.frontend).is_some_and(|e| {
                e.states
                    .iter()
                    .zip(&e.backends)
                    .any(|(s, b)| std::ptr::eq(Arc::as_ptr(s), state) && b.address == m.backend)
            })
        };
        let n = self.model.values().filter(of_it).count();
        assert_eq!(ended.len(), n, "exactly the flows to the cut backend end");
        for e in ended {
            assert_eq!(self.model[&e.0.key].backend, entry.backends[i].address);
            self.end(e, End::Unusable);
            self.seen.cut += 1;
        }
    }

    /// A frontend stops on this worker: its flows end, the others stay.
    fn frontend_closed(&mut self) {
        let fk = frontend(self.below(SERVICES as u64) as usize);
        let mut ended = Vec::new();
        self.manager.frontend_closed(&fk, &mut ended);
        let n = self.model.values().filter(|m| m.frontend == fk).count();
        assert_eq!(ended.len(), n);
        for e in ended {
            self.end(e, End::FrontendClosed);
            self.seen.frontend_closed += 1;
        }
    }

    fn step(&mut self) {
        match self.below(200) {
            0..=99 => self.datagram(),
            100..=139 => self.reply(),
            140..=169 => {
                let ms = self.below(400);
                self.now += Duration::from_millis(ms);
            }
            170..=185 => self.sweep(),
            186..=191 => self.reload(),
            192..=194 => self.refuse(),
            195..=196 => {
                let cap = self.below(30) as usize;
                self.fds.set_cap(cap);
            }
            197 => self.hand_over(),
            198 => self.cut_backend(),
            _ => self.frontend_closed(),
        }
        self.check();
    }

    /// The manager and the model agree, and what the flows hold of node-wide state is exactly
    /// what the model's flows should hold.
    fn check(&self) {
        let table = self.manager.table();
        table.check();
        assert_eq!(table.len(), self.model.len(), "manager and model agree");
        for (k, m) in &self.model {
            let (id, flow) = table.peek(k).expect("model flow in the table");
            assert_eq!(id, m.id);
            assert_eq!(flow.backend, m.backend);
            assert_eq!(
                flow.due(),
                self.start + m.last + m.idle,
                "activity is recorded"
            );
        }
        assert_eq!(self.fds.used(), self.model.len(), "one descriptor per flow");
        for entry in self.table.services() {
            let fk = frontend_of(entry.service.listen[0]);
            let of = |b: Option<SocketAddr>| {
                self.model
                    .values()
                    .filter(|m| m.frontend == fk && b.is_none_or(|b| m.backend == b))
                    .count() as u64
            };
            assert_eq!(entry.state.flows(), of(None), "the gauge counts open flows");
            for (b, state) in entry.backends.iter().zip(&entry.states) {
                assert_eq!(u64::from(state.inactive()), of(Some(b.address)));
                assert_eq!(state.active(), 0, "UDP flows count as inactive");
            }
        }
    }
}

#[test]
fn udp_core_simulation_many_seeds() {
    let mut seen = [0u64; 14];
    for seed in 0..64 {
        let mut sim = Sim::new(seed);
        for _ in 0..2_000 {
            sim.step();
        }
        // Everything ends eventually: jump past every timeout and sweep.
        sim.now += Duration::from_secs(10);
        sim.sweep();
        assert_eq!(sim.model.len(), 0, "seed {seed}: idle flows all expire");
        sim.check();
        for (total, (_, n)) in seen.iter_mut().zip(sim.seen.counts()) {
            *total += n;
        }
    }
    // Every rule was reached many times over the seeds.
    for ((rule, _), n) in Seen::default().counts().iter().zip(seen) {
        assert!(n >= 100, "{rule} reached {n} times only");
    }
}

#[test]
fn clear_ends_every_flow_and_gives_everything_back() {
    let mut sim = Sim::new(7);
    sim.fds.set_cap(usize::MAX);
    for _ in 0..500 {
        sim.datagram();
    }
    assert!(!sim.model.is_empty());
    let mut ended = Vec::new();
    sim.manager.clear(&mut ended);
    assert_eq!(ended.len(), sim.model.len());
    for e in ended {
        sim.end(e, End::Stopped);
    }
    sim.check();
    assert_eq!(sim.fds.used(), 0);
}
