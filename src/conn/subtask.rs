//! Sub-tasks: the tasks a handler spawns through
//! [`Connection::spawn`](crate::Connection::spawn) (or a [`Spawner`], or a
//! half's `spawn`), which belong to its connection.
//!
//! A connection is made of *parts*: its handler's task and its sub-tasks.
//! It ends when its last part ends, and that part does the end's
//! bookkeeping (`record::end`: the outcome counted, the places under the
//! limits freed, the registry entry removed). So the connection's place is
//! held, and the drain waits for it, until every part has ended; and every
//! path that ends a connection early (a timeout, the drain deadline, `run`
//! dropped) aborts every part, through the registry's
//! [`abort_parts`](crate::conn::registry::Registered::abort_parts).
//!
//! # What it costs
//!
//! A connection that never spawns pays a byte and a word in its record (the
//! byte fits in padding, so the record grows by the word) and one atomic
//! read-modify-write on its own record when its handler ends. The byte,
//! [`ConnState`]'s `parts`, holds three bits:
//!
//! - [`SHARED`]: the first spawn made the connection's [`SubTasks`] (the
//!   word, made lazily) and from then on the parts are counted there, the
//!   handler included;
//! - [`HANDLER_ENDED`]: the handler has ended; if it found `SHARED` unset
//!   it was the only part, and it did the bookkeeping;
//! - [`CLOSING`]: the server is ending the connection (a timeout, the drain
//!   deadline, `run` dropped): no sub-task starts from then on.
//!
//! `SHARED` is only ever set from `0` (handler live, not closing), by a
//! compare-and-swap: a spawn that races with the handler's end or with a
//! close either counts itself in before the handler looks, or finds the
//! connection over and does not start. Past `SHARED`, everything is decided
//! under the [`SubTasks`]' own lock, which no other connection takes: the
//! count of live parts (the part that takes it to 0 does the bookkeeping,
//! once, and no part joins a count of 0), the sub-tasks' abort handles, and
//! what their ends say of the outcome.
//!
//! # The outcome
//!
//! A connection still ends in exactly one outcome, counted once: `panicked`
//! if its handler or any sub-task panicked; else `aborted` (or `timed_out`,
//! for a timeout) if the server ended it before all its parts finished;
//! else its handler's outcome (`completed`, `failed`). A sub-task that the
//! handler aborts through its `JoinHandle` changes nothing.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use once_cell::race::OnceBox;
use slab::Slab;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::conn::record::{self, ConnState};
use crate::stats::Outcome;
use crate::sync::{AtomicU8, Mutex, MutexGuard};

/// Spawns tasks that belong to one connection, as
/// [`Connection::spawn`](crate::Connection::spawn) does: made by
/// [`Connection::spawner`](crate::Connection::spawner), cloneable, and
/// `Send + Sync + 'static`, so that the connection itself (or anything else
/// the handler owns) can move into a sub-task, and a sub-task can spawn
/// more.
///
/// A spawner outlives its connection harmlessly: a task spawned once the
/// connection has ended is never started (see
/// [`Connection::spawn`](crate::Connection::spawn)).
///
/// # Examples
///
/// A handler that hands the whole connection to a sub-task and returns; the
/// connection keeps its place under the limits until the sub-task ends:
///
/// ```
/// use switchboard::{handler_fn, Connection};
/// use tokio::io::AsyncWriteExt;
///
/// let handler = handler_fn(|conn: Connection| async move {
///     let tasks = conn.spawner();
///     tasks.spawn(async move {
///         let mut conn = conn;
///         conn.write_all(b"served by a sub-task\n").await
///     });
///     Ok::<_, std::io::Error>(())
/// });
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct Spawner {
    state: Arc<ConnState>,
}

impl Spawner {
    pub(crate) fn new(state: Arc<ConnState>) -> Self {
        Spawner { state }
    }

    /// Spawns `future` as a task of the connection (see
    /// [`Connection::spawn`](crate::Connection::spawn)).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        spawn(&self.state, future)
    }

    /// The connection's number (see [`Connection::id`](crate::Connection::id)).
    pub fn id(&self) -> u64 {
        self.state.id
    }
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawner")
            .field("conn", &self.state.id)
            .finish_non_exhaustive()
    }
}

/// Spawns `future` as a part of the connection `state` records: counted in
/// before the spawn, its abort handle kept after it. If the connection has
/// ended or is closing, `future` is dropped unpolled and the handle given
/// back is of a task already aborted.
pub(crate) fn spawn<F>(state: &Arc<ConnState>, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let parts = state.parts();
    let Some(key) = parts.join() else {
        drop(future);
        tracing::debug!(
            conn.id = state.id,
            "sub-task not started: its connection has ended or is being closed"
        );
        let refused = tokio::spawn(std::future::pending());
        refused.abort();
        return refused;
    };
    let supervised = Supervised {
        future,
        guard: PartGuard {
            state: Arc::clone(state),
            key,
            end: PartEnd::Unfinished,
        },
    };
    // In the span of whoever spawns it (the connection's, from its handler
    // or another sub-task), unless no subscriber wants it: as the handler's
    // task, without the wrapper's cost when it would do nothing.
    let span = tracing::Span::current();
    let handle = if span.is_disabled() {
        tokio::spawn(supervised)
    } else {
        tokio::spawn(supervised.instrument(span))
    };
    // After the spawn, never across it: `spawn` may drop the future on the
    // spot (a runtime shutting down), running its guard, which takes the
    // lock.
    parts.attach(key, handle.abort_handle());
    handle
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

/// Sub-tasks have been made: the parts are counted in [`SubTasks`].
pub(crate) const SHARED: u8 = 1;
/// The handler has ended.
pub(crate) const HANDLER_ENDED: u8 = 2;
/// The server is ending the connection: no sub-task starts.
pub(crate) const CLOSING: u8 = 4;

/// A connection's sub-tasks, made at its first spawn.
#[derive(Debug)]
pub(crate) struct SubTasks {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The parts not yet ended: the handler (until it ends) and the
    /// sub-tasks. Once 0, the connection has ended, and no part joins.
    live: usize,
    /// One slot per live sub-task (and per one that ended before its
    /// handle was attached, until it is).
    slots: Slab<Slot>,
    /// Set when the server ends the connection (or its handler's task is
    /// aborted): sub-tasks are aborted, and none starts.
    closing: bool,
    /// How the handler ended, once it has.
    handler: Option<Outcome>,
    /// Whether a sub-task panicked.
    panicked: bool,
    /// Whether a sub-task was aborted while the connection was closing.
    cut: bool,
}

/// A sub-task's slot: freed by the second of its two events, the attach of
/// its abort handle and its end, so that its key is not reused between
/// the two (`spawn` and `attach` are not one step).
#[derive(Debug)]
struct Slot {
    abort: Option<AbortHandle>,
    ended: bool,
}

/// How a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartEnd {
    /// Its future completed.
    Finished,
    /// Its future panicked.
    Panicked,
    /// Its future was dropped before it completed (aborted).
    Unfinished,
}

impl SubTasks {
    fn new() -> Self {
        SubTasks {
            inner: Mutex::new(Inner {
                // The handler: the first spawn comes from a live handler.
                live: 1,
                slots: Slab::new(),
                closing: false,
                handler: None,
                panicked: false,
                cut: false,
            }),
        }
    }

    /// The lock is never held across user code or another lock, and
    /// every change under it is complete before anything that could panic:
    /// poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// The connection's outcome, once its last part ended (see the module's
    /// docs).
    fn outcome(&self) -> Outcome {
        let handler = self
            .handler
            .expect("the handler is a part: none is left once it ended");
        if self.panicked {
            Outcome::Panicked
        } else if self.cut && handler != Outcome::Panicked {
            Outcome::Aborted
        } else {
            handler
        }
    }

    /// Marks the connection closing; the abort handles of its sub-tasks,
    /// to abort once the lock is released.
    fn close(&mut self) -> Vec<AbortHandle> {
        self.closing = true;
        self.slots
            .iter()
            .filter_map(|(_, slot)| slot.abort.clone())
            .collect()
    }
}

/// A connection's parts, as its record holds them: the state byte and the
/// lazily made [`SubTasks`] (fields of the record, not a struct of their
/// own, so that the byte can sit in the record's padding).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) state: &'a AtomicU8,
    pub(crate) subs: &'a OnceBox<SubTasks>,
}

impl Parts<'_> {
    /// Counts a sub-task in; its slot's key, or `None` if the connection
    /// has ended or is closing.
    pub(crate) fn join(self) -> Option<usize> {
        let seen = self.state.load(Ordering::Acquire);
        if seen & SHARED == 0 {
            if seen != 0 {
                return None; // the handler ended alone, or closing
            }
            // Made before `SHARED` is published: whoever sees the bit
            // finds them.
            self.subs.get_or_init(|| Box::new(SubTasks::new()));
            if let Err(now) =
                self.state
                    .compare_exchange(0, SHARED, Ordering::AcqRel, Ordering::Acquire)
            {
                if now & SHARED == 0 {
                    return None; // ended or closing meanwhile
                }
                // Another spawn set it.
            }
        }
        let subs = self.subs.get().expect("made before SHARED is set");
        let mut inner = subs.lock();
        if inner.live == 0 || inner.closing {
            return None;
        }
        inner.live += 1;
        Some(inner.slots.insert(Slot {
            abort: None,
            ended: false,
        }))
    }

    /// Keeps the abort handle of the sub-task counted in as `key`, or
    /// frees its slot if it has ended already; aborts it if the connection
    /// is closing.
    pub(crate) fn attach(self, key: usize, abort: AbortHandle) {
        let subs = self.subs.get().expect("a sub-task joined, so they exist");
        let closing = {
            let mut inner = subs.lock();
            let slot = inner
                .slots
                .get_mut(key)
                .expect("a slot is freed by the second of attach and the end");
            if slot.ended {
                inner.slots.remove(key);
            } else {
                slot.abort = Some(abort.clone());
            }
            inner.closing
        };
        if closing {
            abort.abort();
        }
    }

    /// The sub-task counted in as `key` has ended as `end`: the
    /// connection's outcome if it was the last part.
    pub(crate) fn subtask_ended(self, key: usize, end: PartEnd) -> Option<Outcome> {
        let subs = self.subs.get().expect("a sub-task joined, so they exist");
        let mut inner = subs.lock();
        let slot = inner
            .slots
            .get_mut(key)
            .expect("a slot is freed by the second of attach and the end");
        if slot.abort.is_some() {
            inner.slots.remove(key);
        } else {
            slot.ended = true;
        }
        match end {
            PartEnd::Panicked => inner.panicked = true,
            PartEnd::Unfinished if inner.closing => inner.cut = true,
            PartEnd::Finished | PartEnd::Unfinished => {}
        }
        inner.live -= 1;
        (inner.live == 0).then(|| inner.outcome())
    }

    /// The handler has ended with `outcome`: the connection's outcome if
    /// it was the last part. A handler whose task was aborted takes its
    /// sub-tasks with it.
    pub(crate) fn handler_ended(self, outcome: Outcome) -> Option<Outcome> {
        let seen = self.state.fetch_or(HANDLER_ENDED, Ordering::AcqRel);
        if seen & SHARED == 0 {
            // The only part; no sub-task can join from now on.
            return Some(outcome);
        }
        let subs = self.subs.get().expect("made before SHARED is set");
        let (last, doomed) = {
            let mut inner = subs.lock();
            inner.handler = Some(outcome);
            let doomed = if outcome == Outcome::Aborted && !inner.closing {
                inner.close()
            } else {
                Vec::new()
            };
            inner.live -= 1;
            ((inner.live == 0).then(|| inner.outcome()), doomed)
        };
        for abort in doomed {
            abort.abort();
        }
        last
    }

    /// The server is ending the connection: aborts its sub-tasks, and any
    /// spawned from now on.
    pub(crate) fn close(self) {
        let seen = self.state.fetch_or(CLOSING, Ordering::AcqRel);
        if seen & SHARED == 0 {
            return; // no sub-task, and none can start now
        }
        let subs = self.subs.get().expect("made before SHARED is set");
        let doomed = subs.lock().close();
        // Outside the lock: an abort may drop the task's future on the spot
        // (on a runtime shutting down), whose guard takes it.
        for abort in doomed {
            abort.abort();
        }
    }
}

pin_project_lite::pin_project! {
    /// A sub-task's future: catches its panic, to log and count it, and
    /// records its end in the guard.
    struct Supervised<F> {
        // Before the guard: dropped first, so that what the future holds
        // (the connection itself, often) is gone when the end is counted.
        #[pin]
        future: F,
        guard: PartGuard,
    }
}

impl<F: Future> Future for Supervised<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // AssertUnwindSafe: after a panic the future is never polled again.
        match catch_unwind(AssertUnwindSafe(|| this.future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                this.guard.end = PartEnd::Finished;
                Poll::Ready(output)
            }
            Err(payload) => {
                // Recorded first: a subscriber that panics below cannot
                // change how the part is counted.
                this.guard.end = PartEnd::Panicked;
                let state = &this.guard.state;
                tracing::error!(
                    conn.id = state.id,
                    peer = %state.client_addr(),
                    panic = panic_message(payload.as_ref()),
                    "connection sub-task panicked"
                );
                // On to tokio, so that the `JoinHandle` says it panicked;
                // without the panic hook's second message.
                resume_unwind(payload)
            }
        }
    }
}

/// Records a sub-task's end, however it ends; does the connection's end if
/// it was the last part.
struct PartGuard {
    state: Arc<ConnState>,
    key: usize,
    end: PartEnd,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(outcome) = self.state.parts().subtask_ended(self.key, self.end) {
            record::end(&self.state, outcome);
        }
    }
}

#[cfg(all(test, not(switchboard_loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Addr, ShutdownSignal};

    fn record() -> Arc<ConnState> {
        Arc::new(ConnState::detached(
            1,
            Addr::Unix(None),
            Addr::Unix(None),
            ShutdownSignal::new(Arc::default()),
        ))
    }

    #[test]
    fn a_handler_alone_ends_the_connection_and_no_part_joins_after() {
        let state = record();
        assert_eq!(
            state.parts().handler_ended(Outcome::Failed),
            Some(Outcome::Failed)
        );
        assert!(state.parts().subs.get().is_none(), "nothing made");
        assert_eq!(state.parts().join(), None, "ended: no part joins");
    }

    #[test]
    fn the_last_part_ends_the_connection_with_the_rule_s_outcome() {
        let cases = [
            // (handler, sub-task, closing first, outcome)
            (
                Outcome::Completed,
                PartEnd::Finished,
                false,
                Outcome::Completed,
            ),
            (Outcome::Failed, PartEnd::Finished, false, Outcome::Failed),
            (
                Outcome::Completed,
                PartEnd::Panicked,
                false,
                Outcome::Panicked,
            ),
            (Outcome::Aborted, PartEnd::Panicked, true, Outcome::Panicked),
            (
                Outcome::Completed,
                PartEnd::Unfinished,
                true,
                Outcome::Aborted,
            ),
            // Aborted by the handler itself, not by the server.
            (
                Outcome::Completed,
                PartEnd::Unfinished,
                false,
                Outcome::Completed,
            ),
            (
                Outcome::Panicked,
                PartEnd::Unfinished,
                true,
                Outcome::Panicked,
            ),
        ];
        for (handler, sub, closing, expected) in cases {
            let state = record();
            let parts = state.parts();
            let key = parts.join().expect("a live handler's spawn joins");
            if closing {
                parts.close();
                assert_eq!(parts.join(), None, "closing: no part joins");
            }
            assert_eq!(parts.handler_ended(handler), None, "a sub-task is left");
            assert_eq!(
                parts.subtask_ended(key, sub),
                Some(expected),
                "{handler:?} then {sub:?}, closing {closing}"
            );
            assert_eq!(parts.join(), None, "ended: no part joins");
        }
    }

    #[test]
    fn a_sub_task_that_ends_before_its_attach_keeps_its_slot_until_then() {
        let state = record();
        let parts = state.parts();
        let first = parts.join().unwrap();
        assert_eq!(parts.subtask_ended(first, PartEnd::Finished), None);
        // The slot is still taken: a new sub-task gets another key.
        let second = parts.join().unwrap();
        assert_ne!(first, second);
        assert_eq!(parts.handler_ended(Outcome::Completed), None);
        assert_eq!(
            parts.subtask_ended(second, PartEnd::Finished),
            Some(Outcome::Completed)
        );
    }

    /// A spawn on a closing connection never polls its future: the handle
    /// says it was cancelled.
    #[tokio::test]
    async fn a_spawn_on_a_closing_connection_is_aborted_unstarted() {
        let state = record();
        state.parts().close();
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&polled);
        let handle = spawn(&state, async move { flag.store(true, Ordering::SeqCst) });
        let joined = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("an aborted task ends");
        assert!(joined.unwrap_err().is_cancelled());
        assert!(!polled.load(Ordering::SeqCst), "the future was never run");
    }

    /// Closing aborts the running sub-tasks: their futures are dropped.
    #[tokio::test]
    async fn closing_aborts_the_running_sub_tasks() {
        let state = record();
        let (alive, dropped) = tokio::sync::oneshot::channel::<()>();
        let handle = spawn(&state, async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        state.parts().close();
        let joined = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("an aborted task ends");
        assert!(joined.unwrap_err().is_cancelled());
        assert!(dropped.await.is_err(), "the future was dropped");
    }
}

/// Model checks of the part count (see [`crate::sync`] for how to run
/// them): whatever the interleaving of the handler's end, spawns, sub-task
/// ends and a close, the connection's end is done exactly once, and no
/// part joins a connection that ended.
#[cfg(all(test, switchboard_loom))]
mod loom_models {
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    use super::*;

    struct Record {
        state: AtomicU8,
        subs: OnceBox<SubTasks>,
        /// How many times a part found itself the last.
        ends: AtomicUsize,
    }

    impl Record {
        fn new() -> Arc<Record> {
            Arc::new(Record {
                state: AtomicU8::new(0),
                subs: OnceBox::new(),
                ends: AtomicUsize::new(0),
            })
        }

        fn parts(&self) -> Parts<'_> {
            Parts {
                state: &self.state,
                subs: &self.subs,
            }
        }

        fn ended(&self, last: Option<Outcome>) {
            if last.is_some() {
                self.ends.fetch_add(1, Ordering::Relaxed);
            }
        }

        /// A sub-task's whole life, if it joins: counted in, ended.
        fn sub_task(&self) {
            if let Some(key) = self.parts().join() {
                self.ended(self.parts().subtask_ended(key, PartEnd::Finished));
            }
        }

        fn assert_ended_once(&self) {
            assert_eq!(self.ends.load(Ordering::Relaxed), 1, "ended once");
            assert_eq!(self.parts().join(), None, "no part joins once ended");
        }
    }

    /// The handler ends while a first sub-task is spawned (from a
    /// connection handed to another task): either the spawn counts itself
    /// in first, or it finds the connection over.
    #[test]
    fn the_handler_ending_as_its_first_sub_task_is_spawned_ends_the_connection_once() {
        loom::model(|| {
            let record = Record::new();
            let spawner = {
                let record = Arc::clone(&record);
                thread::spawn(move || record.sub_task())
            };
            record.ended(record.parts().handler_ended(Outcome::Completed));
            spawner.join().expect("spawner");
            record.assert_ended_once();
        });
    }

    /// A sub-task spawns another and ends, while the handler ends.
    #[test]
    fn the_last_of_three_parts_ending_at_once_ends_the_connection_once() {
        loom::model(|| {
            let record = Record::new();
            let first = record.parts().join().expect("the handler is live");
            let sub_task = {
                let record = Arc::clone(&record);
                thread::spawn(move || {
                    record.sub_task();
                    record.ended(record.parts().subtask_ended(first, PartEnd::Finished));
                })
            };
            record.ended(record.parts().handler_ended(Outcome::Completed));
            sub_task.join().expect("sub-task");
            record.assert_ended_once();
        });
    }

    /// The server closes the connection while its handler spawns a first
    /// sub-task and is aborted: a sub-task that joined is cut, and the
    /// connection ends aborted, once.
    #[test]
    fn a_close_racing_a_first_spawn_lets_no_sub_task_escape() {
        loom::model(|| {
            let record = Record::new();
            let closer = {
                let record = Arc::clone(&record);
                thread::spawn(move || record.parts().close())
            };
            let joined = record.parts().join();
            closer.join().expect("closer");
            // Closed by now: a sub-task that joined is told so (its abort,
            // here, is its end unfinished).
            record.ended(record.parts().handler_ended(Outcome::Aborted));
            if let Some(key) = joined {
                let last = record.parts().subtask_ended(key, PartEnd::Unfinished);
                assert_eq!(last, Some(Outcome::Aborted));
                record.ended(last);
            }
            record.assert_ended_once();
        });
    }
}
