//! `Connection::into_split`: a connection's read and write halves, owned, so
//! that two tasks can use them at once (a reader and a writer, as in chat,
//! proxy and pub-sub servers).
//!
//! TCP and Unix streams split without a lock (tokio's `into_split`: each
//! half holds the socket and does its own system calls). A TLS stream has
//! one state for both directions, and the in-memory pipe of
//! [`testing`](crate::testing) is one object: those are split by
//! `tokio::io::split`, which takes a lock around each poll of either half.
//!
//! The timeouts keep working as for the whole connection. The record has
//! one "waiting for the peer" flag (see `record.rs`); the halves share a
//! small lock that keeps, for each half, whether its last read or write
//! waits for the peer, and store into the record whether either does. It is
//! taken only when a half's own state changes, so a busy half that keeps
//! completing its reads or writes never takes it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::tcp;
#[cfg(unix)]
use tokio::net::unix;
use tokio::task::JoinHandle;

use super::{Connection, ReadChunk, Spawner, Stream, subtask};
use crate::conn::record::ConnState;
use crate::{Addr, ShutdownRequested, ShutdownSignal};

impl Connection {
    /// Splits the connection into a read half and a write half, each
    /// `Send + 'static`, for two tasks to use at once: a reader and a
    /// writer fed by a channel, or both directions of a proxy.
    ///
    /// Each half knows the connection's facts ([`id`](OwnedReadHalf::id),
    /// [`peer_addr`](OwnedReadHalf::peer_addr), ...) and can watch the
    /// server's shutdown ([`shutdown_requested`](OwnedReadHalf::shutdown_requested)).
    /// The read half has [`read_chunk`](OwnedReadHalf::read_chunk); the
    /// write half's `shutdown` (from `AsyncWriteExt`) closes the write side
    /// only (a TCP FIN, and a TLS `close_notify` first under TLS), and the
    /// read half keeps reading what the peer still sends. Dropping a half
    /// closes nothing by itself: the connection closes when both are dropped
    /// (unlike tokio's TCP write half, which shuts down when dropped: here a
    /// handler behaves the same on every transport). [`OwnedReadHalf::reunite`]
    /// puts them back together.
    ///
    /// TCP and Unix connections split without a lock. A TLS connection
    /// (whose one TLS state serves both directions) and a
    /// [`testing`](crate::testing) connection are split by
    /// `tokio::io::split`, which takes a lock around each read and write:
    /// uncontended unless both halves are polled at the same moment.
    ///
    /// # Timeouts
    ///
    /// The halves keep the connection's timeouts as the whole connection
    /// did: every byte read or written is activity, and the connection is
    /// idle while one of its halves waits on the peer (a read with nothing
    /// to read, a write the peer does not take) and no byte moves either
    /// way. So:
    ///
    /// - a connection whose write half keeps writing is never idle, even
    ///   while its read half waits on a silent peer;
    /// - a silent peer is cut at the idle timeout even while the write
    ///   half's task waits for something to send (a chat client in a quiet
    ///   room), as a `select!` over the whole connection's read and a
    ///   channel would be; write something to keep it open;
    /// - while neither half waits on the peer (both tasks busy elsewhere,
    ///   or the read half has seen the end of input and the write half is
    ///   not blocked), the connection is busy, never idle.
    ///
    /// # Tasks that hold a half
    ///
    /// Spawn the task that takes a half with the other half's
    /// [`spawn`](OwnedReadHalf::spawn) (or [`Connection::spawn`] before the
    /// split, through a [`Spawner`]): it is then a part of the connection,
    /// which ends once the handler and it have ended, and which a timeout or
    /// the drain deadline ends by aborting both. A half moved into a task of
    /// `tokio::spawn` keeps the connection open until that task ends, past
    /// the timeout and past [`Server::run`](crate::Server::run), and the
    /// server knows nothing of it. Keeping both halves in the handler's task
    /// (`tokio::join!`) works too, as the `proxy` example does.
    ///
    /// # Examples
    ///
    /// A reader that hands each chunk, upper-cased, to a writer task over a
    /// channel; at the end of input the writer sends what is left and
    /// half-closes:
    ///
    /// ```
    /// use switchboard::{handler_fn, BoxError, Connection};
    /// use tokio::io::AsyncWriteExt;
    /// use tokio::sync::mpsc;
    ///
    /// let shout = handler_fn(|conn: Connection| async move {
    ///     let (mut read, mut write) = conn.into_split();
    ///     let (chunks, mut to_send) = mpsc::channel::<bytes::BytesMut>(16);
    ///     // A part of the connection: aborted with it, waited for by the drain.
    ///     let writer = read.spawn(async move {
    ///         while let Some(chunk) = to_send.recv().await {
    ///             write.write_all(&chunk).await?;
    ///         }
    ///         write.shutdown().await // the peer reads EOF
    ///     });
    ///     let mut shutdown = read.shutdown_requested();
    ///     loop {
    ///         let mut chunk = tokio::select! {
    ///             chunk = read.read_chunk(4096) => chunk?,
    ///             () = &mut shutdown => break,
    ///         };
    ///         if chunk.is_empty() {
    ///             break; // the peer closed its side
    ///         }
    ///         chunk.make_ascii_uppercase();
    ///         if chunks.send(chunk).await.is_err() {
    ///             break; // the writer failed: its error is below
    ///         }
    ///     }
    ///     drop(chunks); // the writer ends once it has sent the rest
    ///     writer.await??;
    ///     Ok::<_, BoxError>(())
    /// });
    /// # let _ = shout;
    /// ```
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let local = self.local_addr();
        let Connection { stream, state } = self;
        // Neither half waits yet: the handler is busy splitting.
        state.waiting(false);
        let shared = Arc::new(Shared {
            state,
            local,
            waiting: Mutex::new(0),
        });
        let (read, write) = match stream {
            Stream::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (ReadStream::Tcp(read), WriteStream::Tcp(write))
            }
            #[cfg(unix)]
            Stream::Unix(stream) => {
                let (read, write) = stream.into_split();
                (ReadStream::Unix(read), WriteStream::Unix(write))
            }
            Stream::Duplex(stream) => {
                let (read, write) = tokio::io::split(stream);
                (ReadStream::Duplex(read), WriteStream::Duplex(write))
            }
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => {
                let (read, write) = tokio::io::split(stream);
                (ReadStream::Tls(read), WriteStream::Tls(write))
            }
        };
        let read = OwnedReadHalf {
            stream: read,
            half: Half::new(Arc::clone(&shared), READ),
        };
        let write = OwnedWriteHalf {
            stream: Some(write),
            half: Half::new(shared, WRITE),
        };
        (read, write)
    }
}

/// The read half of a [`Connection`], made by [`Connection::into_split`]:
/// `AsyncRead`, [`read_chunk`](OwnedReadHalf::read_chunk), and the
/// connection's facts and shutdown signal.
pub struct OwnedReadHalf {
    stream: ReadStream,
    half: Half,
}

/// The write half of a [`Connection`], made by [`Connection::into_split`]:
/// `AsyncWrite`, whose `poll_shutdown` closes the write side only (the read
/// half keeps reading), and the connection's facts and shutdown signal.
///
/// Dropping it closes nothing: the connection closes when both halves are
/// dropped. Shut it down to tell the peer that nothing more comes.
pub struct OwnedWriteHalf {
    /// `None` only once `Drop` or `reunite` has taken it.
    stream: Option<WriteStream>,
    half: Half,
}

/// The halves given to [`OwnedReadHalf::reunite`] came from two different
/// connections; both are given back.
pub struct ReuniteError(pub OwnedReadHalf, pub OwnedWriteHalf);

impl OwnedReadHalf {
    /// Reads at most `max` bytes, as [`Connection::read_chunk`] does (and
    /// with its cancel safety): an empty buffer means the peer closed its
    /// side.
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
    pub fn read_chunk(&mut self, max: usize) -> ReadChunk<'_, OwnedReadHalf> {
        assert!(max > 0, "read_chunk(0) could never tell a read from EOF");
        ReadChunk { conn: self, max }
    }

    /// Puts the halves back together into the connection they came from.
    ///
    /// # Errors
    ///
    /// [`ReuniteError`], with both halves, if they came from two different
    /// connections.
    pub fn reunite(self, mut write: OwnedWriteHalf) -> Result<Connection, ReuniteError> {
        if !Arc::ptr_eq(&self.half.shared, &write.half.shared) {
            return Err(ReuniteError(self, write));
        }
        let state = Arc::clone(&self.half.shared.state);
        let written = write
            .stream
            .take()
            .expect("a write half's stream is taken only by its drop and by reunite");
        let stream = match (self.stream, written) {
            (ReadStream::Tcp(read), WriteStream::Tcp(write)) => Stream::Tcp(
                read.reunite(write)
                    .expect("halves of one connection are of one socket"),
            ),
            #[cfg(unix)]
            (ReadStream::Unix(read), WriteStream::Unix(write)) => Stream::Unix(Box::new(
                read.reunite(write)
                    .expect("halves of one connection are of one socket"),
            )),
            (ReadStream::Duplex(read), WriteStream::Duplex(write)) => {
                Stream::Duplex(read.unsplit(write))
            }
            #[cfg(feature = "tls")]
            (ReadStream::Tls(read), WriteStream::Tls(write)) => Stream::Tls(read.unsplit(write)),
            #[allow(unreachable_patterns)] // with TCP and memory only, every pair is listed
            _ => unreachable!("the halves of one connection are of one transport"),
        };
        // The halves' drops (here) clear their waiting marks.
        Ok(Connection::new(stream, state))
    }

    /// The connection's number (see [`Connection::id`]).
    pub fn id(&self) -> u64 {
        self.half.shared.state.id
    }

    /// The client's address (see [`Connection::peer_addr`]).
    pub fn peer_addr(&self) -> Addr {
        self.half.shared.state.client_addr().clone()
    }

    /// This end's address (see [`Connection::local_addr`]).
    pub fn local_addr(&self) -> Addr {
        self.half.shared.local.clone()
    }

    /// The server's shutdown signal; clone it into tasks the handler spawns.
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.half.shared.state.home.signal
    }

    /// Completes when the server begins shutting down (see
    /// [`Connection::shutdown_requested`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has begun.
    pub fn shutdown_requested(&self) -> ShutdownRequested {
        self.shutdown_signal().shutdown_requested()
    }

    /// Whether the server is shutting down; one atomic load.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_signal().is_shutting_down()
    }

    /// Spawns `future` as a task of the connection, as
    /// [`Connection::spawn`] does: the connection ends once its handler and
    /// all such tasks have ended, and whatever ends it early aborts them.
    /// Moving the other half into it is the usual way to have a reader and
    /// a writer at once.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        subtask::spawn(&self.half.shared.state, future)
    }

    /// A [`Spawner`] of the connection's sub-tasks (see
    /// [`Connection::spawner`]).
    pub fn spawner(&self) -> Spawner {
        Spawner::new(Arc::clone(&self.half.shared.state))
    }
}

impl OwnedWriteHalf {
    /// The connection's number (see [`Connection::id`]).
    pub fn id(&self) -> u64 {
        self.half.shared.state.id
    }

    /// The client's address (see [`Connection::peer_addr`]).
    pub fn peer_addr(&self) -> Addr {
        self.half.shared.state.client_addr().clone()
    }

    /// This end's address (see [`Connection::local_addr`]).
    pub fn local_addr(&self) -> Addr {
        self.half.shared.local.clone()
    }

    /// The server's shutdown signal; clone it into tasks the handler spawns.
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.half.shared.state.home.signal
    }

    /// Completes when the server begins shutting down (see
    /// [`Connection::shutdown_requested`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has begun.
    pub fn shutdown_requested(&self) -> ShutdownRequested {
        self.shutdown_signal().shutdown_requested()
    }

    /// Whether the server is shutting down; one atomic load.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_signal().is_shutting_down()
    }

    /// Spawns `future` as a task of the connection, as
    /// [`Connection::spawn`] does: the connection ends once its handler and
    /// all such tasks have ended, and whatever ends it early aborts them.
    /// Moving the other half into it is the usual way to have a reader and
    /// a writer at once.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        subtask::spawn(&self.half.shared.state, future)
    }

    /// A [`Spawner`] of the connection's sub-tasks (see
    /// [`Connection::spawner`]).
    pub fn spawner(&self) -> Spawner {
        Spawner::new(Arc::clone(&self.half.shared.state))
    }

    fn stream(&mut self) -> Pin<&mut WriteStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("a write half's stream is taken only by its drop and by reunite"),
        )
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.stream {
            ReadStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            ReadStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReadStream::Duplex(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ReadStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.half.shared.state.read();
        }
        this.half.waiting(poll.is_pending());
        poll
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.stream().poll_write(cx, buf);
        this.half.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.stream().poll_write_vectored(cx, bufs);
        this.half.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| match s {
            WriteStream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            WriteStream::Unix(s) => s.is_write_vectored(),
            WriteStream::Duplex(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            WriteStream::Tls(s) => s.is_write_vectored(),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = this.stream().poll_flush(cx);
        this.half.waiting(poll.is_pending());
        poll
    }

    /// Closes the write side only: under TLS a `close_notify` first, then
    /// the TCP FIN (or the Unix socket's write shutdown); the peer reads
    /// EOF, and the read half keeps reading.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = this.stream().poll_shutdown(cx);
        this.half.waiting(poll.is_pending());
        poll
    }
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        // tokio's TCP and Unix write halves shut the write side down when
        // dropped; TLS and memory ones (`tokio::io::split`) cannot without
        // an await. Forgotten instead: on every transport, dropping a half
        // closes nothing until the other is dropped too.
        match self.stream.take() {
            Some(WriteStream::Tcp(write)) => write.forget(),
            #[cfg(unix)]
            Some(WriteStream::Unix(write)) => write.forget(),
            _ => {}
        }
    }
}

impl fmt::Debug for OwnedReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedReadHalf")
            .field("id", &self.id())
            .field("transport", &self.stream.transport())
            .field("peer", &self.peer_addr())
            .field("waiting", &self.half.waiting)
            .finish()
    }
}

impl fmt::Debug for OwnedWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedWriteHalf")
            .field("id", &self.id())
            .field(
                "transport",
                &self.stream.as_ref().map(WriteStream::transport),
            )
            .field("peer", &self.peer_addr())
            .field("waiting", &self.half.waiting)
            .finish()
    }
}

impl fmt::Debug for ReuniteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReuniteError")
            .field(&self.0)
            .field(&self.1)
            .finish()
    }
}

impl fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tried to reunite halves of two connections ({} and {})",
            self.0.id(),
            self.1.id()
        )
    }
}

impl std::error::Error for ReuniteError {}

/// The read side of each transport.
enum ReadStream {
    Tcp(tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(unix::OwnedReadHalf),
    Duplex(tokio::io::ReadHalf<DuplexStream>),
    #[cfg(feature = "tls")]
    Tls(tokio::io::ReadHalf<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>),
}

/// The write side of each transport.
enum WriteStream {
    Tcp(tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(unix::OwnedWriteHalf),
    Duplex(tokio::io::WriteHalf<DuplexStream>),
    #[cfg(feature = "tls")]
    Tls(tokio::io::WriteHalf<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>),
}

impl ReadStream {
    fn transport(&self) -> &'static str {
        match self {
            ReadStream::Tcp(_) => "tcp",
            #[cfg(unix)]
            ReadStream::Unix(_) => "unix",
            ReadStream::Duplex(_) => "memory",
            #[cfg(feature = "tls")]
            ReadStream::Tls(_) => "tls",
        }
    }
}

impl WriteStream {
    fn transport(&self) -> &'static str {
        match self {
            WriteStream::Tcp(_) => "tcp",
            #[cfg(unix)]
            WriteStream::Unix(_) => "unix",
            WriteStream::Duplex(_) => "memory",
            #[cfg(feature = "tls")]
            WriteStream::Tls(_) => "tls",
        }
    }
}

impl AsyncWrite for WriteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            WriteStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            WriteStream::Duplex(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            WriteStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            WriteStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteStream::Duplex(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            WriteStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            WriteStream::Unix(s) => Pin::new(s).poll_flush(cx),
            WriteStream::Duplex(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            WriteStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            WriteStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            WriteStream::Duplex(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            WriteStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the two halves of a connection share.
struct Shared {
    state: Arc<ConnState>,
    /// The connection's local address, found at the split: under a
    /// wildcard listener it is asked of the socket, which under TLS the
    /// read half cannot reach.
    local: Addr,
    /// Which halves wait for the peer ([`READ`], [`WRITE`] bits). The
    /// record's flag is stored under this lock, so that two halves changing
    /// at once cannot leave it saying what neither says.
    waiting: Mutex<u8>,
}

const READ: u8 = 1;
const WRITE: u8 = 2;

/// One half's part of the shared state.
struct Half {
    shared: Arc<Shared>,
    /// [`READ`] or [`WRITE`].
    bit: u8,
    /// Whether this half's last read or write waits for the peer, as last
    /// told to `shared`: kept here so that a poll that changes nothing
    /// takes no lock.
    waiting: bool,
}

impl Half {
    fn new(shared: Arc<Shared>, bit: u8) -> Self {
        Half {
            shared,
            bit,
            waiting: false,
        }
    }

    /// Records whether this half now waits for the peer; the connection
    /// waits while either half does.
    fn waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        // A panic cannot leave the bits half-changed (the section is one
        // assignment): a poisoned lock is taken over.
        let mut bits = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if waiting {
            *bits |= self.bit;
        } else {
            *bits &= !self.bit;
        }
        self.shared.state.waiting(*bits != 0);
    }

    /// Records a write that moved bytes, and whether the write waits for
    /// the peer.
    fn wrote(&mut self, poll: &Poll<io::Result<usize>>) {
        if matches!(poll, Poll::Ready(Ok(n)) if *n > 0) {
            self.shared.state.wrote();
        }
        self.waiting(poll.is_pending());
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        // A dropped half waits for nothing.
        self.waiting(false);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::testing::TestConnection;
    use crate::timeout::TimeoutKind;
    use crate::timeout::tests::timeouts;

    /// The halves of an in-memory connection whose pipe holds `buffer`
    /// bytes each way, the client's end, and the record.
    fn split(buffer: usize) -> (OwnedReadHalf, OwnedWriteHalf, DuplexStream, Arc<ConnState>) {
        let (conn, client, _shutdown) = TestConnection::new().buffer_size(buffer).pair();
        let state = Arc::clone(&conn.state);
        let (read, write) = conn.into_split();
        (read, write, client, state)
    }

    fn poll_read(read: &mut OwnedReadHalf) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        Pin::new(read)
            .poll_read(&mut cx, &mut buf)
            .map_ok(|()| buf.filled().len())
    }

    fn poll_write(write: &mut OwnedWriteHalf, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(write).poll_write(&mut cx, bytes)
    }

    #[tokio::test]
    async fn a_writer_that_keeps_writing_keeps_the_connection_while_the_reader_waits() {
        let t = timeouts(100, 0, 0);
        let (mut read, mut write, mut client, state) = split(1024);
        assert!(!state.is_waiting(), "busy at the split");
        assert!(poll_read(&mut read).is_pending(), "the peer is silent");
        assert!(state.is_waiting());
        // A write every 60 ms, seen by the sweeper's ticks: never idle.
        for now in (60..1000).step_by(60) {
            assert!(matches!(poll_write(&mut write, b"x"), Poll::Ready(Ok(1))));
            assert!(state.is_waiting(), "the reader still waits");
            assert_eq!(state.expired(&t, now), None, "wrote, seen at {now}");
        }
        let mut got = [0u8; 16];
        assert_eq!(client.read(&mut got).await.unwrap(), 16);
        // The writer stops: idle from the last tick that saw a write (960).
        assert_eq!(state.expired(&t, 1059), None);
        assert_eq!(state.expired(&t, 1060), Some(TimeoutKind::Idle));
    }

    #[tokio::test]
    async fn a_silent_peer_is_idle_even_after_the_writer_wrote() {
        // What a chat client in a quiet room looks like: the reader waits on
        // the peer, the writer wrote once and now waits on a channel. A
        // single flag set by the last poll would say "busy" after the write
        // and never let the idle timeout cut the connection.
        let t = timeouts(100, 0, 0);
        let (mut read, mut write, _client, state) = split(1024);
        assert!(poll_read(&mut read).is_pending());
        assert!(matches!(poll_write(&mut write, b"hi"), Poll::Ready(Ok(2))));
        assert!(state.is_waiting(), "the reader still waits on the peer");
        assert_eq!(state.expired(&t, 10), None, "wrote, seen at 10");
        assert_eq!(state.expired(&t, 109), None);
        assert_eq!(state.expired(&t, 110), Some(TimeoutKind::Idle));
    }

    #[tokio::test]
    async fn busy_while_neither_half_waits_on_the_peer() {
        let t = timeouts(100, 0, 0);
        let (mut read, mut write, mut client, state) = split(4);
        assert!(poll_read(&mut read).is_pending());
        client.write_all(b"ab").await.unwrap();
        assert!(matches!(poll_read(&mut read), Poll::Ready(Ok(2))));
        assert!(!state.is_waiting(), "the reader has its bytes: busy");
        assert_eq!(state.expired(&t, 1000), None, "busy is never idle");

        // The writer fills the pipe: it waits on the peer, and so does the
        // connection, though the reader does not.
        assert!(matches!(
            poll_write(&mut write, b"12345"),
            Poll::Ready(Ok(4))
        ));
        assert!(!state.is_waiting());
        assert!(poll_write(&mut write, b"5").is_pending());
        assert!(state.is_waiting(), "the writer waits on the peer");
        assert_eq!(state.expired(&t, 1010), None, "wrote, seen at 1010");
        assert_eq!(state.expired(&t, 1109), None);
        assert_eq!(state.expired(&t, 1110), Some(TimeoutKind::Idle));

        // A dropped half waits for nothing.
        drop(write);
        assert!(!state.is_waiting());
        assert!(poll_read(&mut read).is_pending());
        assert!(state.is_waiting());
        drop(read);
        assert!(!state.is_waiting());
    }

    #[tokio::test]
    async fn reunite_gives_back_the_connection_and_refuses_strangers() {
        let (read, write, mut client, _state) = split(1024);
        let (other_read, other_write, _other_client, _) = split(1024);
        let ReuniteError(read, other_write) = read.reunite(other_write).unwrap_err();
        let ReuniteError(other_read, write) = other_read.reunite(write).unwrap_err();
        drop((other_read, other_write));
        let mut conn = read.reunite(write).expect("halves of one connection");
        conn.write_all(b"whole").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"whole");
    }
}
