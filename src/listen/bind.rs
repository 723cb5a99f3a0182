//! Listening sockets: TCP and Unix, bound here or handed over ready-made
//! (an already-bound std listener, or systemd socket activation).

use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;

#[cfg(unix)]
use std::sync::Arc;
#[cfg(unix)]
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Addr;
use crate::config::Config;
use crate::conn::Stream;
#[cfg(all(unix, feature = "handover"))]
use crate::handover::Inherited;
#[cfg(unix)]
use crate::socket_file::{self, FileId};

/// One listening socket of a server.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix {
        /// The socket file this server created (or took over with the
        /// socket), removed when the listener is dropped; `None` for a
        /// listener given ready-made. Declared before `listener`, so removed
        /// before the socket closes: until then another server finds it
        /// live, not stale, and does not replace it while this removes it.
        // Only a handover reads it; otherwise it is held for its `Drop`.
        #[cfg_attr(not(feature = "handover"), allow(dead_code))]
        file: Option<SocketFile>,
        listener: UnixListener,
        /// The path clients connect to. Not the socket's own address: a
        /// socket file [`bind_unix`] creates is bound at a staging name and
        /// moved into place (see `socket_file`).
        path: Option<PathBuf>,
    },
}

impl Listener {
    /// The address the listener is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(Addr::Tcp),
            #[cfg(unix)]
            Listener::Unix { path, .. } => Ok(Addr::Unix(path.clone())),
        }
    }

    /// Accepts one connection.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like tokio's `accept`.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, Addr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Accepts a connection if one is waiting in the listen queue, without
    /// waiting for one: `None` when the queue is empty.
    pub(crate) async fn try_accept(&self) -> Option<io::Result<(Stream, Addr)>> {
        std::future::poll_fn(|cx| match self.poll_accept(cx) {
            Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Addr)>> {
        match self {
            Listener::Tcp(listener) => listener
                .poll_accept(cx)
                .map_ok(|(stream, peer)| (Stream::Tcp(stream), Addr::Tcp(peer))),
            #[cfg(unix)]
            Listener::Unix { listener, .. } => listener.poll_accept(cx).map_ok(|(stream, peer)| {
                let path = peer.as_pathname().map(Path::to_path_buf);
                (Stream::Unix(Box::new(stream)), Addr::Unix(path))
            }),
        }
    }

    /// A duplicate of this listener's descriptor, to hand to a successor.
    #[cfg(all(unix, feature = "handover"))]
    pub(crate) fn duplicate(&self) -> io::Result<Inherited> {
        match self {
            Listener::Tcp(listener) => Inherited::duplicate(listener, Inherited::Tcp),
            Listener::Unix { listener, .. } => Inherited::duplicate(listener, Inherited::Unix),
        }
    }

    /// The flag that, once set, keeps this listener's socket file when it is
    /// dropped (it was handed over).
    #[cfg(all(unix, feature = "handover"))]
    pub(crate) fn file_keeper(&self) -> Option<Arc<AtomicBool>> {
        match self {
            Listener::Unix {
                file: Some(file), ..
            } => Some(Arc::clone(&file.keep)),
            _ => None,
        }
    }

    /// Takes over a listener handed over by a predecessor.
    ///
    /// A Unix socket's file at `configured` (the path this server is
    /// configured to create, if it is) becomes this server's to remove when
    /// it stops: the file there now, if it is a socket and the listener was
    /// bound for that path (there, or at the staging name `bind_unix` uses
    /// for it). Its identity is taken now, so a stop removes it only if it
    /// is still that file. Nothing tells, short of asking the kernel's
    /// socket diagnostics or connecting (a connection the handler would
    /// see), that the file at the path is this very socket's rather than
    /// one put there since the predecessor bound it; so a file replaced
    /// *before* the takeover is adopted. Otherwise the file is left alone.
    #[cfg(all(unix, feature = "handover"))]
    pub(crate) fn from_inherited(
        inherited: Inherited,
        configured: Option<&Path>,
    ) -> io::Result<Self> {
        let listener = match inherited {
            Inherited::Tcp(listener) => return Listener::from_std_tcp(listener),
            Inherited::Unix(listener) => listener,
        };
        let bound = listener.local_addr()?.as_pathname().map(Path::to_path_buf);
        let mut listener = Listener::from_std_unix(listener)?;
        let (Some(configured), Listener::Unix { path, file, .. }) = (configured, &mut listener)
        else {
            return Ok(listener);
        };
        if !bound
            .as_deref()
            .is_some_and(|bound| socket_file::bound_for(bound, configured))
        {
            tracing::warn!(
                bound = ?bound,
                configured = %configured.display(),
                "the handed-over Unix socket was not bound for the configured path; \
                 its file is left alone"
            );
            return Ok(listener);
        }
        *path = Some(configured.to_path_buf());
        match socket_file::look(configured)? {
            socket_file::Found::Socket(id) => {
                *file = Some(SocketFile::new(configured.to_path_buf(), id));
            }
            _ => tracing::warn!(
                path = %configured.display(),
                "the handed-over Unix socket's file is gone or replaced; it is left alone"
            ),
        }
        Ok(listener)
    }

    /// Takes over an already-bound std TCP listener.
    pub(crate) fn from_std_tcp(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(listener)?))
    }

    /// Takes over an already-bound std Unix listener.
    #[cfg(unix)]
    pub(crate) fn from_std_unix(listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let path = listener.local_addr()?.as_pathname().map(Path::to_path_buf);
        Ok(Listener::Unix {
            listener: UnixListener::from_std(listener)?,
            path,
            file: None,
        })
    }
}

/// Binds the first of `addrs` that can be bound, like `std`'s
/// `TcpListener::bind`; on failure, the last address tried and its error.
pub(crate) fn bind_tcp(
    addrs: &[SocketAddr],
    config: &Config,
) -> Result<Listener, (SocketAddr, io::Error)> {
    let mut last_err = None;
    for &addr in addrs {
        match bind_tcp_one(addr, config) {
            Ok(listener) => return Ok(Listener::Tcp(listener)),
            Err(err) => last_err = Some((addr, err)),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let err = io::Error::new(io::ErrorKind::InvalidInput, "no addresses to bind");
        (unspecified, err)
    }))
}

fn bind_tcp_one(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if config.reuse_address {
        socket.set_reuse_address(true)?;
    }
    if config.reuse_port {
        set_reuse_port(&socket)?;
    }
    if let (Some(only), SocketAddr::V6(_)) = (config.ipv6_only, addr) {
        socket.set_only_v6(only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog(config))?;
    TcpListener::from_std(socket.into())
}

/// The kernel caps the backlog anyway; saturate rather than wrap.
fn backlog(config: &Config) -> i32 {
    i32::try_from(config.backlog).unwrap_or(i32::MAX)
}

#[cfg(unix)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(unix))]
fn set_reuse_port(_socket: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_REUSEPORT is not supported on this platform",
    ))
}

/// Binds a Unix socket at `path`.
///
/// A file already at `path` is handled by this policy: a socket nobody
/// listens on (left by a server that died) is removed and replaced; a socket
/// a live server listens on is an "address in use" error; anything that is
/// not a socket is an error and is never removed.
///
/// The socket file is created with its permissions set, listening, without
/// a step a symlink swapped onto `path` could redirect, and never replaces
/// a file that appears at `path` meanwhile: see `socket_file::create`.
#[cfg(unix)]
pub(crate) fn bind_unix(path: &Path, config: &Config) -> io::Result<Listener> {
    let in_use = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )
    };
    match socket_file::look(path)? {
        socket_file::Found::Socket(stale) => {
            // Non-blocking: a live server whose backlog is full would hold a
            // blocking connect (and `build`) for as long as it stays full.
            let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            probe.set_nonblocking(true)?;
            // A connect that succeeds, or would wait for room in the backlog,
            // reached a live server.
            match probe.connect(&socket2::SockAddr::unix(path)?) {
                Ok(()) => return Err(in_use()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Err(in_use()),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    // Only the file probed: one another server has put there
                    // since is left to `create` to report.
                    stale.remove_if_at(path)?;
                    tracing::info!(path = %path.display(), "removed a stale socket file");
                }
                Err(err) => return Err(err),
            }
        }
        socket_file::Found::Other => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ));
        }
        socket_file::Found::Nothing => {}
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let id = socket_file::create(&socket, path, config.unix_mode, backlog(config))?;
    // From here on the file is ours: removed if anything below fails.
    let file = SocketFile::new(path.to_path_buf(), id);
    let listener = UnixListener::from_std(socket.into())?;
    Ok(Listener::Unix {
        listener,
        path: Some(path.to_path_buf()),
        file: Some(file),
    })
}

/// The listening sockets systemd (or any launcher following its protocol)
/// passed in `LISTEN_FDS`/`LISTEN_PID`, in order.
#[cfg(unix)]
pub(crate) fn systemd() -> io::Result<Vec<Listener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no sockets were passed (LISTEN_FDS unset, zero, or LISTEN_PID is another process)",
        ));
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        // A TCP listener, or else a Unix one; anything else is an error.
        let listener = match fds.take_tcp_listener(index) {
            Ok(Some(tcp)) => Listener::from_std_tcp(tcp)?,
            _ => match fds.take_unix_listener(index)? {
                Some(unix) => Listener::from_std_unix(unix)?,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("passed descriptor {index} was already taken"),
                    ));
                }
            },
        };
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A socket file created by this server (or taken over with its
/// listener): removed when dropped, so a cleanly stopped server leaves no
/// stale file behind; but only if the path still names that file, never one
/// another server has put there since; and not at all once the socket was
/// handed over to a successor, which serves on it now (`keep`).
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    id: FileId,
    keep: Arc<AtomicBool>,
}

#[cfg(unix)]
impl SocketFile {
    fn new(path: PathBuf, id: FileId) -> Self {
        SocketFile {
            path,
            id,
            keep: Arc::default(),
        }
    }
}

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.keep.load(Ordering::Relaxed) {
            self.id.clean_up(&self.path);
        }
    }
}
