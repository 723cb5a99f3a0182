//! `Builder`: options, their validation, and binding the listener.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::{Addr, Error, Handler, Server};

/// Default for [`Builder::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Builder::backlog`].
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Configures and binds a [`Server`]. Made by [`Server::builder`].
///
/// Every setter consumes the builder and returns it; [`build`](Builder::build)
/// binds the listening socket, so that the real address (port 0 included) is
/// known before [`Server::run`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::{handler_fn, Connection, Server};
///
/// # async fn demo() -> Result<(), switchboard::Error> {
/// let server = Server::builder()
///     .bind("127.0.0.1:0")
///     .handler(handler_fn(|_conn: Connection| async { Ok::<_, std::io::Error>(()) }))
///     .drain_timeout(Duration::from_secs(5))
///     .build()
///     .await?;
/// println!("listening on {}", server.local_addr());
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build().await` is called"]
pub struct Builder {
    bind: Option<BindTarget>,
    handler: Option<Arc<dyn Handler>>,
    shutdown_signal: Option<ExternalSignal>,
    config: Config,
}

/// The options the running server reads.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) drain_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
    pub(crate) backlog: u32,
}

pub(crate) type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The builder's shutdown future, kept behind a mutex only so that `Builder`
/// and `Server` are `Sync` although the future need not be. The mutex is never
/// locked: the future is taken out by value when the server runs.
pub(crate) struct ExternalSignal(Mutex<ShutdownFuture>);

impl ExternalSignal {
    pub(crate) fn into_future(self) -> ShutdownFuture {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Builder {
    pub(crate) fn new() -> Self {
        Builder {
            bind: None,
            handler: None,
            shutdown_signal: None,
            config: Config {
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                tcp_nodelay: true,
                backlog: DEFAULT_BACKLOG,
            },
        }
    }

    /// The address to listen on: `"127.0.0.1:8080"`, `"localhost:8080"`,
    /// `("::", 8080)`, a [`SocketAddr`], ... Port 0 asks the system for a
    /// free port; [`Server::local_addr`] tells which.
    ///
    /// A name is resolved in [`build`](Builder::build); when it resolves to
    /// several addresses the first that can be bound is used.
    pub fn bind(mut self, addr: impl ToBindAddr) -> Self {
        self.bind = Some(addr.into_target());
        self
    }

    /// The handler that serves every connection: a value implementing
    /// [`Handler`], or an `Arc<dyn Handler>` chosen at run time (stored as
    /// it is, without a second layer of indirection).
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        let mut slot = Some(handler);
        let shared: Option<Arc<dyn Handler>> =
            match (&mut slot as &mut dyn Any).downcast_mut::<Option<Arc<dyn Handler>>>() {
                Some(already_shared) => already_shared.take(),
                None => slot.take().map(|h| Arc::new(h) as Arc<dyn Handler>),
            };
        self.handler = shared;
        self
    }

    /// How long [`Server::run`] waits, once shutdown begins, for connections
    /// to finish before it aborts the rest.
    ///
    /// Default: 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// A future whose completion triggers the graceful shutdown, such as
    /// [`termination`](crate::termination) for Ctrl-C and SIGTERM. Works in
    /// addition to [`Server::shutdown_handle`].
    ///
    /// Default: none.
    pub fn shutdown_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown_signal = Some(ExternalSignal(Mutex::new(Box::pin(signal))));
        self
    }

    /// Sets `TCP_NODELAY` on accepted sockets, so that small responses go out
    /// at once instead of waiting for Nagle's algorithm.
    ///
    /// Default: on.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.config.tcp_nodelay = nodelay;
        self
    }

    /// The length of the kernel's queue of connections not yet accepted.
    /// Must be at least 1. The kernel may cap it (`net.core.somaxconn`).
    ///
    /// Default: 1024.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// Validates the options, resolves the address and binds the listener.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::NoHandler`] or [`Error::NoBindAddress`] when a required
    /// option is missing, [`Error::InvalidConfig`] for a value out of range,
    /// [`Error::Resolve`] when the address does not resolve, and
    /// [`Error::Bind`] naming the address when it cannot be bound (in use,
    /// permission denied, ...).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped before completion nothing stays bound.
    pub async fn build(self) -> Result<Server, Error> {
        let handler = self.handler.ok_or(Error::NoHandler)?;
        let target = self.bind.ok_or(Error::NoBindAddress)?;
        if self.config.backlog == 0 {
            return Err(Error::InvalidConfig {
                option: "backlog",
                reason: "must be at least 1",
            });
        }
        let addrs = target.resolve().await?;
        let listener = bind_first(&addrs, &self.config)?;
        Server::new(listener, handler, self.config, self.shutdown_signal)
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("bind", &self.bind)
            .field("handler", &self.handler.as_ref().map(|_| ".."))
            .field(
                "shutdown_signal",
                &self.shutdown_signal.as_ref().map(|_| ".."),
            )
            .field("config", &self.config)
            .finish()
    }
}

/// Binds the first address that can be bound, like `std`'s `TcpListener::bind`.
fn bind_first(addrs: &[SocketAddr], config: &Config) -> Result<TcpListener, Error> {
    let mut last_err = None;
    for &addr in addrs {
        match bind_one(addr, config) {
            Ok(listener) => return Ok(listener),
            Err(source) => {
                last_err = Some(Error::Bind {
                    addr: Addr::Tcp(addr),
                    source,
                })
            }
        }
    }
    // `resolve` never returns an empty list, so a failure was recorded.
    Err(last_err.unwrap_or(Error::NoBindAddress))
}

fn bind_one(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    // (On Windows the same option would let two servers share a port.)
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps the backlog anyway; saturate rather than wrap.
    socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// An address switchboard can bind, given to [`Builder::bind`].
///
/// Implemented for `&str` and `String` (`"host:port"`), `(&str, u16)`,
/// `(String, u16)`, `(IpAddr, u16)`, [`SocketAddr`] and its V4/V6 forms, and
/// slices, arrays and vectors of `SocketAddr`. Sealed: it cannot be
/// implemented outside this crate.
pub trait ToBindAddr: sealed::Sealed {}

mod sealed {
    use super::BindTarget;

    #[allow(unreachable_pub)] // public only so it can be a supertrait of a public trait
    pub trait Sealed {
        fn into_target(self) -> BindTarget;
    }
}

/// What [`Builder::bind`] was given, resolved in `build`.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // named by the sealed trait's method only
pub enum BindTarget {
    Host(String),
    HostPort(String, u16),
    Addrs(Vec<SocketAddr>),
}

impl BindTarget {
    async fn resolve(self) -> Result<Vec<SocketAddr>, Error> {
        let (described, found) = match self {
            BindTarget::Addrs(addrs) => (format!("{addrs:?}"), Ok(addrs)),
            BindTarget::Host(host) => match host.parse::<SocketAddr>() {
                // A literal address needs no resolver round trip.
                Ok(addr) => (host, Ok(vec![addr])),
                Err(_) => {
                    let found = tokio::net::lookup_host(host.as_str())
                        .await
                        .map(Iterator::collect);
                    (host, found)
                }
            },
            BindTarget::HostPort(host, port) => {
                let found = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(Iterator::collect);
                (format!("{host}:{port}"), found)
            }
        };
        match found {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(Error::Resolve {
                addr: described,
                source: io::Error::new(io::ErrorKind::InvalidInput, "no addresses to bind"),
            }),
            Err(source) => Err(Error::Resolve {
                addr: described,
                source,
            }),
        }
    }
}

macro_rules! to_bind_addr {
    ($($ty:ty => |$v:ident| $e:expr;)*) => {$(
        impl ToBindAddr for $ty {}
        impl sealed::Sealed for $ty {
            fn into_target(self) -> BindTarget {
                let $v = self;
                $e
            }
        }
    )*};
}

to_bind_addr! {
    &str => |s| BindTarget::Host(s.to_owned());
    String => |s| BindTarget::Host(s);
    &String => |s| BindTarget::Host(s.clone());
    (&str, u16) => |hp| BindTarget::HostPort(hp.0.to_owned(), hp.1);
    (String, u16) => |hp| BindTarget::HostPort(hp.0, hp.1);
    (IpAddr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    (Ipv4Addr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    (Ipv6Addr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    SocketAddr => |a| BindTarget::Addrs(vec![a]);
    SocketAddrV4 => |a| BindTarget::Addrs(vec![SocketAddr::V4(a)]);
    SocketAddrV6 => |a| BindTarget::Addrs(vec![SocketAddr::V6(a)]);
    &[SocketAddr] => |a| BindTarget::Addrs(a.to_vec());
    Vec<SocketAddr> => |a| BindTarget::Addrs(a);
}

impl<const N: usize> ToBindAddr for [SocketAddr; N] {}
impl<const N: usize> sealed::Sealed for [SocketAddr; N] {
    fn into_target(self) -> BindTarget {
        BindTarget::Addrs(self.to_vec())
    }
}
