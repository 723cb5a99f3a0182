//! Echoes every byte back until the client closes.
//!
//! ```text
//! cargo run --example echo [ADDR]         # default 127.0.0.1:8080
//! nc 127.0.0.1 8080
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully and prints the report. The
//! handler is in `echo.rs`.

mod echo;

use std::error::Error;

use switchboard::Server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Logs go to stderr, so that stdout has only the two lines below.
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
        .handler(echo::Echo)
        // Ctrl-C or SIGTERM: stop accepting, let connections finish, stop.
        .shutdown_on(switchboard::termination())
        .build()
        .await?;
    println!("listening on {}", server.local_addr());

    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}
