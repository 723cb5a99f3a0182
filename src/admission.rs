//! Admission control: the connection limit and the per-peer-IP limit.
//!
//! The global limit is a counter whose place is taken *before* `accept`: a
//! full server stops accepting, so further clients wait in the kernel's
//! backlog (and beyond it are refused by the kernel) instead of costing a
//! descriptor and a task each. The per-IP limit can only be checked once the
//! peer is known, after `accept`: an extra connection is closed at once.
//!
//! The counter is an atomic rather than tokio's `Semaphore`, whose release
//! takes a lock on every connection's end; a full server's accept loops,
//! the only waiters, are woken through a `Notify` only when one is waiting:
//! they mark that in the counter's own word, so that a release learns it
//! from its one read-modify-write.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::sync::{AtomicUsize, Mutex, Notify};

/// Default for [`Builder::max_connections`](crate::Builder::max_connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The largest `max_connections` accepted (the counter must not overflow
/// into [`WAITING`]).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = usize::MAX >> 1;

/// The flag in `Live::count` that an accept loop waits for a place: the top
/// bit, above every count.
const WAITING: usize = !MAX_CONNECTIONS_LIMIT;

/// The server's admission limits.
#[derive(Debug)]
pub(crate) struct Limits {
    live: Arc<Live>,
    per_ip: Option<Arc<PerIp>>,
}

/// The connections under the global limit.
#[derive(Debug)]
struct Live {
    max: usize,
    /// The places taken, with [`WAITING`] set while an accept loop may be
    /// waiting for one: only then does a release notify. One word, so that
    /// a waiter's mark and a release are ordered and one of them sees the
    /// other (with two words, only a store-load order across them would do
    /// it, which loom cannot check: it models `SeqCst` as `AcqRel`).
    count: AtomicUsize,
    freed: Notify,
}

/// A place under the global limit; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit {
    /// `None` once kept (see [`Admission::keep`]).
    live: Option<Arc<Live>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.release();
        }
    }
}

impl Live {
    fn release(&self) {
        // Either the waiter's mark comes first, and this sees it and wakes
        // the waiter, or the mark sees this place free.
        if self.count.fetch_sub(1, Ordering::AcqRel) & WAITING != 0 {
            // Cleared before the wake-up: a loop that marks again after
            // this is woken by it (its `Notified` is older) or sees the
            // place free.
            self.count.fetch_and(!WAITING, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

/// What a live connection holds; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admission {
    permit: Permit,
    per_ip: Option<PerIpPlace>,
}

impl Admission {
    /// Keeps the places without this value: they are freed by
    /// [`Limits::release`] instead, given whether this returned `true`
    /// (the connection holds a place under its address's limit).
    pub(crate) fn keep(mut self) -> bool {
        self.permit.live = None;
        self.per_ip
            .as_mut()
            .is_some_and(|place| place.per_ip.take().is_some())
    }
}

impl Limits {
    pub(crate) fn new(max_connections: usize, max_per_ip: Option<usize>) -> Self {
        Limits {
            live: Arc::new(Live {
                max: max_connections,
                count: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
            per_ip: max_per_ip.map(|limit| {
                Arc::new(PerIp {
                    limit,
                    counts: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// A place under the global limit if one is free now.
    pub(crate) fn try_permit(&self) -> Option<Permit> {
        let mut count = self.live.count.load(Ordering::Acquire);
        loop {
            if count & !WAITING >= self.live.max {
                return None;
            }
            // The count below WAITING (at most MAX_CONNECTIONS_LIMIT):
            // the increment leaves the flag as it is.
            match self.live.count.compare_exchange_weak(
                count,
                count + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        live: Some(Arc::clone(&self.live)),
                    });
                }
                Err(now) => count = now,
            }
        }
    }

    /// Whether a place under the global limit is free now (without taking
    /// it).
    pub(crate) fn has_room(&self) -> bool {
        self.live.count.load(Ordering::Acquire) & !WAITING < self.live.max
    }

    /// Waits until a place is free, without taking it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn room(&self) {
        loop {
            if self.has_room() {
                return;
            }
            let freed = self.live.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Left set if this returns or is dropped: it costs the next
            // release one needless wake-up.
            let count = self.live.count.fetch_or(WAITING, Ordering::AcqRel);
            if count & !WAITING < self.live.max {
                return;
            }
            freed.await;
        }
    }

    /// Waits for a place under the global limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken until it completes.
    pub(crate) async fn permit(&self) -> Permit {
        loop {
            if let Some(permit) = self.try_permit() {
                return permit;
            }
            self.room().await;
        }
    }

    /// Completes the admission of a connection from `ip` (`None` for a
    /// transport without IP addresses), or `None` when that address already
    /// has as many connections as it may.
    pub(crate) fn admit(&self, permit: Permit, ip: Option<IpAddr>) -> Option<Admission> {
        let per_ip = match (&self.per_ip, ip) {
            (Some(per_ip), Some(ip)) => Some(PerIp::enter(per_ip, ip)?),
            _ => None,
        };
        Some(Admission { permit, per_ip })
    }

    /// Frees the places of a connection whose [`Admission`] was kept; `ip`
    /// is its address if it holds a place under the per-address limit.
    pub(crate) fn release(&self, ip: Option<IpAddr>) {
        self.live.release();
        if let (Some(per_ip), Some(ip)) = (&self.per_ip, ip) {
            per_ip.leave(ip);
        }
    }
}

#[derive(Debug)]
struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn enter(this: &Arc<PerIp>, ip: IpAddr) -> Option<PerIpPlace> {
        let mut counts = this.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= this.limit {
            return None;
        }
        *count += 1;
        Some(PerIpPlace {
            per_ip: Some(Arc::clone(this)),
            ip,
        })
    }

    fn leave(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                // Keep the map as small as the set of connected addresses.
                counts.remove(&ip);
            }
        }
    }
}

/// One connection's place under its address's limit.
#[derive(Debug)]
struct PerIpPlace {
    /// `None` once kept.
    per_ip: Option<Arc<PerIp>>,
    ip: IpAddr,
}

impl Drop for PerIpPlace {
    fn drop(&mut self) {
        if let Some(per_ip) = self.per_ip.take() {
            per_ip.leave(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_frees() {
        let limits = Limits::new(10, Some(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limits.admit(limits.try_permit().unwrap(), Some(a)).unwrap();
        let _second = limits.admit(limits.try_permit().unwrap(), Some(a)).unwrap();
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(a))
                .is_none(),
            "third from a"
        );
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(b))
                .is_some(),
            "b has its own count"
        );
        drop(first);
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(a))
                .is_some(),
            "a place was freed"
        );
    }

    #[tokio::test]
    async fn a_waiting_accept_loop_is_woken_when_a_place_frees() {
        let limits = Arc::new(Limits::new(1, None));
        let held = limits.try_permit().unwrap();
        let waiter = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.permit().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let permit = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(
            limits.try_permit().is_none(),
            "the place went to the waiter"
        );
        drop(permit);
        assert!(limits.try_permit().is_some());
    }

    #[test]
    fn global_limit_is_taken_before_accept() {
        let limits = Limits::new(1, None);
        let held = limits.try_permit().unwrap();
        assert!(limits.try_permit().is_none());
        drop(held);
        assert!(limits.try_permit().is_some());
    }
}

/// Model checks of the global limit (see [`crate::sync`] for how to run
/// them).
#[cfg(all(test, switchboard_loom))]
mod loom_models {
    use loom::future::block_on;
    use loom::thread;

    use super::*;

    #[test]
    fn racing_accept_loops_never_take_more_than_max_places() {
        loom::model(|| {
            let limits = Arc::new(Limits::new(1, None));
            // Places held at once, counted by their holders.
            let held = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let loops: Vec<_> = (0..2)
                .map(|_| {
                    let (limits, held) = (Arc::clone(&limits), Arc::clone(&held));
                    thread::spawn(move || {
                        let permit = limits.try_permit()?;
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 1, "{now} places taken under a limit of 1");
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                        Some(())
                    })
                })
                .collect();
            // This one holds its place until the others are done.
            let mine = limits.try_permit();
            if mine.is_some() {
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= 1, "{now} places taken under a limit of 1");
            }
            for accept in loops {
                accept.join().expect("accept loop");
            }
            drop(mine);
            assert_eq!(
                limits.live.count.load(Ordering::Acquire),
                0,
                "a place leaked"
            );
            assert!(limits.try_permit().is_some(), "the place was not freed");
        });
    }

    #[test]
    fn an_accept_loop_waiting_for_a_place_is_woken_when_one_frees() {
        loom::model(|| {
            let limits = Arc::new(Limits::new(1, None));
            let held = limits.try_permit().expect("a free place");
            let releasing = thread::spawn(move || drop(held));
            // Hangs (a deadlock for loom) if the wake-up is lost.
            let permit = block_on(limits.permit());
            releasing.join().expect("release");
            assert!(
                limits.try_permit().is_none(),
                "the place went to the waiter"
            );
            drop(permit);
            let taken = limits.live.count.load(Ordering::Acquire) & !WAITING;
            assert_eq!(taken, 0, "a place leaked");
        });
    }

    #[test]
    fn every_accept_loop_waiting_for_room_is_woken_by_a_kept_admission_released() {
        loom::model(|| {
            let limits = Arc::new(Limits::new(1, None));
            let kept = limits
                .admit(limits.try_permit().expect("a free place"), None)
                .expect("no per-address limit");
            assert!(!kept.keep(), "no per-address place");
            let waiting = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || block_on(limits.room()))
            };
            let releasing = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || limits.release(None))
            };
            block_on(limits.room());
            waiting.join().expect("the other accept loop");
            releasing.join().expect("release");
            assert_eq!(limits.live.count.load(Ordering::Acquire) & !WAITING, 0);
        });
    }
}
