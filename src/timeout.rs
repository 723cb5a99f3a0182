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
//! The sweeper is a thread of its own, not a task with a tokio timer: while
//! any timer is pending, every time the runtime parks it reads the clock and
//! walks the timer wheel, a few hundred instructions on every wake-up of the
//! server (callgrind: ~270 per HTTP request). A thread that sleeps a tick at a
//! time costs the runtime nothing. Only if the thread cannot be started does
//! the sweeper run as a task.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::conn::record::ConnState;
use crate::conn::registry::Tasks;

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

    /// Whether the connection has expired at `now` (the clock's
    /// milliseconds), and by which timeout.
    pub(crate) fn expired(&self, state: &ConnState, now: u64) -> Option<TimeoutKind> {
        // First: it also takes note of activity since the last sweep.
        let last_active = state.last_active(now);
        let age = now.saturating_sub(state.accepted_at);
        if let Some(limit) = self.first_read {
            if !state.has_read() && age >= millis(limit) {
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

/// A running sweeper; [`stop`](Sweeper::stop) ends it, and so does
/// dropping it.
#[derive(Debug)]
pub(crate) enum Sweeper {
    Thread {
        /// Dropped to tell the thread to end.
        stop: mpsc::Sender<()>,
        /// Completes when the thread has ended.
        ended: oneshot::Receiver<()>,
    },
    /// Only when no thread could be started.
    Task {
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    },
}

impl Sweeper {
    /// Starts sweeping every `tick` until stopped.
    pub(crate) fn start(
        timeouts: Timeouts,
        tick: Duration,
        clock: Arc<Clock>,
        tasks: Arc<Tasks>,
    ) -> Sweeper {
        let (stop, stopped) = mpsc::channel::<()>();
        let (done, ended) = oneshot::channel();
        let (thread_clock, thread_tasks) = (Arc::clone(&clock), Arc::clone(&tasks));
        let thread = std::thread::Builder::new()
            .name("switchboard-sweeper".to_owned())
            .spawn(move || {
                // Wakes every tick until the sender is dropped.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    sweep_once(timeouts, &thread_clock, &thread_tasks);
                }
                let _ = done.send(());
            });
        match thread {
            Ok(_) => Sweeper::Thread { stop, ended },
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the timeout sweeper's thread, sweeping in a task");
                let (stop, stopped) = oneshot::channel();
                let task = tokio::spawn(sweep_in_task(timeouts, tick, clock, tasks, stopped));
                Sweeper::Task { stop, task }
            }
        }
    }

    /// Stops the sweeper and waits for it to end.
    pub(crate) async fn stop(self) {
        match self {
            Sweeper::Thread { stop, ended } => {
                drop(stop);
                // The thread ends within one sweep; a dropped sender means
                // it panicked, and then it has ended too.
                let _ = ended.await;
            }
            Sweeper::Task { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
        }
    }
}

/// Expires the connections past a timeout.
fn sweep_once(timeouts: Timeouts, clock: &Clock, tasks: &Tasks) {
    let now = clock.read();
    tasks.expire(|state| timeouts.expired(state, now));
}

/// The sweeper as a task, with a tokio timer, until `stop` completes (or
/// its sender is dropped).
async fn sweep_in_task(
    timeouts: Timeouts,
    tick: Duration,
    clock: Arc<Clock>,
    tasks: Arc<Tasks>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = interval.tick() => sweep_once(timeouts, &clock, &tasks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, ShutdownSignal};

    fn timeouts(idle: u64, first_read: u64, max_age: u64) -> Timeouts {
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

    #[test]
    fn expiry_by_kind() {
        let t = timeouts(100, 50, 1000);
        let state = ConnState::detached(
            1,
            Addr::Unix(None),
            Addr::Unix(None),
            ShutdownSignal::new(Arc::default()),
        );
        // The handler waits for the peer throughout, but where it says.
        state.waiting(true);
        assert_eq!(t.expired(&state, 49), None);
        assert_eq!(t.expired(&state, 50), Some(TimeoutKind::FirstRead));
        state.read();
        assert_eq!(t.expired(&state, 60), None, "read, seen at 60");
        assert_eq!(t.expired(&state, 159), None, "idle until 160");
        assert_eq!(t.expired(&state, 160), Some(TimeoutKind::Idle));
        state.waiting(false);
        assert_eq!(t.expired(&state, 200), None, "busy elsewhere, seen at 200");
        state.waiting(true);
        assert_eq!(t.expired(&state, 299), None, "idle until 300");
        assert_eq!(t.expired(&state, 300), Some(TimeoutKind::Idle));
        state.wrote();
        assert_eq!(t.expired(&state, 990), None, "wrote, seen at 990");
        assert_eq!(t.expired(&state, 1000), Some(TimeoutKind::MaxAge));
        assert!(state.expire(TimeoutKind::MaxAge));
        assert!(!state.expire(TimeoutKind::Idle), "expires once");
        assert_eq!(state.expired_by(), Some(TimeoutKind::MaxAge));
    }
}
