//! The registry of live connections: what the drain waits for, and what
//! the drain deadline, the timeout sweeper and the overload reclaimer end.
//!
//! Each entry is a connection task's abort handle and its record
//! (`ConnState`: activity, acceptance time, id, peer; generic here, as
//! [`Registered`], so that this module needs nothing of the record). The registry also
//! counts the tasks spawned and not yet ended, so that the drain can wait for
//! the last one.
//!
//! It is the one lock on a connection's path: taken briefly by the accept
//! loop after the spawn (slab insert) and by the task's end guard (slab
//! remove), and by the timeout sweeper once a tick (a tenth of the shortest
//! timeout, at least 5 ms) for a scan of the live connections, 512 entries
//! per lock. A connection's reads and writes never take it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use slab::Slab;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::sync::{AtomicBool, AtomicUsize, Mutex, MutexGuard, Notify};
use crate::timeout::TimeoutKind;

/// What the registry needs of a connection's record: the two fields it
/// keeps there (fields of the record itself rather than a struct of their
/// own, which would pad every record by a word).
pub(crate) trait Registered {
    /// The record's key in the registry, once registered (set under the
    /// registry's lock; `usize::MAX` until then).
    fn key(&self) -> &AtomicUsize;
    /// Set by the task's end guard before it removes the registry entry, so
    /// that a task that ends before its registration is not registered.
    fn ended(&self) -> &AtomicBool;
    /// Marks the connection as closed by a timeout of `kind`; `false` if it
    /// already was.
    fn expire(&self, kind: TimeoutKind) -> bool;
}

type Registry<T> = Mutex<Slab<Entry<T>>>;

/// The flag in `Tasks::live` that the drain has begun: the top bit, which
/// a count of tasks never reaches.
const DRAINING: usize = 1 << (usize::BITS - 1);

/// What the registry knows of a live connection.
#[derive(Debug)]
struct Entry<T> {
    /// `None` for an entry without a task (the benchmarks' bookkeeping).
    abort: Option<AbortHandle>,
    /// Also the entry's identity: a slab key is reused once freed.
    state: Arc<T>,
}

/// Spawns, tracks and, at the deadline, aborts connection tasks.
#[derive(Debug)]
pub(crate) struct Tasks<T> {
    registry: Registry<T>,
    /// Tasks spawned and not yet ended (aborted ones included, which the
    /// drain takes out of the registry before they have unwound), with
    /// `DRAINING` set once the drain begins: from then on the last task to
    /// end wakes it. One word, so that the drain's and the last task's
    /// read-modify-writes are ordered and each sees the other's (with two,
    /// only a store-load order across them would be, which loom cannot
    /// check: it models `SeqCst` as `AcqRel`).
    live: AtomicUsize,
    /// Set (under the registry's lock) by [`Tasks::abort_all`]: a task
    /// spawned after it is aborted at once instead of registered.
    closed: AtomicBool,
    ended: Notify,
}

impl<T: Registered> Tasks<T> {
    pub(crate) fn new() -> Self {
        Tasks {
            registry: Registry::default(),
            live: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            ended: Notify::new(),
        }
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.registry).len()
    }

    /// Counts a task about to be spawned: before the spawn, since the
    /// guard that uncounts it may run in it.
    pub(crate) fn spawning(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a spawned task with its abort handle, under one lock
    /// (never held across `spawn`, which may drop the future on the spot, as
    /// a runtime shutting down does, running the guard that takes it);
    /// unless the task has ended already (its guard marked it before it
    /// looked for the entry, under the same lock), or the registry was
    /// closed ([`Tasks::abort_all`]): then it is aborted at once.
    pub(crate) fn register(&self, handle: &JoinHandle<()>, state: Arc<T>) {
        self.register_entry(Some(handle), state);
    }

    /// [`Tasks::register`], with or without a task.
    pub(crate) fn register_entry(&self, handle: Option<&JoinHandle<()>>, state: Arc<T>) {
        let mut registry = lock(&self.registry);
        if self.closed.load(Ordering::Relaxed) {
            if let Some(handle) = handle {
                handle.abort();
            }
        } else if !state.ended().load(Ordering::Relaxed) {
            let entry = registry.vacant_entry();
            state.key().store(entry.key(), Ordering::Relaxed);
            entry.insert(Entry {
                abort: handle.map(JoinHandle::abort_handle),
                state,
            });
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

    /// Closes a connection for a timeout of `kind`: marked before the abort
    /// so that the guard, which runs when the aborted task is dropped,
    /// counts a timeout, not an abort; once only.
    pub(crate) fn close(state: &T, abort: &AbortHandle, kind: TimeoutKind) {
        if state.expire(kind) {
            abort.abort();
        }
    }

    /// Calls `visit` with every live connection's record and abort handle.
    ///
    /// A chunk of entries at a time, so that the lock, which the accept
    /// loops and ending tasks take too, is never held for long by the
    /// sweeper's thread (which the system may preempt while it holds it).
    pub(crate) fn scan(&self, mut visit: impl FnMut(&Arc<T>, &AbortHandle)) {
        const CHUNK: usize = 512;
        let mut start: usize = 0;
        loop {
            let registry = lock(&self.registry);
            let end = start.saturating_add(CHUNK).min(registry.capacity());
            for key in start..end {
                if let Some(Entry {
                    abort: Some(abort),
                    state,
                }) = registry.get(key)
                {
                    visit(state, abort);
                }
            }
            if end >= registry.capacity() {
                return;
            }
            start = end;
        }
    }

    /// Aborts every task, now and any spawned from now on: what is left
    /// when `run` is dropped before its drain ended, so that nothing the
    /// server spawned outlives it.
    pub(crate) fn abort_all(&self) {
        let entries = {
            let mut registry = lock(&self.registry);
            self.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *registry)
        };
        for (_, entry) in entries {
            if let Some(abort) = entry.abort {
                abort.abort();
            }
        }
    }

    /// Removes the entry of a task that ended, if it was registered.
    pub(crate) fn remove(&self, state: &Arc<T>) {
        state.ended().store(true, Ordering::Relaxed);
        let mut registry = lock(&self.registry);
        let key = state.key().load(Ordering::Relaxed);
        if registry
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.state, state))
        {
            registry.remove(key);
        }
    }

    /// Counts a task's end, waking the drain after the last one.
    pub(crate) fn ended(&self) {
        // Either the drain's mark comes first, and the last task sees it
        // and wakes the drain, or the drain's mark sees no task left.
        if self.live.fetch_sub(1, Ordering::AcqRel) == DRAINING | 1 {
            self.ended.notify_waiters();
        }
    }

    /// Marks the drain as begun, so that the last task to end wakes it,
    /// then waits until no task is left.
    async fn drained(&self) {
        if self.live.fetch_or(DRAINING, Ordering::AcqRel) & !DRAINING == 0 {
            return;
        }
        self.all_ended().await;
    }

    /// Waits until no task is left.
    async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // A task that ended after this was made wakes it; one that ended
            // before it shows here.
            if self.live.load(Ordering::Acquire) & !DRAINING == 0 {
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
            // Take the handles out so that the lock is not held while
            // aborting; the aborted tasks' guards then find nothing to remove.
            let stragglers = std::mem::take(&mut *lock(&self.registry));
            tracing::warn!(
                remaining = stragglers.len(),
                "drain timeout reached, aborting remaining connections"
            );
            for (_, entry) in stragglers {
                if let Some(abort) = entry.abort {
                    abort.abort();
                }
            }
            self.all_ended().await;
        }
    }
}

/// The registry stays consistent even if a thread panicked while holding the
/// lock (slab operations do not panic midway), so poisoning is ignored.
fn lock<T>(registry: &Registry<T>) -> MutexGuard<'_, Slab<Entry<T>>> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
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
        key: AtomicUsize,
        ended: AtomicBool,
    }

    impl Registered for Record {
        fn key(&self) -> &AtomicUsize {
            &self.key
        }

        fn ended(&self) -> &AtomicBool {
            &self.ended
        }

        fn expire(&self, _: TimeoutKind) -> bool {
            false
        }
    }

    /// `tasks` live tasks end on threads of their own while the drain
    /// begins; the drain must see the last one end.
    fn drain_while_tasks_end(tasks: usize) {
        loom::model(move || {
            let registry = Arc::new(Tasks::<Record>::new());
            let ending: Vec<_> = (0..tasks)
                .map(|_| {
                    registry.spawning();
                    let registry = Arc::clone(&registry);
                    thread::spawn(move || registry.ended())
                })
                .collect();
            // Hangs (a deadlock for loom) if the last end is missed.
            block_on(registry.drained());
            let left = registry.live.load(Ordering::Acquire) & !DRAINING;
            assert_eq!(left, 0, "drained with tasks left");
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
    fn the_last_of_two_tasks_ending_as_the_drain_begins_wakes_it() {
        drain_while_tasks_end(2);
    }
}
