//! The accept loops: one per listener (or several, see
//! [`Builder::accept_tasks`](crate::Builder::accept_tasks)), from `accept`
//! to the spawn of each connection's task, and the listener's close at
//! shutdown.
//!
//! A loop takes a place under the connection limit before it accepts (a full
//! server leaves clients in the kernel's queue), skips per-connection accept
//! errors and backs off when out of descriptors or memory
//! ([`Backoff`](crate::backoff::Backoff)), asks for places back when full
//! with a client waiting ([`Reclaimer`]), and hands each admitted stream to
//! [`spawn_connection`](crate::handler::sealed::SpawnConnection) in a task of
//! its own. At shutdown it serves the clients already queued, then closes
//! its listener ([`close_listener`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::admission::{Admission, Limits, Permit};
use crate::backoff::{Backoff, Resume};
use crate::config::Config;
use crate::conn::record::Tasks;
use crate::conn::record::{ConnState, Home};
use crate::conn::{Job, Stream};
use crate::listen::bind::Listener;
use crate::preamble::Preamble;
use crate::server::overload::Reclaimer;
use crate::shard;
use crate::shutdown::Fired;
use crate::stats::Counters;
use crate::timeout::Clock;
use crate::{Addr, Connection, Handler, ShutdownSignal};

/// How an accept loop ends: by itself at shutdown, or with its listener's
/// fatal error.
pub(super) type LoopResult = Result<(), (Addr, io::Error)>;

/// A listener with what the server knows of it; each of its accept tasks
/// has a clone.
#[derive(Debug, Clone)]
pub(super) struct Listening {
    pub(super) listener: Arc<Listener>,
    pub(super) addr: Addr,
    /// What each connection goes through before its handler, if anything.
    pub(super) preamble: Option<Arc<Preamble>>,
}

/// What every accept loop and every new connection is made from.
pub(super) struct Shared {
    pub(super) handler: Arc<dyn Handler>,
    pub(super) config: Config,
    pub(super) limits: Arc<Limits>,
    pub(super) signal: ShutdownSignal,
    pub(super) tasks: Arc<Tasks>,
    pub(super) clock: Arc<Clock>,
    /// Shared by every generation of accept loops (see `Server::run`).
    pub(super) next_id: Arc<AtomicU64>,
}

/// At most one `info` line a listener per this long says the connection
/// limit was reached (then `debug`): a server at its limit reaches it again
/// with every connection that ends.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where the shutdown is, as the accept loops see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// Serving; or shutdown was triggered and `run` has not yet decided how
    /// the listeners close.
    Open,
    /// Serve the clients waiting in the listen queue, then close.
    ServeBacklog,
    /// A successor took the listeners over and serves their queues: close.
    HandedOver,
    /// The drain deadline passed: close what still waits, unserved.
    Deadline,
}

/// What an accept loop needs to close its listener at shutdown.
pub(super) struct Closer {
    pub(super) closing: watch::Receiver<Closing>,
    /// Dropped once the listener's queue is swept (see [`close_listener`]).
    pub(super) swept: mpsc::Sender<()>,
}

/// Where an accept loop takes its connections' ids from: the server's
/// counter, one at a time while each listener has one loop (so ids follow
/// the order of acceptance), in blocks of [`ID_BLOCK`] when several loops
/// accept on one listener, so that they do not all write the one counter.
#[derive(Debug)]
pub(super) struct Ids {
    next: u64,
    end: u64,
    block: u64,
}

/// How many ids an accept loop takes at once when it shares its listener.
pub(super) const ID_BLOCK: u64 = 64;

impl Ids {
    fn new(config: &Config) -> Ids {
        Ids::in_blocks(if config.accept_tasks > 1 { ID_BLOCK } else { 1 })
    }

    /// Ids taken `block` at a time.
    pub(super) fn in_blocks(block: u64) -> Ids {
        Ids {
            next: 0,
            end: 0,
            block,
        }
    }

    /// The shard (modulo the count) of the connection numbered `id`: the
    /// next one for each id while one loop takes every connection of the
    /// listener, so that the connections it accepts and many workers end
    /// spread over every shard; the accepting thread's own when several
    /// loops accept (ids in blocks), so that each keeps to a shard of its
    /// own, where its connections mostly end too (tokio runs a task first
    /// on the worker that spawned it).
    pub(super) fn shard(&self, id: u64) -> usize {
        if self.block == 1 {
            // Truncated on 32-bit targets: only the low bits choose.
            id as usize
        } else {
            shard::thread_index()
        }
    }

    pub(super) fn next(&mut self, counter: &AtomicU64) -> u64 {
        if self.next == self.end {
            self.next = counter.fetch_add(self.block, Ordering::Relaxed);
            self.end = self.next + self.block;
        }
        self.next += 1;
        self.next - 1
    }
}

/// A client accepted and not yet admitted.
type InHand = (Stream, Addr);

/// Accepts on one listener until shutdown is triggered or the listener
/// fails, then closes it (see [`close_listener`]).
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listening: Listening,
    counters: Arc<Counters>,
    trigger: Arc<Fired>,
    closer: Closer,
) -> LoopResult {
    let Listening {
        listener,
        addr,
        preamble,
    } = listening;
    // Shared by this listener's connections: reference counts, not copies;
    // one a shard, each connection's chosen by its id (see `Ids::shard`).
    let homes = Home {
        handler: Arc::clone(&shared.handler).into_any(),
        shard: 0,
        addr: addr.clone(),
        signal: shared.signal.clone(),
        counters: Arc::clone(&counters),
        tasks: Arc::clone(&shared.tasks),
        limits: Arc::clone(&shared.limits),
        #[cfg(feature = "metrics")]
        metrics: crate::metrics::ConnMetrics::register(&addr, &shared.clock),
    }
    .per_shard();
    let home = &homes[0];
    let mut ids = Ids::new(&shared.config);
    // Made once: registering a waiter on every iteration would cost a lock
    // per accepted connection.
    let mut stop = Fired::wait(&trigger);
    let mut backoff = Backoff::new();
    let mut last_full_warning = None;
    let mut reclaimer = Reclaimer::default();
    let reclaim = shared.config.reclaim_when_full;
    let in_hand = loop {
        // Room first: a full server does not accept, so clients queue in
        // the kernel's backlog instead of costing a descriptor. The place is
        // taken only once a connection is in hand, so that a listener waiting
        // for clients holds none while another listener's clients queue.
        let accepted = if shared.limits.has_room() {
            tokio::select! {
                biased;
                () = &mut stop => break None,
                accepted = listener.accept() => accepted,
            }
        } else {
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
            // Full: one client taken in hand tells that clients wait, which
            // is when places are reclaimed (below).
            tokio::select! {
                biased;
                () = &mut stop => break None,
                () = shared.limits.room() => {
                    tracing::debug!(%addr, "accepting resumed");
                    continue;
                }
                accepted = listener.accept(), if reclaim => accepted,
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                home.counters.accept_error();
                match backoff.on_error(err, &addr, &mut stop).await {
                    Ok(Resume::Accept) => continue,
                    Ok(Resume::Stop) => break None,
                    Err(err) => {
                        tracing::error!(%addr, error = %err, "accept failed, shutting down");
                        return Err((addr, err));
                    }
                }
            }
        };
        if backoff.in_episode() {
            tracing::info!(%addr, "accepting again after resource exhaustion");
        }
        backoff.reset();
        let permit = match shared.limits.try_permit() {
            Some(permit) => permit,
            // Full with a client in hand (or another listener took the last
            // place meanwhile): it waits for the next place, at most one per
            // listener.
            None => {
                if reclaim {
                    reclaimer.reclaim(&shared.tasks, &shared.clock, shared.config.max_connections);
                }
                tokio::select! {
                    biased;
                    () = &mut stop => break Some((stream, peer)),
                    permit = shared.limits.permit() => permit,
                }
            }
        };
        serve(
            &shared,
            &mut ids,
            stream,
            peer,
            &homes,
            preamble.as_ref(),
            permit,
        );
    };
    close_listener(
        &shared,
        &mut ids,
        &homes,
        preamble.as_ref(),
        listener,
        in_hand,
        closer,
    )
    .await;
    Ok(())
}

/// Closes a listener at shutdown, once `run` has said how.
///
/// The clients the kernel had queued when shutdown began are the server's
/// clients: they are accepted as places free, with their connection's
/// shutdown signal already fired (a keep-alive handler answers one request
/// and closes), until the queue is empty; only then is the listener closed
/// and new connects refused. At most a backlog's worth are taken this way
/// (the queue held no more when shutdown began), and whatever still waits
/// at the drain deadline is closed unserved and counted
/// ([`ShutdownReport::backlog_closed`]). After a handover the successor
/// serves the queue, and only a client already in hand is served here.
async fn close_listener(
    shared: &Shared,
    ids: &mut Ids,
    homes: &[Arc<Home>],
    preamble: Option<&Arc<Preamble>>,
    listener: Arc<Listener>,
    mut in_hand: Option<InHand>,
    closer: Closer,
) {
    let Closer { mut closing, swept } = closer;
    let home = &homes[0];
    let mut swept = Some(swept);
    let plan = closing
        .wait_for(|closing| *closing != Closing::Open)
        .await
        .map_or(Closing::Deadline, |closing| *closing);
    let sweep_queue = plan == Closing::ServeBacklog;
    let mut budget = usize::try_from(shared.config.backlog).unwrap_or(usize::MAX);
    let mut deadline = plan == Closing::Deadline;
    while !deadline {
        let (stream, peer) = match in_hand.take() {
            Some(client) => client,
            None if sweep_queue && budget > 0 => {
                budget -= 1;
                match listener.try_accept().await {
                    None => break,
                    Some(Ok(client)) => client,
                    Some(Err(err)) => {
                        home.counters.accept_error();
                        tracing::debug!(addr = %home.addr, error = %err, "accept failed while closing");
                        continue;
                    }
                }
            }
            None => break,
        };
        let permit = match shared.limits.try_permit() {
            Some(permit) => permit,
            None => {
                // Places free only as connections end, which their
                // signal hastens: let it fire.
                swept.take();
                tokio::select! {
                    biased;
                    _ = closing.wait_for(|closing| *closing == Closing::Deadline) => {
                        in_hand = Some((stream, peer));
                        deadline = true;
                        break;
                    }
                    permit = shared.limits.permit() => permit,
                }
            }
        };
        serve(shared, ids, stream, peer, homes, preamble, permit);
    }
    if deadline || budget == 0 {
        let mut closed = u64::from(in_hand.is_some());
        if sweep_queue {
            for _ in 0..shared.config.backlog {
                match listener.try_accept().await {
                    None => break,
                    Some(Ok(_)) => closed += 1,
                    Some(Err(_)) => home.counters.accept_error(),
                }
            }
        }
        if closed > 0 {
            home.counters.backlog_closed(closed);
            tracing::warn!(
                addr = %home.addr,
                closed,
                "clients still waiting in the listen queue at the drain deadline were closed unserved"
            );
        }
    }
    drop(in_hand);
    drop(listener);
    drop(swept);
}

/// Admits an accepted stream and spawns its task, which runs the
/// listener's preamble if it has one, then the handler.
fn serve(
    shared: &Shared,
    ids: &mut Ids,
    stream: Stream,
    peer: Addr,
    homes: &[Arc<Home>],
    preamble: Option<&Arc<Preamble>>,
    permit: Permit<'_>,
) {
    let Some(admission) = shared.limits.admit(permit, peer.ip()) else {
        homes[0].counters.rejected();
        tracing::debug!(%peer, "per-IP connection limit reached, connection closed");
        return;
    };
    let id = ids.next(&shared.next_id);
    // The count is a power of two.
    let home = &homes[ids.shard(id) & (homes.len() - 1)];
    if let Stream::Tcp(tcp) = &stream {
        set_tcp_options(&shared.config, tcp, id);
    }
    let span = tracing::debug_span!("conn", id, %peer, client = tracing::field::Empty);
    let state = opened(home, admission, id, peer, shared.clock.read());
    let job = Job {
        conn: Connection::new(stream, state),
        span,
    };
    // Through the handler's vtable into `spawn_connection::<H>`, so that the
    // handler's future is a concrete type, polled without dynamic dispatch.
    shared
        .handler
        .spawn_connection(&shared.tasks, job, preamble);
}

/// The bookkeeping of a connection's start: counts it and makes its
/// record, which from here frees its places when its task ends
/// ([`ended`](crate::server::task::ended)).
pub(super) fn opened(
    home: &Arc<Home>,
    admission: Admission<'_>,
    id: u64,
    peer: Addr,
    accepted_at: u64,
) -> Arc<ConnState> {
    home.counters.accepted();
    let per_ip = admission.keep();
    Arc::new(ConnState::new(
        Arc::clone(home),
        id,
        peer,
        accepted_at,
        per_ip,
    ))
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
