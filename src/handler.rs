//! The `Handler` trait: what a server does with each connection.
//!
//! # Why two traits
//!
//! Users write a plain `async fn handle`, and a server must be able to store
//! *any* handler, including one chosen at run time as `Arc<dyn Handler>`.
//! Async functions in traits are not dyn-compatible on stable Rust, so:
//!
//! * [`Handler::handle`] is declared as `-> impl Future + Send` with a
//!   `where Self: Sized` bound; implementors write `async fn handle` and any
//!   error type that converts into [`BoxError`]. The bound keeps the method out
//!   of the vtable, which is what makes `dyn Handler` legal.
//! * A sealed supertrait, blanket-implemented for every sized `Handler`, is in
//!   the vtable. The server stores `Arc<dyn Handler>` and, for each
//!   connection, calls the supertrait's `spawn_connection` through it: that
//!   method is generic code for the concrete handler, so the connection's task
//!   holds the handler's own future type, polled without dynamic dispatch.
//!   Futures up to 512 bytes live in the task itself; larger ones get one box
//!   (moving a large future into tokio's task cell costs more in `memcpy`
//!   than an allocation: see `server.rs`).
//!
//! So a handler costs no allocation of its own per connection (or one, for
//! a large future: the price `async-trait` always charges), without a macro
//! on the user's impl and without fixing the error type. A re-exported
//! `async-trait` was rejected because it forces `#[async_trait]` on every impl
//! and one error type on every handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Connection;

/// The error type every handler error is converted into before it is logged.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future the server drives for one connection.
pub(crate) type HandleFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// Serves one connection.
///
/// The server calls [`handle`](Handler::handle) once per accepted connection,
/// in a task of its own. Returning `Ok` counts the connection as completed,
/// returning `Err` logs the error at `warn` in the connection's span and counts
/// it as failed; a panic is caught, logged at `error` and counted. None of them
/// stops the server.
///
/// The trait is dyn-compatible: `Arc<dyn Handler>` can be stored and chosen at
/// run time, and [`Builder::handler`](crate::Builder::handler) takes it as it
/// is.
///
/// # Examples
///
/// ```
/// use switchboard::{Connection, Handler};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// struct Greeter;
///
/// impl Handler for Greeter {
///     type Error = std::io::Error;
///
///     async fn handle(&self, mut conn: Connection) -> Result<(), Self::Error> {
///         conn.write_all(b"hello\n").await?;
///         let mut rest = Vec::new();
///         conn.read_to_end(&mut rest).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: sealed::ErasedHandler + sealed::SpawnConnection + Send + Sync + 'static {
    /// The error `handle` can fail with: anything that converts into
    /// [`BoxError`] (`std::io::Error`, `String`, your own error type, ...).
    type Error: Into<BoxError>
    where
        Self: Sized;

    /// Serves `conn` until the exchange is over or the connection's
    /// [shutdown signal](Connection::shutdown_requested) fires.
    ///
    /// Write it as `async fn handle(&self, conn: Connection) -> Result<(), Self::Error>`.
    fn handle(&self, conn: Connection) -> impl Future<Output = Result<(), Self::Error>> + Send
    where
        Self: Sized;
}

/// Shares one handler value: `Arc<H>` serves exactly like `H`.
impl<H: Handler + ?Sized> Handler for Arc<H> {
    type Error = BoxError;

    fn handle(&self, conn: Connection) -> impl Future<Output = Result<(), Self::Error>> + Send {
        (**self).handle_erased(conn)
    }
}

/// Makes a [`Handler`] from a closure returning a future.
///
/// # Examples
///
/// ```
/// use switchboard::{handler_fn, Connection};
/// use tokio::io::AsyncWriteExt;
///
/// let handler = handler_fn(|mut conn: Connection| async move {
///     conn.write_all(b"bye\n").await?;
///     Ok::<_, std::io::Error>(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut, E>(f: F) -> HandlerFn<F>
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError>,
{
    HandlerFn { f }
}

/// A [`Handler`] made from a closure by [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F, Fut, E> Handler for HandlerFn<F>
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError>,
{
    type Error = E;

    fn handle(&self, conn: Connection) -> impl Future<Output = Result<(), E>> + Send {
        (self.f)(conn)
    }
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

pub(crate) mod sealed {
    use std::any::Any;
    use std::sync::Arc;

    use super::{Connection, HandleFuture, Handler};
    use crate::conn::Job;
    use crate::conn::record::Tasks;
    use crate::preamble::Preamble;

    /// The dyn-compatible form of [`Handler::handle`]; see the module docs.
    ///
    /// Sealed: it is implemented for every sized `Handler` and nothing else,
    /// so users never see or write it.
    #[allow(unreachable_pub)] // public only so it can be a supertrait of a public trait
    pub trait ErasedHandler {
        /// Calls `handle` and boxes its future and its error.
        fn handle_erased(&self, conn: Connection) -> HandleFuture<'_>;

        /// The handler as `Any`, which a connection's task turns back into
        /// its own type (see [`SpawnConnection`]).
        fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    }

    impl<H: Handler> ErasedHandler for H {
        fn handle_erased(&self, conn: Connection) -> HandleFuture<'_> {
            Box::pin(async move { self.handle(conn).await.map_err(Into::into) })
        }

        fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
            self
        }
    }

    /// The server's way into a handler, in its vtable: spawns a
    /// connection's task, generic over the handler's own future type, so
    /// that the future is boxed once at most (not twice, as calling
    /// `handle_erased` through `Arc<dyn Handler>` would) and polled without
    /// dynamic dispatch.
    ///
    /// Sealed like [`ErasedHandler`]; implemented for every sized `Handler`
    /// where the task is made (`server/task.rs`), so that this module needs
    /// nothing of the server.
    #[allow(unreachable_pub)] // public only so it can be a supertrait of a public trait
    pub trait SpawnConnection {
        /// Spawns `job`'s task, registered in `tasks`, which runs the
        /// listener's `preamble` (if any) before the handler.
        ///
        /// The task reaches the handler through the connection's listener
        /// (`Home::handler`, made once per listener and shard), not through
        /// a reference count of its own: a count that every connection's
        /// start and end wrote would be one cache line for every core.
        #[allow(private_interfaces)] // sealed: `Job` is never named outside the crate
        fn spawn_connection(&self, tasks: &Tasks, job: Job, preamble: Option<&Arc<Preamble>>);
    }
}
