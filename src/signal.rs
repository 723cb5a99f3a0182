//! Operating-system shutdown signals.

use std::future::{Future, pending};

/// A future that completes when the process receives Ctrl-C (SIGINT) or, on
/// Unix, SIGTERM (what `kill`, systemd and Kubernetes send): the usual
/// trigger for a graceful shutdown.
///
/// On Unix the signals are hooked when `termination` is *called*, not when
/// the future is first polled, so a signal that arrives between building the
/// server and running it is not lost (nor does it kill the process). Call it
/// inside a tokio runtime. If a signal cannot be hooked, that is logged at
/// `warn` and the future waits for the other one only.
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
///     .shutdown_on(termination())
///     .build()
///     .await?;
/// let report = server.run().await?; // returns after Ctrl-C or SIGTERM
/// # Ok(()) }
/// ```
///
/// # Panics
///
/// On Unix, if called outside a tokio runtime.
///
/// # Cancel safety
///
/// Cancel safe. Once hooked, the signals stay routed to tokio for the life of
/// the process: dropping the future does not restore the default action.
#[cfg(unix)]
pub fn termination() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    fn hook(kind: SignalKind, name: &'static str) -> Option<Signal> {
        signal(kind)
            .inspect_err(
                |err| tracing::warn!(signal = name, error = %err, "cannot listen for signal"),
            )
            .ok()
    }
    async fn received(signal: &mut Option<Signal>) {
        match signal {
            Some(signal) => {
                // `recv` returns `None` only if the signal driver is gone:
                // then this signal can no longer arrive.
                if signal.recv().await.is_none() {
                    pending::<()>().await;
                }
            }
            None => pending().await,
        }
    }

    let mut interrupt = hook(SignalKind::interrupt(), "SIGINT");
    let mut terminate = hook(SignalKind::terminate(), "SIGTERM");
    async move {
        let name = tokio::select! {
            () = received(&mut interrupt) => "SIGINT",
            () = received(&mut terminate) => "SIGTERM",
        };
        tracing::info!(signal = name, "termination signal received");
    }
}

/// A future that completes when the process receives Ctrl-C.
///
/// # Cancel safety
///
/// Cancel safe.
#[cfg(not(unix))]
pub fn termination() -> impl Future<Output = ()> + Send + 'static {
    async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!(signal = "Ctrl-C", "termination signal received"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                pending::<()>().await
            }
        }
    }
}
