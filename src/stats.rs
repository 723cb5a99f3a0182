//! Live counters and their snapshot.
//!
//! Every counter is a relaxed atomic bumped once per event; nothing on the hot
//! path takes a lock. The number of live connections is not a counter of its
//! own: it is `accepted` minus the connections that ended, which saves two
//! atomic operations per connection and makes the identity
//! `accepted = active + completed + failed + panicked + aborted` exact by
//! construction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cheap, cloneable view of a server's live counters.
///
/// Obtained from [`Server::stats`](crate::Server::stats) before `run` and kept
/// for as long as needed: it stays valid after the server is gone.
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
    counters: Arc<Counters>,
}

/// The counters at one instant. See [`Stats::snapshot`].
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
    /// Handlers aborted at the end of the drain timeout.
    pub aborted: u64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            counters: Arc::new(Counters::default()),
        }
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Reads every counter.
    ///
    /// The counters are read one by one while connections come and go, so
    /// two counters may be a few events apart; the identity
    /// `accepted == active + completed + failed + panicked + aborted` always
    /// holds.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.counters.snapshot()
    }
}

/// How a connection's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Panicked,
    Aborted,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    aborted: AtomicU64,
}

impl Counters {
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Failed => &self.failed,
            Outcome::Panicked => &self.panicked,
            Outcome::Aborted => &self.aborted,
        };
        // Release pairs with the Acquire loads in `snapshot`: whoever sees
        // this end also sees the `accepted` increment that preceded the spawn.
        counter.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        // Ended counters first, `accepted` last: `accepted` only grows, so
        // reading it last keeps `active` from going negative.
        let completed = self.completed.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let panicked = self.panicked.load(Ordering::Acquire);
        let aborted = self.aborted.load(Ordering::Acquire);
        let accepted = self.accepted.load(Ordering::Relaxed);
        let ended = completed + failed + panicked + aborted;
        StatsSnapshot {
            accepted,
            // Never negative (see above); saturate rather than trust it blindly.
            active: accepted.saturating_sub(ended),
            completed,
            failed,
            panicked,
            aborted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_holds() {
        let stats = Stats::new();
        let c = stats.counters();
        for _ in 0..5 {
            c.accepted();
        }
        c.ended(Outcome::Completed);
        c.ended(Outcome::Failed);
        c.ended(Outcome::Panicked);
        c.ended(Outcome::Aborted);
        let s = stats.snapshot();
        assert_eq!(s.accepted, 5);
        assert_eq!(s.active, 1);
        assert_eq!(
            s.accepted,
            s.active + s.completed + s.failed + s.panicked + s.aborted
        );
    }
}
