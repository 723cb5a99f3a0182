//! Per-listener settings: what to listen on ([`Listen`]) and what runs on
//! each of its connections before the handler: reading a PROXY protocol
//! header (`ProxyProtocol`, feature `proxy-protocol`), the TLS handshake
//! (feature `tls`).

pub(crate) mod bind;
pub(crate) mod open;
#[cfg(feature = "proxy-protocol")]
mod proxy_protocol;
pub(crate) mod target;

#[cfg(unix)]
use std::path::{Path, PathBuf};

#[cfg(feature = "proxy-protocol")]
pub(crate) use crate::listen::proxy_protocol::Refusal;
#[cfg(feature = "proxy-protocol")]
pub use crate::listen::proxy_protocol::{DEFAULT_PROXY_HEADER_TIMEOUT, ProxyProtocol};
use crate::listen::target::{BindTarget, ToBindAddr};

/// One thing to listen on, with its own settings; given to
/// [`Builder::listen`](crate::Builder::listen).
///
/// [`Builder::bind`](crate::Builder::bind) and its siblings are shorthands
/// for a `Listen` with default settings.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "proxy-protocol")]
/// use switchboard::{handler_fn, Connection, Listen, ProxyProtocol, Server};
///
/// # #[cfg(feature = "proxy-protocol")]
/// # async fn demo() -> Result<(), switchboard::Error> {
/// # let handler = handler_fn(|_c: Connection| async { Ok::<_, std::io::Error>(()) });
/// let server = Server::builder()
///     // Clients reach this port only through the load balancer at 10.0.0.5.
///     .listen(Listen::tcp("0.0.0.0:7000").proxy_protocol(
///         ProxyProtocol::required().trust("10.0.0.5".parse().expect("an IP address")),
///     ))
///     // An admin port reached directly.
///     .bind("127.0.0.1:7001")
///     .handler(handler)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a Listen does nothing until given to Builder::listen"]
pub struct Listen {
    pub(crate) on: ListenOn,
    #[cfg(feature = "proxy-protocol")]
    pub(crate) proxy: Option<ProxyProtocol>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsConfig>,
}

/// What to listen on.
#[derive(Debug)]
pub(crate) enum ListenOn {
    Tcp(BindTarget),
    #[cfg(unix)]
    UnixPath(PathBuf),
    TcpListener(std::net::TcpListener),
    #[cfg(unix)]
    UnixListener(std::os::unix::net::UnixListener),
    #[cfg(unix)]
    Systemd,
}

impl Listen {
    fn on(on: ListenOn) -> Self {
        Listen {
            on,
            #[cfg(feature = "proxy-protocol")]
            proxy: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A TCP address to bind; see [`Builder::bind`](crate::Builder::bind).
    pub fn tcp(addr: impl ToBindAddr) -> Self {
        Listen::on(ListenOn::Tcp(addr.into_target()))
    }

    /// A Unix socket to create; see [`Builder::bind_unix`](crate::Builder::bind_unix).
    #[cfg(unix)]
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Listen::on(ListenOn::UnixPath(path.as_ref().to_path_buf()))
    }

    /// An already-bound std TCP listener; see
    /// [`Builder::tcp_listener`](crate::Builder::tcp_listener).
    pub fn tcp_listener(listener: std::net::TcpListener) -> Self {
        Listen::on(ListenOn::TcpListener(listener))
    }

    /// An already-bound std Unix listener; see
    /// [`Builder::unix_listener`](crate::Builder::unix_listener).
    #[cfg(unix)]
    pub fn unix_listener(listener: std::os::unix::net::UnixListener) -> Self {
        Listen::on(ListenOn::UnixListener(listener))
    }

    /// The sockets passed by systemd socket activation; see
    /// [`Builder::systemd_listeners`](crate::Builder::systemd_listeners).
    /// The settings apply to each of them.
    #[cfg(unix)]
    pub fn systemd() -> Self {
        Listen::on(ListenOn::Systemd)
    }

    /// Reads a PROXY protocol header (v1 or v2) at the start of every
    /// connection, before the handler runs, so that
    /// [`Connection::peer_addr`](crate::Connection::peer_addr) reports the
    /// real client behind a load balancer. TCP listeners only: on a Unix
    /// listener [`build`](crate::Builder::build) fails with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    ///
    /// Default: off.
    #[cfg(feature = "proxy-protocol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
    pub fn proxy_protocol(mut self, proxy: ProxyProtocol) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Serves TLS on this listener: each connection's handshake runs in its
    /// own task (after the PROXY header, if any) under the configuration's
    /// deadline and cap on handshakes in progress, before the handler sees
    /// the decrypted stream. [`Connection::tls_info`](crate::Connection::tls_info)
    /// tells what was negotiated (ALPN, SNI). TCP listeners only.
    ///
    /// A failed handshake closes the connection without reaching the
    /// handler; it is logged at `debug` (scanners would flood a busier
    /// level) and counted in
    /// [`StatsSnapshot::tls_failed`](crate::StatsSnapshot::tls_failed).
    ///
    /// Default: plain TCP.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}
