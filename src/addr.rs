//! Addresses of listeners and peers, whatever the transport.

use std::fmt;
use std::net::SocketAddr;

/// The address of a listener or of a connection's end.
///
/// Today every listener is TCP; the enum leaves room for other transports
/// (Unix sockets, in-memory pipes) without changing any handler.
///
/// # Examples
///
/// ```
/// use switchboard::Addr;
///
/// let addr = Addr::from("127.0.0.1:8080".parse::<std::net::SocketAddr>()?);
/// assert_eq!(addr.to_string(), "127.0.0.1:8080");
/// assert_eq!(addr.as_tcp().map(|a| a.port()), Some(8080));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// An IP address and port.
    Tcp(SocketAddr),
}

impl Addr {
    /// The socket address when this is a TCP address.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(addr) => Some(*addr),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => addr.fmt(f),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Addr::Tcp(addr)
    }
}
