//! Operating-system shutdown signals.

use std::future::pending;

/// Completes when the process receives Ctrl-C (SIGINT) or, on Unix, SIGTERM
/// (what `kill`, systemd and Kubernetes send): the usual trigger for a
/// graceful shutdown.
///
/// The signals are hooked when the future is first polled. If a signal
/// cannot be hooked, that is logged at `warn` and the future waits for the
/// other one only.
///
/// # Examples
///
/// ```no_run
/// use switchboard::{handler_fn, termination, Connection, Server};
///
/// # async fn demo() -> Result<(), switchboard::Error> {
/// let server = Server::builder()
///     .bind("127.0.0.1:8080")
///     .handler(handler_fn(|_c: Connection| async { Ok::<_, std::io::Error>(()) }))
///     .shutdown_signal(termination())
///     .build()
///     .await?;
/// let report = server.run().await?; // returns after Ctrl-C or SIGTERM
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Cancel safe, but a signal that arrives while no `termination` future is
/// being polled is delivered to tokio's handler and not seen by a later one
/// created afresh.
pub async fn termination() {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                pending().await
            }
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
                "SIGTERM"
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = pending::<&str>();
    let received = tokio::select! {
        name = ctrl_c => name,
        name = term => name,
    };
    tracing::info!(signal = received, "termination signal received");
}
