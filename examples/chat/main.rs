//! A line-based chat room: every client's lines go to every other client.
//!
//! ```text
//! cargo run --example chat [ADDR]         # default 127.0.0.1:8080
//! nc 127.0.0.1 8080                       # in two or more terminals
//! ```
//!
//! Type to talk; `/nick NAME` to choose a name, `/who`, `/help`, `/quit`.
//! The protocol, the nickname rules, and what happens to over-long lines,
//! slow clients and clients at shutdown are described in `room.rs`.
//!
//! Ctrl-C or SIGTERM shuts it down gracefully: every client gets
//! `*** server shutting down, goodbye`, then the report is printed.

mod room;

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
        // One room, shared by every connection (the builder puts the handler
        // in an `Arc`; each connection's task calls `Room::handle`).
        .handler(room::Room::new())
        // Ctrl-C or SIGTERM: stop accepting, tell every client goodbye,
        // let them go, stop.
        .shutdown_on(switchboard::termination())
        .build()
        .await?;
    println!("listening on {}", server.local_addr());

    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}
