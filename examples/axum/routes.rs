//! What the axum example serves: its routes, apart from how they are served.
//!
//! Shared by the `axum` example, its tests and the benchmarks (which serve
//! this same router with `axum::serve` for comparison). A new route is one
//! more `.route(...)` line in [`router`].

use std::time::Duration;

use axum::Router;
use axum::routing::get;

/// The body of `GET /`.
pub(crate) const HELLO: &str = "Hello from async Rust!";
/// The body of `GET /slow`.
pub(crate) const DONE: &str = "done";
/// How long `GET /slow` takes: long enough for a test to shut the server
/// down while the request is in flight.
pub(crate) const SLOW: Duration = Duration::from_secs(1);

/// The application.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
}

/// `router` with `GET /metrics`: the server's metrics (feature `metrics`)
/// in Prometheus' text format, from the recorder `handle` belongs to.
#[cfg(feature = "metrics")]
pub(crate) fn with_metrics(
    router: Router,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    router.route("/metrics", get(move || std::future::ready(handle.render())))
}

async fn hello() -> &'static str {
    HELLO
}

async fn slow() -> &'static str {
    tokio::time::sleep(SLOW).await;
    DONE
}
