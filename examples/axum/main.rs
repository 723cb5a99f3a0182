//! An axum application served by switchboard: HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c) on one port, each connection handed to hyper.
//!
//! ```text
//! cargo run --example axum [ADDR]        # default 127.0.0.1:8080
//! curl --http1.1 http://127.0.0.1:8080/
//! curl --http2-prior-knowledge http://127.0.0.1:8080/slow
//! cargo run --example axum --features metrics
//! curl http://127.0.0.1:8080/metrics      # the server's counters, for Prometheus
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully: requests in flight are
//! answered, idle connections close (HTTP/2 clients get a GOAWAY), and the
//! report is printed. The routes are in `routes.rs`; serving a router on a
//! switchboard connection with hyper is in `serve.rs`; this file is all the
//! switchboard there is. switchboard adds what `axum::serve` leaves out: a
//! connection limit, timeouts on silent clients, and the exact report (and,
//! with the builder's other switches, PROXY protocol, TLS and handover).

mod routes;
mod serve;

use std::error::Error;
use std::time::Duration;

use switchboard::Server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Logs go to stderr (`RUST_LOG=debug` for a line per connection), so
    // that stdout has only the two lines below.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // `HOST:PORT`; port 0 picks a free port, which the `listening` line tells.
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());

    let app = routes::router();
    // With the `metrics` feature: a Prometheus recorder, installed before
    // `run` (which registers the server's metrics with it), and its text at
    // `GET /metrics`.
    #[cfg(feature = "metrics")]
    let app = {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        let upkeep = handle.clone();
        // The recorder's housekeeping (histogram buckets), as its docs ask.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        routes::with_metrics(app, handle)
    };

    let server = Server::builder()
        .bind(addr)
        .handler(serve::Http::new(app))
        // A client that connects and says nothing is closed after 10 s.
        .first_read_timeout(Duration::from_secs(10))
        // Ctrl-C or SIGTERM: stop accepting, let connections finish, stop.
        .shutdown_on(switchboard::termination())
        .build()
        .await?;
    println!("listening on {}", server.local_addr());

    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}
