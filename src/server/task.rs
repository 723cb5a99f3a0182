//! A connection's task: the boundary that catches its panics and counts
//! how it ended.
//!
//! Every task owns an [`EndGuard`], one pointer to the connection's record,
//! that records how the task ended when it is dropped, whether it returned,
//! panicked, timed out or was aborted: every accepted connection is counted
//! in exactly one outcome, which is what makes the shutdown report exact.
//! If the handler was the connection's last part (it spawned no sub-task
//! still running: see `conn/subtask.rs`), the guard then frees the
//! connection's places under the limits and its entry in the registry, so a
//! place is freed only after its outcome is counted; else the last
//! sub-task to end does.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::Instrument;

use crate::conn::Job;
use crate::conn::record::{self, ConnState, Home, Tasks};
use crate::conn::subtask::panic_message;
// Where the benchmarks' bookkeeping finds them.
pub(crate) use crate::conn::record::ended;
use crate::handler::sealed::SpawnConnection;
use crate::preamble::Preamble;
use crate::stats::Outcome;
use crate::{BoxError, Connection, Handler};

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

/// Spawns the task of the connection `state` records inside `span`;
/// `serve` resolves to how it ended (a [`Handled`], or the handler's
/// result), which is logged and counted in the connection's listener's
/// counters.
pub(crate) fn spawn<F>(tasks: &Tasks, serve: F, span: tracing::Span, state: Arc<ConnState>)
where
    F: Future + Send + 'static,
    F::Output: Into<Handled>,
{
    // Registered before the spawn: the guard that removes it may run in it.
    tasks.insert(Arc::clone(&state));
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
    tasks.attach(&registered, &handle);
}

impl<H: Handler> SpawnConnection for H {
    #[allow(private_interfaces)] // see the declaration
    fn spawn_connection(&self, tasks: &Tasks, job: Job, preamble: Option<&Arc<Preamble>>) {
        spawn_connection::<H>(tasks, job, preamble);
    }
}

/// Handler futures up to this size live in the task itself; larger ones in
/// a box of their own.
///
/// A future is moved by copying its whole layout, and between `spawn` and
/// tokio's task cell the task future is moved about ten times: inline, a
/// 1.6 KB HTTP handler future cost ~4,000 instructions of `memcpy` per
/// connection (callgrind), far more than the allocation a box costs. A small
/// future costs little to move, and inline it saves the box's memory and
/// allocator overhead on every idle connection.
const INLINE_FUTURE_LIMIT: usize = 512;

/// Spawns a connection's task: the preamble (PROXY header, TLS), then the
/// handler, with panics caught and the outcome counted. Generic over the
/// handler, so that its future is polled without dynamic dispatch and its
/// error converted only when there is one.
fn spawn_connection<H: Handler>(tasks: &Tasks, job: Job, preamble: Option<&Arc<Preamble>>) {
    // The size of `H::handle`'s future, from its type alone (a constant).
    fn future_size<'a, H: 'a, F>(_: impl FnOnce(&'a H, Connection) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    let Job { conn, span } = job;
    let state = Arc::clone(&conn.state);
    let handler = Arc::clone(&state.home);
    let inline = future_size(H::handle) <= INLINE_FUTURE_LIMIT;
    // Only listeners with a preamble have the layer that runs it.
    // A handler's future is polled by the task's guard directly, or through
    // its box: no layer in between but the one that holds the handler.
    match (inline, preamble) {
        (true, None) => spawn(tasks, handle::<H>(handler, conn), span, state),
        (false, None) => spawn(tasks, Box::pin(handle::<H>(handler, conn)), span, state),
        (true, Some(preamble)) => {
            let serve = after_preamble(conn, Arc::clone(preamble), |conn| {
                handle::<H>(handler, conn)
            });
            spawn(tasks, serve, span, state);
        }
        (false, Some(preamble)) => {
            let serve = after_preamble(conn, Arc::clone(preamble), |conn| {
                Box::pin(handle::<H>(handler, conn))
            });
            spawn(tasks, serve, span, state);
        }
    }
}

/// A connection's handler, with the listener's part that holds it. An
/// `async fn`'s arguments keep their room in its future for its whole life,
/// so there are as few as can be, and no locals but the borrow: a local
/// moved out of keeps its room too. `H::handle`, not `Arc<H>`'s `Handler`
/// impl, which would box.
async fn handle<H: Handler>(home: Arc<Home>, conn: Connection) -> Result<(), H::Error> {
    let handler = home
        .handler
        .downcast_ref::<H>()
        .expect("a listener's part holds its server's handler, of this type");
    H::handle(handler, conn).await
}

/// Runs the listener's preamble on `conn`, then `serve` if it accepted it.
async fn after_preamble<F, S, E>(conn: Connection, preamble: Arc<Preamble>, serve: S) -> Handled
where
    S: FnOnce(Connection) -> F,
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    match prepare(conn, &preamble).await {
        Ok(Some(conn)) => serve(conn).await.into(),
        Ok(None) => Handled::Refused,
        Err(payload) => Handled::PreamblePanicked(payload),
    }
}

/// Runs the listener's preamble on `conn`: `Ok(None)` if it refused the
/// connection, `Err` with the payload if it panicked.
///
/// The preamble's future is boxed, for the same reason as large handler
/// futures: inline, its state (a header buffer, a TLS handshake) would make
/// the task of every connection on the listener large.
async fn prepare(
    conn: Connection,
    preamble: &Preamble,
) -> Result<Option<Connection>, Box<dyn Any + Send>> {
    let home = Arc::clone(&conn.state.home);
    let mut running = Box::pin(preamble.run(conn, &home.counters));
    // Caught here rather than by the task's guard, to tell a panic before
    // the handler from the handler's own. AssertUnwindSafe: after a panic
    // the preamble's future is dropped, never polled again.
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(ran)) => Poll::Ready(Ok(ran.ok())),
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
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
        match state.parts().handler_ended(self.outcome) {
            Some(outcome) => record::end(state, outcome),
            None => tracing::debug!(
                outcome = ?self.outcome,
                "handler ended; the connection's sub-tasks still run"
            ),
        }
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
            handler: Arc::new(()),
            shard: 0,
            addr: Addr::Unix(None),
            signal: ShutdownSignal::new(Arc::default()),
            counters: Arc::default(),
            tasks: Arc::clone(tasks),
            limits: Arc::new(Limits::new(10_000, None)),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::ConnMetrics::noop(),
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
            spawn(&tasks, serve, tracing::Span::none(), Arc::new(state));
        }
        let drain = tasks.drain(tokio::time::Instant::now() + Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(20), drain)
            .await
            .unwrap();
        assert_eq!(tasks.len(), 0, "no entry left");
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
