//! What the server keeps of each connection, and of each listener for its
//! connections.
//!
//! A connection's [`Connection`](crate::Connection) is its stream and one
//! pointer to its [`ConnState`], the connection's record, which the server's
//! registry and the timeout sweeper point to as well; the record points to
//! its listener's [`Home`], made once per listener. So a connection task
//! carries two words besides the stream, and everything else is reached
//! through them: that keeps every idle connection's task small, and the
//! per-connection work at accept to one allocation and a few reference
//! counts.
//!
//! The record also says which parts of the connection live: its handler's
//! task and the sub-tasks it spawned (see `subtask.rs`). The last part to
//! end calls [`end`], the bookkeeping of the connection's end.

use std::any::Any;
use std::sync::Arc;
#[cfg(any(feature = "proxy-protocol", feature = "tls"))]
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use once_cell::race::OnceBox;

use crate::admission::Limits;
#[cfg(feature = "proxy-protocol")]
use crate::conn::ProxyInfo;
use crate::conn::registry::{self, Registered};
use crate::conn::subtask::{Parts, SubTasks};
use crate::shard;
use crate::stats::{Counters, Outcome};
use crate::sync;
use crate::timeout::{TimeoutKind, Timeouts};
use crate::{Addr, ShutdownSignal};

/// The registry of a server's live connections.
pub(crate) type Tasks = registry::Tasks<ConnState>;

/// What a listener's connections share: one per listener and shard (see
/// [`crate::shard`]; a connection's chosen by its id as its accept loop
/// says, see `server::accept`), so that the reference counts its
/// connections take and drop are spread over as many cache lines; a
/// connection's registry entry goes to the same shard. Aligned to 128
/// bytes (see [`crate::shard::Padded`]): the reference count of one
/// shard's part must not share a cache line with the next one's fields.
#[derive(Debug, Clone)]
#[repr(align(128))]
pub(crate) struct Home {
    /// The server's handler, as `Any`: a connection's task, which knows
    /// the handler's type, turns it back.
    pub(crate) handler: Arc<dyn Any + Send + Sync>,
    /// Its index among its listener's parts: the shard of the registry its
    /// connections go to.
    pub(crate) shard: usize,
    /// The listener's address: a connection's local address (unless the
    /// listener is on a wildcard address).
    pub(crate) addr: Addr,
    /// The connections' shutdown signal.
    pub(crate) signal: ShutdownSignal,
    /// The listener's counters.
    pub(crate) counters: Arc<Counters>,
    /// The server's registry of live connections.
    pub(crate) tasks: Arc<Tasks>,
    /// The server's connection limits, whose places connections hold.
    pub(crate) limits: Arc<Limits>,
    /// The listener's duration histogram.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::ConnMetrics,
}

impl Home {
    /// A copy of `self` for each shard, numbered (its `shard` is ignored).
    pub(crate) fn per_shard(self) -> Box<[Arc<Home>]> {
        (0..shard::count())
            .map(|shard| {
                Arc::new(Home {
                    shard,
                    ..self.clone()
                })
            })
            .collect()
    }
}

/// One connection's record.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) home: Arc<Home>,
    pub(crate) id: u64,
    /// The socket's peer (a load balancer, behind one that sends a PROXY
    /// header: the client is then in `extra`).
    pub(crate) peer: Addr,
    /// When the connection was accepted, in the server clock's milliseconds.
    pub(crate) accepted_at: u64,
    /// Its key in the registry of live connections (see [`Registered`];
    /// `crate::sync`'s, so that the registry's loom models can share it).
    key: sync::AtomicUsize,
    /// Whether the connection holds a place under the per-address limit
    /// (for its peer's address).
    pub(crate) per_ip: bool,
    /// Set on every read and write, cleared by the sweeper, which then
    /// moves `last_active` to its time: so a read or write costs one store
    /// and no clock.
    touched: AtomicBool,
    /// Whether the handler's last read or write of the connection is
    /// waiting for the peer (it returned `Pending`): only then does the
    /// connection count as idle, so that a handler busy elsewhere (a slow
    /// backend, a long computation) is never cut off by the idle timeout.
    waiting: AtomicBool,
    has_read: AtomicBool,
    /// 0 while live; a `TimeoutKind` once the sweeper expired it.
    expired: AtomicU8,
    /// The sweeper's time of the last activity it saw (the clock's ms).
    last_active: AtomicU64,
    /// Which parts of the connection live (`subtask.rs`'s bits: sub-tasks
    /// made, handler ended, closing). A byte, in what was padding.
    parts: sync::AtomicU8,
    /// The connection's sub-tasks, made by its first spawn: one word for
    /// the connections that never spawn.
    subtasks: OnceBox<SubTasks>,
    /// What the preamble learnt (PROXY header, TLS), set once before the
    /// handler runs; boxed, as most connections have none. Not there
    /// without those features.
    #[cfg(any(feature = "proxy-protocol", feature = "tls"))]
    pub(crate) extra: OnceLock<Box<Extra>>,
}

/// What a listener's preamble learnt of a connection.
#[cfg(any(feature = "proxy-protocol", feature = "tls"))]
#[derive(Debug, Default)]
pub(crate) struct Extra {
    #[cfg(feature = "proxy-protocol")]
    pub(crate) proxy: Option<ProxyInfo>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsInfo>,
}

#[cfg(any(feature = "proxy-protocol", feature = "tls"))]
impl Extra {
    /// Whether the preamble learnt nothing worth keeping.
    pub(crate) fn is_empty(&self) -> bool {
        #[cfg(feature = "tls")]
        let tls = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        #[cfg(feature = "proxy-protocol")]
        let proxy = self.proxy.is_some();
        #[cfg(not(feature = "proxy-protocol"))]
        let proxy = false;
        !proxy && !tls
    }

    /// The client a PROXY header named, if any.
    #[cfg(feature = "proxy-protocol")]
    pub(crate) fn client(&self) -> Option<&Addr> {
        self.proxy.as_ref()?.client.as_ref()
    }
}

impl ConnState {
    pub(crate) fn new(
        home: Arc<Home>,
        id: u64,
        peer: Addr,
        accepted_at: u64,
        per_ip: bool,
    ) -> Self {
        ConnState {
            home,
            id,
            peer,
            accepted_at,
            key: sync::AtomicUsize::new(usize::MAX),
            per_ip,
            touched: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            has_read: AtomicBool::new(false),
            expired: AtomicU8::new(0),
            last_active: AtomicU64::new(accepted_at),
            parts: sync::AtomicU8::new(0),
            subtasks: OnceBox::new(),
            #[cfg(any(feature = "proxy-protocol", feature = "tls"))]
            extra: OnceLock::new(),
        }
    }

    /// A record of a connection served outside a server (by
    /// [`testing`](crate::testing), and in tests): with a home of its own.
    pub(crate) fn detached(id: u64, peer: Addr, local: Addr, signal: ShutdownSignal) -> Self {
        let home = Home {
            handler: Arc::new(()),
            shard: 0,
            addr: local,
            signal,
            counters: Arc::default(),
            tasks: Arc::new(Tasks::new()),
            limits: Arc::new(Limits::new(crate::admission::MAX_CONNECTIONS_LIMIT, None)),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::ConnMetrics::noop(),
        };
        ConnState::new(Arc::new(home), id, peer, 0, false)
    }

    /// What the PROXY header said, when the listener reads one.
    #[cfg(feature = "proxy-protocol")]
    pub(crate) fn proxy(&self) -> Option<&ProxyInfo> {
        self.extra.get()?.proxy.as_ref()
    }

    /// The client's address: the one a PROXY header named, else the
    /// socket's peer.
    pub(crate) fn client_addr(&self) -> &Addr {
        #[cfg(feature = "proxy-protocol")]
        if let Some(client) = self.extra.get().and_then(|extra| extra.client()) {
            return client;
        }
        &self.peer
    }

    /// Records that bytes were read.
    pub(crate) fn read(&self) {
        self.touched.store(true, Ordering::Relaxed);
        if !self.has_read.load(Ordering::Relaxed) {
            self.has_read.store(true, Ordering::Relaxed);
        }
    }

    /// Records that bytes were written.
    pub(crate) fn wrote(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Records whether the handler now waits for the peer: a read or write
    /// returned `Pending` (`true`) or completed (`false`). A store only when
    /// it changes, so that a busy connection's cache line stays unshared.
    pub(crate) fn waiting(&self, waiting: bool) {
        if self.waiting.load(Ordering::Relaxed) != waiting {
            self.waiting.store(waiting, Ordering::Relaxed);
        }
    }

    /// Whether the handler waits for the peer (see [`ConnState::waiting`]).
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The sweeper's view at `now`: the time of the last activity, moved to
    /// `now` if there was activity since the last look, or if the handler
    /// is not waiting for the peer (it is busy, so not idle).
    pub(crate) fn last_active(&self, now: u64) -> u64 {
        if self.touched.load(Ordering::Relaxed) || !self.is_waiting() {
            self.touched.store(false, Ordering::Relaxed);
            self.last_active.store(now, Ordering::Relaxed);
            now
        } else {
            self.last_active.load(Ordering::Relaxed)
        }
    }

    /// The last activity seen, without taking note of it (that is the
    /// sweeper's job): `now` if there was activity since the sweeper's last
    /// look or the handler is busy.
    pub(crate) fn last_active_seen(&self, now: u64) -> u64 {
        if self.touched.load(Ordering::Relaxed) || !self.is_waiting() {
            now
        } else {
            self.last_active.load(Ordering::Relaxed)
        }
    }

    /// Whether the connection has expired at `now` under `timeouts`, and by
    /// which; takes note of the activity since the sweeper's last look.
    pub(crate) fn expired(&self, timeouts: &Timeouts, now: u64) -> Option<TimeoutKind> {
        // First: it also takes note of activity since the last sweep.
        let last_active = self.last_active(now);
        timeouts.expired(now, self.accepted_at, last_active, self.has_read())
    }

    pub(crate) fn has_read(&self) -> bool {
        self.has_read.load(Ordering::Relaxed)
    }

    /// Marks the connection expired; `false` if it already was.
    pub(crate) fn expire(&self, kind: TimeoutKind) -> bool {
        self.expired
            .compare_exchange(0, kind as u8, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// The connection's parts: its handler and its sub-tasks.
    pub(crate) fn parts(&self) -> Parts<'_> {
        Parts {
            state: &self.parts,
            subs: &self.subtasks,
        }
    }

    pub(crate) fn expired_by(&self) -> Option<TimeoutKind> {
        match self.expired.load(Ordering::Relaxed) {
            1 => Some(TimeoutKind::Idle),
            2 => Some(TimeoutKind::FirstRead),
            3 => Some(TimeoutKind::MaxAge),
            4 => Some(TimeoutKind::Overload),
            _ => None,
        }
    }
}

impl Registered for ConnState {
    fn shard(&self) -> usize {
        self.home.shard
    }

    fn key(&self) -> &sync::AtomicUsize {
        &self.key
    }

    fn expire(&self, kind: TimeoutKind) -> bool {
        ConnState::expire(self, kind)
    }

    fn abort_parts(&self) {
        self.parts().close();
    }
}

/// The end of the connection `state` records, done by its last part to
/// end with the connection's `outcome`: counts it, frees the places and
/// the registry entry (see [`ended`]), then logs the end.
pub(crate) fn end(state: &Arc<ConnState>, outcome: Outcome) {
    let outcome = ended(state, outcome);
    // Logging last: a subscriber that panics cannot leave the place taken
    // or the drain waiting.
    if let Outcome::TimedOut(kind) = outcome {
        tracing::info!(
            conn.id = state.id,
            peer = %state.client_addr(),
            timeout = kind.name(),
            "connection timed out"
        );
    }
    tracing::debug!(?outcome, "connection closed");
}

/// The bookkeeping of a connection's end with `outcome`: counts the
/// outcome (a timeout's, if the connection was aborted for one, which is
/// returned), frees its places under the limits and its registry entry.
pub(crate) fn ended(state: &Arc<ConnState>, mut outcome: Outcome) -> Outcome {
    let home = &state.home;
    if let (Outcome::Aborted, Some(kind)) = (outcome, state.expired_by()) {
        outcome = Outcome::TimedOut(kind);
    }
    home.counters.ended(outcome);
    #[cfg(feature = "metrics")]
    home.metrics.ended(state.accepted_at);
    // After the count: the place is free once the outcome is counted.
    home.limits
        .release(if state.per_ip { state.peer.ip() } else { None });
    // Last: the drain ends once every entry is gone, and the report it
    // makes then must count this connection.
    home.tasks.remove(state);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShutdownSignal;
    use crate::timeout::tests::timeouts;

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
        assert_eq!(state.expired(&t, 49), None);
        assert_eq!(state.expired(&t, 50), Some(TimeoutKind::FirstRead));
        state.read();
        assert_eq!(state.expired(&t, 60), None, "read, seen at 60");
        assert_eq!(state.expired(&t, 159), None, "idle until 160");
        assert_eq!(state.expired(&t, 160), Some(TimeoutKind::Idle));
        state.waiting(false);
        assert_eq!(state.expired(&t, 200), None, "busy elsewhere, seen at 200");
        state.waiting(true);
        assert_eq!(state.expired(&t, 299), None, "idle until 300");
        assert_eq!(state.expired(&t, 300), Some(TimeoutKind::Idle));
        state.wrote();
        assert_eq!(state.expired(&t, 990), None, "wrote, seen at 990");
        assert_eq!(state.expired(&t, 1000), Some(TimeoutKind::MaxAge));
        assert!(state.expire(TimeoutKind::MaxAge));
        assert!(!state.expire(TimeoutKind::Idle), "expires once");
        assert_eq!(state.expired_by(), Some(TimeoutKind::MaxAge));
    }
}
