//! The per-connection task boundary: panic catching, outcome accounting, and
//! the registry of live connections.
//!
//! Every task is spawned through [`Tasks`], which tracks it (so the drain can
//! wait for all of them) and keeps an entry for it in a slab: its abort handle
//! (so the drain deadline and the timeout sweeper can end it), its activity
//! record and when it was accepted. Each task owns an [`EndGuard`] that
//! records how it ended when it is dropped, whether it returned, panicked,
//! timed out or was aborted: every accepted connection is counted in exactly
//! one outcome, which is what makes the shutdown report exact. The guard also
//! holds the connection's admission, so its place under the limits is freed
//! only after its outcome is counted.
//!
//! The registry is the one lock on a connection's path: taken briefly when
//! the task starts and when it ends (slab insert and remove), and by the
//! timeout sweeper for one scan of the live connections per tick (a tenth of
//! the shortest timeout, at least 5 ms). Connection tasks never wait on it
//! while polling.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use slab::Slab;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::limit::Admission;
use crate::stats::{Counters, Outcome};
use crate::timeout::{ConnState, TimeoutKind};

type Registry = Arc<Mutex<Slab<Entry>>>;

/// What the registry knows of a live connection.
#[derive(Debug)]
struct Entry {
    /// `None` for the moment between the spawn and its registration.
    abort: Option<AbortHandle>,
    /// Also the entry's identity: a slab key is reused once freed.
    state: Arc<ConnState>,
    accepted_at: u64,
}

/// Spawns, tracks and, at the deadline, aborts connection tasks.
#[derive(Debug)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    registry: Registry,
}

/// How the drain went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    pub(crate) duration: Duration,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            registry: Registry::default(),
        }
    }

    /// Spawns one connection's task inside `span`; `serve` resolves to how
    /// it ended, which is counted in `counters` (its listener's).
    pub(crate) fn spawn<F>(
        &self,
        serve: F,
        span: tracing::Span,
        counters: Arc<Counters>,
        state: Arc<ConnState>,
        accepted_at: u64,
        admission: Admission,
    ) where
        F: Future<Output = Outcome> + Send + 'static,
    {
        // Registered before the spawn, completed after it: the lock is never
        // held across `spawn`, which may drop the future on the spot (a
        // runtime shutting down does), running the guard that takes it.
        let key = lock(&self.registry).insert(Entry {
            abort: None,
            state: Arc::clone(&state),
            accepted_at,
        });
        let guard = EndGuard {
            counters,
            registry: Arc::clone(&self.registry),
            key,
            // Stays `Aborted` unless `serve` runs to completion.
            outcome: Outcome::Aborted,
            state: Arc::clone(&state),
            _admission: admission,
        };
        // The guard is inside the span too, so that the lines it logs when
        // the task ends (aborted or timed out included) carry the connection.
        let guarded = Guarded {
            serve,
            guard: Some(guard),
        };
        // Without a subscriber that wants the span, skip the wrapper that
        // enters it on every poll: it would cost every idle connection its
        // size and every wake-up its enter and exit, for nothing.
        let handle = if span.is_disabled() {
            self.tracker.spawn(guarded)
        } else {
            self.tracker.spawn(guarded.instrument(span))
        };
        // Unless the task has ended already (and the key gone to another).
        if let Some(entry) = lock(&self.registry).get_mut(key) {
            if Arc::ptr_eq(&entry.state, &state) {
                entry.abort = Some(handle.abort_handle());
            }
        }
    }

    /// Aborts every connection for which `expired` names a timeout.
    pub(crate) fn expire(&self, mut expired: impl FnMut(&ConnState, u64) -> Option<TimeoutKind>) {
        let registry = lock(&self.registry);
        for (_, entry) in registry.iter() {
            // An entry without its handle yet is left for the next tick.
            let Some(abort) = &entry.abort else { continue };
            if let Some(kind) = expired(&entry.state, entry.accepted_at) {
                // Marked before the abort so that the guard, which runs when
                // the aborted task is dropped, counts a timeout, not an abort.
                if entry.state.expire(kind) {
                    abort.abort();
                }
            }
        }
    }

    /// Waits up to `timeout` for every task to end, then aborts the rest and
    /// waits for them to unwind.
    ///
    /// A handler that blocks its thread without ever yielding cannot be
    /// aborted; the drain then waits for it.
    pub(crate) async fn drain(&self, timeout: Duration) -> Drain {
        self.tracker.close();
        let start = Instant::now();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            // Take the handles out so that the lock is not held while
            // aborting; the aborted tasks' guards then find nothing to remove.
            let stragglers = std::mem::take(&mut *lock(&self.registry));
            tracing::warn!(
                remaining = stragglers.len(),
                ?timeout,
                "drain timeout reached, aborting remaining connections"
            );
            for abort in stragglers.into_iter().filter_map(|(_, entry)| entry.abort) {
                abort.abort();
            }
            self.tracker.wait().await;
        }
        Drain {
            duration: start.elapsed(),
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

impl<F: Future<Output = Outcome>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // The handler's panics are caught (and logged with the connection)
        // closer to it; this catches the rest of the task (the preamble, an
        // error's conversion or display), so that it counts as a panic too.
        // AssertUnwindSafe: after a panic `serve` is never polled again.
        let polled = catch_unwind(AssertUnwindSafe(|| this.serve.as_mut().poll(cx)));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome,
            Err(payload) => {
                tracing::error!(
                    panic = panic_message(payload.as_ref()),
                    "connection task panicked outside the handler"
                );
                Outcome::Panicked
            }
        };
        if let Some(mut guard) = this.guard.take() {
            guard.outcome = outcome;
        }
        Poll::Ready(())
    }
}

/// Records a task's end, however it ends.
struct EndGuard {
    counters: Arc<Counters>,
    registry: Registry,
    key: usize,
    outcome: Outcome,
    state: Arc<ConnState>,
    /// Dropped after the fields above have done their work: the place under
    /// the limits is freed once the outcome is counted.
    _admission: Admission,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        if registry
            .get(self.key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.state, &self.state))
        {
            registry.remove(self.key);
        }
        drop(registry);
        if self.outcome == Outcome::Aborted {
            if let Some(kind) = self.state.expired_by() {
                self.outcome = Outcome::TimedOut(kind);
                tracing::debug!(timeout = ?kind, "connection timed out");
            }
        }
        self.counters.ended(self.outcome);
        tracing::debug!(outcome = ?self.outcome, "connection closed");
    }
}

/// The registry stays consistent even if a thread panicked while holding the
/// lock (slab operations do not panic midway), so poisoning is ignored.
fn lock(registry: &Registry) -> MutexGuard<'_, Slab<Entry>> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls a future inside `catch_unwind`, turning a panic into an error value
/// so that the task can log and count it.
#[derive(Debug)]
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        // AssertUnwindSafe: after a panic the future is never polled again;
        // the task drops it and records the panic.
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
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
