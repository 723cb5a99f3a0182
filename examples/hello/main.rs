//! A small HTTP/1.1 server that answers every `GET` with a greeting.
//!
//! ```text
//! cargo run --example hello [ADDR]        # default 127.0.0.1:8080
//! curl -v http://127.0.0.1:8080/
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully and prints the report. The
//! HTTP side is in `http.rs`; this file is all the switchboard there is.
//! For TLS, Unix sockets, systemd and zero-downtime restarts, see the `ops`
//! example, which serves this handler with every one of those switches.

mod http;

use std::error::Error;

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

    let server = Server::builder()
        .bind(addr)
        .handler(http::Hello::default())
        // Ctrl-C or SIGTERM: stop accepting, let connections finish, stop.
        .shutdown_on(switchboard::termination())
        .build()
        .await?;
    println!("listening on {}", server.local_addr());

    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}
