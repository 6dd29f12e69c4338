//! `mh`: Maglev hashing, as `net/netfilter/ipvs/ip_vs_mh.c`.
//!
//! - Table of prime size `M` from [`MH_TABLE_SIZES`]; default [`DEFAULT_MH_TABLE_SIZE`] (4093,
//!   `CONFIG_IP_VS_MH_TAB_INDEX = 12`). More backends than `M` is an error, as in the kernel.
//! - Per backend: `offset = hsiphash(port + addr_fold; k1) % M`, `skip = hsiphash(..; k2) %
//!   (M - 1) + 1`, with the fixed keys `k1 = 2654435761`, `k2 = 2654446892`, so every node builds
//!   the same table. The backend's address is [`BackendSpec::addr`]; without one, the backend's
//!   list index stands in for the address (stable only while the list order is).
//! - Weights: `g = gcd(last_weight > 0)`, `rshift = max(0, fls(max_last_weight / g) - bits)` with
//!   `bits = CONFIG_IP_VS_MH_TAB_INDEX / 2`, `turns = ((last_weight / g) >> rshift) ?: (last_weight
//!   != 0)`. The table is populated Maglev-style, each backend claiming `turns` slots per round.
//! - It uses **`last_weight`** ([`BackendSpec::last_weight`]): a backend quiesced to weight 0 keeps
//!   its slots, so the table does not move; at lookup it is unavailable.
//! - Lookup: slot `hsiphash(port + addr_fold; k1) % M` of the client (port only with `mh-port`).
//!   An unavailable backend gives `None` unless `mh-fallback`, which rehashes with offsets
//!   `(ihash + i) % M` and returns the first available backend.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::hash::{addr_fold, hsiphash_u32, HsipKey};
use crate::wrr::gcd;
use crate::{eligible, BackendSpec, BackendState, BuildError, Flow};

/// The table sizes IPVS allows (`primes[]` of `ip_vs_mh.c`).
pub const MH_TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The kernel's default table size (`CONFIG_IP_VS_MH_TAB_INDEX = 12`).
pub const DEFAULT_MH_TABLE_SIZE: u32 = 4093;

const KEY1: HsipKey = HsipKey(2_654_435_761, 2_654_435_761);
const KEY2: HsipKey = HsipKey(2_654_446_892, 2_654_446_892);
const EMPTY: u32 = u32::MAX;

/// Maglev hashing (IPVS `mh`), with the `mh-fallback` and `mh-port` flags.
#[derive(Debug)]
pub struct Maglev {
    weights: Box<[u32]>,
    lookup: Box<[u32]>,
    fallback: bool,
    port: bool,
}

/// `ip_vs_mh_hashkey` before the modulo.
#[inline]
fn mh_hash(addr: IpAddr, port: u16, offset: u32) -> u32 {
    let v = offset
        .wrapping_add(u32::from(port))
        .wrapping_add(addr_fold(addr));
    hsiphash_u32(v, KEY1)
}

/// `fls`: position of the most significant set bit, 1-based; 0 for 0.
fn fls(x: u32) -> u32 {
    32 - x.leading_zeros()
}

impl Maglev {
    pub(crate) fn new(
        backends: &[BackendSpec],
        table_size: u32,
        fallback: bool,
        port: bool,
    ) -> Result<Self, BuildError> {
        let tab_index = MH_TABLE_SIZES
            .iter()
            .position(|&p| p == table_size)
            .ok_or(BuildError::MhTableSize(table_size))?;
        let m = table_size as usize;
        if backends.len() > m {
            return Err(BuildError::TooManyBackends {
                count: backends.len(),
                max: m,
            });
        }
        // CONFIG_IP_VS_MH_TAB_INDEX = tab_index + 8; IP_VS_MH_TAB_BITS = that / 2.
        let tab_bits = (tab_index as u32 + 8) / 2;
        let g = backends
            .iter()
            .map(|b| b.last_weight)
            .filter(|&w| w > 0)
            .fold(0, gcd);
        let mut lookup = vec![EMPTY; m].into_boxed_slice();
        if g >= 1 {
            let maxw = backends.iter().map(|b| b.last_weight).max().unwrap_or(0);
            let rshift = fls(maxw / g).saturating_sub(tab_bits);
            let mut setup: Vec<(usize, usize, u32)> = backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let (addr, port) = match b.addr {
                        Some(a) => (a.ip().to_canonical(), a.port()),
                        None => (IpAddr::V4(Ipv4Addr::from(i as u32)), 0),
                    };
                    let offset = mh_hash_key(addr, port, KEY1) % table_size;
                    let skip = mh_hash_key(addr, port, KEY2) % (table_size - 1) + 1;
                    let lw = b.last_weight;
                    let turns = match (lw / g) >> rshift {
                        0 => u32::from(lw != 0),
                        t => t,
                    };
                    (offset as usize, skip as usize, turns)
                })
                .collect();
            populate(&mut lookup, &mut setup);
        }
        Ok(Self {
            weights: backends.iter().map(|b| b.weight).collect(),
            lookup,
            fallback,
            port,
        })
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The table: slot → backend index (`None` for an empty slot, only when every
    /// `last_weight` is 0).
    pub fn table(&self) -> impl Iterator<Item = Option<usize>> + '_ {
        self.lookup
            .iter()
            .map(|&d| (d != EMPTY).then_some(d as usize))
    }

    #[inline]
    fn key(&self, flow: &Flow) -> (IpAddr, u16) {
        let port = if self.port { flow.client.port() } else { 0 };
        (flow.client.ip().to_canonical(), port)
    }

    /// The backend owning the slot of `flow`, available or not.
    pub fn slot_owner(&self, flow: &Flow) -> Option<usize> {
        let (addr, port) = self.key(flow);
        let m = self.lookup.len() as u32;
        let d = self.lookup[(mh_hash(addr, port, 0) % m) as usize];
        (d != EMPTY).then_some(d as usize)
    }

    #[inline]
    pub(crate) fn pick(&self, flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        let (addr, port) = self.key(flow);
        let m = self.lookup.len() as u32;
        let available = |d: u32| eligible(self.weights[d as usize], states.get(d as usize));
        let ihash = mh_hash(addr, port, 0) % m;
        let dest = self.lookup[ihash as usize];
        if dest == EMPTY {
            return None;
        }
        if available(dest) {
            return Some(dest as usize);
        }
        if !self.fallback {
            return None;
        }
        for offset in 0..m {
            let roffset = (offset + ihash) % m;
            let d = self.lookup[(mh_hash(addr, port, roffset) % m) as usize];
            if d == EMPTY {
                break;
            }
            if available(d) {
                return Some(d as usize);
            }
        }
        None
    }
}

/// `ip_vs_mh_hashkey(af, &dest->addr, dest->port, key, 0)` before the modulo.
fn mh_hash_key(addr: IpAddr, port: u16, key: HsipKey) -> u32 {
    hsiphash_u32(u32::from(port).wrapping_add(addr_fold(addr)), key)
}

/// `ip_vs_mh_populate`: `setup[i] = (perm, skip, turns)`; fills every slot of `lookup`.
fn populate(lookup: &mut [u32], setup: &mut [(usize, usize, u32)]) {
    let m = lookup.len();
    let mut taken = vec![false; m];
    let (mut n, mut dt_count) = (0usize, 0u32);
    while n < m {
        let mut i = 0;
        while i < setup.len() {
            let (perm, skip, turns) = &mut setup[i];
            if *turns < 1 {
                i += 1;
                continue;
            }
            while taken[*perm] {
                *perm += *skip;
                if *perm >= m {
                    *perm -= m;
                }
            }
            taken[*perm] = true;
            lookup[*perm] = i as u32;
            n += 1;
            if n == m {
                return;
            }
            dt_count += 1;
            if dt_count >= *turns {
                dt_count = 0;
                i += 1;
            }
        }
    }
}
