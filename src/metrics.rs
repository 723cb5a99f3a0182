//! The server's counters published through the `metrics` facade (feature
//! `metrics`), for whichever exporter the application installed
//! (Prometheus, StatsD, OpenTelemetry, ...).
//!
//! The counters are pulled, not pushed. A connection bumps only its own
//! shard of its listener's [`Counters`](crate::stats::Counters), so that no
//! cache line is written by every core; a metrics handle is one value
//! behind one pointer that every core would write. So a [`Publisher`] task
//! reads [`Stats::by_listener`] every [`INTERVAL`] and moves each counter
//! and gauge by what changed since it last read, and once more when `run`
//! ends, so that the last values are exact. By what changed, rather than
//! to what it read (`Counter::absolute`, which keeps the largest value it
//! was given, and `Gauge::set`): two servers of one process on one address
//! in turn (a reload), or at once, then add up as a counter of the
//! process should, instead of the second one's counts staying hidden
//! under the first one's until they pass them. Only the duration
//! histogram is recorded per connection, at its end ([`ConnMetrics`]): a
//! distribution cannot be rebuilt from sums. The publisher is a thread, as
//! the timeout sweeper is, and for the same reason (see [`Publisher`]).
//!
//! Handles are registered with the recorder installed when `run` starts
//! (the publisher's and each accept loop's, once per listener); without
//! one they are the facade's no-op handles, whose updates are a branch.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::timeout::Clock;
use crate::{Addr, Stats, StatsSnapshot};

/// How often the counters and the gauge are published while `run` runs.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The label naming the listener: its address as [`Addr`] displays it.
const LISTENER: &str = "listener";

const ACCEPTED: &str = "switchboard_connections_accepted_total";
const COMPLETED: &str = "switchboard_connections_completed_total";
const FAILED: &str = "switchboard_connections_failed_total";
const PANICKED: &str = "switchboard_connections_panicked_total";
const TIMED_OUT: &str = "switchboard_connections_timed_out_total";
const ABORTED: &str = "switchboard_connections_aborted_total";
#[cfg(feature = "proxy-protocol")]
const PROXY_REJECTED: &str = "switchboard_connections_proxy_rejected_total";
#[cfg(feature = "tls")]
const TLS_FAILED: &str = "switchboard_connections_tls_failed_total";
const REJECTED: &str = "switchboard_connections_rejected_total";
const BACKLOG_CLOSED: &str = "switchboard_connections_backlog_closed_total";
const ACCEPT_ERRORS: &str = "switchboard_accept_errors_total";
const ACTIVE: &str = "switchboard_connections_active";
const DURATION: &str = "switchboard_connection_duration_seconds";

/// Publishes a server's counters while its `run` runs; see the module docs.
///
/// From a thread of its own, not a task with a tokio timer: while any timer
/// is pending, every time the runtime parks it reads the clock and walks the
/// timer wheel (as for the timeout sweeper, `server/sweeper.rs`): a tick a
/// second would cost every wake-up of the server. Only if the thread cannot
/// be started does it publish from a task.
#[derive(Debug)]
pub(crate) struct Publisher {
    source: Arc<Source>,
    running: Running,
}

#[derive(Debug)]
enum Running {
    Thread {
        /// Dropped (taken, or with the publisher) to tell the thread to end.
        stop: Option<mpsc::Sender<()>>,
        /// Completes when the thread has ended.
        ended: oneshot::Receiver<()>,
    },
    /// Only when no thread could be started; aborted when dropped.
    Task(JoinHandle<()>),
}

impl Publisher {
    /// Describes the metrics, registers their handles for each listener of
    /// `stats` with the recorder installed now, publishes, and starts
    /// publishing every [`INTERVAL`].
    pub(crate) fn start(stats: Stats) -> Publisher {
        describe();
        let source = Arc::new(Source::new(stats));
        source.publish();
        let (stop, stopped) = mpsc::channel::<()>();
        let (done, ended) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("switchboard-metrics".to_owned())
            .spawn({
                let source = Arc::clone(&source);
                move || {
                    // Every interval until the sender is dropped.
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                        source.publish();
                    }
                    let _ = done.send(());
                }
            });
        let running = match thread {
            Ok(_) => Running::Thread {
                stop: Some(stop),
                ended,
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the metrics publisher's thread, publishing from a task");
                Running::Task(tokio::spawn(publish_in_task(Arc::clone(&source))))
            }
        };
        Publisher { source, running }
    }

    /// Stops publishing, then publishes the final counters.
    pub(crate) async fn stop(mut self) {
        match &mut self.running {
            Running::Thread { stop, ended } => {
                drop(stop.take());
                // The thread ends within one publication; a dropped sender
                // means it panicked, and then it has ended too.
                let _ = ended.await;
            }
            Running::Task(task) => {
                task.abort();
                let _ = task.await;
            }
        }
        self.source.publish();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // The thread ends once its sender is dropped, with this.
        if let Running::Task(task) = &self.running {
            task.abort();
        }
    }
}

/// Publishes every [`INTERVAL`], from a task (when no thread could be
/// started).
async fn publish_in_task(source: Arc<Source>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    // A late tick is not made up for: the next one publishes the same
    // counters, only fresher.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        source.publish();
    }
}

/// What a listener's connections record themselves: the duration
/// histogram, kept in the listener's shared state
/// ([`Home`](crate::conn::record::Home)). A clone shares the handles: a
/// listener's connections record into one histogram, whichever copy of its
/// shared state they hold.
#[derive(Debug, Clone)]
pub(crate) struct ConnMetrics {
    duration: Histogram,
    /// The server's clock, which connections' acceptance times count in.
    clock: Arc<Clock>,
}

impl ConnMetrics {
    /// The histogram of the listener at `addr`, registered with the recorder
    /// installed now.
    pub(crate) fn register(addr: &Addr, clock: &Arc<Clock>) -> ConnMetrics {
        ConnMetrics {
            duration: histogram!(DURATION, LISTENER => addr.to_string()),
            clock: Arc::clone(clock),
        }
    }

    /// Records nothing: for connections served outside a server.
    pub(crate) fn noop() -> ConnMetrics {
        ConnMetrics {
            duration: Histogram::noop(),
            clock: Arc::new(Clock::new()),
        }
    }

    /// Records the duration of a connection accepted at `accepted_at` (the
    /// server clock's milliseconds) that ends now, in seconds.
    pub(crate) fn ended(&self, accepted_at: u64) {
        let millis = self.clock.read().saturating_sub(accepted_at);
        // Exact below 2^53 ms (285,000 years).
        self.duration.record(millis as f64 / 1000.0);
    }
}

/// The handles of one listener's published metrics.
#[derive(Debug)]
struct Published {
    accepted: Counter,
    completed: Counter,
    failed: Counter,
    panicked: Counter,
    /// By kind: idle, first read, maximum age, overload.
    timed_out: [Counter; 4],
    aborted: Counter,
    #[cfg(feature = "proxy-protocol")]
    proxy_rejected: Counter,
    #[cfg(feature = "tls")]
    tls_failed: Counter,
    rejected: Counter,
    backlog_closed: Counter,
    accept_errors: Counter,
    active: Gauge,
}

impl Published {
    fn register(addr: &Addr) -> Published {
        let listener = addr.to_string();
        let count = |name: &'static str| counter!(name, LISTENER => listener.clone());
        let timed_out =
            |kind: &'static str| counter!(TIMED_OUT, LISTENER => listener.clone(), "kind" => kind);
        Published {
            accepted: count(ACCEPTED),
            completed: count(COMPLETED),
            failed: count(FAILED),
            panicked: count(PANICKED),
            // The names the logs give the kinds (`TimeoutKind::name`).
            timed_out: [
                timed_out("idle"),
                timed_out("first_read"),
                timed_out("max_age"),
                timed_out("overload"),
            ],
            aborted: count(ABORTED),
            #[cfg(feature = "proxy-protocol")]
            proxy_rejected: count(PROXY_REJECTED),
            #[cfg(feature = "tls")]
            tls_failed: count(TLS_FAILED),
            rejected: count(REJECTED),
            backlog_closed: count(BACKLOG_CLOSED),
            accept_errors: count(ACCEPT_ERRORS),
            active: gauge!(ACTIVE, LISTENER => listener.clone()),
        }
    }

    /// Moves every counter and the gauge by what changed from `last` to
    /// `s`.
    fn publish(&self, s: &StatsSnapshot, last: &StatsSnapshot) {
        let up = |counter: &Counter, now: u64, before: u64| {
            // Counters only grow: `Stats` never takes one back.
            counter.increment(now.saturating_sub(before));
        };
        up(&self.accepted, s.accepted, last.accepted);
        up(&self.completed, s.completed, last.completed);
        up(&self.failed, s.failed, last.failed);
        up(&self.panicked, s.panicked, last.panicked);
        let [idle, first_read, max_age, overload] = &self.timed_out;
        up(idle, s.timed_out_idle, last.timed_out_idle);
        up(
            first_read,
            s.timed_out_first_read,
            last.timed_out_first_read,
        );
        up(max_age, s.timed_out_max_age, last.timed_out_max_age);
        up(overload, s.timed_out_overload, last.timed_out_overload);
        up(&self.aborted, s.aborted, last.aborted);
        #[cfg(feature = "proxy-protocol")]
        up(&self.proxy_rejected, s.proxy_rejected, last.proxy_rejected);
        #[cfg(feature = "tls")]
        up(&self.tls_failed, s.tls_failed, last.tls_failed);
        up(&self.rejected, s.rejected, last.rejected);
        up(&self.backlog_closed, s.backlog_closed, last.backlog_closed);
        up(&self.accept_errors, s.accept_errors, last.accept_errors);
        // Exact below 2^53 connections.
        if s.active >= last.active {
            self.active.increment((s.active - last.active) as f64);
        } else {
            self.active.decrement((last.active - s.active) as f64);
        }
    }
}

/// What the publisher publishes, and from what.
#[derive(Debug)]
struct Source {
    stats: Stats,
    /// Each listener's handles, in the order of `stats.by_listener()`.
    listeners: Vec<Published>,
    /// Each listener's snapshot published last (zeros before the first).
    last: Mutex<Vec<StatsSnapshot>>,
}

impl Source {
    fn new(stats: Stats) -> Source {
        let by_listener = stats.by_listener();
        Source {
            listeners: by_listener
                .iter()
                .map(|(addr, _)| Published::register(addr))
                .collect(),
            last: Mutex::new(vec![StatsSnapshot::default(); by_listener.len()]),
            stats,
        }
    }

    /// Publishes what changed since the last time.
    fn publish(&self) {
        // Read under the lock, so that publications never cross: one that
        // read earlier and moved the counters later would count twice what
        // happened in between. Only the publisher takes it, once a second:
        // never contended. A panic while it was held left each snapshot
        // whole.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.stats.by_listener();
        for (((_, now), last), published) in now.iter().zip(last.iter_mut()).zip(&self.listeners) {
            published.publish(now, last);
            *last = *now;
        }
    }
}

/// Gives the recorder each metric's unit and help text.
fn describe() {
    let counters: &[(&'static str, &'static str)] = &[
        (ACCEPTED, "Connections accepted and handed to the handler."),
        (COMPLETED, "Connections whose handler returned Ok."),
        (FAILED, "Connections whose handler returned an error."),
        (PANICKED, "Connections whose handler panicked."),
        (
            TIMED_OUT,
            "Connections closed by a timeout, by kind: idle, first_read, max_age, overload.",
        ),
        (
            ABORTED,
            "Connections aborted at the end of the drain timeout.",
        ),
        #[cfg(feature = "proxy-protocol")]
        (
            PROXY_REJECTED,
            "Connections closed before the handler because their PROXY protocol header was refused.",
        ),
        #[cfg(feature = "tls")]
        (
            TLS_FAILED,
            "Connections closed before the handler because their TLS handshake failed.",
        ),
        (
            REJECTED,
            "Connections closed at once by the per-address connection limit (never accepted).",
        ),
        (
            BACKLOG_CLOSED,
            "Clients still waiting in the listen queue at the drain deadline, closed unserved.",
        ),
        (ACCEPT_ERRORS, "Failed accept calls, whatever the cause."),
    ];
    for &(name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!(ACTIVE, Unit::Count, "Connections whose handler is running.");
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "How long connections lasted, from accept to the end of their task (millisecond resolution)."
    );
}
