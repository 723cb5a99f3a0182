//! The per-connection bookkeeping, for the benchmarks' contention scenario
//! (not part of the API: `switchboard::__bench`, hidden from the docs).
//!
//! [`Bookkeeping::open`] and [`Bookkeeping::close`] are a connection's start
//! and end on a server's shared state, without a socket or a task: the
//! steps `serve` and a task's end guard take (admission, the id, the
//! counters, the record, the registry), through the same functions. Driven
//! from several threads at once, a lock or a cache line that every
//! connection shares shows as time, on a machine of two cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::Limits;
use crate::conn::record::{ConnState, Home, Tasks};
use crate::server::accept::opened;
use crate::server::task::ended;
use crate::stats::{Outcome, Stats};
use crate::timeout::Clock;
use crate::{Addr, ShutdownSignal, StatsSnapshot};

/// A server's shared state, as its connections see it.
#[derive(Debug)]
pub struct Bookkeeping {
    home: Arc<Home>,
    stats: Stats,
    next_id: AtomicU64,
    clock: Clock,
}

/// A connection opened by [`Bookkeeping::open`]; give it to
/// [`Bookkeeping::close`].
#[derive(Debug)]
pub struct Open(Arc<ConnState>);

impl Bookkeeping {
    /// A server of one listener with room for `max_connections`.
    pub fn new(max_connections: usize) -> Bookkeeping {
        let addr = Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 80)));
        let stats = Stats::new([addr.clone()]);
        let home = Arc::new(Home {
            addr,
            signal: ShutdownSignal::new(Arc::default()),
            counters: Arc::clone(stats.counters(0)),
            tasks: Arc::new(Tasks::new()),
            limits: Arc::new(Limits::new(max_connections, None)),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::ConnMetrics::noop(),
        });
        Bookkeeping {
            home,
            stats,
            next_id: AtomicU64::new(1),
            clock: Clock::new(),
        }
    }

    /// A connection's start: a place, an id, the count, the record, the
    /// registry entry. `None` when the server is full.
    pub fn open(&self) -> Option<Open> {
        let limits = &self.home.limits;
        let admission = limits.admit(limits.try_permit()?, None)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 40_000)));
        let state = opened(&self.home, admission, id, peer, self.clock.read());
        let tasks = &self.home.tasks;
        tasks.insert(Arc::clone(&state));
        Some(Open(state))
    }

    /// A connection's end, as a handler that returned `Ok`.
    pub fn close(&self, open: Open) {
        ended(&open.0, Outcome::Completed);
    }

    /// The counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}
