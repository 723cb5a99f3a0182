//! A bound on the log lines a peer can cause: at most one per interval,
//! the rest counted and the count carried by the next line.
//!
//! A `warn` per refused connection lets whoever can connect write the log:
//! 3,000 connections, 3,000 lines. Where an event is logged for every
//! connection a peer controls, the line goes through a [`LogLimit`]: the
//! first event logs at once, the next ones within the interval are only
//! counted (the caller logs them at `debug`), and the first event after
//! the interval logs with the count of those it stood for. (The accept
//! loop's errors are bounded differently, one line per episode of
//! failures: see `accept::Backoff`.)

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per interval for one kind of event; see the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct LogLimit {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the last line was let through; `None` before the first.
    last: Option<Instant>,
    /// Events since then that were not.
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Call once per event. `Some(suppressed)`: log this one, saying that
    /// `suppressed` more happened since the last line and were not logged
    /// (zero for the first). `None`: the interval is not over; the event is
    /// counted, for the next line, and should not be logged at the limited
    /// level.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        // Nothing below panics while the lock is held; a poisoned lock
        // still holds a consistent count.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_carries_the_count_of_the_rest() {
        let interval = Duration::from_secs(5);
        let limit = LogLimit::new(interval);
        assert_eq!(limit.admit(), Some(0), "the first event logs at once");
        let quiet = (0..2_999).filter(|_| limit.admit().is_some()).count();
        assert_eq!(quiet, 0, "events within the interval log nothing");

        tokio::time::advance(interval - Duration::from_millis(1)).await;
        assert_eq!(limit.admit(), None, "still within the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limit.admit(), Some(3_000), "the next line counts the rest");
        assert_eq!(limit.admit(), None);

        // A quiet spell: the next event logs at once, with what the last
        // interval suppressed.
        tokio::time::advance(interval * 10).await;
        assert_eq!(limit.admit(), Some(1));
        tokio::time::advance(interval).await;
        assert_eq!(limit.admit(), Some(0));
    }
}
