//! The errors switchboard itself can fail with.

use std::io;

use crate::Addr;

/// What the library itself can fail at: configuration, resolving and binding
/// the listening address, and an accept error it cannot recover from.
///
/// A handler's own error is never an `Error`: it is logged in the
/// connection's span, counted in [`Stats`](crate::Stats) and the
/// [`ShutdownReport`](crate::ShutdownReport), and the server keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`Builder::build`](crate::Builder::build) was called without a handler.
    #[error("no handler was set: call Builder::handler before build")]
    NoHandler,
    /// [`Builder::build`](crate::Builder::build) was called without an address to bind.
    #[error("no address to bind: call Builder::bind before build")]
    NoBindAddress,
    /// An option was given a value it cannot take.
    #[error("invalid value for {option}: {reason}")]
    InvalidConfig {
        /// The builder method that received the value.
        option: &'static str,
        /// Why the value was refused.
        reason: &'static str,
    },
    /// The bind address could not be resolved to any socket address.
    #[error("cannot resolve bind address {addr:?}")]
    Resolve {
        /// The address as it was given to [`Builder::bind`](crate::Builder::bind).
        addr: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The listening socket could not be created, bound or put into the
    /// listening state (the port is taken, permission is denied, ...).
    #[error("cannot bind {addr}")]
    Bind {
        /// The address that could not be bound.
        addr: Addr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A listener handed over ready-made (an already-bound std listener, or
    /// systemd socket activation) cannot be used.
    #[error("cannot use the {what}")]
    Listener {
        /// Which listener: `"given TCP listener"`, `"systemd sockets"`, ...
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The listener failed with an error that is neither a per-connection
    /// error nor resource exhaustion; the server shut down gracefully first.
    #[error("accept failed on {addr}")]
    Accept {
        /// The listening address.
        addr: Addr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}
