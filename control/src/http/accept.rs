//! How long an HTTP port backs off when `accept(2)` fails for want of a resource (which
//! errors those are is `proxy_core::is_exhaustion`; the warning is a `proxy_core::Throttle`).
//!
//! An accept failure is never fatal to the port. Out of descriptors or memory, the listener
//! would fail again at once, so the loop waits, from [`Backoff::FIRST`] doubling to
//! [`Backoff::MAX`], and the first success resets it. Other errors concern one connection
//! only (a handshake the client aborted): the loop goes on at once.

use std::time::Duration;

/// Exponential backoff between failed accepts.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The first wait after a success.
    pub const FIRST: Duration = Duration::from_millis(5);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(1);

    /// How long to wait after this failure; each one waits twice as long as the one before.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next.unwrap_or(Self::FIRST);
        self.next = Some((wait * 2).min(Self::MAX));
        wait
    }

    /// An accept succeeded: the next failure waits [`Backoff::FIRST`] again. Returns whether
    /// the port was backing off.
    pub fn succeeded(&mut self) -> bool {
        self.next.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_a_success_resets_it() {
        let mut b = Backoff::default();
        assert!(!b.succeeded(), "not backing off yet");
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert!(b.succeeded());
        assert_eq!(b.failed(), Backoff::FIRST);
    }
}
