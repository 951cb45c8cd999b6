//! Recycled buffers for batches of frames. A batch travels from the thread that fills it (the TUN
//! reader, a link reader) to a link writer, which gives it back here once the socket has taken the
//! bytes; the next batch reuses its memory instead of allocating and faulting in fresh pages.
//!
//! One lock per batch (tens of frames), never per packet. The pool is bounded in count and in
//! buffer size, so a burst that needed unusually many or large buffers doesn't pin that memory.

use std::sync::Mutex;

/// Buffers kept at most.
const MAX_POOLED: usize = 48;
/// Larger buffers are freed instead of kept.
const MAX_POOLED_CAPACITY: usize = 384 * 1024;

type Pool = Mutex<Vec<Vec<u8>>>;

static POOL: Pool = Mutex::new(Vec::new());

/// An empty buffer with at least `capacity` bytes of room: a recycled one when there is one.
pub fn take(capacity: usize) -> Vec<u8> {
    let mut b = dirty_from(&POOL, 0);
    b.clear();
    b.reserve(capacity);
    b
}

/// A buffer with room for `capacity` bytes that keeps its contents: a recycled one still holds
/// what its last user left, so a writer that fills it at offsets (growing it only where it is too
/// short) zeroes only the bytes no earlier batch reached.
pub fn take_dirty(capacity: usize) -> Vec<u8> {
    dirty_from(&POOL, capacity)
}

fn dirty_from(pool: &Pool, capacity: usize) -> Vec<u8> {
    let mut b = pool
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_default();
    b.reserve(capacity.saturating_sub(b.len()));
    b
}

/// Returns a buffer for reuse (or frees it when the pool is full or the buffer oversized).
pub fn give(buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_POOLED_CAPACITY {
        return;
    }
    if let Ok(mut p) = POOL.lock() {
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_room() {
        let mut b = take(1000);
        assert!(b.capacity() >= 1000);
        b.extend_from_slice(&[7; 600]);
        give(b);
        // Other tests in this process share the pool: whatever comes back is empty.
        let b = take(2000);
        assert!(b.is_empty());
        assert!(b.capacity() >= 2000);
    }

    #[test]
    fn dirty_buffers_keep_their_contents_and_have_room() {
        let pool: Pool = Mutex::new(vec![vec![9; 5000]]);
        let b = dirty_from(&pool, 300_000);
        assert_eq!(b, vec![9; 5000]);
        assert!(b.capacity() >= 300_000);
        // An empty pool gives a fresh, empty buffer with the room.
        let b = dirty_from(&pool, 1000);
        assert!(b.is_empty() && b.capacity() >= 1000);
    }

    #[test]
    fn oversized_and_surplus_buffers_are_not_kept() {
        give(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        for _ in 0..MAX_POOLED * 2 {
            give(Vec::with_capacity(16));
        }
        let p = POOL.lock().unwrap();
        assert!(p.len() <= MAX_POOLED);
        assert!(p.iter().all(|b| b.capacity() <= MAX_POOLED_CAPACITY));
    }
}
