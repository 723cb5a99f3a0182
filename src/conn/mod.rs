//! `Connection`: one accepted stream and everything known about it.

pub(crate) mod record;
pub(crate) mod registry;
mod split;
pub(crate) mod subtask;

pub use split::{OwnedReadHalf, OwnedWriteHalf, ReuniteError};
pub use subtask::Spawner;

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::conn::record::ConnState;
#[cfg(feature = "proxy-protocol")]
use crate::proxy::ProxyHeader;
use crate::{Addr, ShutdownRequested, ShutdownSignal};

/// One accepted connection, handed to [`Handler::handle`](crate::Handler::handle).
///
/// It is the byte stream itself (`AsyncRead + AsyncWrite`, so every
/// `tokio::io` helper and `tokio-util` codec works on it) plus what the server
/// knows about it: a server-unique [`id`](Connection::id), both ends'
/// addresses, and the server's shutdown signal.
///
/// Dropping the connection closes it.
///
/// # Examples
///
/// A handler that echoes until the client closes or the server shuts down:
///
/// ```
/// use switchboard::{handler_fn, Connection};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let echo = handler_fn(|mut conn: Connection| async move {
///     let mut buf = [0u8; 1024];
///     // Made once: the future borrows nothing, so it can race every read.
///     let shutdown = conn.shutdown_requested();
///     tokio::pin!(shutdown);
///     loop {
///         let n = tokio::select! {
///             n = conn.read(&mut buf) => n?,
///             () = &mut shutdown => return Ok(()),
///         };
///         if n == 0 {
///             return Ok::<_, std::io::Error>(());
///         }
///         conn.write_all(&buf[..n]).await?;
///     }
/// });
/// # let _ = echo;
/// ```
pub struct Connection {
    // Crate-visible for the preamble (PROXY header, TLS), which wraps the
    // stream before the handler sees the connection.
    pub(crate) stream: Stream,
    /// Everything else the server knows of the connection, shared with the
    /// server's registry: one pointer, so that an idle connection's task
    /// stays small (see `record.rs`).
    pub(crate) state: Arc<ConnState>,
}

/// Everything a connection's task is made of.
#[allow(unreachable_pub)] // named by the sealed handler trait only
#[derive(Debug)]
pub struct Job {
    pub(crate) conn: Connection,
    pub(crate) span: tracing::Span,
}

/// A PROXY protocol header and the client it names.
#[cfg(feature = "proxy-protocol")]
#[derive(Debug)]
pub(crate) struct ProxyInfo {
    pub(crate) header: ProxyHeader,
    /// The header's source address, if it has one (`LOCAL` and `UNKNOWN`
    /// headers have none: the peer is then the balancer).
    pub(crate) client: Option<Addr>,
}

/// The transports a connection can run over. Crate-private so that adding
/// one changes no handler.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    /// Boxed, so that a `Stream` is no larger than a TCP stream (two
    /// streams of the same layout need a separate tag): a word less in every
    /// TCP connection's task (and twice over in an `async fn` handler's
    /// future), for an allocation per Unix connection.
    #[cfg(unix)]
    Unix(Box<UnixStream>),
    /// An in-memory pipe, for testing handlers without sockets.
    Duplex(DuplexStream),
    /// TLS over TCP. Boxed: the TLS state is over a kilobyte, a TCP stream
    /// a few words.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Runs `$body` with `$s` bound to the concrete stream inside `$stream`.
macro_rules! with_stream {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Stream::Tcp($s) => $body,
            #[cfg(unix)]
            Stream::Unix($s) => $body,
            Stream::Duplex($s) => $body,
            #[cfg(feature = "tls")]
            Stream::Tls($s) => $body,
        }
    };
}

impl Connection {
    pub(crate) fn new(stream: Stream, state: Arc<ConnState>) -> Self {
        Connection { stream, state }
    }

    /// What the TLS handshake negotiated (ALPN protocol, SNI server name,
    /// version, cipher suite), on a [TLS listener](crate::Listen::tls).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_info(&self) -> Option<&crate::TlsInfo> {
        self.state.extra.get()?.tls.as_ref()
    }

    /// The connection's number, unique within its server and increasing in
    /// the order connections were accepted (the first is 1); with several
    /// [accept tasks](crate::Builder::accept_tasks) per listener, unique but
    /// not always in that order.
    pub fn id(&self) -> u64 {
        self.state.id
    }

    /// The address of the remote end: the client. Behind a load balancer
    /// that sends a PROXY protocol header (see `Listen::proxy_protocol`,
    /// feature `proxy-protocol`), the client the header names; the
    /// balancer's own address is then `balancer_addr`.
    pub fn peer_addr(&self) -> Addr {
        self.state.client_addr().clone()
    }

    /// The address of the load balancer that sent a PROXY protocol header
    /// for this connection, if one did.
    #[cfg(feature = "proxy-protocol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
    pub fn balancer_addr(&self) -> Option<&Addr> {
        self.state.proxy().map(|_| &self.state.peer)
    }

    /// The PROXY protocol header the load balancer sent, if one did: the
    /// addresses, and for version 2 the TLVs (ALPN, authority, TLS details,
    /// unique id, ...), read-only.
    #[cfg(feature = "proxy-protocol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
    pub fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.state.proxy().map(|proxy| &proxy.header)
    }

    /// The address of this end: the listener's address, or for a listener on
    /// a wildcard address (`0.0.0.0`, `::`) the address the client reached.
    pub fn local_addr(&self) -> Addr {
        let listener_addr = &self.state.home.addr;
        match listener_addr {
            Addr::Tcp(listener) if listener.ip().is_unspecified() => {
                match self.as_tcp().map(TcpStream::local_addr) {
                    Some(Ok(addr)) => Addr::Tcp(addr),
                    _ => listener_addr.clone(),
                }
            }
            listener => listener.clone(),
        }
    }

    /// What the connection runs over: TCP, a Unix socket, TLS (over TCP),
    /// or memory for a [`testing`](crate::testing) connection. Its
    /// `Display` gives the lowercase name (`"tcp"`, ...) for logs.
    pub fn transport(&self) -> Transport {
        match self.stream {
            Stream::Tcp(_) => Transport::Tcp,
            #[cfg(unix)]
            Stream::Unix(_) => Transport::Unix,
            Stream::Duplex(_) => Transport::Memory,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Transport::Tls,
        }
    }

    /// The underlying TCP stream (under TLS too), to read or set socket
    /// options (`nodelay`, `ttl`, ...).
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Tcp(stream) => Some(stream),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => Some(stream.get_ref().0),
            _ => None,
        }
    }

    /// The underlying Unix stream, for a connection on a Unix socket (to ask
    /// for the peer's credentials, for instance).
    #[cfg(unix)]
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match &self.stream {
            Stream::Unix(stream) => Some(&**stream),
            _ => None,
        }
    }

    /// Reads at most `max` bytes (and at most [`READ_CHUNK_MAX`] at a
    /// time) into a buffer sized to what arrived. An empty buffer means the
    /// peer closed its side (EOF).
    ///
    /// A connection that waits with a buffer in hand keeps that buffer's
    /// memory for as long as the peer is silent: 8 KiB per idle connection is
    /// typical of hand-written loops. Waiting here costs no buffer at all:
    /// the bytes are read into a buffer kept by the thread that polls (one
    /// per thread, reused by every connection it serves), then copied into a
    /// `BytesMut` of exactly their length. So ten thousand idle connections
    /// cost no buffers, and a small message costs a small allocation, which
    /// the allocator serves from its per-thread cache. The price is one copy
    /// of every byte read (a `memcpy`, small next to the system call); for
    /// bulk transfers into a buffer of your own, use the `AsyncRead` methods.
    ///
    /// # Errors
    ///
    /// The stream's read error.
    ///
    /// # Panics
    ///
    /// If `max` is 0.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no bytes
    /// have been read.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{handler_fn, Connection};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let echo = handler_fn(|mut conn: Connection| async move {
    ///     loop {
    ///         let chunk = conn.read_chunk(4096).await?;
    ///         if chunk.is_empty() {
    ///             return Ok::<_, std::io::Error>(());
    ///         }
    ///         conn.write_all(&chunk).await?;
    ///     }
    /// });
    /// # let _ = echo;
    /// ```
    pub fn read_chunk(&mut self, max: usize) -> ReadChunk<'_> {
        assert!(max > 0, "read_chunk(0) could never tell a read from EOF");
        ReadChunk { conn: self, max }
    }

    /// The server's shutdown signal; clone it into tasks the handler spawns.
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.state.home.signal
    }

    /// Completes when the server begins shutting down: finish the current
    /// exchange and return.
    ///
    /// The future borrows nothing from the connection: make it once, pin it
    /// (`tokio::pin!`), and race it against reads in a `tokio::select!` loop,
    /// as in the [example above](Connection#examples). Making it once also
    /// registers the wake-up once rather than on every iteration.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has begun.
    pub fn shutdown_requested(&self) -> ShutdownRequested {
        self.state.home.signal.shutdown_requested()
    }

    /// Whether the server is shutting down; one atomic load.
    pub fn is_shutting_down(&self) -> bool {
        self.state.home.signal.is_shutting_down()
    }

    /// Spawns `future` as a task of this connection, a *sub-task*, and
    /// returns its `JoinHandle`: await it for the task's output, or abort
    /// it.
    ///
    /// Unlike a task from `tokio::spawn`, which escapes every limit and
    /// outlives [`Server::run`](crate::Server::run), a sub-task is part of
    /// the connection:
    ///
    /// - The connection ends when its handler *and* all its sub-tasks have
    ///   ended. Until then it keeps its place under
    ///   [`Builder::max_connections`](crate::Builder::max_connections) and
    ///   the per-address limit, counts as active, and the drain at shutdown
    ///   waits for it. So a handler may return and leave the rest of the
    ///   connection to a sub-task.
    /// - Whatever ends the connection early aborts its sub-tasks with its
    ///   handler: a timeout (idle, first read, maximum age, a full server
    ///   taking places back), the drain deadline, and dropping the future of
    ///   `Server::run`. A sub-task spawned once the connection has ended, or
    ///   while the server is ending it, never starts: its handle resolves at
    ///   once to a cancelled `JoinError`.
    /// - A sub-task's panic is caught, logged at `error` with the
    ///   connection's id and peer, and counted: the handle's `JoinError`
    ///   says it panicked (`is_panic`), and the handler goes on.
    ///
    /// The connection is still counted once, in one outcome: `panicked` if
    /// its handler or any sub-task panicked; else `aborted` (`timed_out`,
    /// for a timeout) if the server ended it while a part still ran; else
    /// its handler's outcome. A sub-task that the handler aborts through its
    /// handle changes nothing.
    ///
    /// The sub-task runs in the span of the code that spawns it: from the
    /// handler, the connection's `conn` span. Dropping the handle detaches
    /// the task, which stays the connection's. To move the connection itself
    /// into a sub-task, spawn through a [`spawner`](Connection::spawner);
    /// either half of [`into_split`](Connection::into_split) spawns too.
    ///
    /// Without a server (a [`testing`](crate::testing) connection) a
    /// sub-task is an ordinary task whose panic is caught and logged.
    ///
    /// A connection that never spawns pays nothing for this but a word in
    /// the server's record of it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    ///
    /// # Examples
    ///
    /// A writer task fed by a channel, spawned from the read half, which
    /// stays with the handler; the handler sends a line per chunk read, and
    /// at the end of input waits for the writer to send the rest:
    ///
    /// ```
    /// use switchboard::{handler_fn, BoxError, Connection};
    /// use tokio::io::AsyncWriteExt;
    /// use tokio::sync::mpsc;
    ///
    /// let sizes = handler_fn(|conn: Connection| async move {
    ///     let (mut read, mut write) = conn.into_split();
    ///     let (lines, mut to_send) = mpsc::channel::<String>(16);
    ///     let writer = read.spawn(async move {
    ///         while let Some(line) = to_send.recv().await {
    ///             write.write_all(line.as_bytes()).await?;
    ///         }
    ///         write.shutdown().await // the peer reads EOF
    ///     });
    ///     loop {
    ///         let chunk = read.read_chunk(4096).await?;
    ///         if chunk.is_empty() {
    ///             break; // the peer closed its side
    ///         }
    ///         if lines.send(format!("{} bytes\n", chunk.len())).await.is_err() {
    ///             break; // the writer failed: its error is below
    ///         }
    ///     }
    ///     drop(lines); // the writer ends once it has sent the rest
    ///     writer.await??;
    ///     Ok::<_, BoxError>(())
    /// });
    /// # let _ = sizes;
    /// ```
    ///
    /// Work off the handler's path, its result awaited through the handle:
    ///
    /// ```
    /// use switchboard::{handler_fn, BoxError, Connection};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let answer = handler_fn(|mut conn: Connection| async move {
    ///     let computed = conn.spawn(async { 6 * 7 });
    ///     let answer = computed.await?;
    ///     conn.write_all(format!("{answer}\n").as_bytes()).await?;
    ///     Ok::<_, BoxError>(())
    /// });
    /// # let _ = answer;
    /// ```
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        subtask::spawn(&self.state, future)
    }

    /// A [`Spawner`] of this connection's sub-tasks (see
    /// [`spawn`](Connection::spawn)): cloneable and `'static`, so that the
    /// connection itself can move into a sub-task it spawns, and a sub-task
    /// can spawn more.
    pub fn spawner(&self) -> Spawner {
        Spawner::new(Arc::clone(&self.state))
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.state.id)
            .field("transport", &self.transport())
            .field("peer", &self.peer_addr())
            .field("listener", &self.state.home.addr)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_read(cx, buf));
        if buf.filled().len() > before {
            this.state.read();
        }
        this.state.waiting(poll.is_pending());
        poll
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_write(cx, buf));
        wrote(&this.state, &poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_write_vectored(cx, bufs));
        wrote(&this.state, &poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        with_stream!(&self.stream, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_flush(cx));
        this.state.waiting(poll.is_pending());
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_shutdown(cx));
        this.state.waiting(poll.is_pending());
        poll
    }
}

/// What a [`Connection`] runs over, from [`Connection::transport`].
///
/// `Display` writes the lowercase name (`tcp`, `unix`, `tls`, `memory`), as
/// [`as_str`](Transport::as_str) returns it. More transports may come, so a
/// `match` needs a catch-all arm.
///
/// # Examples
///
/// ```
/// use switchboard::{handler_fn, Connection, Transport};
/// use tokio::io::AsyncWriteExt;
///
/// let handler = handler_fn(|mut conn: Connection| async move {
///     if conn.transport() == Transport::Tcp {
///         conn.write_all(b"consider TLS\n").await?;
///     }
///     tracing::debug!(transport = %conn.transport(), "served");
///     Ok::<_, std::io::Error>(())
/// });
/// # let _ = handler;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// A Unix domain socket (Unix only).
    Unix,
    /// TLS over TCP, on a [TLS listener](crate::Listen) (feature `tls`).
    Tls,
    /// An in-memory pipe: a [`testing::TestConnection`](crate::testing::TestConnection).
    Memory,
}

impl Transport {
    /// The lowercase name: `"tcp"`, `"unix"`, `"tls"` or `"memory"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
            Transport::Tls => "tls",
            Transport::Memory => "memory",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: honours a width, for aligned log columns.
        f.pad(self.as_str())
    }
}

/// The most bytes one [`Connection::read_chunk`] call reads, whatever its
/// `max`: the size of the per-thread buffer it reads into.
pub const READ_CHUNK_MAX: usize = 64 * 1024;

thread_local! {
    /// What `read_chunk` reads into, made at a thread's first read. Zeroed
    /// once (this crate has no `unsafe` to read into uninitialised memory),
    /// then reused by every read on the thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK_MAX].into_boxed_slice());
}

/// The future of [`Connection::read_chunk`] (and of
/// [`OwnedReadHalf::read_chunk`], with `R` the read half): the bytes read,
/// empty at EOF.
///
/// Two words long, so that a connection waiting in it costs almost nothing:
/// the waker is stored in the socket's own registration, and no buffer is
/// held while waiting.
#[must_use = "futures do nothing unless polled"]
pub struct ReadChunk<'a, R = Connection> {
    conn: &'a mut R,
    max: usize,
}

impl<R: AsyncRead + Unpin> Future for ReadChunk<'_, R> {
    type Output = io::Result<BytesMut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let max = this.max.min(READ_CHUNK_MAX);
        let mut conn = Pin::new(&mut *this.conn);
        let mut read = |scratch: &mut [u8]| {
            let mut buf = ReadBuf::new(&mut scratch[..max]);
            match conn.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(BytesMut::from(buf.filled()))),
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        };
        // The thread's buffer, unless it is in use (a stream whose read
        // reads another connection's chunk) or gone (the thread is ending):
        // then a buffer for this read only.
        let polled = SCRATCH.try_with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            Some(read(&mut scratch))
        });
        match polled {
            Ok(Some(polled)) => polled,
            _ => read(&mut vec![0; max]),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for ReadChunk<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("reader", &self.conn)
            .field("max", &self.max)
            .finish()
    }
}

/// Records a write that moved bytes, and whether the write waits for the
/// peer.
fn wrote(state: &ConnState, poll: &Poll<io::Result<usize>>) {
    if matches!(poll, Poll::Ready(Ok(n)) if *n > 0) {
        state.wrote();
    }
    state.waiting(poll.is_pending());
}
