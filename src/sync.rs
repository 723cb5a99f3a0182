//! The primitives that the hand-written synchronisation is built on: the
//! shutdown signal ([`Fired`](crate::shutdown::Fired)), the admission
//! counter, the drain's wake-up and the count of a connection's parts
//! (`conn/subtask.rs`).
//!
//! In every ordinary build these are plain re-exports of std's and tokio's
//! types, so they cost nothing. Under `--cfg switchboard_loom` (test builds
//! only) they are loom's models instead, so that the `loom` unit tests check
//! every interleaving of the code that uses them:
//!
//! ```text
//! RUSTFLAGS="--cfg switchboard_loom" cargo test --lib --release loom
//! ```
//!
//! (A cfg of our own, not loom's usual `loom`: tokio reads that one too and
//! leaves out `tokio::net` under it.)

#[cfg(not(all(test, switchboard_loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
#[cfg(not(all(test, switchboard_loom)))]
pub(crate) use std::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, switchboard_loom)))]
pub(crate) use tokio::sync::Notify;

#[cfg(all(test, switchboard_loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
#[cfg(all(test, switchboard_loom))]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(all(test, switchboard_loom))]
pub(crate) use notify::Notify;

/// A stand-in for the part of tokio's `Notify` that this crate uses, built
/// on loom's `Mutex` (loom cannot run tokio's). It keeps the contract the
/// callers rely on: `notify_waiters` completes every `Notified` made before
/// the call, polled or not, and stores nothing for later ones.
#[cfg(all(test, switchboard_loom))]
mod notify {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Mutex;

    #[derive(Debug, Default)]
    pub(crate) struct Notify {
        state: Mutex<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        /// How many times `notify_waiters` was called: a `Notified` made
        /// before a call sees a newer number.
        calls: usize,
        wakers: Vec<Waker>,
    }

    #[derive(Debug)]
    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        calls: usize,
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Notify::default()
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            let calls = self.state.lock().expect("no panic while locked").calls;
            Notified {
                notify: self,
                calls,
            }
        }

        pub(crate) fn notify_waiters(&self) {
            let wakers = {
                let mut state = self.state.lock().expect("no panic while locked");
                state.calls += 1;
                std::mem::take(&mut state.wakers)
            };
            for waker in wakers {
                waker.wake();
            }
        }
    }

    impl Notified<'_> {
        /// Tokio's registers the future in its list here; this one counts
        /// from its creation, which tokio's `notify_waiters` does too.
        pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
            false
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self.notify.state.lock().expect("no panic while locked");
            if state.calls != self.calls {
                return Poll::Ready(());
            }
            state.wakers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}
