//! Live counters and their snapshot.
//!
//! Every counter is an atomic bumped once per event (release ordering for
//! the ends, so that a snapshot that sees an end sees its acceptance too),
//! in the shard of the thread that counts it (see [`crate::shard`]), so
//! that the cores that start and end connections never write one cache
//! line; a snapshot sums the shards. Nothing on the hot path takes a lock. The number of live connections is not a counter of its
//! own: it is `accepted` minus the connections that ended, which saves two
//! atomic operations per connection and makes the identity
//! `accepted = active + completed + failed + panicked + timed_out + aborted + refused`
//! exact by construction.

use std::ops::Add;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Addr;
use crate::shard::{self, Padded};
use crate::timeout::TimeoutKind;

/// A cheap, cloneable view of a server's live counters.
///
/// Obtained from [`Server::stats`](crate::Server::stats) before `run` and kept
/// for as long as needed: it stays valid after the server is gone. Each
/// listener keeps its own counters; [`snapshot`](Stats::snapshot) adds them
/// up and [`by_listener`](Stats::by_listener) shows them one by one.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(server: switchboard::Server) {
/// let stats = server.stats();
/// tokio::spawn(server.run());
/// let now = stats.snapshot();
/// println!("{} live connections, {} served", now.active, now.accepted);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Stats {
    listeners: Arc<[(Addr, Arc<Counters>)]>,
}

/// The counters at one instant. See [`Stats::snapshot`].
///
/// Every accepted connection is either `active` or has ended in exactly one
/// of `completed`, `failed`, `panicked`, the `timed_out_*` counters,
/// `aborted`, `proxy_rejected` or `tls_failed`; connections closed by the
/// per-IP limit are `rejected` and never `accepted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Connections accepted and handed to the handler.
    pub accepted: u64,
    /// Connections whose handler is still running.
    pub active: u64,
    /// Handlers that returned `Ok`.
    pub completed: u64,
    /// Handlers that returned an error.
    pub failed: u64,
    /// Handlers that panicked.
    pub panicked: u64,
    /// Connections closed because nothing was read or written for the
    /// [idle timeout](crate::Builder::idle_timeout).
    pub timed_out_idle: u64,
    /// Connections closed because nothing was read within the
    /// [first-read timeout](crate::Builder::first_read_timeout).
    pub timed_out_first_read: u64,
    /// Connections closed at the [maximum age](crate::Builder::max_connection_age).
    pub timed_out_max_age: u64,
    /// Idle connections closed early to make room for waiting clients on a
    /// full server (see [`Builder::reclaim_when_full`](crate::Builder::reclaim_when_full)).
    pub timed_out_overload: u64,
    /// Handlers aborted at the end of the drain timeout.
    pub aborted: u64,
    /// Connections closed before the handler ran because their PROXY
    /// protocol header was missing, malformed, late or untrusted (see
    /// `ProxyProtocol`, feature `proxy-protocol`; always 0 without it).
    pub proxy_rejected: u64,
    /// Connections closed before the handler ran because their TLS
    /// handshake failed or timed out (see `Listen::tls`, feature `tls`;
    /// always 0 without the `tls` feature).
    pub tls_failed: u64,
    /// Connections closed at once because their peer address already had
    /// [as many as allowed](crate::Builder::max_connections_per_ip).
    pub rejected: u64,
    /// Failed `accept` calls, whatever the cause (see
    /// [`Server::run`](crate::Server::run) for how each kind is handled).
    pub accept_errors: u64,
    /// Clients still waiting in the listen queue at the drain deadline,
    /// closed without being served (never `accepted`); see
    /// [`ShutdownReport::backlog_closed`](crate::ShutdownReport::backlog_closed).
    pub backlog_closed: u64,
}

impl StatsSnapshot {
    /// Connections closed by any of the timeouts.
    pub fn timed_out(&self) -> u64 {
        self.timed_out_idle
            + self.timed_out_first_read
            + self.timed_out_max_age
            + self.timed_out_overload
    }

    /// Connections closed before the handler ran: `proxy_rejected` plus
    /// `tls_failed`.
    pub fn refused(&self) -> u64 {
        self.proxy_rejected + self.tls_failed
    }
}

impl Stats {
    /// Counters for listeners at `addrs`, in that order.
    pub(crate) fn new(addrs: impl IntoIterator<Item = Addr>) -> Self {
        Stats {
            listeners: addrs
                .into_iter()
                .map(|addr| (addr, Arc::default()))
                .collect(),
        }
    }

    /// The counters of the listener at `index` (in the order of `new`).
    pub(crate) fn counters(&self, index: usize) -> &Arc<Counters> {
        &self.listeners[index].1
    }

    /// Reads every counter.
    ///
    /// The counters are read one by one while connections come and go, so
    /// two counters may be a few events apart; the identity
    /// `accepted == active + completed + failed + panicked + timed_out() + aborted + refused()`
    /// always holds.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.listeners
            .iter()
            .map(|(_, counters)| counters.snapshot())
            .fold(StatsSnapshot::default(), Add::add)
    }

    /// The counters of each listener, in the order the listeners were
    /// configured.
    pub fn by_listener(&self) -> Vec<(Addr, StatsSnapshot)> {
        self.listeners
            .iter()
            .map(|(addr, counters)| (addr.clone(), counters.snapshot()))
            .collect()
    }
}

impl Add for StatsSnapshot {
    type Output = StatsSnapshot;

    fn add(self, other: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted + other.accepted,
            active: self.active + other.active,
            completed: self.completed + other.completed,
            failed: self.failed + other.failed,
            panicked: self.panicked + other.panicked,
            timed_out_idle: self.timed_out_idle + other.timed_out_idle,
            timed_out_first_read: self.timed_out_first_read + other.timed_out_first_read,
            timed_out_max_age: self.timed_out_max_age + other.timed_out_max_age,
            timed_out_overload: self.timed_out_overload + other.timed_out_overload,
            aborted: self.aborted + other.aborted,
            proxy_rejected: self.proxy_rejected + other.proxy_rejected,
            tls_failed: self.tls_failed + other.tls_failed,
            rejected: self.rejected + other.rejected,
            accept_errors: self.accept_errors + other.accept_errors,
            backlog_closed: self.backlog_closed + other.backlog_closed,
        }
    }
}

/// How a connection's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Panicked,
    TimedOut(TimeoutKind),
    Aborted,
    /// Closed before the handler ran (its PROXY header was refused, or its
    /// TLS handshake failed); the refusal's own counter was bumped where it
    /// was decided.
    Refused,
}

/// A listener's counters: a [`Tally`] per shard (see [`crate::shard`]),
/// each written by the threads of its index and summed by
/// [`Counters::snapshot`], so that no counter's cache line is shared by the
/// cores that start and end connections.
#[derive(Debug)]
pub(crate) struct Counters {
    shards: Box<[Padded<Tally>]>,
}

/// One shard's counters.
#[derive(Debug, Default)]
struct Tally {
    accepted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out_idle: AtomicU64,
    timed_out_first_read: AtomicU64,
    timed_out_max_age: AtomicU64,
    timed_out_overload: AtomicU64,
    aborted: AtomicU64,
    proxy_rejected: AtomicU64,
    tls_failed: AtomicU64,
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    backlog_closed: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..shard::count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl Counters {
    /// This thread's shard.
    fn mine(&self) -> &Tally {
        // The count is a power of two.
        &self.shards[shard::thread_index() & (self.shards.len() - 1)]
    }

    pub(crate) fn accepted(&self) {
        self.mine().accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.mine().rejected.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "proxy-protocol"), allow(dead_code))]
    pub(crate) fn proxy_rejected(&self) {
        self.mine().proxy_rejected.fetch_add(1, Ordering::Release);
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_failed(&self) {
        self.mine().tls_failed.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn accept_error(&self) {
        self.mine().accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn backlog_closed(&self, closed: u64) {
        self.mine()
            .backlog_closed
            .fetch_add(closed, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, outcome: Outcome) {
        let tally = self.mine();
        let counter = match outcome {
            Outcome::Completed => &tally.completed,
            Outcome::Failed => &tally.failed,
            Outcome::Panicked => &tally.panicked,
            Outcome::TimedOut(TimeoutKind::Idle) => &tally.timed_out_idle,
            Outcome::TimedOut(TimeoutKind::FirstRead) => &tally.timed_out_first_read,
            Outcome::TimedOut(TimeoutKind::MaxAge) => &tally.timed_out_max_age,
            Outcome::TimedOut(TimeoutKind::Overload) => &tally.timed_out_overload,
            Outcome::Aborted => &tally.aborted,
            // Counted where the refusal was decided, with its reason.
            Outcome::Refused => return,
        };
        // Release pairs with the Acquire loads in `snapshot`: whoever sees
        // this end also sees the `accepted` increment that preceded the
        // spawn (on whichever thread, in whichever shard).
        counter.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        // Every shard's ended counters first, then every shard's `accepted`:
        // `accepted` only grows, and an end seen implies its acceptance
        // seen, so reading it last keeps `active` from going negative.
        let mut s = self
            .shards
            .iter()
            .map(|tally| tally.ends())
            .fold(StatsSnapshot::default(), Add::add);
        s.accepted = self
            .shards
            .iter()
            .map(|tally| tally.accepted.load(Ordering::Relaxed))
            .sum();
        let ended = s.completed + s.failed + s.panicked + s.timed_out() + s.aborted + s.refused();
        // Never negative (see above); saturate rather than trust it blindly.
        s.active = s.accepted.saturating_sub(ended);
        s
    }
}

impl Tally {
    /// Every counter but `accepted` (and `active`, which is computed).
    fn ends(&self) -> StatsSnapshot {
        StatsSnapshot {
            completed: self.completed.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            panicked: self.panicked.load(Ordering::Acquire),
            timed_out_idle: self.timed_out_idle.load(Ordering::Acquire),
            timed_out_first_read: self.timed_out_first_read.load(Ordering::Acquire),
            timed_out_max_age: self.timed_out_max_age.load(Ordering::Acquire),
            timed_out_overload: self.timed_out_overload.load(Ordering::Acquire),
            aborted: self.aborted.load(Ordering::Acquire),
            proxy_rejected: self.proxy_rejected.load(Ordering::Acquire),
            tls_failed: self.tls_failed.load(Ordering::Acquire),
            rejected: self.rejected.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            backlog_closed: self.backlog_closed.load(Ordering::Relaxed),
            ..StatsSnapshot::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_holds_and_listeners_add_up() {
        let addrs = [Addr::Unix(None), Addr::Unix(Some("/x".into()))];
        let stats = Stats::new(addrs.clone());
        stats.counters(1).accepted();
        let c = stats.counters(0);
        for _ in 0..9 {
            c.accepted();
        }
        c.ended(Outcome::Completed);
        c.ended(Outcome::Failed);
        c.ended(Outcome::Panicked);
        c.ended(Outcome::Aborted);
        c.ended(Outcome::TimedOut(TimeoutKind::Idle));
        c.ended(Outcome::TimedOut(TimeoutKind::FirstRead));
        c.ended(Outcome::TimedOut(TimeoutKind::MaxAge));
        c.ended(Outcome::TimedOut(TimeoutKind::Overload));
        c.rejected();
        let s = stats.snapshot();
        assert_eq!(s.accepted, 10);
        assert_eq!(s.active, 2);
        let by_listener = stats.by_listener();
        assert_eq!(by_listener[0].0, addrs[0]);
        assert_eq!(
            (by_listener[0].1.accepted, by_listener[1].1.accepted),
            (9, 1)
        );
        assert_eq!(s.timed_out(), 4);
        assert_eq!(s.rejected, 1);
        assert_eq!(
            (s.completed, s.failed, s.panicked, s.aborted),
            (1, 1, 1, 1),
            "each outcome in its own counter"
        );
    }
}
