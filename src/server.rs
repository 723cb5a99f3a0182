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

use std::any::Any;
use std::fmt;
use std::future::{Future, pending};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::accept::{Backoff, Resume};
use crate::builder::{Bound, Config, ExternalSignal, ShutdownFuture};
use crate::connection::Stream;
#[cfg(unix)]
use crate::handover::{Finished, Handover, Offering, Standby};
use crate::limit::{Limits, Permit};
use crate::listener::Listener;
use crate::preamble::Preamble;
use crate::record::{ConnState, Home};
use crate::shutdown::Fired;
use crate::stats::Counters;
use crate::task::{Handled, Tasks};
use crate::timeout::{Clock, Sweeper};
use crate::{
    Addr, BoxError, Builder, Connection, Error, Handler, ShutdownHandle, ShutdownSignal, Stats,
    StatsSnapshot,
};

/// A bound server, ready to [`run`](Server::run).
///
/// Made by [`Server::builder`]. The listening sockets are open from
/// [`Builder::build`] on, so [`local_addr`](Server::local_addr) is known and
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
    #[cfg(unix)]
    handover: Option<Handover>,
}

/// What happened during a server's life, returned by [`Server::run`].
///
/// The counts are exact: every accepted connection ended in exactly one of
/// `completed`, `failed`, `panicked`, `timed_out`, `aborted`,
/// `proxy_rejected` or `tls_failed`, and every
/// connection live when the listener closed either ended before the drain
/// deadline (`drained`, whether its handler returned or a timeout closed it)
/// or was `aborted` at it:
///
/// ```text
/// accepted           == completed + failed + panicked + timed_out + aborted
///                       + proxy_rejected + tls_failed
/// active_at_shutdown == drained + aborted
/// ```
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
    /// Connections still open when the listener closed.
    pub active_at_shutdown: u64,
    /// Of those, the ones whose handler ended by itself within the drain timeout.
    pub drained: u64,
    /// Of those, the ones aborted at the drain timeout.
    pub aborted: u64,
    /// From the listener's close to the last task's end.
    pub drain_duration: Duration,
    /// The final counters of each listener, in the order they were
    /// configured (their sum is the rest of this report).
    pub by_listener: Vec<(Addr, StatsSnapshot)>,
    /// Whether the shutdown came from a successor taking the listeners over
    /// (see [`Builder::handover`]): they stayed open, served by the
    /// successor, while this server drained.
    pub handed_over: bool,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(
        bound: Vec<Bound>,
        handler: Arc<dyn Handler>,
        config: Config,
        shutdown_signal: Option<ExternalSignal>,
        #[cfg(unix)] handover: Option<Handover>,
    ) -> Result<Self, Error> {
        let mut listeners = Vec::with_capacity(bound.len());
        for Bound {
            listener,
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
                listener,
                addr,
                preamble: Preamble::new(
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
            #[cfg(unix)]
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
    /// future given to [`Builder::shutdown_signal`]. Then:
    ///
    /// 1. the listener is closed, so new connects are refused;
    /// 2. every connection's [shutdown signal](Connection::shutdown_requested) fires;
    /// 3. `run` waits up to the [drain timeout](Builder::drain_timeout) for
    ///    the handlers to return, and aborts the rest;
    /// 4. `run` returns the [`ShutdownReport`].
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
    /// Not cancel safe: dropping the future closes the listener but leaves
    /// the connection tasks running on the runtime without a drain.
    pub async fn run(self) -> Result<ShutdownReport, Error> {
        let Server {
            listeners,
            handler,
            config,
            trigger,
            shutdown_signal,
            stats,
            #[cfg(unix)]
            handover,
        } = self;
        let tasks = Arc::new(Tasks::new());
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
        #[cfg(unix)]
        let mut handover = handover;
        // Once, or again each time a successor that took the listeners over
        // goes away while this server drains (see `Builder::handover`).
        let (fatal, handed_over, at_shutdown, drain) = loop {
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

            // Phase 1: every accept loop ends and drops its listener; new
            // connects are refused (or served by the successor).
            #[cfg(unix)]
            let kept = kept_for_taking_back(&listeners, handover.is_some());
            #[cfg(unix)]
            let offering = handover
                .take()
                .and_then(|handover| offer_listeners(handover, &listeners, &stop));
            let mut loops = JoinSet::new();
            for (index, listening) in listeners.drain(..).enumerate() {
                tracing::info!(
                    addr = %listening.addr,
                    proxy_protocol = listening.preamble.as_ref().is_some_and(|p| p.reads_proxy_header()),
                    "listening"
                );
                let counters = Arc::clone(stats.counters(index));
                loops.spawn(accept_loop(
                    Arc::clone(&shared),
                    listening,
                    counters,
                    Arc::clone(&stop),
                ));
            }
            let fatal = supervise(&mut loops, &trigger, &stop, &mut external).await;
            #[cfg(unix)]
            let finished = match offering {
                Some(offering) => offering.finish().await,
                None => Finished::Stopped,
            };
            #[cfg(unix)]
            let handed_over = matches!(finished, Finished::HandedOver(_));
            #[cfg(not(unix))]
            let handed_over = false;
            let at_shutdown = stats.snapshot();
            if handed_over {
                tracing::info!(
                    active = at_shutdown.active,
                    "shutdown begun: listeners handed over"
                );
            } else {
                tracing::info!(
                    active = at_shutdown.active,
                    "shutdown begun: listeners closed"
                );
            }
            connections.fire();

            // Phase 2: drain, then abort what is left.
            #[cfg(unix)]
            if let Finished::HandedOver(Some(standby)) = finished {
                match drain_or_take_back(&tasks, config.drain_timeout, standby, &trigger, kept)
                    .await
                {
                    Ok(drain) => break (fatal, handed_over, at_shutdown, drain),
                    Err((taken_back, again)) => {
                        listeners = taken_back;
                        handover = Some(again);
                        continue;
                    }
                }
            }
            let drain = tasks.drain(config.drain_timeout).await;
            break (fatal, handed_over, at_shutdown, drain);
        };
        let active_at_shutdown = at_shutdown.active;
        if let Some(sweeper) = sweeper {
            sweeper.stop().await;
        }
        let end = stats.snapshot();
        let report = ShutdownReport {
            accepted: end.accepted,
            completed: end.completed,
            failed: end.failed,
            panicked: end.panicked,
            timed_out: end.timed_out(),
            proxy_rejected: end.proxy_rejected,
            tls_failed: end.tls_failed,
            active_at_shutdown,
            // Aborts happen at the drain deadline only (a panic anywhere in a
            // task counts as panicked); the difference keeps this exact anyway.
            drained: active_at_shutdown.saturating_sub(end.aborted - at_shutdown.aborted),
            aborted: end.aborted,
            drain_duration: drain.duration,
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

/// Starts offering duplicates of `listeners` to a successor (and tells the
/// predecessor, if any, that this server is ready). Without descriptors to
/// spare for the duplicates the server runs on without handovers.
#[cfg(unix)]
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
#[cfg(unix)]
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
#[cfg(unix)]
async fn drain_or_take_back(
    tasks: &Tasks,
    timeout: Duration,
    standby: Standby,
    trigger: &Fired,
    kept: Vec<(Addr, Option<Arc<Preamble>>)>,
) -> Result<crate::task::Drain, (Vec<Listening>, Handover)> {
    let drain = tasks.drain(timeout);
    tokio::pin!(drain);
    tokio::select! {
        biased;
        drain = &mut drain => return Ok(drain),
        () = standby.successor_lost() => {}
    }
    if trigger.is_fired() {
        tracing::info!("the successor went away, but this server was asked to shut down");
        return Ok(drain.await);
    }
    let (sockets, handover) = standby.take_back();
    let listeners: io::Result<Vec<Listening>> = kept
        .into_iter()
        .zip(sockets)
        .map(|((addr, preamble), socket)| {
            Ok(Listening {
                listener: Listener::from_inherited(socket)?,
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
            Ok(drain.await)
        }
    }
}

/// Waits for every accept loop to end. Triggers the shutdown when the
/// builder's signal fires or a loop fails, and stops the loops (fires
/// `stop`) when it is triggered; returns the first failure.
async fn supervise(
    loops: &mut JoinSet<Result<(), (Addr, io::Error)>>,
    trigger: &Arc<Fired>,
    stop: &Arc<Fired>,
    external: &mut Option<ShutdownFuture>,
) -> Option<(Addr, io::Error)> {
    let mut triggered = Fired::wait(trigger);
    let mut fatal = None;
    loop {
        tokio::select! {
            () = poll_optional(external) => {
                tracing::info!("shutdown signal received");
                trigger.fire();
                *external = None;
            }
            // Not polled again once it completed: `stop` has fired then.
            () = &mut triggered, if !stop.is_fired() => stop.fire(),
            joined = loops.join_next() => match joined {
                None => return fatal,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(failure))) => {
                    // One broken listener stops them all: the server is not
                    // what it was configured to be.
                    trigger.fire();
                    fatal.get_or_insert(failure);
                }
                Some(Err(join_err)) => {
                    tracing::error!(error = %join_err, "an accept loop ended abnormally");
                    trigger.fire();
                }
            },
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
        write!(
            f,
            "; at shutdown {} active: {} drained, {} aborted in {:.1?}",
            self.active_at_shutdown, self.drained, self.aborted, self.drain_duration,
        )
    }
}

/// A listener with what the server knows of it.
#[derive(Debug)]
struct Listening {
    listener: Listener,
    addr: Addr,
    /// What each connection goes through before its handler, if anything.
    preamble: Option<Arc<Preamble>>,
}

/// What every accept loop and every new connection is made from.
struct Shared {
    handler: Arc<dyn Handler>,
    config: Config,
    limits: Arc<Limits>,
    signal: ShutdownSignal,
    tasks: Arc<Tasks>,
    clock: Arc<Clock>,
    /// Shared by every generation of accept loops (see `Server::run`).
    next_id: Arc<AtomicU64>,
}

/// At most one `info` line a listener per this long says the connection
/// limit was reached (then `debug`): a server at its limit reaches it again
/// with every connection that ends.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts on one listener until shutdown is triggered or the listener
/// fails; the listener is dropped (closed) on return.
async fn accept_loop(
    shared: Arc<Shared>,
    listening: Listening,
    counters: Arc<Counters>,
    trigger: Arc<Fired>,
) -> Result<(), (Addr, io::Error)> {
    let Listening {
        listener,
        addr,
        preamble,
    } = listening;
    // Shared by this listener's connections: a reference count, not copies.
    let home = Arc::new(Home {
        addr: addr.clone(),
        signal: shared.signal.clone(),
        counters,
        tasks: Arc::clone(&shared.tasks),
        limits: Arc::clone(&shared.limits),
        preamble,
    });
    // Made once: registering a waiter on every iteration would cost a lock
    // per accepted connection.
    let mut stop = Fired::wait(&trigger);
    let mut backoff = Backoff::new();
    let mut last_full_warning = None;
    loop {
        // Room first: a full server does not accept, so clients queue in
        // the kernel's backlog instead of costing a descriptor. The place is
        // taken only once a connection is in hand, so that a listener waiting
        // for clients holds none while another listener's clients queue.
        if !shared.limits.has_room() {
            let now = tokio::time::Instant::now();
            if last_full_warning.is_none_or(|at| now.duration_since(at) >= FULL_LOG_INTERVAL) {
                last_full_warning = Some(now);
                tracing::info!(
                    max_connections = shared.config.max_connections,
                    %addr,
                    "connection limit reached, accepting paused"
                );
            } else {
                tracing::debug!(%addr, "connection limit reached, accepting paused");
            }
            tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                () = shared.limits.room() => tracing::debug!(%addr, "accepting resumed"),
            }
        }
        let accepted = tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if backoff.in_episode() {
                    tracing::info!(%addr, "accepting again after resource exhaustion");
                }
                backoff.reset();
                let permit = match shared.limits.try_permit() {
                    Some(permit) => permit,
                    // Another listener took the last place meanwhile: this
                    // connection waits for the next (an overshoot of at most
                    // one connection in hand per listener).
                    None => tokio::select! {
                        biased;
                        () = &mut stop => return Ok(()),
                        permit = shared.limits.permit() => permit,
                    },
                };
                serve(&shared, stream, peer, &home, permit);
            }
            Err(err) => {
                home.counters.accept_error();
                match backoff.on_error(err, &addr, &mut stop).await {
                    Ok(Resume::Accept) => {}
                    Ok(Resume::Stop) => return Ok(()),
                    Err(err) => {
                        tracing::error!(%addr, error = %err, "accept failed, shutting down");
                        return Err((addr, err));
                    }
                }
            }
        }
    }
}

/// Admits an accepted stream and spawns its task, which runs the
/// listener's preamble if it has one, then the handler.
fn serve(shared: &Shared, stream: Stream, peer: Addr, home: &Arc<Home>, permit: Permit) {
    let Some(admission) = shared.limits.admit(permit, peer.ip()) else {
        home.counters.rejected();
        tracing::debug!(%peer, "per-IP connection limit reached, connection closed");
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Stream::Tcp(tcp) = &stream {
        set_tcp_options(&shared.config, tcp, id);
    }
    home.counters.accepted();
    let span = tracing::debug_span!("conn", id, %peer, client = tracing::field::Empty);
    let accepted_at = shared.clock.read();
    // From here the connection's record frees its places when its task ends.
    let per_ip = admission.keep();
    let state = Arc::new(ConnState::new(
        Arc::clone(home),
        id,
        peer,
        accepted_at,
        per_ip,
    ));
    let job = Job {
        conn: Connection::new(stream, state),
        span,
    };
    // Through the handler's vtable into `spawn_connection::<H>`, so that the
    // handler's future is a concrete type, polled without dynamic dispatch.
    Arc::clone(&shared.handler).spawn_connection(&shared.tasks, job);
}

/// Everything a connection's task is made of.
#[allow(unreachable_pub)] // named by the sealed handler trait only
#[derive(Debug)]
pub struct Job {
    conn: Connection,
    span: tracing::Span,
}

/// Handler futures up to this size live in the task itself; larger ones in
/// a box of their own.
///
/// A future is moved by copying its whole layout, and between `spawn` and
/// tokio's task cell the task future is moved about ten times: inline, a
/// 1.6 KB HTTP handler future cost ~4,000 instructions of `memcpy` per
/// connection (callgrind), far more than the allocation a box costs. A small
/// future costs little to move, and inline it saves the box's memory and
/// allocator overhead on every idle connection.
const INLINE_FUTURE_LIMIT: usize = 512;

/// Spawns a connection's task: the preamble (PROXY header, TLS), then the
/// handler, with panics caught and the outcome counted. Generic over the
/// handler, so that its future is polled without dynamic dispatch and its
/// error converted only when there is one.
pub(crate) fn spawn_connection<H: Handler>(handler: Arc<H>, tasks: &Tasks, job: Job) {
    // The size of `H::handle`'s future, from its type alone (a constant).
    fn future_size<'a, H: 'a, F>(_: impl FnOnce(&'a H, Connection) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    let Job { conn, span } = job;
    let state = Arc::clone(&conn.state);
    let inline = future_size(H::handle) <= INLINE_FUTURE_LIMIT;
    // Only listeners with a preamble have the layer that runs it.
    // A handler's future is polled by the task's guard directly, or through
    // its box: no layer in between but the one that holds the handler.
    match (inline, conn.state.home.preamble.is_some()) {
        (true, false) => tasks.spawn(handle(handler, conn), span, state),
        (false, false) => tasks.spawn(Box::pin(handle(handler, conn)), span, state),
        (true, true) => {
            let serve = after_preamble(conn, |conn| handle(handler, conn));
            tasks.spawn(serve, span, state);
        }
        (false, true) => {
            let serve = after_preamble(conn, |conn| Box::pin(handle(handler, conn)));
            tasks.spawn(serve, span, state);
        }
    }
}

/// A connection's handler, with the handler it borrows. An `async fn`'s
/// arguments keep their room in its future for its whole life, so there are
/// as few as can be, and no locals: a local moved out of keeps its room too.
/// `H::handle`, not `Arc<H>`'s `Handler` impl, which would box.
async fn handle<H: Handler>(handler: Arc<H>, conn: Connection) -> Result<(), H::Error> {
    H::handle(&handler, conn).await
}

/// Runs the listener's preamble on `conn`, then `serve` if it accepted it.
async fn after_preamble<F, S, E>(conn: Connection, serve: S) -> Handled
where
    S: FnOnce(Connection) -> F,
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    match prepare(conn).await {
        Ok(Some(conn)) => serve(conn).await.into(),
        Ok(None) => Handled::Refused,
        Err(payload) => Handled::PreamblePanicked(payload),
    }
}

/// Runs the listener's preamble on `conn`: `Ok(None)` if it refused the
/// connection, `Err` with the payload if it panicked.
///
/// The preamble's future is boxed, for the same reason as large handler
/// futures: inline, its state (a header buffer, a TLS handshake) would make
/// the task of every connection on the listener large.
async fn prepare(conn: Connection) -> Result<Option<Connection>, Box<dyn Any + Send>> {
    let home = Arc::clone(&conn.state.home);
    let Some(preamble) = home.preamble.as_ref() else {
        return Ok(Some(conn));
    };
    let mut running = Box::pin(preamble.run(conn, &home.counters));
    // Caught here rather than by the task's guard, to tell a panic before
    // the handler from the handler's own. AssertUnwindSafe: after a panic
    // the preamble's future is dropped, never polled again.
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(ran)) => Poll::Ready(Ok(ran.ok())),
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
}

/// Per-connection TCP options. A failure is logged, not fatal: the peer may
/// already be gone, and the handler will find out.
fn set_tcp_options(config: &Config, stream: &TcpStream, id: u64) {
    if config.tcp_nodelay {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(conn.id = id, error = %err, "cannot set TCP_NODELAY");
        }
    }
    if let Some(idle) = config.tcp_keepalive {
        let keepalive = TcpKeepalive::new().with_time(idle);
        if let Err(err) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(conn.id = id, error = %err, "cannot set SO_KEEPALIVE");
        }
    }
}

/// Waits for an optional future; never completes when there is none.
async fn poll_optional(fut: &mut Option<ShutdownFuture>) {
    match fut {
        Some(fut) => fut.await,
        None => pending().await,
    }
}
