//! Echoes every byte back until the client closes.
//!
//! ```text
//! cargo run --example echo [ADDR]         # default 127.0.0.1:8080
//! nc 127.0.0.1 8080
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully and prints the report.

#[path = "../common/mod.rs"]
mod common;
mod echo;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::serve(echo::Echo).await
}
