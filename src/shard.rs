//! Per-core copies of what every connection would otherwise share.
//!
//! A counter or a lock that every connection's start and end write is one
//! cache line that moves between the cores on every connection: on one core
//! it costs nothing, on eight it costs more than the rest of the
//! bookkeeping. So the server's counters, its admission places and its
//! registry of live connections are split into shards, each on cache lines
//! of its own; a thread writes the shard of its own index
//! ([`thread_index`]), and whoever reads the whole (a snapshot, the drain,
//! the timeout sweeper) visits every shard.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `T` alone on its cache lines: 128 bytes, as x86's adjacent-line
/// prefetcher moves lines in pairs and some ARM cores have lines that long.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The next thread's index.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's index, given on first use: `usize::MAX` until then.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's index: threads get 0, 1, 2, ... in the order they first
/// ask, so the worker threads of a runtime, which start together, get
/// consecutive ones, a shard each (modulo the shard count).
pub(crate) fn thread_index() -> usize {
    THREAD_INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}

/// How many shards a server's parts have: a power of two, twice the cores
/// this process may run on (so that the threads of a runtime sized to the
/// cores, and a few more, rarely share one), at least 2, at most 64.
pub(crate) fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores * 2).next_power_of_two().clamp(2, 64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_distinct_indices_and_keep_them() {
        let mine = thread_index();
        assert_eq!(thread_index(), mine, "kept");
        let other = std::thread::spawn(thread_index).join().unwrap();
        assert_ne!(other, mine);
        assert!(count().is_power_of_two() && (2..=64).contains(&count()));
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}
