//! The per-connection task boundary: panic catching, outcome accounting, and
//! the registry that lets the drain deadline abort what is left.
//!
//! Every task is spawned through [`Tasks`], which tracks it (so the drain can
//! wait for all of them) and keeps its abort handle in a slab (so the drain
//! can abort the ones that outlive the deadline). Each task owns an
//! [`EndGuard`] that records how it ended when it is dropped, whether it
//! returned, panicked or was aborted: every accepted connection is counted in
//! exactly one outcome, which is what makes the shutdown report exact.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::stats::{Counters, Outcome};

type AbortRegistry = Arc<Mutex<Slab<AbortHandle>>>;

/// Spawns, tracks and, at the deadline, aborts connection tasks.
#[derive(Debug)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    aborts: AbortRegistry,
    counters: Arc<Counters>,
}

/// How the drain went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    pub(crate) duration: Duration,
}

impl Tasks {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            aborts: AbortRegistry::default(),
            counters,
        }
    }

    /// Spawns one connection's task; `serve` resolves to how it ended.
    pub(crate) fn spawn<F>(&self, serve: F)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        // Held across the spawn so that a task that ends at once cannot try
        // to deregister before its handle is registered.
        let mut aborts = lock(&self.aborts);
        let entry = aborts.vacant_entry();
        let mut guard = EndGuard {
            counters: Arc::clone(&self.counters),
            aborts: Arc::clone(&self.aborts),
            key: entry.key(),
            // Stays `Aborted` unless `serve` runs to completion.
            outcome: Outcome::Aborted,
        };
        let handle = self.tracker.spawn(async move {
            guard.outcome = serve.await;
            drop(guard);
        });
        entry.insert(handle.abort_handle());
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
            let stragglers = std::mem::take(&mut *lock(&self.aborts));
            tracing::warn!(
                remaining = stragglers.len(),
                ?timeout,
                "drain timeout reached, aborting remaining connections"
            );
            for (_, handle) in stragglers {
                handle.abort();
            }
            self.tracker.wait().await;
        }
        Drain {
            duration: start.elapsed(),
        }
    }
}

/// Records a task's end, however it ends.
struct EndGuard {
    counters: Arc<Counters>,
    aborts: AbortRegistry,
    key: usize,
    outcome: Outcome,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        lock(&self.aborts).try_remove(self.key);
        self.counters.ended(self.outcome);
        tracing::debug!(outcome = ?self.outcome, "connection closed");
    }
}

/// The registry stays consistent even if a thread panicked while holding the
/// lock (slab operations do not panic midway), so poisoning is ignored.
fn lock(aborts: &AbortRegistry) -> MutexGuard<'_, Slab<AbortHandle>> {
    aborts.lock().unwrap_or_else(PoisonError::into_inner)
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
