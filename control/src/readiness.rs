//! What keeps ringlb from being ready although it runs: problems reported by key, which the
//! admin API's `/readyz` lists.
//!
//! Any part of the process may report into it (a health port that cannot be bound, an HTTP
//! port whose accepts keep failing; later the data plane): it holds the latest message per key
//! and nothing else. It never decides what a problem means or when it ends; whoever set a key
//! clears it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The problems that make `/readyz` answer 503, by key.
#[derive(Debug, Default)]
pub struct Readiness {
    problems: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    /// Reports `problem` under `key` (replacing an earlier one with the same key). `key` names
    /// what is wrong (`healthz 0.0.0.0:10256`), `problem` says how, in one line.
    pub fn set(&self, key: impl Into<String>, problem: impl Into<String>) {
        self.lock().insert(key.into(), problem.into());
    }

    /// The problem under `key` is over (nothing happens when there is none).
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Every problem as `key: problem`, sorted by key; empty when there is none.
    pub fn problems(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(key, problem)| format!("{key}: {problem}"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding the lock cannot leave the map half-changed: keep using it.
        self.problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_set_replaced_and_cleared_by_key() {
        let r = Readiness::default();
        assert!(r.problems().is_empty());
        r.set("healthz 0.0.0.0:10256", "cannot listen: address in use");
        r.set("admin accept", "failing");
        r.set("healthz 0.0.0.0:10256", "cannot listen: permission denied");
        assert_eq!(
            r.problems(),
            [
                "admin accept: failing",
                "healthz 0.0.0.0:10256: cannot listen: permission denied"
            ]
        );
        r.clear("admin accept");
        r.clear("never set");
        assert_eq!(r.problems().len(), 1);
        r.clear("healthz 0.0.0.0:10256");
        assert!(r.problems().is_empty());
    }
}
