//! The listening sockets the master holds for its workers, by key: a worker that asks for a
//! key the master already holds gets the same socket objects, so connections queued on them
//! while no worker accepted (a crash, an upgrade) are served, not reset.
//!
//! A socket set is closed when the last worker that uses it releases it, or, after a worker
//! went away, once its successor is serving and has not asked for it
//! ([`Registry::collect`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use proxy_core::{bind_sockets, ProxyError, SocketKind, SocketSpec};

use super::wire::Spec;

/// One socket set held.
#[derive(Debug)]
pub struct Entry {
    pub spec: Spec,
    pub local_addr: SocketAddr,
    pub sockets: Vec<OwnedFd>,
    /// The workers that asked for it.
    users: BTreeSet<u64>,
}

impl Entry {
    /// The workers that use it.
    pub fn users(&self) -> Vec<u64> {
        self.users.iter().copied().collect()
    }

    /// Copies of the first `n` descriptors (all with `None`), to send.
    pub fn copies(&self, n: Option<usize>) -> std::io::Result<Vec<OwnedFd>> {
        let n = n.unwrap_or(self.sockets.len()).min(self.sockets.len());
        self.sockets[..n].iter().map(OwnedFd::try_clone).collect()
    }

    /// The first `n` descriptors (all with `None`).
    pub fn fds(&self, n: Option<usize>) -> Vec<RawFd> {
        let n = n.unwrap_or(self.sockets.len()).min(self.sockets.len());
        self.sockets[..n].iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Every socket set held, by key.
#[derive(Debug, Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

impl Registry {
    /// The sockets of `spec` for `worker`: the held ones under its key (more bound into the
    /// same `SO_REUSEPORT` group when the worker wants more), else bound now.
    pub fn open(&mut self, spec: &Spec, worker: u64) -> Result<&Entry, ProxyError> {
        if !self.entries.contains_key(&spec.key) {
            let opened = bind_sockets(&SocketSpec::from(spec))?;
            let entry = Entry {
                spec: spec.clone(),
                local_addr: opened.local_addr,
                sockets: opened.sockets.into_iter().map(OwnedFd::from).collect(),
                users: BTreeSet::new(),
            };
            self.entries.insert(spec.key.clone(), entry);
        }
        let entry = self.entries.get_mut(&spec.key).expect("inserted above");
        grow(entry, &SocketSpec::from(spec))?;
        entry.users.insert(worker);
        Ok(entry)
    }

    /// Takes in a set held before (across an `exec`, or from a predecessor process), used by
    /// `users` (workers that survived the `exec`).
    pub fn adopt(
        &mut self,
        spec: Spec,
        local_addr: SocketAddr,
        sockets: Vec<OwnedFd>,
        users: Vec<u64>,
    ) {
        let key = spec.key.clone();
        let entry = Entry {
            spec,
            local_addr,
            sockets,
            users: users.into_iter().collect(),
        };
        self.entries.insert(key, entry);
    }

    /// `worker` does not need `key` any more; closed when nobody else does.
    pub fn release(&mut self, key: &str, worker: u64) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.users.remove(&worker);
            if entry.users.is_empty() {
                tracing::info!(key, "listening sockets closed: no worker serves them");
                self.entries.remove(key);
            }
        }
    }

    /// `worker` is gone: what it used stays held (for its successor) until [`Self::collect`].
    pub fn worker_gone(&mut self, worker: u64) {
        for entry in self.entries.values_mut() {
            entry.users.remove(&worker);
        }
    }

    /// Closes every set no worker uses (a successor serves and did not ask for them).
    pub fn collect(&mut self) {
        self.entries.retain(|key, entry| {
            let keep = !entry.users.is_empty();
            if !keep {
                tracing::info!(
                    key,
                    "listening sockets closed: the serving worker does not use them"
                );
            }
            keep
        });
    }

    /// Closes every set: nothing of this master will serve them again (it stops, or a new
    /// master holds them). Workers keep their own copies while they drain.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Every set held.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }
}

/// A frontend's group grows when a worker wants more sockets than held (more worker threads
/// after an upgrade): the new ones join the same `SO_REUSEPORT` group.
fn grow(entry: &mut Entry, spec: &SocketSpec) -> Result<(), ProxyError> {
    let SocketKind::Frontend {
        protocol, workers, ..
    } = spec.kind
    else {
        return Ok(());
    };
    if workers <= entry.sockets.len() {
        return Ok(());
    }
    let more = SocketSpec::frontend(
        "",
        protocol,
        entry.local_addr,
        workers - entry.sockets.len(),
        true,
    );
    let opened = bind_sockets(&more)?;
    entry
        .sockets
        .extend(opened.sockets.into_iter().map(OwnedFd::from));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::Protocol;

    fn frontend(workers: usize) -> Spec {
        Spec::from(&SocketSpec::frontend(
            "web",
            Protocol::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            workers,
            false,
        ))
    }

    #[test]
    fn the_same_key_gets_the_same_sockets_until_nobody_uses_them() {
        let mut r = Registry::default();
        let spec = frontend(2);
        let (addr, fd) = {
            let e = r.open(&spec, 1).unwrap();
            (e.local_addr, e.fds(None))
        };
        assert_eq!(fd.len(), 2);
        // A restarted worker asks again: the same sockets, the same port.
        r.worker_gone(1);
        let again = r.open(&spec, 2).unwrap();
        assert_eq!((again.local_addr, again.fds(None)), (addr, fd.clone()));
        // More workers: the group grows, the first sockets stay.
        let grown = r.open(&frontend(3), 2).unwrap();
        assert_eq!(grown.fds(None)[..2], fd[..]);
        assert_eq!(grown.sockets.len(), 3);
        r.release(&spec.key, 2);
        assert_eq!(r.entries().count(), 0);
    }

    #[test]
    fn what_a_gone_worker_used_is_collected_once_its_successor_serves_without_it() {
        let mut r = Registry::default();
        let kept = frontend(1);
        let mut dropped = frontend(1);
        dropped.key = "tcp 127.0.0.1:0 old".into();
        r.open(&kept, 1).unwrap();
        r.open(&dropped, 1).unwrap();
        r.worker_gone(1);
        r.open(&kept, 2).unwrap();
        r.collect();
        let keys: Vec<&str> = r.entries().map(|e| e.spec.key.as_str()).collect();
        assert_eq!(keys, [kept.key.as_str()]);
    }
}
