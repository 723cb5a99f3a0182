//! An axum [`Router`] served by hyper on each switchboard [`Connection`].
//!
//! hyper-util's `auto` builder tells HTTP/1.1 from HTTP/2 with prior
//! knowledge (h2c) by the first bytes, so both are served on one port. When
//! the connection's shutdown notice fires, hyper's graceful shutdown of the
//! connection runs: a request in flight is answered (HTTP/1.1 with
//! `Connection: close`), an idle keep-alive connection closes, and an HTTP/2
//! client gets a GOAWAY and its open streams are finished. switchboard
//! bounds the whole drain with its drain timeout.
//!
//! Shared by the `axum` example, its tests and the benchmarks.

use std::error::Error;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use switchboard::{BoxError, Connection, Handler};
use tokio::sync::Notify;
use tower::ServiceExt;

/// Once shutdown has begun, how long a connection that has made no request
/// yet may take to make its first one before it is closed.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The switchboard handler that serves a [`Router`] over HTTP/1.1 and h2c.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    router: Router,
    hyper: auto::Builder<TokioExecutor>,
}

impl Http {
    /// Serves `router` on every connection.
    pub(crate) fn new(router: Router) -> Http {
        // hyper's defaults, as `axum::serve` has them. Its HTTP/1.1 request
        // head timeout stays off: it needs a timer, set again for every
        // request, which cost 6% of the requests per second in the
        // benchmark. A client that trickles its head in to hold a place is
        // what switchboard's `reclaim_when_full` (on by default) closes
        // once the server is full; one that sends nothing is closed by the
        // example's `first_read_timeout`.
        let hyper = auto::Builder::new(TokioExecutor::new());
        Http { router, hyper }
    }
}

impl Handler for Http {
    type Error = BoxError;

    async fn handle(&self, conn: Connection) -> Result<(), BoxError> {
        let shutdown = conn.shutdown_requested();
        let first = Arc::new(FirstRequest::default());
        let service = self.router.clone().map_request({
            let first = Arc::clone(&first);
            move |request: Request<hyper::body::Incoming>| {
                first.mark();
                request
            }
        });
        let connection = self
            .hyper
            .serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
        tokio::pin!(connection);

        tokio::select! {
            result = connection.as_mut() => return outcome(result),
            () = shutdown => {}
        }
        if !first.is_marked() {
            // Accepted just before shutdown began (or from the listener's
            // queue since): the client is about to send its first request,
            // and hyper would close a connection that has sent nothing yet
            // without a word. Wait briefly for that request.
            tokio::select! {
                result = connection.as_mut() => return outcome(result),
                () = first.arrived.notified() => {}
                () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
            }
        }
        connection.as_mut().graceful_shutdown();
        outcome(connection.await)
    }
}

/// Whether a connection has made a request yet.
#[derive(Debug, Default)]
struct FirstRequest {
    marked: AtomicBool,
    /// Notified once, at the first request.
    arrived: Notify,
}

impl FirstRequest {
    fn mark(&self) {
        // One relaxed load per request once marked; `Notify` keeps a permit
        // for a waiter that comes later, so no wake-up is lost.
        if !self.marked.load(Ordering::Relaxed) {
            self.marked.store(true, Ordering::Relaxed);
            self.arrived.notify_one();
        }
    }

    fn is_marked(&self) -> bool {
        self.marked.load(Ordering::Relaxed)
    }
}

/// hyper's verdict on a connection, as switchboard should count it: a
/// client that leaves mid-request, sends a malformed request or is too slow
/// with its head got its answer from hyper (or needs none), and is not a
/// server failure; those end the handler with `Ok`, logged at `debug`.
fn outcome(result: Result<(), BoxError>) -> Result<(), BoxError> {
    match result {
        Err(err) if caused_by_client(&*err) => {
            tracing::debug!(error = %err, "connection ended by the client");
            Ok(())
        }
        result => result,
    }
}

fn caused_by_client(err: &(dyn Error + 'static)) -> bool {
    if let Some(err) = err.downcast_ref::<hyper::Error>() {
        // hyper's "user" errors are the application's (a service or a
        // response body that failed); every other kind is the peer's
        // doing or its transport's.
        return !err.is_user();
    }
    if let Some(err) = err.downcast_ref::<io::Error>() {
        use io::ErrorKind::*;
        // `Interrupted`: the graceful shutdown closed a connection that
        // had sent nothing.
        return matches!(
            err.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | Interrupted
        );
    }
    false
}
