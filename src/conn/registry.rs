//! The registry of live connections: what the drain waits for, and what
//! the drain deadline, the timeout sweeper and the overload reclaimer end.
//!
//! Each entry is a connection task's abort handle and its record
//! (`ConnState`: activity, acceptance time, id, peer; generic here, as
//! [`Registered`], so that this module needs nothing of the record). An
//! entry is made before its task is spawned and removed by the end of the
//! connection's last part (its handler's task, or a sub-task it spawned:
//! see `subtask.rs`), so the entries are the connections not yet ended: the
//! drain waits until there are none. Whatever aborts a connection's task
//! here aborts its sub-tasks too ([`Registered::abort_parts`]).
//!
//! The entries are split into shards (see [`crate::shard`]), each a slab
//! under a lock of its own on cache lines of its own; a connection's shard
//! is chosen by its accept loop: the next one for each connection when one
//! loop takes every connection of a listener (so its inserts go round the
//! shards and an ending task's removal rarely meets another thread at the
//! same lock), the accepting thread's own when several loops do (so each
//! keeps to a shard of its own, where its connections mostly end too).
//! The timeout sweeper visits every shard once a tick (a tenth of the
//! shortest timeout, at least 5 ms), 512 entries per lock. A connection's
//! reads and writes never take a lock.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use slab::Slab;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::shard::{self, Padded};
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Notify};
use crate::timeout::TimeoutKind;

/// What the registry needs of a connection's record.
pub(crate) trait Registered {
    /// Which shard the record goes to (any number: taken modulo the
    /// shard count).
    fn shard(&self) -> usize;
    /// The record's key in its shard's slab (set under the shard's lock; a
    /// field of the record itself, which saves a word in every record).
    fn key(&self) -> &AtomicUsize;
    /// Marks the connection as closed by a timeout of `kind`; `false` if it
    /// already was.
    fn expire(&self, kind: TimeoutKind) -> bool;
    /// Aborts the connection's other parts (the sub-tasks its handler
    /// spawned), and any spawned from now on: called with every abort of
    /// its task by the registry.
    fn abort_parts(&self);
}

/// What the registry knows of a live connection.
#[derive(Debug)]
struct Entry<T> {
    /// `None` until the task is spawned (and for the benchmarks'
    /// bookkeeping, which has no task).
    abort: Option<AbortHandle>,
    /// Also the entry's identity: a slab key is reused once freed.
    state: Arc<T>,
}

/// One shard of the registry.
#[derive(Debug)]
struct Shard<T> {
    entries: Slab<Entry<T>>,
    /// Set once the drain has begun: from then on the removal that empties
    /// the shard wakes the drain to look again.
    draining: bool,
    /// Set at the drain deadline, and for good by [`Tasks::abort_all`]: a
    /// task attached from then on is aborted at once.
    aborting: bool,
}

/// Spawns, tracks and, at the deadline, aborts connection tasks.
#[derive(Debug)]
pub(crate) struct Tasks<T> {
    shards: Box<[Padded<Mutex<Shard<T>>>]>,
    /// Woken when a shard empties while draining.
    ended: Notify,
}

impl<T: Registered> Tasks<T> {
    pub(crate) fn new() -> Self {
        Self::with_shards(shard::count())
    }

    /// A registry of `shards` shards (a power of two).
    pub(crate) fn with_shards(shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        Tasks {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        entries: Slab::new(),
                        draining: false,
                        aborting: false,
                    }))
                })
                .collect(),
            ended: Notify::new(),
        }
    }

    fn shard_of(&self, state: &T) -> &Mutex<Shard<T>> {
        &self.shards[state.shard() & (self.shards.len() - 1)]
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).entries.len())
            .sum()
    }

    /// Makes the entry of a task about to be spawned: before the spawn,
    /// since the guard that removes it may run in it.
    pub(crate) fn insert(&self, state: Arc<T>) {
        let mut shard = lock(self.shard_of(&state));
        let entry = shard.entries.vacant_entry();
        state.key().store(entry.key(), Ordering::Relaxed);
        entry.insert(Entry { abort: None, state });
    }

    /// Gives a spawned task's abort handle to its entry, unless the task has
    /// ended already (its entry is gone), or the registry is aborting
    /// everything: then the task and its sub-tasks are aborted at once.
    /// Takes the lock after `spawn`, never across it (`spawn` may drop the
    /// future on the spot, as a runtime shutting down does, running the
    /// guard that takes it).
    pub(crate) fn attach(&self, state: &Arc<T>, handle: &JoinHandle<()>) {
        let aborting = {
            let mut shard = lock(self.shard_of(state));
            let key = state.key().load(Ordering::Relaxed);
            if let Some(entry) = shard.entries.get_mut(key) {
                if Arc::ptr_eq(&entry.state, state) {
                    entry.abort = Some(handle.abort_handle());
                }
            }
            shard.aborting
        };
        if aborting {
            handle.abort();
            // The handler may have spawned sub-tasks, and even ended, by now.
            state.abort_parts();
        }
    }

    /// Aborts every connection for which `expired` names a timeout.
    pub(crate) fn expire(&self, mut expired: impl FnMut(&T) -> Option<TimeoutKind>) {
        self.scan(|state, abort| {
            if let Some(kind) = expired(state) {
                Self::close(state, abort, kind);
            }
        });
    }

    /// Closes a connection for a timeout of `kind`: its task and its
    /// sub-tasks. Marked before the abort so that the guard, which runs when
    /// the aborted task is dropped, counts a timeout, not an abort; once
    /// only.
    pub(crate) fn close(state: &T, abort: &AbortHandle, kind: TimeoutKind) {
        if state.expire(kind) {
            abort.abort();
            state.abort_parts();
        }
    }

    /// Calls `visit` with every live connection's record and abort handle
    /// (those whose task is spawned).
    ///
    /// A chunk of entries at a time, so that no lock, which the accept
    /// loops and ending tasks take too, is held for long by the sweeper's
    /// thread (which the system may preempt while it holds it).
    pub(crate) fn scan(&self, mut visit: impl FnMut(&Arc<T>, &AbortHandle)) {
        const CHUNK: usize = 512;
        for shard in &*self.shards {
            let mut start: usize = 0;
            loop {
                let shard = lock(shard);
                let end = start.saturating_add(CHUNK).min(shard.entries.capacity());
                for key in start..end {
                    if let Some(Entry {
                        abort: Some(abort),
                        state,
                    }) = shard.entries.get(key)
                    {
                        visit(state, abort);
                    }
                }
                if end >= shard.entries.capacity() {
                    break;
                }
                start = end;
            }
        }
    }

    /// Aborts every task and its sub-tasks, now and any attached from now
    /// on; how many connections were registered. Outside the locks: an
    /// abort may drop the task's future on the spot (on a runtime shutting
    /// down), whose guard takes the lock.
    fn abort_every(&self) -> usize {
        let mut live = 0;
        for shard in &*self.shards {
            // Every entry, those not attached yet included: their handler
            // may have spawned sub-tasks already.
            let doomed: Vec<(Option<AbortHandle>, Arc<T>)> = {
                let mut shard = lock(shard);
                shard.aborting = true;
                live += shard.entries.len();
                shard
                    .entries
                    .iter()
                    .map(|(_, entry)| (entry.abort.clone(), Arc::clone(&entry.state)))
                    .collect()
            };
            for (abort, state) in doomed {
                if let Some(abort) = abort {
                    abort.abort();
                }
                state.abort_parts();
            }
        }
        live
    }

    /// Aborts every task, now and any spawned from now on: what is left
    /// when `run` is dropped before its drain ended, so that nothing the
    /// server spawned outlives it.
    pub(crate) fn abort_all(&self) {
        self.abort_every();
    }

    /// Serving again after a drain was abandoned (a successor that took the
    /// listeners over went away): tasks are no longer aborted as they come.
    #[cfg_attr(not(all(unix, feature = "handover")), allow(dead_code))]
    pub(crate) fn reopen(&self) {
        for shard in &*self.shards {
            let mut shard = lock(shard);
            shard.draining = false;
            shard.aborting = false;
        }
    }

    /// Removes the entry of a task that ended, waking the drain if that
    /// emptied the shard while draining.
    pub(crate) fn remove(&self, state: &Arc<T>) {
        let emptied = {
            let mut shard = lock(self.shard_of(state));
            let key = state.key().load(Ordering::Relaxed);
            if shard
                .entries
                .get(key)
                .is_some_and(|entry| Arc::ptr_eq(&entry.state, state))
            {
                shard.entries.remove(key);
            }
            shard.draining && shard.entries.is_empty()
        };
        if emptied {
            self.ended.notify_waiters();
        }
    }

    /// Marks the drain as begun in every shard, so that the removal that
    /// empties one wakes it, then waits until every shard is empty.
    async fn drained(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // A shard emptied after its look below wakes this; one emptied
            // before it shows in the count.
            let mut live = 0;
            for shard in &*self.shards {
                let mut shard = lock(shard);
                shard.draining = true;
                live += shard.entries.len();
            }
            if live == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Waits until `deadline` for every task to end, then aborts the rest
    /// and waits for them to unwind.
    ///
    /// A handler that blocks its thread without ever yielding cannot be
    /// aborted; the drain then waits for it.
    pub(crate) async fn drain(&self, deadline: Instant) {
        if tokio::time::timeout_at(deadline, self.drained())
            .await
            .is_err()
        {
            let remaining = self.abort_every();
            tracing::warn!(
                remaining,
                "drain timeout reached, aborting remaining connections"
            );
            self.drained().await;
        }
    }
}

/// The registry stays consistent even if a thread panicked while holding a
/// lock (slab operations do not panic midway), so poisoning is ignored.
fn lock<T>(shard: &Mutex<Shard<T>>) -> MutexGuard<'_, Shard<T>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Model checks of the drain's wake-up (see [`crate::sync`] for how to run
/// them).
#[cfg(all(test, switchboard_loom))]
mod loom_models {
    use loom::future::block_on;
    use loom::thread;

    use super::*;

    /// A record with nothing but the registry's fields: the drain needs no
    /// more.
    #[derive(Debug)]
    struct Record {
        shard: usize,
        key: AtomicUsize,
    }

    impl Registered for Record {
        fn shard(&self) -> usize {
            self.shard
        }

        fn key(&self) -> &AtomicUsize {
            &self.key
        }

        fn expire(&self, _: TimeoutKind) -> bool {
            false
        }

        fn abort_parts(&self) {}
    }

    /// `tasks` live tasks, one a shard of two, end on threads of their own
    /// while the drain begins; the drain must see the last one end.
    fn drain_while_tasks_end(tasks: usize) {
        loom::model(move || {
            let registry = Arc::new(Tasks::<Record>::with_shards(2));
            let ending: Vec<_> = (0..tasks)
                .map(|shard| {
                    let state = Arc::new(Record {
                        shard,
                        key: AtomicUsize::new(usize::MAX),
                    });
                    registry.insert(Arc::clone(&state));
                    let registry = Arc::clone(&registry);
                    thread::spawn(move || registry.remove(&state))
                })
                .collect();
            // Hangs (a deadlock for loom) if the last end is missed.
            block_on(registry.drained());
            assert_eq!(registry.len(), 0, "drained with tasks left");
            for task in ending {
                task.join().expect("task");
            }
        });
    }

    #[test]
    fn the_last_task_ending_as_the_drain_begins_wakes_it() {
        drain_while_tasks_end(1);
    }

    #[test]
    fn the_last_of_two_tasks_in_two_shards_ending_as_the_drain_begins_wakes_it() {
        drain_while_tasks_end(2);
    }
}
