//! A per-worker pool of relay buffers.

use std::cell::RefCell;

/// Free buffers of one worker. A connection takes a buffer only while bytes are in flight, so
/// idle connections cost no buffer memory and busy ones get large buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool handing out buffers of `size` bytes, keeping at most `keep` free ones.
    pub(crate) fn new(size: usize, keep: usize) -> Self {
        Self {
            free: RefCell::new(Vec::new()),
            size,
            keep,
        }
    }

    /// An empty buffer with `size` bytes of capacity.
    #[inline]
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer to the pool (or frees it when the pool is full).
    #[inline]
    pub(crate) fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep && buf.capacity() == self.size {
            free.push(buf);
        }
    }

    /// Free buffers the pool holds now.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_up_to_keep() {
        let pool = BufferPool::new(1024, 1);
        let a = pool.take();
        let b = pool.take();
        let a_ptr = a.as_ptr();
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.free.borrow().len(), 1, "keeps at most one free buffer");
        let c = pool.take();
        assert_eq!(c.as_ptr(), a_ptr, "the kept buffer is handed out again");
        assert!(c.is_empty() && c.capacity() == 1024);
    }
}
