//! Admission control: the connection limit and the per-peer-IP limit.
//!
//! The global limit's place is taken *before* `accept`: a full server stops
//! accepting, so further clients wait in the kernel's backlog (and beyond it
//! are refused by the kernel) instead of costing a descriptor and a task
//! each. The per-IP limit can only be checked once the peer is known, after
//! `accept`: an extra connection is closed at once.
//!
//! The free places are counted in shards (see [`crate::shard`]) rather than
//! in one counter, which every connection's start and end would write from
//! every core: a connection's end puts its place back in the shard of the
//! thread it ends on, and an accept loop takes a place from its own shard,
//! or else from the first other shard that has one. A place is taken or
//! put back with one atomic operation on one shard, never made, lost or
//! moved in bulk, so the limit stays exact and a loop never finds a server
//! with free places full. A full server's accept loops, the only waiters, are
//! woken through a `Notify` only when one is waiting: a waiter marks that in
//! each shard's own word, so that a release learns it from its one
//! read-modify-write.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use crate::shard::{self, Padded};
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Notify};

/// Default for [`Builder::max_connections`](crate::Builder::max_connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The largest `max_connections` accepted (no shard's count may overflow
/// into [`WAITING`]).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = usize::MAX >> 1;

/// The flag in a shard's count that an accept loop waits for a place: the
/// top bit, above every count.
const WAITING: usize = !MAX_CONNECTIONS_LIMIT;

/// The server's admission limits.
#[derive(Debug)]
pub(crate) struct Limits {
    live: Live,
    per_ip: Option<PerIp>,
}

/// The places under the global limit.
#[derive(Debug)]
struct Live {
    /// The free places of each shard (together, `max_connections` minus the
    /// places taken), with [`WAITING`] set while an accept loop may be
    /// waiting for one: only then does a release there notify. One word a
    /// shard, so that a waiter's mark and a release are ordered and one of
    /// them sees the other (with two words, only a store-load order across
    /// them would do it, which loom cannot check: it models `SeqCst` as
    /// `AcqRel`).
    free: Box<[Padded<AtomicUsize>]>,
    freed: Notify,
}

/// A place under the global limit; dropping it frees the place. It borrows
/// the limits rather than holding a reference count: a count that every
/// admission took and dropped would be one more cache line shared by the
/// cores that accept.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    /// `None` once kept (see [`Admission::keep`]).
    live: Option<&'a Live>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.put(shard::thread_index(), 1);
        }
    }
}

impl Live {
    fn new(max: usize, shards: usize) -> Live {
        debug_assert!(shards.is_power_of_two() && max <= MAX_CONNECTIONS_LIMIT);
        let free: Box<[Padded<AtomicUsize>]> = (0..shards)
            .map(|i| Padded(AtomicUsize::new(if i == 0 { max } else { 0 })))
            .collect();
        Live {
            free,
            freed: Notify::new(),
        }
    }

    fn shard(&self, index: usize) -> &AtomicUsize {
        &self.free[index & (self.free.len() - 1)]
    }

    /// Puts `places` in shard `index`, waking the waiters if one is marked
    /// there.
    fn put(&self, index: usize, places: usize) {
        let shard = self.shard(index);
        // Either the waiter's mark comes first, and this sees it and wakes
        // the waiter, or the mark sees these places free.
        if shard.fetch_add(places, Ordering::AcqRel) & WAITING != 0 {
            // Cleared before the wake-up: a loop that marks again after
            // this is woken by it (its `Notified` is older) or sees the
            // place free.
            shard.fetch_and(!WAITING, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Takes a place from shard `index`, else from the first other shard
    /// that has one.
    ///
    /// One place at a time, straight from the shard that had it: places
    /// are never moved between shards in bulk, which would leave them, for
    /// a moment, in no shard at all, and a loop looking then would find a
    /// server with free places full.
    fn take(&self, index: usize) -> bool {
        for step in 0..self.free.len() {
            let shard = self.shard(index.wrapping_add(step));
            let mut count = shard.load(Ordering::Acquire);
            while count & !WAITING > 0 {
                // The flag stays as it is.
                match shard.compare_exchange_weak(
                    count,
                    count - 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return true,
                    Err(now) => count = now,
                }
            }
        }
        false
    }

    /// Whether any shard has a free place (shard `index` looked at first).
    fn has_room(&self, index: usize) -> bool {
        (0..self.free.len())
            .any(|step| self.shard(index.wrapping_add(step)).load(Ordering::Acquire) & !WAITING > 0)
    }

    /// Marks every shard as waited on; whether one had a free place.
    fn mark_waiting(&self) -> bool {
        self.free
            .iter()
            .any(|shard| shard.fetch_or(WAITING, Ordering::AcqRel) & !WAITING > 0)
    }
}

/// What a live connection holds; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    permit: Permit<'a>,
    per_ip: Option<PerIpPlace<'a>>,
}

impl Admission<'_> {
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
        Self::with_shards(max_connections, max_per_ip, shard::count())
    }

    /// Limits whose free places are counted in `shards` shards (a power of
    /// two).
    pub(crate) fn with_shards(
        max_connections: usize,
        max_per_ip: Option<usize>,
        shards: usize,
    ) -> Self {
        Limits {
            live: Live::new(max_connections, shards),
            per_ip: max_per_ip.map(PerIp::new),
        }
    }

    /// A place under the global limit if one is free now.
    pub(crate) fn try_permit(&self) -> Option<Permit<'_>> {
        self.try_permit_at(shard::thread_index())
    }

    /// [`Limits::try_permit`] for a thread of index `index`.
    fn try_permit_at(&self, index: usize) -> Option<Permit<'_>> {
        // Made only once taken: a permit dropped puts a place back.
        self.live.take(index).then(|| Permit {
            live: Some(&self.live),
        })
    }

    /// Whether a place under the global limit is free now (without taking
    /// it).
    pub(crate) fn has_room(&self) -> bool {
        self.live.has_room(shard::thread_index())
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
            // release in each shard one needless wake-up.
            if self.live.mark_waiting() {
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
    pub(crate) async fn permit(&self) -> Permit<'_> {
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
    pub(crate) fn admit<'a>(
        &'a self,
        permit: Permit<'a>,
        ip: Option<IpAddr>,
    ) -> Option<Admission<'a>> {
        let per_ip = match (&self.per_ip, ip) {
            (Some(per_ip), Some(ip)) => Some(PerIp::enter(per_ip, ip)?),
            _ => None,
        };
        Some(Admission { permit, per_ip })
    }

    /// Frees the places of a connection whose [`Admission`] was kept; `ip`
    /// is its address if it holds a place under the per-address limit.
    pub(crate) fn release(&self, ip: Option<IpAddr>) {
        self.release_at(shard::thread_index(), ip);
    }

    /// [`Limits::release`] on a thread of index `index`.
    fn release_at(&self, index: usize, ip: Option<IpAddr>) {
        self.live.put(index, 1);
        if let (Some(per_ip), Some(ip)) = (&self.per_ip, ip) {
            per_ip.leave(ip);
        }
    }

    /// The places free now, in all shards (for tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.live
            .free
            .iter()
            .map(|shard| shard.load(Ordering::Acquire) & !WAITING)
            .sum()
    }
}

/// The live connections of each address (of one shard).
type Counts = HashMap<IpAddr, usize>;

#[derive(Debug)]
struct PerIp {
    limit: usize,
    /// The live connections of each address, in shards chosen by a keyed
    /// hash of the address (see [`crate::shard`]): one address is always in
    /// one shard, and the connections of different addresses rarely meet
    /// at one lock.
    shards: Box<[Padded<Mutex<Counts>>]>,
    hasher: RandomState,
}

impl PerIp {
    fn new(limit: usize) -> PerIp {
        PerIp {
            limit,
            shards: (0..shard::count())
                .map(|_| Padded(Mutex::new(HashMap::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn counts(&self, ip: IpAddr) -> MutexGuard<'_, Counts> {
        // Truncated on 32-bit targets: only the low bits choose.
        let shard = self.hasher.hash_one(ip) as usize & (self.shards.len() - 1);
        // The counts stay consistent through a panic elsewhere.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, ip: IpAddr) -> Option<PerIpPlace<'_>> {
        let mut counts = self.counts(ip);
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PerIpPlace {
            per_ip: Some(self),
            ip,
        })
    }

    fn leave(&self, ip: IpAddr) {
        let mut counts = self.counts(ip);
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
struct PerIpPlace<'a> {
    /// `None` once kept.
    per_ip: Option<&'a PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpPlace<'_> {
    fn drop(&mut self) {
        if let Some(per_ip) = self.per_ip.take() {
            per_ip.leave(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    /// Many addresses over the shards: each has its own count, and every
    /// place comes back.
    #[test]
    fn per_ip_limits_of_many_addresses_are_counted_apart() {
        let limits = Limits::new(1_000, Some(1));
        let ips: Vec<IpAddr> = (0..200_u32)
            .map(|i| IpAddr::from((10 << 24 | i).to_be_bytes()))
            .collect();
        let held: Vec<_> = ips
            .iter()
            .map(|&ip| {
                limits
                    .admit(limits.try_permit().unwrap(), Some(ip))
                    .expect("first")
            })
            .collect();
        for &ip in &ips {
            assert!(
                limits
                    .admit(limits.try_permit().unwrap(), Some(ip))
                    .is_none(),
                "{ip}: a second connection"
            );
        }
        drop(held);
        let per_ip = limits.per_ip.as_ref().unwrap();
        let left: usize = per_ip
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap().len())
            .sum();
        assert_eq!(left, 0, "the maps hold only connected addresses");
        assert_eq!(limits.free(), 1_000);
    }

    #[tokio::test]
    async fn a_waiting_accept_loop_is_woken_when_a_place_frees() {
        let limits = Arc::new(Limits::new(1, None));
        let held = limits.try_permit().unwrap();
        let waiter = {
            let limits = Arc::clone(&limits);
            // The place it gets is kept, as a connection's is.
            tokio::spawn(async move {
                let permit = limits.permit().await;
                limits.admit(permit, None).map(Admission::keep)
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let kept = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(kept, Some(false), "admitted, no per-address place");
        assert!(
            limits.try_permit().is_none(),
            "the place went to the waiter"
        );
        limits.release(None);
        assert!(limits.try_permit().is_some());
    }

    /// Places released on other threads' shards are found and taken, and
    /// never more than the limit at once.
    #[test]
    fn places_move_between_shards_and_the_limit_stays_exact() {
        let limits = Limits::with_shards(3, None, 4);
        let mut held: Vec<Permit<'_>> = (0..3).map(|_| limits.try_permit_at(2).unwrap()).collect();
        assert!(limits.try_permit_at(2).is_none(), "full");
        assert!(limits.try_permit_at(3).is_none(), "full from every shard");
        assert_eq!(limits.free(), 0);
        // Released on two other threads' shards.
        for index in [0, 1] {
            let mut permit = held.pop().unwrap();
            permit.live = None;
            limits.release_at(index, None);
        }
        assert_eq!(limits.free(), 2);
        assert!(limits.has_room());
        let a = limits.try_permit_at(3).expect("found in shard 0");
        let b = limits.try_permit_at(3).expect("found in shard 1");
        assert!(limits.try_permit_at(3).is_none(), "no third place");
        assert_eq!(limits.free(), 0);
        drop((a, b, held));
        assert_eq!(limits.free(), 3, "every place back");
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
/// them). Two shards, and each thread on a shard of its own index, so that
/// places move between shards as they do between cores.
#[cfg(all(test, switchboard_loom))]
mod loom_models {
    use loom::future::block_on;
    use loom::thread;

    use std::sync::Arc;

    use super::*;

    /// A place taken on the thread of index `index`, freed on the same.
    fn hold(limits: &Limits, index: usize) -> Option<()> {
        let permit = limits.try_permit_at(index)?;
        let kept = limits.admit(permit, None).expect("no per-address limit");
        assert!(!kept.keep(), "no per-address place");
        Some(())
    }

    #[test]
    fn racing_accept_loops_never_take_more_than_max_places() {
        loom::model(|| {
            let limits = Arc::new(Limits::with_shards(1, None, 2));
            // Places held at once, counted by their holders.
            let held = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let loops: Vec<_> = (0..2)
                .map(|index| {
                    let (limits, held) = (Arc::clone(&limits), Arc::clone(&held));
                    thread::spawn(move || {
                        hold(&limits, index)?;
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 1, "{now} places taken under a limit of 1");
                        held.fetch_sub(1, Ordering::SeqCst);
                        limits.release_at(index, None);
                        Some(())
                    })
                })
                .collect();
            for accept in loops {
                accept.join().expect("accept loop");
            }
            assert_eq!(limits.free(), 1, "a place leaked or was made");
            assert!(limits.try_permit_at(1).is_some(), "the place was not freed");
        });
    }

    #[test]
    fn an_accept_loop_waiting_for_a_place_is_woken_when_one_frees_in_another_shard() {
        loom::model(|| {
            let limits = Arc::new(Limits::with_shards(1, None, 2));
            hold(&limits, 0).expect("a free place");
            let releasing = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || limits.release_at(1, None))
            };
            // Hangs (a deadlock for loom) if the wake-up is lost.
            block_on(limits.room());
            releasing.join().expect("release");
            let permit = limits.try_permit_at(0);
            assert!(permit.is_some(), "the place is free");
            assert_eq!(limits.free(), 0, "and was taken");
            drop(permit);
        });
    }

    #[test]
    fn a_waiting_accept_loop_is_woken_by_a_release_while_another_loop_takes_places() {
        loom::model(|| {
            // Two places: one held, one free in shard 0, which the other
            // loop takes (from its shard 1, so from shard 0) and gives back
            // in its own; the held one is released in shard 1.
            let limits = Arc::new(Limits::with_shards(2, None, 2));
            hold(&limits, 1).expect("a free place");
            let other = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || {
                    if hold(&limits, 1).is_some() {
                        limits.release_at(1, None);
                    }
                })
            };
            let releasing = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || limits.release_at(1, None))
            };
            block_on(limits.room());
            other.join().expect("the other accept loop");
            releasing.join().expect("release");
            assert_eq!(limits.free(), 2);
        });
    }

    /// Places are never in no shard at all: while another loop takes and
    /// gives back places, a loop finds the one it cannot be holding.
    #[test]
    fn a_loop_never_finds_a_server_with_free_places_full() {
        loom::model(|| {
            let limits = Arc::new(Limits::with_shards(2, None, 2));
            let other = {
                let limits = Arc::clone(&limits);
                thread::spawn(move || {
                    if hold(&limits, 1).is_some() {
                        limits.release_at(1, None);
                    }
                })
            };
            // The other loop holds at most one of the two places.
            let mine = limits.try_permit_at(0);
            assert!(mine.is_some(), "a free place was missed");
            other.join().expect("the other accept loop");
            drop(mine);
        });
    }
}
