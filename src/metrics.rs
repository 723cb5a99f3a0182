//! The server's counters published through the `metrics` facade (feature
//! `metrics`), for whichever exporter the application installed
//! (Prometheus, StatsD, OpenTelemetry, ...).
//!
//! The counters are pulled, not pushed. A connection bumps only its own
//! shard of its listener's [`Counters`](crate::stats::Counters), so that no
//! cache line is written by every core; a metrics handle is one value
//! behind one pointer that every core would write. So a [`Publisher`] task
//! reads [`Stats::by_listener`] every [`INTERVAL`] and sets each counter
//! (`absolute`) and gauge (`set`) to what it read, and once more when
//! `run` ends, so that the last values are exact. Only the duration
//! histogram is recorded per connection, at its end ([`ConnMetrics`]): a
//! distribution cannot be rebuilt from sums.
//!
//! Handles are registered with the recorder installed when `run` starts
//! (the publisher's and each accept loop's, once per listener); without
//! one they are the facade's no-op handles, whose updates are a branch.

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
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
#[derive(Debug)]
pub(crate) struct Publisher {
    /// The task that publishes every [`INTERVAL`]; aborted when dropped, so
    /// that it never outlives `run`.
    task: JoinHandle<()>,
    listeners: Arc<[Published]>,
    stats: Stats,
}

impl Publisher {
    /// Describes the metrics, registers their handles for each listener of
    /// `stats` with the recorder installed now, publishes, and spawns the
    /// task that publishes again every [`INTERVAL`].
    pub(crate) fn start(stats: Stats) -> Publisher {
        describe();
        let listeners: Arc<[Published]> = stats
            .by_listener()
            .iter()
            .map(|(addr, _)| Published::register(addr))
            .collect();
        publish(&stats, &listeners);
        let task = tokio::spawn({
            let (stats, listeners) = (stats.clone(), Arc::clone(&listeners));
            async move {
                let mut ticks = tokio::time::interval(INTERVAL);
                // A late tick is not made up for: the next one publishes
                // the same counters, only fresher.
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    publish(&stats, &listeners);
                }
            }
        });
        Publisher {
            task,
            listeners,
            stats,
        }
    }

    /// Stops the task, then publishes the final counters.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        // The task publishes without awaiting, so an abort takes effect
        // between two publications: once it has ended, none of its
        // (older) values can land after the final ones.
        let _ = (&mut self.task).await;
        publish(&self.stats, &self.listeners);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a listener's connections record themselves: the duration
/// histogram, kept in the listener's shared state
/// ([`Home`](crate::conn::record::Home)).
#[derive(Debug)]
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

    fn publish(&self, s: &StatsSnapshot) {
        self.accepted.absolute(s.accepted);
        self.completed.absolute(s.completed);
        self.failed.absolute(s.failed);
        self.panicked.absolute(s.panicked);
        let [idle, first_read, max_age, overload] = &self.timed_out;
        idle.absolute(s.timed_out_idle);
        first_read.absolute(s.timed_out_first_read);
        max_age.absolute(s.timed_out_max_age);
        overload.absolute(s.timed_out_overload);
        self.aborted.absolute(s.aborted);
        #[cfg(feature = "proxy-protocol")]
        self.proxy_rejected.absolute(s.proxy_rejected);
        #[cfg(feature = "tls")]
        self.tls_failed.absolute(s.tls_failed);
        self.rejected.absolute(s.rejected);
        self.backlog_closed.absolute(s.backlog_closed);
        self.accept_errors.absolute(s.accept_errors);
        // Exact below 2^53 connections.
        self.active.set(s.active as f64);
    }
}

/// Publishes each listener's counters (`listeners` in the order of
/// `stats.by_listener()`).
fn publish(stats: &Stats, listeners: &[Published]) {
    for ((_, snapshot), published) in stats.by_listener().iter().zip(listeners) {
        published.publish(snapshot);
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
