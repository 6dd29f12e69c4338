//! A seeded, deterministic simulation of the flow table on a virtual clock: random datagrams,
//! replies, clock jumps, sweeps, table swaps and removals, checked against a model written
//! straight from the rules of `LIFECYCLE.md` after every step.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::flows::{End, FlowId, FlowKey, FlowTable, Lookup};

/// What the model knows of a live flow.
#[derive(Clone, Copy, Debug)]
struct Model {
    backend: SocketAddr,
    last: Duration,
    idle: Duration,
    id: FlowId,
}

struct Sim {
    rng: TestRng,
    start: Instant,
    now: Duration,
    table: FlowTable<u64>,
    model: HashMap<FlowKey, Model>,
    /// Handles of ended flows: they must never reach a flow again.
    dead: Vec<FlowId>,
    usable: Vec<bool>,
    next_payload: u64,
}

const CLIENTS: u64 = 40;
const LOCALS: u64 = 3;
const BACKENDS: usize = 5;

fn backend(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 53)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            start: Instant::now(),
            now: Duration::ZERO,
            table: FlowTable::new(seed),
            model: HashMap::new(),
            dead: Vec::new(),
            usable: vec![true; BACKENDS],
            next_payload: 0,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn at(&self) -> Instant {
        self.start + self.now
    }

    fn key(&mut self) -> FlowKey {
        let c = self.below(CLIENTS);
        let l = self.below(LOCALS);
        FlowKey {
            client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, c as u8)), 40_000),
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, l as u8 + 1)), 53),
        }
    }

    fn end(&mut self, key: &FlowKey, id: FlowId) {
        self.model.remove(key);
        self.dead.push(id);
    }

    /// A client datagram: reaches its live flow, or ends an expired one and opens a new flow
    /// to a usable backend (the shell's pick, here the first usable after a random start).
    fn datagram(&mut self) {
        let key = self.key();
        let now = self.now;
        let at = self.at();
        let expected = self.model.get(&key).copied();
        match self.table.lookup(&key, at) {
            Lookup::Live(id) => {
                let m = expected.expect("a live flow is in the model");
                assert_eq!(id, m.id);
                let flow = self.table.get(id).expect("a live flow's handle works");
                assert_eq!(flow.backend, m.backend, "a flow keeps its backend");
                assert!(
                    m.last + m.idle > now,
                    "a live flow is within its idle timeout"
                );
                self.model.get_mut(&key).unwrap().last = now;
                return;
            }
            Lookup::Expired(flow) => {
                let m = expected.expect("an expired flow was in the model");
                assert!(m.last + m.idle <= now, "only an idle flow expires");
                assert_eq!(flow.key, key);
                self.end(&key, m.id);
            }
            Lookup::Missing => assert!(expected.is_none(), "every model flow is in the table"),
        }
        let start = self.below(BACKENDS as u64) as usize;
        let Some(b) = (0..BACKENDS)
            .map(|i| (start + i) % BACKENDS)
            .find(|&i| self.usable[i])
        else {
            return; // no usable backend: the datagram is dropped, no flow opens
        };
        let idle = Duration::from_millis(100 * (1 + self.below(30)));
        self.next_payload += 1;
        let id = self
            .table
            .insert(key, backend(b), idle, self.next_payload, at);
        self.model.insert(
            key,
            Model {
                backend: backend(b),
                last: now,
                idle,
                id,
            },
        );
    }

    /// A backend reply on a random live flow (or on a dead handle, which must miss).
    fn reply(&mut self) {
        let at = self.at();
        if !self.dead.is_empty() && self.below(4) == 0 {
            let i = self.below(self.dead.len() as u64) as usize;
            let id = self.dead[i];
            assert!(
                self.table.touch(id, at).is_none(),
                "an ended flow's handle is dead"
            );
            return;
        }
        let keys: Vec<FlowKey> = self.model.keys().copied().collect();
        if keys.is_empty() {
            return;
        }
        let i = self.below(keys.len() as u64) as usize;
        let key = keys[i];
        let m = self.model[&key];
        if m.last + m.idle <= self.now {
            return; // the shell's reply task would race the sweeper; nothing to check
        }
        let flow = self
            .table
            .touch(m.id, at)
            .expect("a live flow's handle works");
        assert_eq!(flow.key, key);
        self.model.get_mut(&key).unwrap().last = self.now;
    }

    fn sweep(&mut self) {
        let mut ended = Vec::new();
        self.table.expire(self.at(), &mut ended);
        for (flow, why) in ended {
            assert_eq!(why, End::Idle);
            let m = self.model[&flow.key];
            assert!(
                m.last + m.idle <= self.now,
                "expired no earlier than its timeout"
            );
            self.end(&flow.key, m.id);
        }
        for (k, m) in &self.model {
            assert!(
                m.last + m.idle > self.now,
                "{k:?} outlived its idle timeout"
            );
        }
        if let Some(next) = self.table.next_check() {
            assert!(next > self.at(), "nothing is left due after a sweep");
            let earliest = self.model.values().map(|m| m.last + m.idle).min().unwrap();
            assert!(
                next <= self.start + earliest,
                "the sweeper wakes no later than the first flow can expire"
            );
        }
    }

    /// A table swap: some backends stop (or start) being usable; flows to unusable ones end,
    /// the others are untouched.
    fn swap(&mut self) {
        let b = self.below(BACKENDS as u64) as usize;
        self.usable[b] = !self.usable[b];
        let usable = self.usable.clone();
        let mut ended = Vec::new();
        let usable_addrs: Vec<SocketAddr> =
            (0..BACKENDS).filter(|&i| usable[i]).map(backend).collect();
        self.table
            .retain(|f| usable_addrs.contains(&f.backend), &mut ended);
        for (flow, why) in ended {
            assert_eq!(why, End::Invalidated);
            assert!(!usable_addrs.contains(&flow.backend));
            let id = self.model[&flow.key].id;
            self.end(&flow.key, id);
        }
        for m in self.model.values() {
            assert!(
                usable_addrs.contains(&m.backend),
                "no flow keeps an unusable backend"
            );
        }
    }

    fn remove(&mut self) {
        let keys: Vec<FlowKey> = self.model.keys().copied().collect();
        if keys.is_empty() {
            return;
        }
        let i = self.below(keys.len() as u64) as usize;
        let key = keys[i];
        let id = self.model[&key].id;
        let flow = self.table.remove(id).expect("a live flow can be removed");
        assert_eq!(flow.key, key);
        self.end(&key, id);
        assert!(self.table.remove(id).is_none(), "removing twice is a no-op");
    }

    fn step(&mut self) {
        match self.below(100) {
            0..=49 => self.datagram(),
            50..=69 => self.reply(),
            70..=84 => {
                let ms = self.below(400);
                self.now += Duration::from_millis(ms);
            }
            85..=92 => self.sweep(),
            93..=97 => self.swap(),
            _ => self.remove(),
        }
        self.table.check();
        assert_eq!(self.table.len(), self.model.len(), "table and model agree");
        for (k, m) in &self.model {
            let (id, flow) = self.table.peek(k).expect("model flow in the table");
            assert_eq!(id, m.id);
            assert_eq!(flow.backend, m.backend);
            assert_eq!(
                flow.due(),
                self.start + m.last + m.idle,
                "activity is recorded"
            );
        }
    }
}

#[test]
fn flow_table_simulation_many_seeds() {
    for seed in 0..64 {
        let mut sim = Sim::new(seed);
        for _ in 0..1_500 {
            sim.step();
        }
        // Everything ends eventually: jump past every timeout and sweep.
        sim.now += Duration::from_secs(10);
        sim.sweep();
        assert_eq!(sim.table.len(), 0, "seed {seed}: idle flows all expire");
        sim.table.check();
    }
}

#[test]
fn clear_ends_every_flow() {
    let mut sim = Sim::new(7);
    for _ in 0..500 {
        sim.datagram();
    }
    let mut ended = Vec::new();
    let n = sim.table.len();
    sim.table.clear(&mut ended);
    assert_eq!(ended.len(), n);
    assert!(ended.iter().all(|(_, why)| *why == End::Removed));
    sim.table.check();
}
