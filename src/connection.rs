//! `Connection`: one accepted stream and everything known about it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, Interest, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use crate::proxy::ProxyHeader;
use crate::timeout::Activity;
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
    // Crate-visible for the preamble (PROXY header, TLS), which sets the
    // peer and wraps the stream before the handler sees the connection.
    pub(crate) stream: Stream,
    id: u64,
    pub(crate) peer: Addr,
    /// The listener's address, shared by its connections. For a listener
    /// on a wildcard address the connection's real local address differs
    /// and is asked of the socket on demand, so the common case costs no
    /// system call.
    listener_addr: Arc<Addr>,
    shutdown: ShutdownSignal,
    /// Read and write times, for the server's timeouts.
    activity: Activity,
    /// What the PROXY protocol header said, when the listener reads one.
    /// Boxed: most connections have none and stay one pointer smaller.
    pub(crate) proxy: Option<Box<ProxyInfo>>,
    /// What the TLS handshake negotiated, on a TLS listener.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Box<crate::TlsInfo>>,
}

/// A PROXY protocol header and the balancer that sent it.
#[derive(Debug)]
pub(crate) struct ProxyInfo {
    pub(crate) header: ProxyHeader,
    pub(crate) balancer: Addr,
}

/// The transports a connection can run over. Crate-private so that adding
/// one changes no handler.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    /// An in-memory pipe, for testing handlers without sockets.
    Duplex(DuplexStream),
    /// TLS over TCP. Boxed: the TLS state is over a kilobyte, a TCP stream
    /// a few words.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Polls for readiness, then reads at most `$max` bytes into a buffer made
/// only then; a socket stream's `read_chunk`.
///
/// A read shorter than `$max` shows the socket's receive queue is drained, so
/// the readiness it was read under is cleared (as tokio's own `poll_read`
/// does): the next call then waits for new bytes instead of allocating a
/// buffer only to meet `WouldBlock`. The readiness is cleared with the event
/// captured *before* the read, so bytes that arrived meanwhile (a newer
/// event) are not missed.
macro_rules! read_when_ready {
    ($stream:expr, $cx:expr, $max:expr) => {
        loop {
            match $stream.poll_read_ready($cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => break Poll::Ready(Err(err)),
                Poll::Pending => break Poll::Pending,
            }
            let mut buf = BytesMut::with_capacity($max);
            let mut read = 0;
            let attempt = $stream.try_io(Interest::READABLE, || {
                read = $stream.try_read_buf(&mut buf)?;
                // Not on Windows, where (as tokio's own `poll_read` knows) the
                // selector re-arms only after a real `WouldBlock`.
                if cfg!(not(windows)) && read > 0 && read < $max {
                    // Not an error: the signal for `try_io` to clear readiness.
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match attempt {
                Ok(()) => break Poll::Ready(Ok(buf)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if read > 0 {
                        break Poll::Ready(Ok(buf));
                    }
                    // Readiness was spurious and is cleared now: polling
                    // again registers the waker.
                }
                Err(err) => break Poll::Ready(Err(err)),
            }
        }
    };
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
    pub(crate) fn new(
        stream: Stream,
        id: u64,
        peer: Addr,
        listener_addr: Arc<Addr>,
        shutdown: ShutdownSignal,
        activity: Activity,
    ) -> Self {
        Connection {
            stream,
            id,
            peer,
            listener_addr,
            shutdown,
            activity,
            proxy: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// What the TLS handshake negotiated (ALPN protocol, SNI server name,
    /// version, cipher suite), on a [TLS listener](crate::Listen::tls).
    #[cfg(feature = "tls")]
    pub fn tls_info(&self) -> Option<&crate::TlsInfo> {
        self.tls.as_deref()
    }

    /// The connection's number, unique within its server and increasing in
    /// the order connections were accepted (the first is 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address of the remote end: the client. Behind a load balancer
    /// that sends a PROXY protocol header (see
    /// [`Listen::proxy_protocol`](crate::Listen::proxy_protocol)), the client
    /// the header names; the balancer's own address is then
    /// [`balancer_addr`](Connection::balancer_addr).
    pub fn peer_addr(&self) -> Addr {
        self.peer.clone()
    }

    /// The address of the load balancer that sent a PROXY protocol header
    /// for this connection, if one did.
    pub fn balancer_addr(&self) -> Option<&Addr> {
        self.proxy.as_ref().map(|proxy| &proxy.balancer)
    }

    /// The PROXY protocol header the load balancer sent, if one did: the
    /// addresses, and for version 2 the TLVs (ALPN, authority, TLS details,
    /// unique id, ...), read-only.
    pub fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.proxy.as_ref().map(|proxy| &proxy.header)
    }

    /// The address of this end: the listener's address, or for a listener on
    /// a wildcard address (`0.0.0.0`, `::`) the address the client reached.
    pub fn local_addr(&self) -> Addr {
        match &*self.listener_addr {
            Addr::Tcp(listener) if listener.ip().is_unspecified() => {
                match self.as_tcp().map(TcpStream::local_addr) {
                    Some(Ok(addr)) => Addr::Tcp(addr),
                    _ => (*self.listener_addr).clone(),
                }
            }
            listener => listener.clone(),
        }
    }

    /// The transport's name: `"tcp"`, `"unix"`, `"tls"`, or `"memory"` for
    /// a [`testing`](crate::testing) connection.
    pub fn transport(&self) -> &'static str {
        match self.stream {
            Stream::Tcp(_) => "tcp",
            #[cfg(unix)]
            Stream::Unix(_) => "unix",
            Stream::Duplex(_) => "memory",
            #[cfg(feature = "tls")]
            Stream::Tls(_) => "tls",
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
            Stream::Unix(stream) => Some(stream),
            _ => None,
        }
    }

    /// Waits until bytes can be read, then reads at most `max` of them into
    /// a buffer allocated only then. An empty buffer means the peer closed
    /// its side (EOF).
    ///
    /// A connection that waits with a buffer in hand keeps that buffer's
    /// memory for as long as the peer is silent: 8 KiB per idle connection is
    /// typical of hand-written loops. Waiting here costs no buffer at all, so
    /// ten thousand idle connections cost ten thousand times a few hundred
    /// bytes rather than ten thousand buffers.
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
        ReadChunk {
            conn: self,
            max,
            buf: None,
        }
    }

    /// The server's shutdown signal; clone it into tasks the handler spawns.
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.shutdown
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
        self.shutdown.shutdown_requested()
    }

    /// Whether the server is shutting down; one atomic load.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_shutting_down()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("transport", &self.transport())
            .field("peer", &self.peer)
            .field("listener", &self.listener_addr)
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
            this.activity.read();
        }
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
        wrote(&this.activity, &poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = with_stream!(&mut this.stream, s => Pin::new(s).poll_write_vectored(cx, bufs));
        wrote(&this.activity, &poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        with_stream!(&self.stream, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(&mut self.get_mut().stream, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(&mut self.get_mut().stream, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The future of [`Connection::read_chunk`]: the bytes read, empty at EOF.
///
/// A few words long, so that a connection waiting in it costs almost
/// nothing: on a socket the waker is stored in the socket's own
/// registration, and the buffer is allocated only once bytes are ready.
#[must_use = "futures do nothing unless polled"]
pub struct ReadChunk<'a> {
    conn: &'a mut Connection,
    max: usize,
    /// For streams without readiness (in-memory pipes, TLS, which may hold
    /// decrypted bytes while the socket is not readable): the buffer read
    /// into, allocated at the first poll.
    buf: Option<BytesMut>,
}

impl Future for ReadChunk<'_> {
    type Output = io::Result<BytesMut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let max = this.max;
        let polled = match &mut this.conn.stream {
            Stream::Tcp(stream) => read_when_ready!(stream, cx, max),
            #[cfg(unix)]
            Stream::Unix(stream) => read_when_ready!(stream, cx, max),
            Stream::Duplex(stream) => poll_read_into(Pin::new(stream), cx, &mut this.buf, max),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => poll_read_into(Pin::new(stream), cx, &mut this.buf, max),
        };
        if let Poll::Ready(Ok(buf)) = &polled {
            if !buf.is_empty() {
                this.conn.activity.read();
            }
        }
        polled
    }
}

impl fmt::Debug for ReadChunk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("connection", &self.conn.id)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// Reads at most `max` bytes into `slot`'s buffer (allocated on first use)
/// and hands the buffer over when the read completes.
fn poll_read_into(
    stream: Pin<&mut (impl AsyncRead + ?Sized)>,
    cx: &mut Context<'_>,
    slot: &mut Option<BytesMut>,
    max: usize,
) -> Poll<io::Result<BytesMut>> {
    // Zeroed rather than uninitialised: this crate has no `unsafe`, and
    // these transports are tests and TLS, where zeroing is the least cost.
    let buf = slot.get_or_insert_with(|| BytesMut::zeroed(max));
    let mut read_buf = ReadBuf::new(&mut buf[..]);
    match stream.poll_read(cx, &mut read_buf) {
        Poll::Ready(Ok(())) => {
            let filled = read_buf.filled().len();
            let mut buf = slot.take().unwrap_or_default();
            buf.truncate(filled);
            Poll::Ready(Ok(buf))
        }
        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        Poll::Pending => Poll::Pending,
    }
}

/// Records a write that moved bytes.
fn wrote(activity: &Activity, poll: &Poll<io::Result<usize>>) {
    if matches!(poll, Poll::Ready(Ok(n)) if *n > 0) {
        activity.wrote();
    }
}
