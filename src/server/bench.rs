//! The per-connection bookkeeping, for the benchmarks' contention scenario
//! (not part of the API: `switchboard::__bench`, hidden from the docs).
//!
//! [`Bookkeeping::open`] and [`Bookkeeping::close`] are a connection's start
//! and end on a server's shared state, without a socket or a task: the
//! steps `serve` and a task's end guard take (admission, the id, the
//! counters, the record, the registry, the listener's part a connection
//! holds), through the same functions. Driven
//! from several threads at once, a lock or a cache line that every
//! connection shares shows as time, on a machine of two cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::admission::Limits;
use crate::conn::record::{ConnState, Home, Tasks};
use crate::server::accept::{ID_BLOCK, Ids, opened};
use crate::server::task::ended;
use crate::stats::{Outcome, Stats};
use crate::timeout::Clock;
use crate::{Addr, ShutdownSignal, StatsSnapshot};

/// A server's shared state, as its connections see it.
#[derive(Debug)]
pub struct Bookkeeping {
    /// A home a shard, as an accept loop has.
    homes: Box<[Arc<Home>]>,
    stats: Stats,
    next_id: AtomicU64,
    clock: Clock,
}

/// What one thread opens connections with, as an accept task does (of
/// several on a listener: ids taken in blocks); from
/// [`Bookkeeping::opener`].
#[derive(Debug)]
pub struct Opener<'a> {
    server: &'a Bookkeeping,
    ids: Ids,
}

/// A connection opened by [`Opener::open`]; give it to
/// [`Bookkeeping::close`].
#[derive(Debug)]
pub struct Open {
    state: Arc<ConnState>,
    /// What a connection's task holds besides its record: its home, for
    /// the handler.
    _task: Arc<Home>,
}

impl Bookkeeping {
    /// A server of one listener with room for `max_connections`.
    pub fn new(max_connections: usize) -> Bookkeeping {
        let addr = Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 80)));
        let stats = Stats::new([addr.clone()]);
        // Like an accept loop's (`server::accept`).
        let homes = Home {
            handler: Arc::new(()),
            shard: 0,
            addr: addr.clone(),
            signal: ShutdownSignal::new(Arc::default()),
            counters: Arc::clone(stats.counters(0)),
            tasks: Arc::new(Tasks::new()),
            limits: Arc::new(Limits::new(max_connections, None)),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::ConnMetrics::noop(),
        }
        .per_shard();
        Bookkeeping {
            homes,
            stats,
            next_id: AtomicU64::new(1),
            clock: Clock::new(),
        }
    }

    /// An opener for this thread: one of several accept tasks on a
    /// listener (`several`: ids in blocks, a shard a block) or its only one
    /// (ids one at a time, the next shard for each).
    pub fn opener(&self, several: bool) -> Opener<'_> {
        Opener {
            server: self,
            ids: Ids::in_blocks(if several { ID_BLOCK } else { 1 }),
        }
    }

    /// A connection's end, as a handler that returned `Ok`.
    pub fn close(&self, open: Open) {
        ended(&open.state, Outcome::Completed);
    }

    /// The counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Opener<'_> {
    /// A connection's start: a place, an id, the count, the record, the
    /// registry entry. `None` when the server is full.
    pub fn open(&mut self) -> Option<Open> {
        let server = self.server;
        let limits = &server.homes[0].limits;
        let admission = limits.admit(limits.try_permit()?, None)?;
        let id = self.ids.next(&server.next_id);
        let home = &server.homes[self.ids.shard(id) & (server.homes.len() - 1)];
        let peer = Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 40_000)));
        let state = opened(home, admission, id, peer, server.clock.read());
        home.tasks.insert(Arc::clone(&state));
        Some(Open {
            state,
            _task: Arc::clone(home),
        })
    }
}
