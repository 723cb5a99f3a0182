//! The per-connection task boundary: panic catching, outcome accounting, and
//! the registry of live connections.
//!
//! Every task is spawned through [`Tasks`], which counts it (so the drain can
//! wait for all of them) and keeps an entry for it in a slab: its abort handle
//! (so the drain deadline and the timeout sweeper can end it) and its
//! connection's record ([`ConnState`]: activity, acceptance time, id, peer).
//! Each task owns an [`EndGuard`], one pointer to that record, that records
//! how the task ended when it is dropped, whether it returned, panicked,
//! timed out or was aborted: every accepted connection is counted in exactly
//! one outcome, which is what makes the shutdown report exact. The guard
//! then frees the connection's places under the limits, so a place is freed
//! only after its outcome is counted.
//!
//! The registry is the one lock on a connection's path: taken briefly by
//! the accept loop after the spawn (slab insert) and by the task's guard when
//! it ends (slab remove), and by the timeout sweeper once a tick (a tenth of
//! the shortest timeout, at least 5 ms) for a scan of the live connections,
//! 512 entries per lock. A connection's reads and writes never take it.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use slab::Slab;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::BoxError;
use crate::conn::record::ConnState;
use crate::stats::Outcome;
use crate::timeout::TimeoutKind;

type Registry = Mutex<Slab<Entry>>;

/// What the registry knows of a live connection.
#[derive(Debug)]
struct Entry {
    abort: AbortHandle,
    /// Also the entry's identity: a slab key is reused once freed.
    state: Arc<ConnState>,
}

/// Spawns, tracks and, at the deadline, aborts connection tasks.
#[derive(Debug)]
pub(crate) struct Tasks {
    registry: Registry,
    /// Tasks spawned and not yet ended (aborted ones included, which the
    /// drain takes out of the registry before they have unwound).
    live: AtomicUsize,
    /// Set when the drain begins: from then on the last task to end wakes it.
    draining: AtomicBool,
    /// Set (under the registry's lock) by [`Tasks::abort_all`]: a task
    /// spawned after it is aborted at once instead of registered.
    closed: AtomicBool,
    ended: Notify,
}

/// How a connection's task ended, before it is counted and logged.
#[derive(Debug)]
pub(crate) enum Handled {
    Completed,
    Failed(BoxError),
    Panicked(Box<dyn Any + Send>),
    /// The listener's preamble (PROXY header, TLS handshake) panicked.
    PreamblePanicked(Box<dyn Any + Send>),
    /// Refused before the handler ran (counted where it was refused).
    Refused,
}

impl<E: Into<BoxError>> From<Result<(), E>> for Handled {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Handled::Completed,
            Err(err) => Handled::Failed(err.into()),
        }
    }
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks {
            registry: Registry::default(),
            live: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ended: Notify::new(),
        }
    }

    /// Spawns the task of the connection `state` records inside `span`;
    /// `serve` resolves to how it ended (a [`Handled`], or the handler's
    /// result), which is logged and counted in the connection's listener's
    /// counters.
    pub(crate) fn spawn<F>(&self, serve: F, span: tracing::Span, state: Arc<ConnState>)
    where
        F: Future + Send + 'static,
        F::Output: Into<Handled>,
    {
        // Counted before the spawn: the guard that uncounts it may run in it.
        self.live.fetch_add(1, Ordering::SeqCst);
        let registered = Arc::clone(&state);
        // The guard is inside the span too, so that the lines it logs when
        // the task ends (aborted or timed out included) carry the connection.
        let guarded = Guarded {
            serve,
            guard: Some(EndGuard {
                state,
                // Stays `Aborted` unless `serve` runs to completion.
                outcome: Outcome::Aborted,
            }),
        };
        span.in_scope(|| tracing::debug!("connection opened"));
        // Without a subscriber that wants the span, skip the wrapper that
        // enters it on every poll: it would cost every idle connection its
        // size and every wake-up its enter and exit, for nothing.
        let handle = if span.is_disabled() {
            tokio::spawn(guarded)
        } else {
            tokio::spawn(guarded.instrument(span))
        };
        // Registered after the spawn, with its abort handle, under one lock
        // (never held across `spawn`, which may drop the future on the spot,
        // as a runtime shutting down does, running the guard that takes it);
        // unless the task has ended already (its guard marked it before it
        // looked for the entry, under the same lock).
        let mut registry = lock(&self.registry);
        if self.closed.load(Ordering::Relaxed) {
            handle.abort();
        } else if !registered.ended.load(Ordering::Relaxed) {
            let entry = registry.vacant_entry();
            registered.key.store(entry.key(), Ordering::Relaxed);
            entry.insert(Entry {
                abort: handle.abort_handle(),
                state: registered,
            });
        }
    }

    /// Aborts every connection for which `expired` names a timeout.
    pub(crate) fn expire(&self, mut expired: impl FnMut(&ConnState) -> Option<TimeoutKind>) {
        self.scan(|state, abort| {
            if let Some(kind) = expired(state) {
                Self::close(state, abort, kind);
            }
        });
    }

    /// Closes a connection for a timeout of `kind`: marked before the abort
    /// so that the guard, which runs when the aborted task is dropped,
    /// counts a timeout, not an abort; once only.
    pub(crate) fn close(state: &ConnState, abort: &AbortHandle, kind: TimeoutKind) {
        if state.expire(kind) {
            abort.abort();
        }
    }

    /// Calls `visit` with every live connection's record and abort handle.
    ///
    /// A chunk of entries at a time, so that the lock, which the accept
    /// loops and ending tasks take too, is never held for long by the
    /// sweeper's thread (which the system may preempt while it holds it).
    pub(crate) fn scan(&self, mut visit: impl FnMut(&Arc<ConnState>, &AbortHandle)) {
        const CHUNK: usize = 512;
        let mut start: usize = 0;
        loop {
            let registry = lock(&self.registry);
            let end = start.saturating_add(CHUNK).min(registry.capacity());
            for key in start..end {
                if let Some(entry) = registry.get(key) {
                    visit(&entry.state, &entry.abort);
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
            entry.abort.abort();
        }
    }

    /// Removes the entry of a task that ended, if it was registered.
    fn remove(&self, state: &Arc<ConnState>) {
        state.ended.store(true, Ordering::Relaxed);
        let mut registry = lock(&self.registry);
        let key = state.key.load(Ordering::Relaxed);
        if registry
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.state, state))
        {
            registry.remove(key);
        }
    }

    /// Counts a task's end, waking the drain after the last one.
    fn ended(&self) {
        // SeqCst with the drain's store and load: either the drain sees no
        // task left, or the last task sees the drain and wakes it.
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 && self.draining.load(Ordering::SeqCst) {
            self.ended.notify_waiters();
        }
    }

    /// Waits until no task is left.
    async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live.load(Ordering::SeqCst) == 0 {
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
        self.draining.store(true, Ordering::SeqCst);
        if tokio::time::timeout_at(deadline, self.all_ended())
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
                entry.abort.abort();
            }
            self.all_ended().await;
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs `serve` and records its outcome in the guard. Hand-written
    /// rather than an `async` block, which would hold `serve` twice (as a
    /// capture and as the future it awaits): on every idle connection.
    struct Guarded<F> {
        #[pin]
        serve: F,
        guard: Option<EndGuard>,
    }
}

impl<F: Future<Output: Into<Handled>>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // One `catch_unwind` for the whole task: the handler's panics, and
        // the preamble's before it. AssertUnwindSafe: after a panic `serve`
        // is never polled again.
        // The handler's error is converted inside too: its `Into<BoxError>`
        // is the user's code.
        let polled = catch_unwind(AssertUnwindSafe(|| {
            this.serve.as_mut().poll(cx).map(Into::into)
        }));
        let handled = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(handled)) => handled,
            Err(payload) => Handled::Panicked(payload),
        };
        if let Some(mut guard) = this.guard.take() {
            // Logging formats the handler's error, whose `Display` may panic
            // too: that counts as a panic, like any other in the task.
            guard.outcome = match catch_unwind(AssertUnwindSafe(|| guard.log(handled))) {
                Ok(outcome) => outcome,
                Err(payload) => {
                    tracing::error!(
                        conn.id = guard.state.id,
                        peer = %guard.state.client_addr(),
                        panic = panic_message(payload.as_ref()),
                        "connection task panicked outside the handler"
                    );
                    Outcome::Panicked
                }
            };
        }
        Poll::Ready(())
    }
}

/// Records a task's end, however it ends: counts its outcome, frees its
/// places under the limits and its registry entry.
struct EndGuard {
    state: Arc<ConnState>,
    outcome: Outcome,
}

impl EndGuard {
    /// Logs how the handler ended, with the connection's id and peer (even
    /// where the debug-level span is filtered out).
    fn log(&self, handled: Handled) -> Outcome {
        let (id, peer) = (self.state.id, self.state.client_addr());
        match handled {
            Handled::Completed => Outcome::Completed,
            Handled::Refused => Outcome::Refused,
            Handled::PreamblePanicked(payload) => {
                tracing::error!(
                    conn.id = id,
                    %peer,
                    panic = panic_message(payload.as_ref()),
                    "connection task panicked before the handler (PROXY header or TLS)"
                );
                Outcome::Panicked
            }
            Handled::Failed(err) => {
                tracing::warn!(conn.id = id, %peer, error = %err, "handler failed");
                Outcome::Failed
            }
            Handled::Panicked(payload) => {
                tracing::error!(
                    conn.id = id,
                    %peer,
                    panic = panic_message(payload.as_ref()),
                    "handler panicked"
                );
                Outcome::Panicked
            }
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let state = &self.state;
        let home = &state.home;
        home.tasks.remove(state);
        let expired = state.expired_by();
        if let (Outcome::Aborted, Some(kind)) = (self.outcome, expired) {
            self.outcome = Outcome::TimedOut(kind);
        }
        home.counters.ended(self.outcome);
        // After the count: the place is free once the outcome is counted.
        home.limits
            .release(if state.per_ip { state.peer.ip() } else { None });
        home.tasks.ended();
        // Logging last: a subscriber that panics cannot leave the place
        // taken or the drain waiting.
        if let Outcome::TimedOut(kind) = self.outcome {
            tracing::info!(
                conn.id = state.id,
                peer = %state.client_addr(),
                timeout = kind.name(),
                "connection timed out"
            );
        }
        tracing::debug!(outcome = ?self.outcome, "connection closed");
    }
}

/// The registry stays consistent even if a thread panicked while holding the
/// lock (slab operations do not panic midway), so poisoning is ignored.
fn lock(registry: &Registry) -> MutexGuard<'_, Slab<Entry>> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The message of a panic payload, when it has one.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admission::Limits;
    use crate::conn::record::Home;
    use crate::{Addr, ShutdownSignal};

    fn home(tasks: &Arc<Tasks>) -> Arc<Home> {
        Arc::new(Home {
            addr: Addr::Unix(None),
            signal: ShutdownSignal::new(Arc::default()),
            counters: Arc::default(),
            tasks: Arc::clone(tasks),
            limits: Arc::new(Limits::new(10_000, None)),
            preamble: None,
        })
    }

    /// Tasks that end before (or while) they are registered leave no entry
    /// behind: an entry would keep its record, and the record its home,
    /// alive for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_ending_at_once_leave_no_entry_and_free_everything() {
        const TASKS: u64 = 2_000;
        let tasks = Arc::new(Tasks::new());
        let home = home(&tasks);
        for id in 0..TASKS {
            let admission = home.limits.admit(home.limits.try_permit().unwrap(), None);
            assert!(!admission.unwrap().keep(), "no per-address place");
            let state = ConnState::new(Arc::clone(&home), id, Addr::Unix(None), 0, false);
            let serve = async { Handled::Completed };
            tasks.spawn(serve, tracing::Span::none(), Arc::new(state));
        }
        let drain = tasks.drain(Instant::now() + Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(20), drain)
            .await
            .unwrap();
        assert_eq!(lock(&tasks.registry).len(), 0, "no entry left");
        assert_eq!(home.counters.snapshot().completed, TASKS);
        assert!(home.limits.has_room());
        assert!(home.limits.try_permit().is_some(), "every place was freed");
        // The last guards drop their records just after counting their end.
        for _ in 0..1_000 {
            if Arc::strong_count(&home) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(Arc::strong_count(&home), 1, "every record was freed");
    }
}
