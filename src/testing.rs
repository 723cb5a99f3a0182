//! Testing handlers without sockets.
//!
//! [`TestConnection`] builds a [`Connection`] over an in-memory pipe
//! (`tokio::io::duplex`), with the peer address, id and shutdown trigger a
//! test chooses. A test plays the client on the other end of the pipe: it is
//! fast (no ports, no kernel), deterministic, and works under a paused clock
//! (`#[tokio::test(start_paused = true)]`).
//!
//! # Examples
//!
//! ```
//! use switchboard::testing::TestConnection;
//! use switchboard::{handler_fn, Connection};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::BoxError> {
//! let greeter = handler_fn(|mut conn: Connection| async move {
//!     let peer = conn.peer_addr();
//!     conn.write_all(format!("hello {peer}\n").as_bytes()).await
//! });
//!
//! let mut served = TestConnection::new()
//!     .peer_addr("192.0.2.7:5555".parse::<std::net::SocketAddr>()?)
//!     .serve(greeter);
//! let mut greeting = String::new();
//! served.client.read_to_string(&mut greeting).await?;
//! assert_eq!(greeting, "hello 192.0.2.7:5555\n");
//! served.task.await??; // the handler's own result
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::conn::Stream;
use crate::conn::record::ConnState;
use crate::shutdown::Fired;
use crate::{Addr, BoxError, Connection, Handler, ShutdownHandle, ShutdownSignal};

/// Builds an in-memory [`Connection`] for a test. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use = "a TestConnection does nothing until `pair` or `serve` is called"]
pub struct TestConnection {
    peer: Addr,
    local: Addr,
    id: u64,
    buffer: usize,
}

/// A handler running on a test connection, made by [`TestConnection::serve`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Served {
    /// The client's end of the pipe: write requests, read responses.
    pub client: DuplexStream,
    /// Fires the connection's shutdown signal, as a server's shutdown would.
    pub shutdown: ShutdownHandle,
    /// The handler's task: its result, or the panic as a `JoinError`.
    pub task: JoinHandle<Result<(), BoxError>>,
}

impl TestConnection {
    /// A connection from `127.0.0.1:49152` to `127.0.0.1:8080`, id 1, over a
    /// pipe that buffers 64 KiB each way.
    pub fn new() -> Self {
        TestConnection {
            peer: Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 49152))),
            local: Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080))),
            id: 1,
            buffer: 64 * 1024,
        }
    }

    /// The address the connection reports as its peer.
    pub fn peer_addr(mut self, addr: impl Into<Addr>) -> Self {
        self.peer = addr.into();
        self
    }

    /// The address the connection reports as its local end.
    pub fn local_addr(mut self, addr: impl Into<Addr>) -> Self {
        self.local = addr.into();
        self
    }

    /// The connection's id.
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// How many bytes the pipe holds each way before a write waits for the
    /// other end to read: make it small to test backpressure.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer = bytes;
        self
    }

    /// The connection, the client's end of the pipe, and a handle that
    /// fires the connection's shutdown signal.
    pub fn pair(self) -> (Connection, DuplexStream, ShutdownHandle) {
        let (server_end, client_end) = tokio::io::duplex(self.buffer);
        let fired = Arc::new(Fired::default());
        let state = ConnState::detached(
            self.id,
            self.peer,
            self.local,
            ShutdownSignal::new(Arc::clone(&fired)),
        );
        let conn = Connection::new(Stream::Duplex(server_end), Arc::new(state));
        (conn, client_end, ShutdownHandle::new(fired))
    }

    /// Runs `handler` on the connection in a task of its own.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn serve<H: Handler>(self, handler: H) -> Served {
        let (conn, client, shutdown) = self.pair();
        let task = tokio::spawn(async move { H::handle(&handler, conn).await.map_err(Into::into) });
        Served {
            client,
            shutdown,
            task,
        }
    }
}

impl Default for TestConnection {
    fn default() -> Self {
        TestConnection::new()
    }
}
