//! `Builder`: options, their validation, and binding the listeners.

use std::any::Any;
use std::fmt;
use std::future::Future;
#[cfg(unix)]
use std::path::Path;
#[cfg(all(unix, feature = "handover"))]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::DEFAULT_MAX_CONNECTIONS;
use crate::config::{Config, ExternalSignal};
#[cfg(all(unix, feature = "handover"))]
use crate::handover::Handover;
use crate::listen::Listen;
#[cfg(all(unix, feature = "handover"))]
use crate::listen::ListenOn;
use crate::listen::open::open_all;
#[cfg(all(unix, feature = "handover"))]
use crate::listen::open::take_over;
use crate::listen::target::ToBindAddr;
use crate::timeout::{DEFAULT_IDLE_TIMEOUT, Timeouts};
use crate::{Error, Handler, Server};

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
    listen: Vec<Listen>,
    /// The control socket for zero-downtime restarts, if any.
    #[cfg(all(unix, feature = "handover"))]
    handover: Option<PathBuf>,
    handler: Option<Arc<dyn Handler>>,
    /// The future that triggers the shutdown (`shutdown_on`).
    shutdown_on: Option<ExternalSignal>,
    config: Config,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl Builder {
    fn new() -> Self {
        Builder {
            listen: Vec::new(),
            #[cfg(all(unix, feature = "handover"))]
            handover: None,
            handler: None,
            shutdown_on: None,
            config: Config {
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_connections_per_ip: None,
                reclaim_when_full: true,
                timeouts: Timeouts {
                    idle: Some(DEFAULT_IDLE_TIMEOUT),
                    first_read: None,
                    max_age: None,
                },
                tcp_nodelay: true,
                tcp_keepalive: None,
                backlog: DEFAULT_BACKLOG,
                reuse_address: cfg!(unix),
                reuse_port: false,
                accept_tasks: 1,
                ipv6_only: None,
                unix_mode: None,
            },
        }
    }

    /// An address to listen on: `"127.0.0.1:8080"`, `"localhost:8080"`,
    /// `("::", 8080)`, a [`SocketAddr`](std::net::SocketAddr), ... Port 0 asks the system for a
    /// free port; [`Server::local_addr`] tells which.
    ///
    /// Call it again (or with [`bind_unix`](Builder::bind_unix),
    /// [`tcp_listener`](Builder::tcp_listener), ...) to listen on several
    /// addresses at once: every listener shares the handler, the limits, the
    /// statistics and the shutdown.
    ///
    /// A name is resolved in [`build`](Builder::build); when it resolves to
    /// several addresses the first that can be bound is used.
    pub fn bind(mut self, addr: impl ToBindAddr) -> Self {
        self.listen.push(Listen::tcp(addr));
        self
    }

    /// A Unix domain socket to listen on, created at `path`.
    ///
    /// If a file is already there: a socket nobody listens on (left behind
    /// by a server that died) is removed and replaced; a socket a live server
    /// listens on makes [`build`](Builder::build) fail with [`Error::Bind`]
    /// (address in use); anything that is not a socket is never touched and
    /// is an error too. The socket file is removed when the server stops (or
    /// is dropped unrun), if it is still the file this server created. Its
    /// permissions: see [`unix_permissions`](Builder::unix_permissions).
    ///
    /// The socket is created in a private directory made next to `path`,
    /// its permissions are set there, and it is linked at `path` once it
    /// listens: so no other user who may write to the directory can redirect
    /// the permission change through a symlink. Its address as the kernel
    /// reports it (`ss -x`, `lsof`) is that staging name, 13 bytes longer
    /// than `path`, and must fit a socket address as well.
    #[cfg(unix)]
    pub fn bind_unix(mut self, path: impl AsRef<Path>) -> Self {
        self.listen.push(Listen::unix(path));
        self
    }

    /// The permission bits of the socket files [`bind_unix`](Builder::bind_unix)
    /// creates, such as `0o660` to let only the owner and group connect.
    ///
    /// Default: as the process's umask makes them.
    #[cfg(unix)]
    pub fn unix_permissions(mut self, mode: u32) -> Self {
        self.config.unix_mode = Some(mode);
        self
    }

    /// Listens on an already-bound (and listening) std TCP listener, for
    /// example one inherited from a parent process or made by a test. The
    /// socket options of this builder are not applied to it.
    pub fn tcp_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listen.push(Listen::tcp_listener(listener));
        self
    }

    /// Listens on an already-bound (and listening) std Unix listener. Its
    /// socket file is left alone when the server stops.
    #[cfg(unix)]
    pub fn unix_listener(mut self, listener: std::os::unix::net::UnixListener) -> Self {
        self.listen.push(Listen::unix_listener(listener));
        self
    }

    /// Listens on the sockets passed by systemd socket activation (or any
    /// launcher that follows its protocol: `LISTEN_FDS` and `LISTEN_PID`
    /// naming this process, descriptors from 3 on), TCP or Unix, in order.
    ///
    /// [`build`](Builder::build) fails with [`Error::Listener`] when no
    /// sockets were passed to this process.
    #[cfg(unix)]
    pub fn systemd_listeners(mut self) -> Self {
        self.listen.push(Listen::systemd());
        self
    }

    /// Something to listen on with settings of its own, such as reading a
    /// PROXY protocol header on each connection; see [`Listen`]. Call it
    /// again to add more listeners.
    pub fn listen(mut self, listen: Listen) -> Self {
        self.listen.push(listen);
        self
    }

    /// Enables zero-downtime restarts through a control socket at `path`
    /// (a Unix socket, owner-only).
    ///
    /// [`build`](Builder::build) first looks there for a running server of
    /// the same program: if one answers, this server *takes over its
    /// listening sockets* (the same ports and Unix paths, the same queue of
    /// waiting clients; nothing is rebound, no client is refused) instead of
    /// binding its own, and once it accepts it tells the old server, which
    /// stops accepting and drains. If nobody answers, it binds as usual and
    /// creates the control socket, where it offers its listeners to its own
    /// successor until it shuts down.
    ///
    /// Each configured listener takes the old server's socket *of the same
    /// address* (IP and port, or Unix path as written), whatever the order
    /// of the listeners; its settings (PROXY protocol, TLS, the backlog) are
    /// this server's. A listener on an address the old server did not have
    /// is bound anew; a socket of the old server that no listener asks for
    /// is not taken, and closes when the old server stops. A TCP address
    /// with port 0 takes the old server's socket on the same IP when there
    /// is exactly one left there (and no other port-0 listener asks for that
    /// IP), so the same configuration keeps its port; otherwise it binds a
    /// new port. Listeners given ready-made
    /// ([`tcp_listener`](Builder::tcp_listener), ...) take nothing over.
    /// Options fixed when the old server bound a socket cannot change in a
    /// handover: a different [`reuse_port`](Builder::reuse_port),
    /// [`ipv6_only`](Builder::ipv6_only) or
    /// [`unix_permissions`](Builder::unix_permissions) makes `build` fail with
    /// [`Error::Bind`] for that address, and the old server serves on.
    ///
    /// If the new server goes away (its process dies, its `run` future or
    /// server is dropped) before the old one has finished draining, the old
    /// one takes its listeners back: it accepts on them again (clients
    /// queued meanwhile are served), offers them to the next successor, and
    /// serves until it is shut down; [`ShutdownReport::handed_over`] then
    /// says `false`. The connections it had already told to shut down stay
    /// told (their signal cannot be taken back) and are served on; the ones
    /// it accepts from then on get a signal of their own. A new server that
    /// shuts down deliberately (or hands over in turn) releases the old one
    /// first, which then finishes its drain and stops. An old server that
    /// was asked to shut down meanwhile ([`ShutdownHandle::shutdown`], the
    /// future given to [`shutdown_on`](Builder::shutdown_on)) does not come back, and
    /// one that already stopped cannot. Until it comes back or stops, the
    /// old server's [`ShutdownHandle::is_shutting_down`] says `false`: its
    /// shutdown was not triggered.
    ///
    /// [`ShutdownReport::handed_over`]: crate::ShutdownReport::handed_over
    /// [`ShutdownHandle::shutdown`]: crate::ShutdownHandle::shutdown
    /// [`ShutdownHandle::is_shutting_down`]: crate::ShutdownHandle::is_shutting_down
    ///
    /// Not with [`systemd_listeners`](Builder::systemd_listeners).
    ///
    /// Default: off.
    #[cfg(all(unix, feature = "handover"))]
    #[cfg_attr(docsrs, doc(cfg(all(unix, feature = "handover"))))]
    pub fn handover(mut self, path: impl AsRef<Path>) -> Self {
        self.handover = Some(path.as_ref().to_path_buf());
        self
    }

    /// The handler that serves every connection: a value implementing
    /// [`Handler`] (the builder puts it in an `Arc`), or an
    /// `Arc<dyn Handler>` chosen at run time (stored as it is, without a
    /// second layer of indirection).
    ///
    /// An `Arc<MyHandler>` works too, but is served through `Arc`'s own
    /// `Handler` impl, which boxes each connection's future: pass the value,
    /// or coerce the `Arc` to `Arc<dyn Handler>`.
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
    /// Default: 30 s. Under Kubernetes, whose default grace period is also
    /// 30 s and includes any `preStop` delay, set it lower, so that `run`
    /// returns its report before the process is killed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Shuts the server down gracefully when `trigger` completes, such as
    /// [`termination`](crate::termination) for Ctrl-C and SIGTERM. Works in
    /// addition to [`Server::shutdown_handle`]; given twice, the last one
    /// counts.
    ///
    /// This is the *trigger*, which starts the shutdown. The *notice* that
    /// reaches the handlers once it has begun is another thing: the
    /// connection's [`ShutdownSignal`](crate::ShutdownSignal)
    /// ([`Connection::shutdown_signal`](crate::Connection::shutdown_signal),
    /// [`Connection::shutdown_requested`](crate::Connection::shutdown_requested)).
    ///
    /// `run` polls the future, so it starts the shutdown only while `run`
    /// runs; [`termination`](crate::termination) hooks the signals when it is
    /// called, so none arriving before `run` is lost.
    ///
    /// Default: none.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use switchboard::{handler_fn, Connection, Server};
    ///
    /// # async fn demo() -> Result<(), switchboard::Error> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// // Called here, not in the async block: the signals are hooked now.
    /// let terminated = switchboard::termination();
    /// let server = Server::builder()
    ///     .bind("127.0.0.1:8080")
    ///     .handler(handler_fn(|_c: Connection| async { Ok::<_, std::io::Error>(()) }))
    ///     .shutdown_on(async move {
    ///         // Ctrl-C or SIGTERM, or the application's own reason.
    ///         tokio::select! {
    ///             () = terminated => {}
    ///             _ = stopped => {}
    ///         }
    ///     })
    ///     .build()
    ///     .await?;
    /// # drop(stop);
    /// # Ok(()) }
    /// ```
    pub fn shutdown_on(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown_on = Some(ExternalSignal::new(trigger));
        self
    }

    /// The former name of [`shutdown_on`](Builder::shutdown_on), which it
    /// calls. Renamed because "shutdown signal" also names what a connection
    /// receives ([`ShutdownSignal`](crate::ShutdownSignal)).
    #[deprecated(
        note = "renamed to `shutdown_on`, which takes the same future; `ShutdownSignal` is the connection's notice"
    )]
    pub fn shutdown_signal(self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown_on(signal)
    }

    /// The most connections served at once. When that many are live the
    /// server stops calling `accept` until one ends: further clients wait in
    /// the kernel's [backlog](Builder::backlog), and no descriptor or task is
    /// spent on them (but one client per listener, held while it waits, so
    /// that the server knows someone waits: see
    /// [`reclaim_when_full`](Builder::reclaim_when_full)). Must be at least 1.
    ///
    /// Default: 10,000 (see [`DEFAULT_MAX_CONNECTIONS`]), half the 20,000
    /// descriptors a process commonly may open, leaving room for what the
    /// handlers open themselves.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// The most connections served at once from one peer IP address. An
    /// extra connection is closed as soon as it is accepted, counted in
    /// [`StatsSnapshot::rejected`](crate::StatsSnapshot::rejected) and logged
    /// at `debug`. `None` for no limit; `Some(n)` needs `n` of at least 1.
    ///
    /// Default: none. Behind a proxy or NAT every client may share one
    /// address; set it only where peers are the real clients.
    pub fn max_connections_per_ip(mut self, max: impl Into<Option<usize>>) -> Self {
        self.config.max_connections_per_ip = max.into();
        self
    }

    /// Reclaims places from the connections least likely to be real clients
    /// when the server is full and clients wait: the idlest connections of
    /// the peer address that holds the most, while it holds more than its
    /// fair share.
    ///
    /// This is what keeps a full server reachable when one address holds
    /// every place with connections that trickle a byte now and then
    /// (Slowloris), which no idle timeout catches. When every place is taken
    /// and a client waits, the server counts the live connections of each
    /// address (the PROXY header's client where there is one; Unix peers are
    /// never reclaimed). If the address with the most holds more than
    /// `max_connections / (addresses + 1)`, up to 16 of its connections whose
    /// handler is waiting for the peer, idlest first, are closed: dropped
    /// like an idle timeout, counted in
    /// [`StatsSnapshot::timed_out_overload`](crate::StatsSnapshot::timed_out_overload)
    /// and logged at `info`, one line per round with the address and count.
    /// A handler busy elsewhere (not reading or writing) is never reclaimed.
    /// It costs nothing until the server is full, then one scan of the live
    /// connections per place it frees (and at most one a second that finds
    /// nothing to reclaim).
    ///
    /// Default: on. Behind a load balancer that sends no PROXY header every
    /// connection shares its address: then a full server closes its idlest
    /// keep-alive connections for new ones, as nginx and Envoy do under
    /// overload.
    pub fn reclaim_when_full(mut self, reclaim: bool) -> Self {
        self.config.reclaim_when_full = reclaim;
        self
    }

    /// Closes a connection whose handler has waited this long for the peer
    /// with no byte read or written. This is what frees the resources of
    /// clients that connect and go silent, whatever the protocol (a client
    /// that trickles a byte now and then is [reclaimed when the server is
    /// full](Builder::reclaim_when_full) instead). `None` to disable.
    ///
    /// Idleness counts only while the handler waits on the connection (its
    /// last read or write returned `Pending`): a handler awaiting a slow
    /// backend or computing is never cut off, however long it takes.
    ///
    /// Expiry drops the handler's future (closing the socket), is logged at
    /// `info` with the timeout's kind and counted in
    /// [`StatsSnapshot::timed_out_idle`](crate::StatsSnapshot::timed_out_idle).
    /// Timeouts are checked by one sweeper thread per server every tick (a
    /// tenth of the shortest timeout, 5 ms to 1 s), which is also the
    /// resolution of the activity it sees: a connection closes no earlier
    /// than its deadline, and within about two ticks after it.
    ///
    /// Default: 300 s (see [`DEFAULT_IDLE_TIMEOUT`]): long enough for a quiet
    /// keep-alive client, short enough that a silent one cannot hold a place
    /// for long.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.idle = timeout.into();
        self
    }

    /// Closes a connection that has not sent its first byte within this
    /// long of being accepted (a header-style timeout). Only for protocols
    /// where the client speaks first. `None` to disable.
    ///
    /// Counted in [`StatsSnapshot::timed_out_first_read`](crate::StatsSnapshot::timed_out_first_read).
    ///
    /// Default: none, as it would close the listeners of server-speaks-first
    /// protocols; for HTTP-like protocols 10 to 60 s is usual.
    pub fn first_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.first_read = timeout.into();
        self
    }

    /// Closes a connection this long after it was accepted, busy or not,
    /// for example to rebalance long-lived clients across instances. `None`
    /// to disable.
    ///
    /// Counted in [`StatsSnapshot::timed_out_max_age`](crate::StatsSnapshot::timed_out_max_age).
    ///
    /// Default: none.
    pub fn max_connection_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.max_age = age.into();
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

    /// Turns on TCP keepalive (`SO_KEEPALIVE`) on accepted sockets, with the
    /// first probe after the connection has been idle this long, so that
    /// peers that vanished without a FIN (power loss, NAT state dropped)
    /// are detected by the kernel. `None` leaves keepalive off.
    ///
    /// Default: none.
    pub fn tcp_keepalive(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_keepalive = idle.into();
        self
    }

    /// Sets `SO_REUSEADDR` on the listening socket, so that a restarted
    /// server can bind while connections of the old one linger in
    /// `TIME_WAIT`.
    ///
    /// Default: on for Unix, off elsewhere (on Windows the option lets
    /// another process take the port).
    pub fn reuse_address(mut self, reuse: bool) -> Self {
        self.config.reuse_address = reuse;
        self
    }

    /// Sets `SO_REUSEPORT` on the listening socket (Unix), so that several
    /// processes or listeners can bind the same port and the kernel spreads
    /// connections among them.
    ///
    /// Each socket has a listen queue of its own. A server that stops serves
    /// the clients already in its queue before it closes; a client the kernel
    /// queues in the instant between the last look at the queue and the
    /// close is reset, unless `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14+),
    /// which moves it to a sibling socket.
    ///
    /// Default: off.
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.config.reuse_port = reuse;
        self
    }

    /// Sets `IPV6_V6ONLY` on an IPv6 listening socket: `true` accepts IPv6
    /// only, `false` also accepts IPv4 (as mapped addresses) on `[::]`.
    /// Ignored for IPv4 addresses.
    ///
    /// Default: the system's (`false` on Linux unless
    /// `net.ipv6.bindv6only` is set).
    pub fn ipv6_only(mut self, only: bool) -> Self {
        self.config.ipv6_only = Some(only);
        self
    }

    /// How many tasks accept on each listener, all from its one socket.
    ///
    /// One accept loop takes every connection of its listener: a few
    /// microseconds of `accept`, admission and `spawn` each, on one core at
    /// a time. On a machine of many cores with many short connections that
    /// one core is the ceiling, whatever the runtime's worker count; with
    /// several accept tasks the runtime's workers accept in parallel (the
    /// kernel hands each queued client to one of them). Measure before you
    /// raise it: `cargo bench -- scale` compares the counts on your machine.
    /// Around the runtime's worker count is the most that can help.
    ///
    /// Everything else holds with any count: the connection limit (each
    /// task holds at most one client in hand while the server is full), the
    /// back-off when out of descriptors (each task backs off), handover and
    /// systemd sockets (the tasks share the listener's one socket), and the
    /// queue drain at shutdown (every task sweeps the queue it shares before
    /// the socket closes, once the last task has let go of it). Connection
    /// ids stay unique, but two tasks may take ids in the other order than
    /// the kernel queued their clients.
    ///
    /// Must be between 1 and 1024. Default: 1.
    pub fn accept_tasks(mut self, tasks: usize) -> Self {
        self.config.accept_tasks = tasks;
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
        if self.listen.is_empty() {
            return Err(Error::NoBindAddress);
        }
        self.config.validate()?;
        for listen in &self.listen {
            listen.validate()?;
        }
        #[cfg(all(unix, feature = "handover"))]
        if self.handover.is_some() {
            if self
                .listen
                .iter()
                .any(|l| matches!(l.on, ListenOn::Systemd))
            {
                return Err(Error::InvalidConfig {
                    option: "handover",
                    reason: "cannot be combined with systemd_listeners",
                });
            }
            if self.listen.len() > crate::handover::MAX_LISTENERS {
                return Err(Error::InvalidConfig {
                    option: "handover",
                    reason: "at most 64 listeners can be handed over",
                });
            }
            const _: () = assert!(crate::handover::MAX_LISTENERS == 64, "the reason above");
        }
        // Every address is resolved before anything is bound or taken over:
        // a listener is paired with a handed-over socket by its address, and
        // a running server waits for its successor meanwhile.
        let mut resolved = Vec::with_capacity(self.listen.len());
        for listen in self.listen {
            resolved.push(listen.resolve().await?);
        }
        #[cfg(all(unix, feature = "handover"))]
        let (handover, inherited) = match &self.handover {
            Some(path) => {
                let (handover, inherited) =
                    Handover::acquire(path)
                        .await
                        .map_err(|source| Error::Listener {
                            what: "handover control socket",
                            source,
                        })?;
                (Some(handover), inherited)
            }
            None => (None, None),
        };
        #[cfg(all(unix, feature = "handover"))]
        let bound = match inherited {
            Some(inherited) => take_over(resolved, inherited, &self.config)?,
            None => open_all(resolved, &self.config)?,
        };
        #[cfg(not(all(unix, feature = "handover")))]
        let bound = open_all(resolved, &self.config)?;
        Server::new(
            bound,
            handler,
            self.config,
            self.shutdown_on,
            #[cfg(all(unix, feature = "handover"))]
            handover,
        )
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("listen", &self.listen)
            .field("handler", &self.handler.as_ref().map(|_| ".."))
            .field("shutdown_on", &self.shutdown_on.as_ref().map(|_| ".."))
            .field("config", &self.config)
            .finish()
    }
}
