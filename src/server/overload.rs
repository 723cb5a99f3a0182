//! Reclaiming places on a full server (Slowloris that trickles bytes).
//!
//! An idle timeout frees connections that go silent, but not those that
//! send a byte every few seconds: from one address they can hold every
//! place under the connection limit for as long as they like, and real
//! clients wait in the listen queue until they give up. So when the server
//! is full *and* a client waits (an accept loop holds one it cannot admit),
//! the accept loop asks for places back: it counts the live connections of
//! each client address and, if the address holding the most holds more than
//! its fair share (`max_connections / (addresses + 1)`: the `+ 1` stands
//! for the waiting clients, whose addresses are not known yet), closes up
//! to [`BATCH`] of that address's connections whose handler waits for the
//! peer, the idlest first. They end like an idle timeout, counted as
//! `timed_out_overload`.
//!
//! It costs nothing until the server is full. Then it costs a scan of the
//! registry per round; a round that finds nothing to reclaim (every address
//! holds its fair share) is not repeated for [`FRUITLESS_PAUSE`], so a
//! full server of fair clients scans at most once a second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::conn::record::ConnState;
use crate::conn::record::Tasks;
use crate::timeout::{Clock, TimeoutKind};

/// The most connections one round closes: enough that a queue of a
/// thousand waiting clients moves in tens of rounds, few enough that one
/// waiting client does not cost many idle keep-alive connections.
const BATCH: usize = 16;

/// How long after a round that found nothing to reclaim the next may run.
const FRUITLESS_PAUSE: Duration = Duration::from_secs(1);

/// One accept loop's reclaiming, with its memory of the last fruitless
/// round.
#[derive(Debug, Default)]
pub(crate) struct Reclaimer {
    fruitless_at: Option<Instant>,
}

impl Reclaimer {
    /// Closes the idlest connections of the address that holds more than
    /// its fair share of `max_connections`, if one does; returns how many
    /// were closed.
    pub(crate) fn reclaim(
        &mut self,
        tasks: &Tasks,
        clock: &Clock,
        max_connections: usize,
    ) -> usize {
        let now = Instant::now();
        if self
            .fruitless_at
            .is_some_and(|at| now.duration_since(at) < FRUITLESS_PAUSE)
        {
            return 0;
        }
        let closed = reclaim(tasks, clock.read(), max_connections);
        if closed == 0 {
            self.fruitless_at = Some(now);
        }
        closed
    }
}

/// One round: see the module's docs.
fn reclaim(tasks: &Tasks, now: u64, max_connections: usize) -> usize {
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    tasks.scan(|state, _| {
        if let Some(ip) = state.client_addr().ip() {
            *held.entry(ip).or_default() += 1;
        }
    });
    let Some((&top, &most)) = held.iter().max_by_key(|&(_, &count)| count) else {
        return 0;
    };
    let fair = (max_connections / (held.len() + 1)).max(1);
    if most <= fair {
        return 0;
    }
    let want = (most - fair).min(BATCH);
    let mut candidates: Vec<(u64, Arc<ConnState>, AbortHandle)> = Vec::new();
    tasks.scan(|state, abort| {
        if state.is_waiting() && state.client_addr().ip() == Some(top) {
            candidates.push((
                state.last_active_seen(now),
                Arc::clone(state),
                abort.clone(),
            ));
        }
    });
    if candidates.len() > want {
        candidates.select_nth_unstable_by_key(want, |(last_active, ..)| *last_active);
        candidates.truncate(want);
    }
    for (_, state, abort) in &candidates {
        Tasks::close(state, abort, TimeoutKind::Overload);
    }
    if !candidates.is_empty() {
        tracing::info!(
            addr = %top,
            holding = most,
            fair_share = fair,
            closed = candidates.len(),
            "server full with clients waiting: closed the idlest connections of the address holding the most"
        );
    }
    candidates.len()
}
