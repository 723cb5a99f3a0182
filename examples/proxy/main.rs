//! A TCP proxy: each client's bytes go to a new connection to the upstream
//! server, and the upstream's answers come back, both directions at once.
//!
//! ```text
//! cargo run --example proxy [LISTEN_ADDR] UPSTREAM_ADDR   # listens on 127.0.0.1:8080 by default
//! cargo run --example echo 127.0.0.1:9000                 # an upstream to try it with
//! cargo run --example proxy 127.0.0.1:8080 127.0.0.1:9000
//! nc 127.0.0.1 8080
//! ```
//!
//! Half-close is passed on: when the client shuts its write side (`nc -N`,
//! or `shutdown(SHUT_WR)`), the upstream's write side is shut and the
//! answers keep coming until the upstream closes, and the other way round.
//! Ctrl-C or SIGTERM shuts it down gracefully: open connections are closed
//! at once (a byte proxy has no exchange to finish), then the report is
//! printed.

use std::error::Error;
use std::io;

use switchboard::{Connection, Handler, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Logs go to stderr, so that stdout has only the two lines below.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // `[LISTEN_ADDR] UPSTREAM_ADDR`, each `HOST:PORT`; listening on port 0
    // picks a free port, which the `listening` line tells.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match &args[..] {
        [upstream] => ("127.0.0.1:8080".to_owned(), upstream.clone()),
        [listen, upstream] => (listen.clone(), upstream.clone()),
        _ => return Err("usage: proxy [LISTEN_ADDR] UPSTREAM_ADDR".into()),
    };

    let server = Server::builder()
        .bind(listen)
        .handler(Proxy { upstream })
        // Ctrl-C or SIGTERM: stop accepting, close the connections, stop.
        .shutdown_on(switchboard::termination())
        .build()
        .await?;
    println!("listening on {}", server.local_addr());

    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}

/// Connects each client to `upstream` and copies bytes both ways.
#[derive(Debug)]
struct Proxy {
    /// `HOST:PORT`, resolved at each connect.
    upstream: String,
}

impl Handler for Proxy {
    type Error = io::Error;

    async fn handle(&self, conn: Connection) -> io::Result<()> {
        // Made before `conn` moves: it borrows nothing.
        let shutdown = conn.shutdown_requested();
        tokio::select! {
            copied = proxy(conn, &self.upstream) => copied,
            // Shutting down: dropping both connections closes them.
            () = shutdown => Ok(()),
        }
    }
}

/// Copies `conn` to a new connection to `upstream` and back until both
/// sides have closed.
async fn proxy(conn: Connection, upstream: &str) -> io::Result<()> {
    let upstream = TcpStream::connect(upstream).await?;
    upstream.set_nodelay(true)?;
    // Owned halves, so that both directions run at once, each with its own
    // end: a whole connection could read or write, not both. (They could
    // also go to two tasks; one task with both copies joined keeps them
    // inside the handler, so a shutdown or an abort ends both.)
    let (mut from_client, mut to_client) = conn.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    let up = async {
        let n = tokio::io::copy(&mut from_client, &mut to_upstream).await?;
        // The client has shut its write side: so do we towards the
        // upstream, and keep copying its answers.
        to_upstream.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    let down = async {
        let n = tokio::io::copy(&mut from_upstream, &mut to_client).await?;
        to_client.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    let (sent, received) = tokio::try_join!(up, down)?;
    tracing::debug!(sent, received, "proxied");
    Ok(())
}
