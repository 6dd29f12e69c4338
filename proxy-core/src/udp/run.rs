//! Cutting a batch of datagrams into runs, each of which leaves as one UDP GSO send: client
//! datagrams towards their flows' backends, and a flow's replies towards its client. One rule
//! for both directions, as pure code (no sockets), so the shell only performs the sends.

use std::ops::Range;

/// Most bytes one segmented send carries (a UDP datagram's limit).
pub(crate) const MAX_GSO_BYTES: usize = 65_000;

/// Consecutive datagrams of a batch with one destination (`to`) and one size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run<K> {
    /// Where the run goes (a flow, or nothing when the whole batch has one destination).
    pub(crate) to: K,
    /// The batch index of its first datagram.
    pub(crate) first: usize,
    /// How many datagrams it has.
    pub(crate) count: usize,
    /// The size of each.
    pub(crate) size: usize,
}

impl<K> Run<K> {
    /// Its datagrams' indices in the batch.
    pub(crate) fn range(&self) -> Range<usize> {
        self.first..self.first + self.count
    }

    /// The segment size of the one GSO send that carries the run, or `None` for a single
    /// datagram (sent plainly).
    pub(crate) fn segment(&self) -> Option<u16> {
        if self.count < 2 {
            return None;
        }
        // `extends` keeps a run of several within one send's bytes, so the size fits.
        u16::try_from(self.size).ok()
    }

    /// Whether datagram `i` of `len` bytes for `to` joins the run. The kernel cuts a GSO send
    /// into segments of one size (the last may be shorter; a run never makes it so), and one
    /// send carries at most [`MAX_GSO_BYTES`]. An empty datagram always goes alone: it cannot
    /// be a segment.
    fn extends(&self, to: &K, i: usize, len: usize) -> bool
    where
        K: PartialEq,
    {
        self.to == *to
            && i == self.first + self.count
            && len == self.size
            && len > 0
            && (self.count + 1) * len <= MAX_GSO_BYTES
    }
}

/// Cuts datagrams into runs as they come: each datagram joins the open run or closes it.
#[derive(Debug)]
pub(crate) struct Runs<K> {
    open: Option<Run<K>>,
}

impl<K: PartialEq> Runs<K> {
    /// No run open.
    pub(crate) const fn new() -> Self {
        Runs { open: None }
    }

    /// Datagram `i` of `len` bytes for `to`: joins the open run, or closes it (returned, to be
    /// sent) and opens a new one.
    #[inline]
    pub(crate) fn push(&mut self, to: K, i: usize, len: usize) -> Option<Run<K>> {
        if let Some(run) = &mut self.open {
            if run.extends(&to, i, len) {
                run.count += 1;
                return None;
            }
        }
        self.open.replace(Run {
            to,
            first: i,
            count: 1,
            size: len,
        })
    }

    /// Closes the open run (the batch ended, or the next datagram goes elsewhere).
    pub(crate) fn take(&mut self) -> Option<Run<K>> {
        self.open.take()
    }
}

/// The runs of a batch whose datagrams all have one destination, from their lengths in order.
pub(crate) fn split<I: Iterator<Item = usize>>(lens: I) -> Split<I> {
    Split {
        lens: lens.enumerate(),
        runs: Runs::new(),
    }
}

/// The iterator of [`split`].
#[derive(Debug)]
pub(crate) struct Split<I> {
    lens: std::iter::Enumerate<I>,
    runs: Runs<()>,
}

impl<I: Iterator<Item = usize>> Iterator for Split<I> {
    type Item = Run<()>;

    fn next(&mut self) -> Option<Run<()>> {
        for (i, len) in self.lens.by_ref() {
            if let Some(run) = self.runs.push((), i, len) {
                return Some(run);
            }
        }
        self.runs.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run of `datagrams` (destination, length), in order.
    fn cut(datagrams: &[(u32, usize)]) -> Vec<Run<u32>> {
        let mut runs = Runs::new();
        let mut out = Vec::new();
        for (i, &(to, len)) in datagrams.iter().enumerate() {
            out.extend(runs.push(to, i, len));
        }
        out.extend(runs.take());
        out
    }

    fn run(to: u32, first: usize, count: usize, size: usize) -> Run<u32> {
        Run {
            to,
            first,
            count,
            size,
        }
    }

    #[test]
    fn one_destination_and_one_size_is_one_run() {
        assert_eq!(cut(&[(1, 100); 5]), [run(1, 0, 5, 100)]);
        assert_eq!(cut(&[]), []);
    }

    #[test]
    fn a_new_destination_or_size_starts_a_run() {
        let runs = cut(&[(1, 100), (1, 100), (2, 100), (2, 50), (2, 50), (1, 50)]);
        assert_eq!(
            runs,
            [
                run(1, 0, 2, 100),
                run(2, 2, 1, 100),
                run(2, 3, 2, 50),
                run(1, 5, 1, 50)
            ]
        );
        // A shorter datagram could end a GSO send, but then the runs of both directions would
        // not be cut the same way for the same sizes; it starts a run of its own.
        assert_eq!(cut(&[(1, 100), (1, 99)]).len(), 2);
    }

    #[test]
    fn empty_datagrams_go_alone() {
        assert_eq!(
            cut(&[(1, 0), (1, 0), (1, 10)]),
            [run(1, 0, 1, 0), run(1, 1, 1, 0), run(1, 2, 1, 10)]
        );
    }

    #[test]
    fn a_run_stays_within_one_send() {
        let runs = cut(&[(1, 20_000); 7]);
        assert_eq!(
            runs,
            [
                run(1, 0, 3, 20_000),
                run(1, 3, 3, 20_000),
                run(1, 6, 1, 20_000)
            ]
        );
        assert!(runs.iter().all(|r| r.count * r.size <= MAX_GSO_BYTES));
        // The largest datagram that can share a send, and the smallest that cannot.
        assert_eq!(cut(&[(1, MAX_GSO_BYTES / 2); 2]).len(), 1);
        assert_eq!(cut(&[(1, MAX_GSO_BYTES / 2 + 1); 2]).len(), 2);
    }

    #[test]
    fn a_gap_in_the_batch_starts_a_run() {
        let mut runs = Runs::new();
        assert_eq!(runs.push(1, 0, 10), None);
        assert_eq!(runs.push(1, 2, 10), Some(run(1, 0, 1, 10)));
        assert_eq!(runs.take(), Some(run(1, 2, 1, 10)));
        assert_eq!(runs.take(), None);
    }

    #[test]
    fn split_cuts_a_batch_of_one_destination_the_same_way() {
        let lens = [100, 100, 0, 0, 7, 20_000, 20_000, 20_000, 20_000, 5, 5];
        let split: Vec<Run<()>> = split(lens.iter().copied()).collect();
        let cut = cut(&lens.map(|len| (1, len)));
        assert_eq!(split.len(), cut.len());
        for (s, c) in split.iter().zip(&cut) {
            assert_eq!((s.first, s.count, s.size), (c.first, c.count, c.size));
        }
        assert_eq!(split.last().map(|r| r.range()), Some(9..11));
        assert_eq!(super::split(std::iter::empty()).count(), 0);
    }

    #[test]
    fn only_runs_of_several_are_segmented() {
        assert_eq!(run(1, 0, 1, 1_000).segment(), None);
        assert_eq!(run(1, 0, 2, 1_000).segment(), Some(1_000));
        assert_eq!(run(1, 0, 1, 65_000).segment(), None);
        assert_eq!(run(1, 3, 4, 7).range(), 3..7);
    }
}
