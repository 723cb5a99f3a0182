//! `Server`: the accept loops, one task per connection, and the drain.
//!
//! The story of [`Server::run`]:
//!
//! 1. each listener runs an accept loop: take a place under the connection
//!    limit, accept (skipping per-connection errors, backing off when out of
//!    descriptors or memory), wrap the stream in a [`Connection`] and spawn
//!    the handler in a tracked task with its own span;
//! 2. when shutdown is triggered, every loop ends and drops its listener, so
//!    new connects are refused; then every connection's signal fires;
//! 3. drain: wait up to the drain timeout for the tasks, abort the rest;
//! 4. return a [`ShutdownReport`] of what happened.

mod accept;
pub(crate) mod bench;
pub(crate) mod overload;
mod sweeper;
pub(crate) mod task;

use std::fmt;
use std::future::pending;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admission::Limits;
use crate::config::{Config, ExternalSignal, ShutdownFuture};
use crate::conn::record::Tasks;
#[cfg(all(unix, feature = "handover"))]
use crate::handover::{Finished, Handover, Offering, Standby};
#[cfg(all(unix, feature = "handover"))]
use crate::listen::bind::Listener;
use crate::listen::open::Bound;
use crate::preamble::Preamble;
use crate::server::accept::{Closer, Closing, Listening, LoopResult, Shared, accept_loop};
use crate::server::sweeper::Sweeper;
use crate::shutdown::Fired;
use crate::timeout::Clock;
use crate::{Addr, Error, Handler, ShutdownHandle, ShutdownSignal, Stats, StatsSnapshot};

/// A bound server, ready to [`run`](Server::run).
///
/// Made by [`Server::builder`]. The listening sockets are open from
/// [`Builder::build`](crate::Builder::build) on, so [`local_addr`](Server::local_addr) is known and
/// clients may connect (they wait in the backlog) before `run` starts.
/// Dropping a `Server` that never ran closes the sockets and frees the ports
/// (and removes the Unix socket files it created).
#[must_use = "a server does nothing until `run().await` is called"]
pub struct Server {
    /// Each listener with its address and settings, in the order they were
    /// configured.
    listeners: Vec<Listening>,
    handler: Arc<dyn Handler>,
    config: Config,
    /// Cancelled by [`ShutdownHandle::shutdown`]; watched by the accept loop only.
    trigger: Arc<Fired>,
    shutdown_signal: Option<ExternalSignal>,
    stats: Stats,
    /// Zero-downtime restarts: the control socket and the predecessor.
    #[cfg(all(unix, feature = "handover"))]
    handover: Option<Handover>,
}

/// What happened during a server's life, returned by [`Server::run`].
///
/// The counts are exact. Every accepted connection ended in exactly one of
/// `completed`, `failed`, `panicked`, `timed_out`, `aborted`,
/// `proxy_rejected` or `tls_failed`. Every connection the drain had to wait
/// for (open when shutdown began, or waiting in a listen queue then and
/// accepted since) either ended before the drain deadline (`drained`,
/// whether its handler returned or a timeout closed it) or was `aborted` at
/// it:
///
/// ```text
/// accepted                              == completed + failed + panicked + timed_out
///                                          + aborted + proxy_rejected + tls_failed
/// active_at_shutdown + backlog_accepted == drained + aborted
/// ```
///
/// Clients still waiting in a listen queue at the deadline were never
/// accepted: `backlog_closed` counts them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections accepted over the server's life.
    pub accepted: u64,
    /// Handlers that returned `Ok`.
    pub completed: u64,
    /// Handlers that returned an error.
    pub failed: u64,
    /// Handlers that panicked.
    pub panicked: u64,
    /// Connections closed by a timeout (idle, first read, maximum age).
    pub timed_out: u64,
    /// Connections closed before the handler ran because their PROXY
    /// protocol header was refused.
    pub proxy_rejected: u64,
    /// Connections closed before the handler ran because their TLS
    /// handshake failed.
    pub tls_failed: u64,
    /// Connections open when shutdown began.
    pub active_at_shutdown: u64,
    /// Clients that were waiting in a listen queue when shutdown began,
    /// accepted during the drain with their shutdown signal already fired.
    pub backlog_accepted: u64,
    /// Clients still waiting in a listen queue at the drain deadline,
    /// closed without being served (never `accepted`).
    pub backlog_closed: u64,
    /// Of the connections open at shutdown or accepted from the queues
    /// since, the ones that ended by themselves within the drain timeout
    /// (their handler returned, or a timeout closed them).
    pub drained: u64,
    /// Of those, the ones aborted at the drain timeout.
    pub aborted: u64,
    /// From the shutdown's trigger to the last task's end.
    pub drain_duration: Duration,
    /// The final counters of each listener, in the order they were
    /// configured (their sum is the rest of this report).
    pub by_listener: Vec<(Addr, StatsSnapshot)>,
    /// Whether the shutdown came from a successor taking the listeners over
    /// (see `Builder::handover`, feature `handover`): they stayed open,
    /// served by the successor, while this server drained. Always `false`
    /// without that feature.
    pub handed_over: bool,
}

impl Server {
    pub(crate) fn new(
        bound: Vec<Bound>,
        handler: Arc<dyn Handler>,
        config: Config,
        shutdown_signal: Option<ExternalSignal>,
        #[cfg(all(unix, feature = "handover"))] handover: Option<Handover>,
    ) -> Result<Self, Error> {
        let mut listeners = Vec::with_capacity(bound.len());
        for Bound {
            listener,
            #[cfg(feature = "proxy-protocol")]
            proxy,
            #[cfg(feature = "tls")]
            tls,
        } in bound
        {
            let addr = listener.local_addr().map_err(|source| Error::Listener {
                what: "listener's address",
                source,
            })?;
            listeners.push(Listening {
                listener: Arc::new(listener),
                addr,
                preamble: Preamble::new(
                    #[cfg(feature = "proxy-protocol")]
                    proxy,
                    #[cfg(feature = "tls")]
                    tls,
                ),
            });
        }
        let stats = Stats::new(listeners.iter().map(|l| l.addr.clone()));
        Ok(Server {
            listeners,
            handler,
            config,
            trigger: Arc::default(),
            shutdown_signal,
            stats,
            #[cfg(all(unix, feature = "handover"))]
            handover,
        })
    }

    /// The address the server listens on (the first one, if it has
    /// several), with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> Addr {
        // `Builder::build` refuses to make a server without a listener.
        self.listeners[0].addr.clone()
    }

    /// Every address the server listens on, in the order they were
    /// configured.
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners.iter().map(|l| l.addr.clone()).collect()
    }

    /// A handle that triggers the graceful shutdown; see [`ShutdownHandle`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.trigger))
    }

    /// A live view of the server's counters; see [`Stats`].
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Accepts and serves connections until shutdown is triggered, then
    /// drains them and reports.
    ///
    /// Shutdown is triggered by [`ShutdownHandle::shutdown`] or by the
    /// future given to
    /// [`Builder::shutdown_on`](crate::Builder::shutdown_on). Then:
    ///
    /// 1. the listeners stop taking new clients, but the clients already
    ///    waiting in their queues are accepted as places free;
    /// 2. every connection's [shutdown signal](crate::Connection::shutdown_requested)
    ///    fires (also for those accepted from the queues);
    /// 3. each listener closes once its queue is empty, so new connects are
    ///    refused;
    /// 4. `run` waits up to the [drain timeout](crate::Builder::drain_timeout) for
    ///    the handlers to return, then closes the clients still waiting in
    ///    the queues and aborts the rest;
    /// 5. `run` returns the [`ShutdownReport`].
    ///
    /// Nothing the server spawned outlives `run`.
    ///
    /// # Errors
    ///
    /// [`Error::Accept`] when the listener fails with an error that is
    /// neither a per-connection error nor resource exhaustion; the live
    /// connections are drained as above before `run` returns it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes ends the server at once, as
    /// dropping a `JoinSet` does: the listeners close and every connection
    /// task is aborted (its handler's future dropped, its socket closed),
    /// without a drain or a report.
    pub async fn run(self) -> Result<ShutdownReport, Error> {
        let Server {
            listeners,
            handler,
            config,
            trigger,
            shutdown_signal,
            stats,
            #[cfg(all(unix, feature = "handover"))]
            handover,
        } = self;
        // Publishes the counters through the `metrics` facade until the
        // drain ends (and not after: dropped with this future).
        #[cfg(feature = "metrics")]
        let publisher = crate::metrics::Publisher::start(stats.clone());
        let tasks = Arc::new(Tasks::new());
        // Dropping this future aborts every connection task: nothing the
        // server spawned outlives `run`, finished or dropped.
        let _abort_on_drop = AbortOnDrop(Arc::clone(&tasks));
        let clock = Arc::new(Clock::new());
        // Timeouts stay enforced during the drain, so the sweeper outlives the
        // accept loops; it is stopped (and it ends) before `run` returns, or
        // when this future is dropped.
        let sweeper = config.timeouts.tick().map(|tick| {
            Sweeper::start(
                config.timeouts,
                tick,
                Arc::clone(&clock),
                Arc::clone(&tasks),
            )
        });
        let limits = Arc::new(Limits::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut external = shutdown_signal.map(ExternalSignal::into_future);
        let mut listeners = listeners;
        #[cfg(all(unix, feature = "handover"))]
        let mut handover = handover;
        // Once, or again each time a successor that took the listeners over
        // goes away while this server drains (see `Builder::handover`).
        // Without handovers, only once.
        #[cfg_attr(not(all(unix, feature = "handover")), allow(clippy::never_loop))]
        let (fatal, handed_over, at_shutdown, stopped_at) = loop {
            // A signal of their own for the connections accepted from here:
            // those of before may have been told to shut down already.
            let connections = Arc::new(Fired::default());
            let shared = Arc::new(Shared {
                handler: Arc::clone(&handler),
                limits: Arc::clone(&limits),
                signal: ShutdownSignal::new(Arc::clone(&connections)),
                tasks: Arc::clone(&tasks),
                clock: Arc::clone(&clock),
                next_id: Arc::clone(&next_id),
                config: config.clone(),
            });
            // Ends the accept loops: fired by the trigger, or by a handover,
            // which (unlike the trigger) may yet be taken back.
            let stop = Arc::new(Fired::default());

            #[cfg(all(unix, feature = "handover"))]
            let kept = kept_for_taking_back(&listeners, handover.is_some());
            #[cfg(all(unix, feature = "handover"))]
            let offering = handover
                .take()
                .and_then(|handover| offer_listeners(handover, &listeners, &stop));
            let (closing_tx, closing) = watch::channel(Closing::Open);
            // Each loop drops its sender once it has swept its listen queue.
            let (swept_tx, mut swept) = mpsc::channel::<()>(1);
            let mut loops = JoinSet::new();
            for (index, listening) in listeners.drain(..).enumerate() {
                tracing::info!(
                    addr = %listening.addr,
                    proxy_protocol = listening.preamble.as_ref().is_some_and(|p| p.reads_proxy_header()),
                    "listening"
                );
                // Every task accepts from the listener's one socket, which
                // closes once the last of them has swept its queue.
                for _ in 0..config.accept_tasks {
                    loops.spawn(accept_loop(
                        Arc::clone(&shared),
                        listening.clone(),
                        Arc::clone(stats.counters(index)),
                        Arc::clone(&stop),
                        Closer {
                            closing: closing.clone(),
                            swept: swept_tx.clone(),
                        },
                    ));
                }
            }
            drop(swept_tx);
            let mut fatal = supervise(&mut loops, &trigger, &stop, &mut external).await;
            let stopped_at = Instant::now();
            let deadline = stopped_at + config.drain_timeout;
            #[cfg(all(unix, feature = "handover"))]
            let finished = match offering {
                Some(offering) => offering.finish().await,
                None => Finished::Stopped,
            };
            #[cfg(all(unix, feature = "handover"))]
            let handed_over = matches!(finished, Finished::HandedOver(_));
            #[cfg(not(all(unix, feature = "handover")))]
            let handed_over = false;
            let at_shutdown = stats.snapshot();

            // Phase 1: every listener stops taking new clients. The clients
            // already waiting in its queue are the server's: each loop serves
            // them (unless a successor took the listeners over and serves the
            // queue itself), then closes the listener, so new connects are
            // refused. The connections' signal fires once every loop has
            // swept its queue, or waits for places that only ending
            // connections free.
            closing_tx.send_replace(if handed_over {
                Closing::HandedOver
            } else {
                Closing::ServeBacklog
            });
            let _ = tokio::time::timeout_at(deadline, swept.recv()).await;
            if handed_over {
                tracing::info!(
                    active = at_shutdown.active,
                    "shutdown begun: listeners handed over"
                );
            } else {
                tracing::info!(
                    active = at_shutdown.active,
                    "shutdown begun: listeners closing"
                );
            }
            connections.fire();

            // Phase 2: drain until the deadline, then close what still waits
            // in the queues and abort what still runs.
            if tokio::time::timeout_at(deadline, join_loops(&mut loops, &mut fatal))
                .await
                .is_err()
            {
                closing_tx.send_replace(Closing::Deadline);
                join_loops(&mut loops, &mut fatal).await;
            }
            #[cfg(all(unix, feature = "handover"))]
            if let Finished::HandedOver(Some(standby)) = finished {
                match drain_or_take_back(&tasks, deadline, standby, &trigger, kept).await {
                    Ok(()) => break (fatal, handed_over, at_shutdown, stopped_at),
                    Err((taken_back, again)) => {
                        listeners = taken_back;
                        handover = Some(again);
                        continue;
                    }
                }
            }
            tasks.drain(deadline).await;
            break (fatal, handed_over, at_shutdown, stopped_at);
        };
        let active_at_shutdown = at_shutdown.active;
        if let Some(sweeper) = sweeper {
            sweeper.stop().await;
        }
        // Every task has ended: the counters are final, and so are the
        // values published last.
        #[cfg(feature = "metrics")]
        publisher.stop().await;
        let end = stats.snapshot();
        let backlog_accepted = end.accepted - at_shutdown.accepted;
        let report = ShutdownReport {
            accepted: end.accepted,
            completed: end.completed,
            failed: end.failed,
            panicked: end.panicked,
            timed_out: end.timed_out(),
            proxy_rejected: end.proxy_rejected,
            tls_failed: end.tls_failed,
            active_at_shutdown,
            backlog_accepted,
            backlog_closed: end.backlog_closed,
            // Aborts happen at the drain deadline only (a panic anywhere in a
            // task counts as panicked); the difference keeps this exact anyway.
            drained: (active_at_shutdown + backlog_accepted)
                .saturating_sub(end.aborted - at_shutdown.aborted),
            aborted: end.aborted,
            drain_duration: stopped_at.elapsed(),
            by_listener: stats.by_listener(),
            handed_over,
        };
        tracing::info!(%report, "shutdown complete");
        match fatal {
            None => Ok(report),
            Some((addr, source)) => Err(Error::Accept { addr, source }),
        }
    }
}

/// Aborts every connection task when dropped (see [`Tasks::abort_all`]).
struct AbortOnDrop(Arc<Tasks>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

/// Starts offering duplicates of `listeners` to a successor (and tells the
/// predecessor, if any, that this server is ready). Without descriptors to
/// spare for the duplicates the server runs on without handovers.
#[cfg(all(unix, feature = "handover"))]
fn offer_listeners(
    handover: Handover,
    listeners: &[Listening],
    stop: &Arc<Fired>,
) -> Option<Offering> {
    let sockets: io::Result<Vec<_>> = listeners.iter().map(|l| l.listener.duplicate()).collect();
    match sockets {
        Ok(sockets) => {
            let files = listeners
                .iter()
                .filter_map(|l| match (&l.addr, l.listener.file_keeper()) {
                    (Addr::Unix(Some(path)), Some(keeper)) => Some((path.clone(), keeper)),
                    _ => None,
                })
                .collect();
            Some(handover.start(sockets, files, stop))
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot duplicate the listeners: restarts will not be seamless");
            None
        }
    }
}

/// What a server needs of its listeners to serve on them again after a
/// handover its successor did not live through: each one's address and
/// preamble, in order. Nothing without a handover.
#[cfg(all(unix, feature = "handover"))]
fn kept_for_taking_back(
    listeners: &[Listening],
    handover: bool,
) -> Vec<(Addr, Option<Arc<Preamble>>)> {
    if !handover {
        return Vec::new();
    }
    listeners
        .iter()
        .map(|l| (l.addr.clone(), l.preamble.clone()))
        .collect()
}

/// The drain of a server that handed its listeners over to a successor
/// that asked it to stand by: if the successor goes away before the drain
/// ends, and this server was not asked to shut down meanwhile, its
/// listeners (made from `kept` and the sockets it kept) and its part in
/// restarts come back, to serve again; the drain is abandoned, its
/// connections served on.
#[cfg(all(unix, feature = "handover"))]
async fn drain_or_take_back(
    tasks: &Tasks,
    deadline: Instant,
    standby: Standby,
    trigger: &Fired,
    kept: Vec<(Addr, Option<Arc<Preamble>>)>,
) -> Result<(), (Vec<Listening>, Handover)> {
    let drain = tasks.drain(deadline);
    tokio::pin!(drain);
    tokio::select! {
        biased;
        () = &mut drain => return Ok(()),
        () = standby.successor_lost() => {}
    }
    if trigger.is_fired() {
        tracing::info!("the successor went away, but this server was asked to shut down");
        drain.await;
        return Ok(());
    }
    let (sockets, handover) = standby.take_back();
    // The drain is abandoned: connections are served on.
    tasks.reopen();
    let listeners: io::Result<Vec<Listening>> = kept
        .into_iter()
        .zip(sockets)
        .map(|((addr, preamble), socket)| {
            Ok(Listening {
                listener: Arc::new(Listener::from_inherited(socket, addr.as_unix())?),
                addr,
                preamble,
            })
        })
        .collect();
    match listeners {
        Ok(listeners) => {
            tracing::warn!(
                "the successor went away before this server finished draining; serving again"
            );
            Err((listeners, handover))
        }
        Err(err) => {
            tracing::error!(error = %err, "the successor went away, and its listeners cannot be taken back");
            drain.await;
            Ok(())
        }
    }
}

/// Waits until the accept loops are told to stop (`stop` fires: by the
/// shutdown's trigger, which the builder's signal or a failing loop fires,
/// or by a handover); returns the first failure.
async fn supervise(
    loops: &mut JoinSet<LoopResult>,
    trigger: &Arc<Fired>,
    stop: &Arc<Fired>,
    external: &mut Option<ShutdownFuture>,
) -> Option<(Addr, io::Error)> {
    let mut triggered = Fired::wait(trigger);
    let mut stopped = Fired::wait(stop);
    let mut fatal = None;
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => return fatal,
            // Not polled again once it completed: `stop` has fired then.
            () = &mut triggered, if !stop.is_fired() => stop.fire(),
            () = poll_optional(external) => {
                tracing::info!("shutdown signal received");
                trigger.fire();
                *external = None;
            }
            Some(joined) = loops.join_next() => {
                joined_loop(joined, &mut fatal);
                // Loops end only when stopped or broken, and one broken
                // listener stops them all: the server is not what it was
                // configured to be.
                trigger.fire();
            }
        }
    }
}

/// Waits for every accept loop to end, keeping the first failure.
async fn join_loops(loops: &mut JoinSet<LoopResult>, fatal: &mut Option<(Addr, io::Error)>) {
    while let Some(joined) = loops.join_next().await {
        joined_loop(joined, fatal);
    }
}

/// Takes note of how an accept loop ended.
fn joined_loop(
    joined: Result<LoopResult, tokio::task::JoinError>,
    fatal: &mut Option<(Addr, io::Error)>,
) {
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => {
            fatal.get_or_insert(failure);
        }
        Err(join_err) => {
            tracing::error!(error = %join_err, "an accept loop ended abnormally");
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs())
            .field("config", &self.config)
            .field("shutting_down", &self.trigger.is_fired())
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {}, completed {}, failed {}, panicked {}, timed out {}",
            self.accepted, self.completed, self.failed, self.panicked, self.timed_out,
        )?;
        if self.proxy_rejected > 0 {
            write!(f, ", proxy rejected {}", self.proxy_rejected)?;
        }
        if self.tls_failed > 0 {
            write!(f, ", TLS failed {}", self.tls_failed)?;
        }
        write!(f, "; at shutdown {} active", self.active_at_shutdown)?;
        if self.backlog_accepted > 0 {
            write!(f, " and {} waiting", self.backlog_accepted)?;
        }
        write!(
            f,
            ": {} drained, {} aborted in {:.1?}",
            self.drained, self.aborted, self.drain_duration,
        )?;
        if self.backlog_closed > 0 {
            write!(f, "; {} still waiting closed unserved", self.backlog_closed)?;
        }
        Ok(())
    }
}

/// Waits for an optional future; never completes when there is none.
async fn poll_optional(fut: &mut Option<ShutdownFuture>) {
    match fut {
        Some(fut) => fut.await,
        None => pending().await,
    }
}
