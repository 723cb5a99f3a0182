//! The errors switchboard itself can fail with.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::Addr;

/// What the library itself can fail at: configuration, resolving and binding
/// the listening address, and an accept error it cannot recover from.
///
/// A handler's own error is never an `Error`: it is logged in the
/// connection's span, counted in [`Stats`](crate::Stats) and the
/// [`ShutdownReport`](crate::ShutdownReport), and the server keeps serving.
///
/// # How it prints
///
/// The message names what failed *and why*, on one line, the way a person
/// reads it in a terminal or a log:
///
/// ```text
/// cannot bind 127.0.0.1:8080: Address already in use (os error 98)
/// ```
///
/// * `Display` (`{}`) gives that line: what switchboard tried, then the
///   operating system's error.
/// * `Debug` (`{:?}`) gives the same line, because it is what
///   `fn main() -> Result<(), switchboard::Error>` prints after `Error: `.
///   The alternate form (`{:#?}`) shows the variant and its fields.
/// * [`source`](std::error::Error::source) continues the chain *below* the
///   message: for an operating-system error, that is nothing.
///
/// The cause's message is in the `Display` text, so `source` does not return
/// the [`io::Error`] itself but what that error wraps, if anything (as
/// `io::Error` itself does for an error it wraps). Returning both would print
/// the cause twice in every report that walks the chain: anyhow's `{:#}` and
/// its `Caused by:` list, or `tracing`'s `error.sources`. This follows the
/// rule of the Rust error-handling project group: an error either prints its
/// cause or returns it from `source`, never both. To examine the
/// `io::Error` (its [`kind`](io::Error::kind), its OS code), match the
/// variant: its `source` field is public.
///
/// ```
/// use std::io;
/// use switchboard::Error;
///
/// fn port_taken(err: &Error) -> bool {
///     matches!(err, Error::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
/// }
/// # let err = Error::Bind {
/// #     addr: "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap().into(),
/// #     source: io::ErrorKind::AddrInUse.into(),
/// # };
/// # assert!(port_taken(&err));
/// ```
#[non_exhaustive]
pub enum Error {
    /// [`Builder::build`](crate::Builder::build) was called without a handler.
    NoHandler,
    /// [`Builder::build`](crate::Builder::build) was called without an address to bind.
    NoBindAddress,
    /// An option was given a value it cannot take.
    InvalidConfig {
        /// The builder method that received the value.
        option: &'static str,
        /// Why the value was refused.
        reason: &'static str,
    },
    /// The bind address could not be resolved to any socket address.
    Resolve {
        /// The address as it was given to [`Builder::bind`](crate::Builder::bind).
        addr: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The listening socket could not be created, bound or put into the
    /// listening state (the port is taken, permission is denied, ...).
    Bind {
        /// The address that could not be bound.
        addr: Addr,
        /// The operating system's error.
        source: io::Error,
    },
    /// A listener handed over ready-made (an already-bound std listener, or
    /// systemd socket activation) cannot be used.
    Listener {
        /// Which listener: `"given TCP listener"`, `"systemd sockets"`, ...
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The listener failed with an error that is neither a per-connection
    /// error nor resource exhaustion; the server shut down gracefully first.
    Accept {
        /// The listening address.
        addr: Addr,
        /// The operating system's error.
        source: io::Error,
    },
}

impl Error {
    /// The operating system's (or resolver's) error behind this one, if any.
    fn cause(&self) -> Option<&io::Error> {
        match self {
            Error::NoHandler | Error::NoBindAddress | Error::InvalidConfig { .. } => None,
            Error::Resolve { source, .. }
            | Error::Bind { source, .. }
            | Error::Listener { source, .. }
            | Error::Accept { source, .. } => Some(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoHandler => {
                f.write_str("no handler was set: call Builder::handler before build")
            }
            Error::NoBindAddress => {
                f.write_str("no address to bind: call Builder::bind before build")
            }
            Error::InvalidConfig { option, reason } => {
                write!(f, "invalid value for {option}: {reason}")
            }
            Error::Resolve { addr, .. } => write!(f, "cannot resolve bind address {addr:?}"),
            Error::Bind { addr, .. } => write!(f, "cannot bind {addr}"),
            Error::Listener { what, .. } => write!(f, "cannot use the {what}"),
            Error::Accept { addr, .. } => write!(f, "accept failed on {addr}"),
        }?;
        match self.cause() {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            // What `main` prints: the message a person can act on.
            return fmt::Display::fmt(self, f);
        }
        match self {
            Error::NoHandler => f.write_str("NoHandler"),
            Error::NoBindAddress => f.write_str("NoBindAddress"),
            Error::InvalidConfig { option, reason } => f
                .debug_struct("InvalidConfig")
                .field("option", option)
                .field("reason", reason)
                .finish(),
            Error::Resolve { addr, source } => f
                .debug_struct("Resolve")
                .field("addr", addr)
                .field("source", source)
                .finish(),
            Error::Bind { addr, source } => f
                .debug_struct("Bind")
                .field("addr", addr)
                .field("source", source)
                .finish(),
            Error::Listener { what, source } => f
                .debug_struct("Listener")
                .field("what", what)
                .field("source", source)
                .finish(),
            Error::Accept { addr, source } => f
                .debug_struct("Accept")
                .field("addr", addr)
                .field("source", source)
                .finish(),
        }
    }
}

impl StdError for Error {
    /// What the cause printed in the message wraps, if anything (see
    /// [how it prints](Error#how-it-prints)).
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause()?.source()
    }
}
