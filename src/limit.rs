//! Admission control: the connection limit and the per-peer-IP limit.
//!
//! The global limit is a semaphore whose permit is taken *before* `accept`:
//! a full server stops accepting, so further clients wait in the kernel's
//! backlog (and beyond it are refused by the kernel) instead of costing a
//! descriptor and a task each. The per-IP limit can only be checked once the
//! peer is known, after `accept`: an extra connection is closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default for [`Builder::max_connections`](crate::Builder::max_connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The server's admission limits.
#[derive(Debug)]
pub(crate) struct Limits {
    connections: Arc<Semaphore>,
    per_ip: Option<Arc<PerIp>>,
}

/// What a live connection holds; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    _per_ip: Option<PerIpPlace>,
}

impl Limits {
    pub(crate) fn new(max_connections: usize, max_per_ip: Option<usize>) -> Self {
        Limits {
            connections: Arc::new(Semaphore::new(max_connections)),
            per_ip: max_per_ip.map(|limit| {
                Arc::new(PerIp {
                    limit,
                    counts: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// A place under the global limit if one is free now.
    pub(crate) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// Waits for a place under the global limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (tokio's semaphore queues fairly and gives up the place
    /// in the queue when dropped).
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.connections).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is owned here and never closed.
            Err(_) => unreachable!("the connection semaphore is never closed"),
        }
    }

    /// Completes the admission of a connection from `ip` (`None` for a
    /// transport without IP addresses), or `None` when that address already
    /// has as many connections as it may.
    pub(crate) fn admit(
        &self,
        permit: OwnedSemaphorePermit,
        ip: Option<IpAddr>,
    ) -> Option<Admission> {
        let per_ip = match (&self.per_ip, ip) {
            (Some(per_ip), Some(ip)) => Some(PerIp::enter(per_ip, ip)?),
            _ => None,
        };
        Some(Admission {
            _permit: permit,
            _per_ip: per_ip,
        })
    }
}

#[derive(Debug)]
struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn enter(this: &Arc<PerIp>, ip: IpAddr) -> Option<PerIpPlace> {
        let mut counts = this.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= this.limit {
            return None;
        }
        *count += 1;
        Some(PerIpPlace {
            per_ip: Arc::clone(this),
            ip,
        })
    }
}

/// One connection's place under its address's limit.
#[derive(Debug)]
struct PerIpPlace {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpPlace {
    fn drop(&mut self) {
        let mut counts = self
            .per_ip
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Keep the map as small as the set of connected addresses.
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_frees() {
        let limits = Limits::new(10, Some(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limits.admit(limits.try_permit().unwrap(), Some(a)).unwrap();
        let _second = limits.admit(limits.try_permit().unwrap(), Some(a)).unwrap();
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(a))
                .is_none(),
            "third from a"
        );
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(b))
                .is_some(),
            "b has its own count"
        );
        drop(first);
        assert!(
            limits
                .admit(limits.try_permit().unwrap(), Some(a))
                .is_some(),
            "a place was freed"
        );
    }

    #[test]
    fn global_limit_is_taken_before_accept() {
        let limits = Limits::new(1, None);
        let held = limits.try_permit().unwrap();
        assert!(limits.try_permit().is_none());
        drop(held);
        assert!(limits.try_permit().is_some());
    }
}
