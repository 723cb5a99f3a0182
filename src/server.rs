//! `Server`: the accept loop, one task per connection, and the drain.
//!
//! The story of [`Server::run`]:
//!
//! 1. accept a connection (skipping per-connection errors, backing off when
//!    out of descriptors or memory), wrap it in a [`Connection`] and spawn
//!    the handler in a tracked task with its own span;
//! 2. when shutdown is triggered, leave the loop and drop the listener, so
//!    new connects are refused; then fire every connection's signal;
//! 3. drain: wait up to the drain timeout for the tasks, abort the rest;
//! 4. return a [`ShutdownReport`] of what happened.

use std::fmt;
use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::accept::{self, AcceptError, Backoff};
use crate::builder::{Config, ExternalSignal, ShutdownFuture};
use crate::handler::sealed::ErasedHandler;
use crate::limit::Limits;
use crate::stats::Outcome;
use crate::task::{CatchUnwind, Tasks, panic_message};
use crate::timeout::{self, Activity, Clock, ConnState};
use crate::{Addr, Builder, Connection, Error, Handler, ShutdownHandle, ShutdownSignal, Stats};

/// A bound server, ready to [`run`](Server::run).
///
/// Made by [`Server::builder`]. The listening socket is open from
/// [`Builder::build`] on, so [`local_addr`](Server::local_addr) is known and
/// clients may connect (they wait in the backlog) before `run` starts.
/// Dropping a `Server` that never ran closes the socket and frees the port.
#[must_use = "a server does nothing until `run().await` is called"]
pub struct Server {
    listener: TcpListener,
    local_addr: Addr,
    handler: Arc<dyn Handler>,
    config: Config,
    /// Cancelled by [`ShutdownHandle::shutdown`]; watched by the accept loop only.
    trigger: CancellationToken,
    shutdown_signal: Option<ExternalSignal>,
    stats: Stats,
}

/// What happened during a server's life, returned by [`Server::run`].
///
/// The counts are exact: every accepted connection ended in exactly one of
/// `completed`, `failed`, `panicked`, `timed_out` or `aborted`, and every
/// connection live when the listener closed either ended before the drain
/// deadline (`drained`, whether its handler returned or a timeout closed it)
/// or was `aborted` at it:
///
/// ```text
/// accepted           == completed + failed + panicked + timed_out + aborted
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
    /// Connections still open when the listener closed.
    pub active_at_shutdown: u64,
    /// Of those, the ones whose handler ended by itself within the drain timeout.
    pub drained: u64,
    /// Of those, the ones aborted at the drain timeout.
    pub aborted: u64,
    /// From the listener's close to the last task's end.
    pub drain_duration: Duration,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        config: Config,
        shutdown_signal: Option<ExternalSignal>,
    ) -> Result<Self, Error> {
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: Addr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })?;
        Ok(Server {
            listener,
            local_addr: Addr::Tcp(local_addr),
            handler,
            config,
            trigger: CancellationToken::new(),
            shutdown_signal,
            stats: Stats::new(),
        })
    }

    /// The address the server listens on, with the real port when port 0
    /// was asked for.
    pub fn local_addr(&self) -> Addr {
        self.local_addr.clone()
    }

    /// A handle that triggers the graceful shutdown; see [`ShutdownHandle`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.trigger.clone())
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
            listener,
            local_addr,
            handler,
            config,
            trigger,
            shutdown_signal,
            stats,
        } = self;
        let connections = CancellationToken::new();
        let tasks = Arc::new(Tasks::new(Arc::clone(stats.counters())));
        let clock = Arc::new(Clock::new());
        let sweeper_stop = CancellationToken::new();
        // Timeouts stay enforced during the drain, so the sweeper outlives the
        // accept loop; it is stopped and awaited before `run` returns.
        let sweeper = config.timeouts.tick().map(|tick| {
            tokio::spawn(timeout::sweep(
                config.timeouts,
                tick,
                Arc::clone(&clock),
                Arc::clone(&tasks),
                sweeper_stop.clone(),
            ))
        });
        let acceptor = Acceptor {
            local_addr: local_addr.clone(),
            handler,
            config: &config,
            limits: Limits::new(config.max_connections, config.max_connections_per_ip),
            signal: ShutdownSignal::new(connections.clone()),
            stats: &stats,
            tasks: &tasks,
            clock,
            next_id: 1,
        };
        tracing::info!(addr = %local_addr, "listening");

        // Phase 1: the loop ends and drops the listener; new connects are refused.
        let accept_result = acceptor
            .run(
                listener,
                &trigger,
                shutdown_signal.map(ExternalSignal::into_future),
            )
            .await;
        // Also covers a fatal accept error, so that `run` never leaves a
        // handle that says the server is still up.
        trigger.cancel();
        let active_at_shutdown = stats.snapshot().active;
        tracing::info!(
            active = active_at_shutdown,
            "shutdown begun: listener closed"
        );
        connections.cancel();

        // Phase 2: drain, then abort what is left.
        let drain = tasks.drain(config.drain_timeout).await;
        sweeper_stop.cancel();
        if let Some(sweeper) = sweeper {
            // The sweeper does not panic; if it did, the report is still right.
            let _ = sweeper.await;
        }
        let end = stats.snapshot();
        let report = ShutdownReport {
            accepted: end.accepted,
            completed: end.completed,
            failed: end.failed,
            panicked: end.panicked,
            timed_out: end.timed_out(),
            active_at_shutdown,
            drained: active_at_shutdown.saturating_sub(end.aborted),
            aborted: end.aborted,
            drain_duration: drain.duration,
        };
        tracing::info!(%report, "shutdown complete");
        accept_result
            .map(|()| report)
            .map_err(|source| Error::Accept {
                addr: local_addr,
                source,
            })
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .field("shutting_down", &self.trigger.is_cancelled())
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {}, completed {}, failed {}, panicked {}, timed out {}; \
             at shutdown {} active: {} drained, {} aborted in {:.1?}",
            self.accepted,
            self.completed,
            self.failed,
            self.panicked,
            self.timed_out,
            self.active_at_shutdown,
            self.drained,
            self.aborted,
            self.drain_duration,
        )
    }
}

/// The accept loop's state: what every new connection is made from.
struct Acceptor<'a> {
    local_addr: Addr,
    handler: Arc<dyn Handler>,
    config: &'a Config,
    limits: Limits,
    signal: ShutdownSignal,
    stats: &'a Stats,
    tasks: &'a Tasks,
    clock: Arc<Clock>,
    /// Only the accept loop hands out ids, so a plain counter suffices.
    next_id: u64,
}

impl Acceptor<'_> {
    /// Accepts until shutdown is triggered or the listener fails; the
    /// listener is dropped (closed) on return.
    async fn run(
        mut self,
        listener: TcpListener,
        trigger: &CancellationToken,
        shutdown_signal: Option<ShutdownFuture>,
    ) -> io::Result<()> {
        // Made once: registering a waiter on every iteration would cost a
        // lock per accepted connection.
        let stop = async {
            tokio::select! {
                () = trigger.cancelled() => {}
                () = poll_optional(shutdown_signal) => {
                    tracing::info!("shutdown signal received");
                    trigger.cancel();
                }
            }
        };
        tokio::pin!(stop);
        let mut backoff = Backoff::new();
        loop {
            // Admission first: a full server does not accept, so clients
            // queue in the kernel's backlog instead of costing a descriptor.
            let permit = match self.limits.try_permit() {
                Some(permit) => permit,
                None => {
                    tracing::info!(
                        max_connections = self.config.max_connections,
                        "connection limit reached, accepting paused"
                    );
                    tokio::select! {
                        biased;
                        () = &mut stop => return Ok(()),
                        permit = self.limits.permit() => {
                            tracing::debug!("accepting resumed");
                            permit
                        }
                    }
                }
            };
            let accepted = tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if backoff.in_episode() {
                        tracing::info!("accepting again after resource exhaustion");
                    }
                    backoff.reset();
                    self.serve(stream, peer, permit);
                }
                Err(err) => {
                    self.stats.counters().accept_error();
                    match accept::classify(&err) {
                        AcceptError::Connection => {
                            tracing::debug!(error = %err, "accept: connection lost before accept, skipped");
                        }
                        AcceptError::Resources => {
                            let delay = backoff.next_delay();
                            if backoff.begin_episode() {
                                tracing::warn!(
                                    error = %err,
                                    "accept: out of resources, backing off (up to 1 s between attempts) until it works"
                                );
                            }
                            tokio::select! {
                                biased;
                                () = &mut stop => return Ok(()),
                                () = tokio::time::sleep(delay) => {}
                            }
                        }
                        AcceptError::Fatal => {
                            tracing::error!(error = %err, "accept failed, shutting down");
                            return Err(err);
                        }
                    }
                }
            }
        }
    }

    /// Admits an accepted stream, wraps it in a `Connection` and spawns its
    /// task.
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let Some(admission) = self.limits.admit(permit, peer.ip()) else {
            self.stats.counters().rejected();
            tracing::debug!(%peer, "per-IP connection limit reached, connection closed");
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.set_options(&stream, id);
        self.stats.counters().accepted();
        let now = self.clock.now();
        let state = Arc::new(ConnState::new(now));
        let conn = Connection::from_tcp(
            stream,
            id,
            Addr::Tcp(peer),
            self.local_addr.clone(),
            self.signal.clone(),
            Activity::new(Arc::clone(&self.clock), Arc::clone(&state)),
        );
        let handler = Arc::clone(&self.handler);
        let span = tracing::debug_span!("conn", id, %peer);
        self.tasks.spawn(
            async move {
                tracing::debug!("connection opened");
                match CatchUnwind(handler.handle_erased(conn)).await {
                    Ok(Ok(())) => Outcome::Completed,
                    Ok(Err(err)) => {
                        // id and peer repeated so the line is useful even
                        // where the debug-level span is filtered out.
                        tracing::warn!(conn.id = id, %peer, error = %err, "handler failed");
                        Outcome::Failed
                    }
                    Err(payload) => {
                        tracing::error!(
                            conn.id = id,
                            %peer,
                            panic = panic_message(payload.as_ref()),
                            "handler panicked"
                        );
                        Outcome::Panicked
                    }
                }
            },
            span,
            state,
            now,
            admission,
        );
    }

    /// Per-connection socket options. A failure is logged, not fatal: the
    /// peer may already be gone, and the handler will find out.
    fn set_options(&self, stream: &TcpStream, id: u64) {
        if self.config.tcp_nodelay {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(conn.id = id, error = %err, "cannot set TCP_NODELAY");
            }
        }
        if let Some(idle) = self.config.tcp_keepalive {
            let keepalive = TcpKeepalive::new().with_time(idle);
            if let Err(err) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(conn.id = id, error = %err, "cannot set SO_KEEPALIVE");
            }
        }
    }
}

/// Waits for an optional future; never completes when there is none.
async fn poll_optional(fut: Option<ShutdownFuture>) {
    match fut {
        Some(fut) => fut.await,
        None => pending().await,
    }
}
