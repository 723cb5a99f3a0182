//! Timeouts below the protocol: idle, first read, connection age.
//!
//! Per-connection timers would cost a timer entry (about a hundred bytes)
//! per connection and a timer-wheel update on every read and write. Instead
//! a read or write only marks its connection as touched (one relaxed store,
//! no clock), and one sweeper per server wakes every tick, reads the clock
//! once and scans the live connections: a touched one has its last
//! activity moved to the tick's time and the mark cleared, and one past a
//! timeout is aborted. The tick is a tenth of the shortest timeout (between
//! 5 ms and 1 s). A connection's acceptance is stamped with the real time
//! and its activity with the tick that saw it, so it never expires before
//! its deadline, and within about two ticks after it.
//!
//! Idleness counts only while the handler waits for the peer: its last read
//! or write of the connection returned `Pending`. A handler busy elsewhere
//! (awaiting a slow backend, computing) is never idle, whatever the peer
//! does; a handler reading from a silent peer is.
//!
//! This module holds the settings and the rules; the record keeps the
//! activity (`conn/record.rs`), and the sweeper (`server/sweeper.rs`) applies
//! the rules every tick.

use std::time::{Duration, Instant};

/// Default for [`Builder::idle_timeout`](crate::Builder::idle_timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TimeoutKind {
    Idle = 1,
    FirstRead = 2,
    MaxAge = 3,
    /// Closed early, while idle, to make room for waiting clients on a full
    /// server (see `overload.rs`): an idle timeout shrunk under pressure.
    Overload = 4,
}

impl TimeoutKind {
    /// The kind's name in logs (and metrics labels).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TimeoutKind::Idle => "idle",
            TimeoutKind::FirstRead => "first_read",
            TimeoutKind::MaxAge => "max_age",
            TimeoutKind::Overload => "overload",
        }
    }
}

/// The configured timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) idle: Option<Duration>,
    pub(crate) first_read: Option<Duration>,
    pub(crate) max_age: Option<Duration>,
}

impl Timeouts {
    /// How often the sweeper runs, or `None` when no timeout is set.
    pub(crate) fn tick(&self) -> Option<Duration> {
        let shortest = [self.idle, self.first_read, self.max_age]
            .into_iter()
            .flatten()
            .min()?;
        Some((shortest / 10).clamp(Duration::from_millis(5), Duration::from_secs(1)))
    }

    /// Whether a connection has expired at `now` (the clock's
    /// milliseconds), and by which timeout, given when it was accepted, the
    /// last activity seen, and whether it has read anything.
    pub(crate) fn expired(
        &self,
        now: u64,
        accepted_at: u64,
        last_active: u64,
        has_read: bool,
    ) -> Option<TimeoutKind> {
        let age = now.saturating_sub(accepted_at);
        if let Some(limit) = self.first_read {
            if !has_read && age >= millis(limit) {
                return Some(TimeoutKind::FirstRead);
            }
        }
        if let Some(limit) = self.idle {
            if now.saturating_sub(last_active) >= millis(limit) {
                return Some(TimeoutKind::Idle);
            }
        }
        if let Some(limit) = self.max_age {
            if age >= millis(limit) {
                return Some(TimeoutKind::MaxAge);
            }
        }
        None
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the server started: the time of connections'
/// acceptance and of the sweeper's ticks.
#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    pub(crate) fn read(&self) -> u64 {
        millis(self.start.elapsed())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Timeouts in milliseconds, 0 for none.
    pub(crate) fn timeouts(idle: u64, first_read: u64, max_age: u64) -> Timeouts {
        let opt = |ms| (ms > 0).then(|| Duration::from_millis(ms));
        Timeouts {
            idle: opt(idle),
            first_read: opt(first_read),
            max_age: opt(max_age),
        }
    }

    #[test]
    fn tick_is_a_tenth_of_the_shortest_timeout_within_bounds() {
        assert_eq!(timeouts(0, 0, 0).tick(), None);
        assert_eq!(
            timeouts(1000, 0, 0).tick(),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            timeouts(60_000, 2_000, 0).tick(),
            Some(Duration::from_millis(200))
        );
        assert_eq!(timeouts(10, 0, 0).tick(), Some(Duration::from_millis(5)));
        assert_eq!(
            timeouts(3_600_000, 0, 0).tick(),
            Some(Duration::from_secs(1))
        );
    }
}
