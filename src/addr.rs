//! Addresses of listeners and peers, whatever the transport.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The address of a listener or of a connection's end.
///
/// One type for every transport, so that a handler written for TCP serves a
/// Unix socket (or an in-memory test connection) unchanged.
///
/// # Examples
///
/// ```
/// use switchboard::Addr;
///
/// let addr = Addr::from("127.0.0.1:8080".parse::<std::net::SocketAddr>()?);
/// assert_eq!(addr.to_string(), "127.0.0.1:8080");
/// assert_eq!(addr.as_tcp().map(|a| a.port()), Some(8080));
///
/// let unix = Addr::Unix(Some("/run/app.sock".into()));
/// assert_eq!(unix.to_string(), "unix:/run/app.sock");
/// assert_eq!(Addr::Unix(None).to_string(), "unix:(unnamed)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A Unix domain socket's path; `None` for an unnamed socket, which is
    /// what a connecting client usually has.
    Unix(Option<PathBuf>),
}

impl Addr {
    /// The socket address when this is a TCP address.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The IP address when this is a TCP address (for per-address limits).
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.as_tcp().map(|addr| addr.ip())
    }

    /// The path when this is a named Unix socket.
    pub fn as_unix(&self) -> Option<&Path> {
        match self {
            Addr::Unix(path) => path.as_deref(),
            Addr::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => addr.fmt(f),
            Addr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Addr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Addr::Tcp(addr)
    }
}
