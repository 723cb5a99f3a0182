//! The cancellation channel: one trigger, many observers.
//!
//! Two tokens keep the phases of a shutdown in order. The *trigger* token is
//! what [`ShutdownHandle::shutdown`] (or the builder's shutdown future)
//! cancels; only the accept loop watches it. When the accept loop sees it, it
//! closes the listener and only then cancels the *connections* token that every
//! [`ShutdownSignal`] watches. So a handler that sees its signal knows that new
//! connects are already refused, and a connection accepted in the same instant
//! as the trigger still has a live signal that fires right after.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Triggers a server's graceful shutdown.
///
/// Cheap to clone, `Send + Sync`: hand it to a signal handler, an admin
/// endpoint or a test. Triggering is idempotent; triggering before
/// [`Server::run`](crate::Server::run) starts makes `run` shut down at once.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(server: switchboard::Server) -> Result<(), switchboard::Error> {
/// let handle = server.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::time::sleep(std::time::Duration::from_secs(60)).await;
///     handle.shutdown();
/// });
/// let report = server.run().await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    trigger: CancellationToken,
}

impl ShutdownHandle {
    pub(crate) fn new(trigger: CancellationToken) -> Self {
        ShutdownHandle { trigger }
    }

    /// Begins the graceful shutdown: stop accepting, signal every connection,
    /// drain. Returns at once; calling it again does nothing.
    pub fn shutdown(&self) {
        self.trigger.cancel();
    }

    /// Whether shutdown has been triggered.
    pub fn is_shutting_down(&self) -> bool {
        self.trigger.is_cancelled()
    }
}

/// Observes the server's shutdown from inside a connection.
///
/// Every [`Connection`](crate::Connection) carries one
/// ([`Connection::shutdown_signal`](crate::Connection::shutdown_signal)); clone
/// it into tasks the handler spawns. It fires once the listener is closed, and
/// stays fired: a signal cloned or created after shutdown began is fired too.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    token: CancellationToken,
}

impl ShutdownSignal {
    pub(crate) fn new(token: CancellationToken) -> Self {
        ShutdownSignal { token }
    }

    /// Whether the server is shutting down. One atomic load: cheap enough to
    /// ask after every request.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the server begins shutting down (at once if it already
    /// has).
    ///
    /// The future owns what it needs and borrows nothing, so it can be made
    /// once, pinned, and raced against reads of the connection in every loop
    /// iteration; see [`Connection::shutdown_requested`](crate::Connection::shutdown_requested).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future misses nothing, and a new one completes
    /// at once if shutdown has begun.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        self.token.clone().cancelled_owned()
    }
}
