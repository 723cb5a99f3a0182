//! The cancellation channel: one trigger, many observers.
//!
//! Two signals keep the phases of a shutdown in order. The *trigger* is what
//! [`ShutdownHandle::shutdown`] (or the builder's `shutdown_on` future)
//! fires; the accept loops watch it, and so does
//! [`ShutdownHandle::requested`] for the application's own tasks. When they have closed the listeners, the
//! server fires the *connections' signal* that every [`ShutdownSignal`]
//! watches. So a handler that sees
//! its signal knows that new connects are already refused, and a connection
//! accepted in the same instant as the trigger still has a live signal that
//! fires right after.
//!
//! Both are a hand-written [`Fired`] rather than tokio-util's
//! `CancellationToken` because they sit on hot paths (every accept, every
//! connection): asking is one atomic load (the token takes a lock shared by
//! every waiter), and a waiting future registers its waker once and then, on
//! every poll by the same task, only compares wakers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::sync::{AtomicBool, Mutex, MutexGuard};

/// Triggers a server's graceful shutdown.
///
/// Cheap to clone, `Send + Sync`: hand it to a signal handler, an admin
/// endpoint or a test. Triggering is idempotent; triggering before
/// [`Server::run`](crate::Server::run) starts makes `run` shut down at once.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(server: switchboard::Server) -> Result<(), switchboard::Error> {
/// let handle = server.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::time::sleep(std::time::Duration::from_secs(60)).await;
///     handle.shutdown();
/// });
/// let report = server.run().await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    /// The server's trigger; for a connection served outside a server
    /// ([`testing`](crate::testing)), the connection's signal itself.
    trigger: Arc<Fired>,
}

impl ShutdownHandle {
    pub(crate) fn new(trigger: Arc<Fired>) -> Self {
        ShutdownHandle { trigger }
    }

    /// Begins the graceful shutdown: stop accepting, signal every connection,
    /// drain. Returns at once; calling it again does nothing.
    pub fn shutdown(&self) {
        self.trigger.fire();
    }

    /// Whether shutdown has been triggered.
    pub fn is_shutting_down(&self) -> bool {
        self.trigger.is_fired()
    }

    /// Completes once shutdown has been requested: by
    /// [`shutdown`](ShutdownHandle::shutdown) on any clone of this handle, by
    /// the future given to [`Builder::shutdown_on`](crate::Builder::shutdown_on)
    /// (such as [`termination`](crate::termination) on Ctrl-C or SIGTERM),
    /// or by a listener failing ([`Error::Accept`](crate::Error::Accept)).
    /// Completes at once if that has already happened.
    ///
    /// It lets the application's own background tasks (a metrics pusher, a
    /// cache refresher) stop when the server does, whatever stopped it. It
    /// completes when the shutdown *begins*, not when [`Server::run`]
    /// returns: the connections are draining then. The builder's future is
    /// watched by `run`, so it requests shutdown only while `run` runs.
    ///
    /// [`Server::run`]: crate::Server::run
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has been requested.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(server: switchboard::Server) -> Result<(), switchboard::Error> {
    /// let handle = server.shutdown_handle();
    /// let refresher = tokio::spawn(async move {
    ///     let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
    ///     loop {
    ///         tokio::select! {
    ///             _ = every_minute.tick() => { /* refresh a cache */ }
    ///             () = handle.requested() => return,
    ///         }
    ///     }
    /// });
    /// let report = server.run().await?;
    /// refresher.await.expect("the refresher does not panic");
    /// # let _ = report;
    /// # Ok(()) }
    /// ```
    pub fn requested(&self) -> ShutdownRequested {
        Fired::wait(&self.trigger)
    }
}

/// Observes the server's shutdown from inside a connection.
///
/// Every [`Connection`](crate::Connection) carries one
/// ([`Connection::shutdown_signal`](crate::Connection::shutdown_signal)); clone
/// it into tasks the handler spawns. It fires once the listeners are closed,
/// and stays fired: a signal cloned or created after shutdown began is fired
/// too.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    fired: Arc<Fired>,
}

impl ShutdownSignal {
    pub(crate) fn new(fired: Arc<Fired>) -> Self {
        ShutdownSignal { fired }
    }

    /// Whether the server is shutting down. One atomic load: cheap enough to
    /// ask after every request.
    pub fn is_shutting_down(&self) -> bool {
        self.fired.is_fired()
    }

    /// Completes when the server begins shutting down (at once if it already
    /// has).
    ///
    /// The future owns what it needs and borrows nothing, so it can be made
    /// once and raced against reads of the connection in every loop
    /// iteration; see [`Connection::shutdown_requested`](crate::Connection::shutdown_requested).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has begun.
    pub fn shutdown_requested(&self) -> ShutdownRequested {
        Fired::wait(&self.fired)
    }
}

/// The future of [`ShutdownSignal::shutdown_requested`],
/// [`Connection::shutdown_requested`](crate::Connection::shutdown_requested)
/// and [`ShutdownHandle::requested`]: completes when the server begins
/// shutting down.
///
/// It is `Unpin`, so `tokio::select!` can take `&mut` of it without pinning.
#[must_use = "futures do nothing unless polled"]
pub struct ShutdownRequested {
    fired: Arc<Fired>,
    /// Where this future's waker is registered, and a copy of it to tell
    /// whether a later poll comes from the same task.
    registered: Option<(usize, Waker)>,
}

impl Future for ShutdownRequested {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.is_fired() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registered {
            if waker.will_wake(cx.waker()) {
                // Registered for this very task: `fire` will wake it.
                return Poll::Pending;
            }
        }
        let this = &mut *self;
        let mut waiters = this.fired.waiters();
        // Checked again under the lock: `fire` sets the flag before it takes
        // the lock to wake the waiters, so a waker stored now is woken.
        if this.fired.is_fired() {
            return Poll::Ready(());
        }
        match &mut this.registered {
            Some((key, waker)) => {
                if let Some(slot) = waiters.get_mut(*key) {
                    slot.clone_from(cx.waker());
                }
                waker.clone_from(cx.waker());
            }
            None => {
                let key = waiters.insert(cx.waker().clone());
                this.registered = Some((key, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownRequested {
    fn drop(&mut self) {
        if let Some((key, _)) = self.registered.take() {
            // Once fired, the slab is emptied by `fire` (or about to be, and
            // then a stale waker only makes a spurious wake-up): no lock, so
            // that ten thousand connections ending at shutdown do not queue
            // on it.
            if !self.fired.is_fired() {
                self.fired.waiters().try_remove(key);
            }
        }
    }
}

impl fmt::Debug for ShutdownRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownRequested")
            .field("fired", &self.fired.is_fired())
            .field("registered", &self.registered.is_some())
            .finish()
    }
}

/// A one-shot signal many futures can wait for.
#[derive(Debug, Default)]
pub(crate) struct Fired {
    fired: AtomicBool,
    waiters: Mutex<Slab<Waker>>,
}

impl Fired {
    /// A future that completes once the signal has fired.
    pub(crate) fn wait(this: &Arc<Fired>) -> ShutdownRequested {
        ShutdownRequested {
            fired: Arc::clone(this),
            registered: None,
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Fires the signal and wakes every waiter; later calls do nothing.
    pub(crate) fn fire(&self) {
        if self.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiters = std::mem::take(&mut *self.waiters());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// The waiters stay consistent even if a thread panicked while holding
    /// the lock (slab operations do not panic midway): poisoning is ignored.
    fn waiters(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_every_waiter_once_and_stays_fired() {
        let fired = Arc::new(Fired::default());
        let signal = ShutdownSignal::new(Arc::clone(&fired));
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(signal.shutdown_requested()))
            .collect();
        tokio::task::yield_now().await;
        assert!(!signal.is_shutting_down());
        fired.fire();
        fired.fire();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert!(signal.is_shutting_down());
        signal.shutdown_requested().await; // made after: ready at once
        assert!(fired.waiters().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_waiter_deregisters() {
        let fired = Arc::new(Fired::default());
        let signal = ShutdownSignal::new(Arc::clone(&fired));
        let mut waiting = signal.shutdown_requested();
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut waiting).poll(cx))).await;
        assert!(polled.is_pending());
        assert_eq!(fired.waiters().len(), 1);
        drop(waiting);
        assert!(fired.waiters().is_empty());
    }
}

/// Model checks of the signal (see [`crate::sync`] for how to run them).
#[cfg(all(test, switchboard_loom))]
mod loom_models {
    use loom::future::block_on;
    use loom::thread;

    use super::*;

    /// Polls `waiting` once, as a task's first look at the signal.
    fn poll_once(waiting: &mut ShutdownRequested) -> Poll<()> {
        block_on(std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut *waiting).poll(cx))
        }))
    }

    #[test]
    fn a_waiter_registering_while_fire_runs_is_woken() {
        loom::model(|| {
            let fired = Arc::new(Fired::default());
            let firing = {
                let fired = Arc::clone(&fired);
                thread::spawn(move || fired.fire())
            };
            // Hangs (a deadlock for loom) if the wake-up is lost.
            block_on(Fired::wait(&fired));
            assert!(fired.is_fired());
            firing.join().expect("fire");
            assert!(fired.waiters().is_empty(), "a waker left behind");
        });
    }

    #[test]
    fn a_waiter_polled_from_a_new_task_while_fire_runs_is_woken() {
        loom::model(|| {
            let fired = Arc::new(Fired::default());
            let mut waiting = Fired::wait(&fired);
            // Registered with one waker, then moved to another task (a new
            // `block_on` has a waker of its own): the slot's waker is
            // replaced while `fire` may be taking the slab.
            let first = poll_once(&mut waiting);
            let firing = {
                let fired = Arc::clone(&fired);
                thread::spawn(move || fired.fire())
            };
            if first.is_pending() {
                block_on(&mut waiting);
            }
            firing.join().expect("fire");
            assert!(fired.waiters().is_empty(), "a waker left behind");
        });
    }

    #[test]
    fn a_waiter_dropped_while_fire_runs_breaks_nothing() {
        loom::model(|| {
            let fired = Arc::new(Fired::default());
            let dropping = {
                let fired = Arc::clone(&fired);
                thread::spawn(move || {
                    let mut waiting = Fired::wait(&fired);
                    let _ = poll_once(&mut waiting);
                    drop(waiting);
                })
            };
            let waiting = {
                let fired = Arc::clone(&fired);
                thread::spawn(move || block_on(Fired::wait(&fired)))
            };
            fired.fire();
            dropping.join().expect("the dropped waiter");
            waiting.join().expect("the other waiter");
            assert!(fired.waiters().is_empty(), "a waker left behind");
            block_on(Fired::wait(&fired)); // made after: ready at once
        });
    }
}
