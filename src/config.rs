//! The options a running server reads, as the builder left them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::Error;
use crate::admission::MAX_CONNECTIONS_LIMIT;
use crate::timeout::Timeouts;

/// The options the running server reads.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) drain_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) reclaim_when_full: bool,
    pub(crate) timeouts: Timeouts,
    pub(crate) tcp_nodelay: bool,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) backlog: u32,
    pub(crate) reuse_address: bool,
    pub(crate) reuse_port: bool,
    pub(crate) ipv6_only: Option<bool>,
    pub(crate) unix_mode: Option<u32>,
    pub(crate) accept_tasks: usize,
}

/// The most accept tasks a listener may have.
pub(crate) const MAX_ACCEPT_TASKS: usize = 1024;

pub(crate) type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The builder's shutdown future, kept behind a mutex only so that `Builder`
/// and `Server` are `Sync` although the future need not be. The mutex is never
/// locked: the future is taken out by value when the server runs.
pub(crate) struct ExternalSignal(Mutex<ShutdownFuture>);

impl ExternalSignal {
    pub(crate) fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        ExternalSignal(Mutex::new(Box::pin(signal)))
    }

    pub(crate) fn into_future(self) -> ShutdownFuture {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |option, reason| Err(Error::InvalidConfig { option, reason });
        if self.backlog == 0 {
            return invalid("backlog", "must be at least 1");
        }
        if self.accept_tasks == 0 {
            return invalid("accept_tasks", "must be at least 1");
        }
        if self.accept_tasks > MAX_ACCEPT_TASKS {
            return invalid("accept_tasks", "must be at most 1024");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_connections > MAX_CONNECTIONS_LIMIT {
            return invalid("max_connections", "exceeds the largest supported limit");
        }
        if self.max_connections_per_ip == Some(0) {
            return invalid(
                "max_connections_per_ip",
                "must be at least 1, or None for no limit",
            );
        }
        let zero = Some(Duration::ZERO);
        if self.timeouts.idle == zero {
            return invalid(
                "idle_timeout",
                "must be longer than zero, or None to disable",
            );
        }
        if self.timeouts.first_read == zero {
            return invalid(
                "first_read_timeout",
                "must be longer than zero, or None to disable",
            );
        }
        if self.timeouts.max_age == zero {
            return invalid(
                "max_connection_age",
                "must be longer than zero, or None to disable",
            );
        }
        if self.tcp_keepalive == zero {
            return invalid(
                "tcp_keepalive",
                "must be longer than zero, or None to disable",
            );
        }
        Ok(())
    }
}
