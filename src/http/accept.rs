//! What an HTTP port does when `accept(2)` fails, as pure code: which errors mean the process
//! is short of a resource, how long to back off, and how often to say so.
//!
//! An accept failure is never fatal to the port. Out of descriptors or memory, the listener
//! would fail again at once, so the loop waits, from [`Backoff::FIRST`] doubling to
//! [`Backoff::MAX`], and the first success resets it. Other errors concern one connection
//! only (a handshake the client aborted): the loop goes on at once.

use std::io;
use std::time::{Duration, Instant};

/// Whether `e` means the process or the host is out of a resource (descriptors, socket
/// buffers, memory), so that accepting again at once would fail again.
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

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

/// At most one warning every [`WarnLimit::EVERY`], each with the count of failures since the
/// one before, so that a port failing a thousand times a second does not flood the log.
#[derive(Debug, Default)]
pub struct WarnLimit {
    last: Option<Instant>,
    since: u64,
}

impl WarnLimit {
    /// The shortest time between two warnings.
    pub const EVERY: Duration = Duration::from_secs(5);

    /// Counts a failure at `now`; `Some(n)` when a warning is due, `n` being the failures
    /// since the last warning, this one included.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::EVERY);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_told_from_others() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_error(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert!(!is_resource_error(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_resource_error(&io::Error::other("no errno")));
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_and_a_success_resets_it() {
        let mut b = Backoff::default();
        assert!(!b.succeeded(), "not backing off yet");
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert!(b.succeeded());
        assert_eq!(b.failed(), Backoff::FIRST);
    }

    #[test]
    fn warnings_come_at_most_every_few_seconds_with_the_count_since() {
        let t = Instant::now();
        let mut w = WarnLimit::default();
        assert_eq!(w.failed(t), Some(1), "the first failure warns");
        for ms in [1, 100, 4999] {
            assert_eq!(w.failed(t + Duration::from_millis(ms)), None);
        }
        assert_eq!(w.failed(t + WarnLimit::EVERY), Some(4));
        assert_eq!(w.failed(t + WarnLimit::EVERY * 3), Some(1));
    }
}
