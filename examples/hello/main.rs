//! A small HTTP/1.1 server that answers every `GET` with a greeting.
//!
//! ```text
//! cargo run --example hello [ADDR]        # default 127.0.0.1:8080
//! curl -v http://127.0.0.1:8080/
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully and prints the report.

#[path = "../common/mod.rs"]
mod common;
mod http;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hello = http::Hello {
        // How long a request head may take from its first byte.
        head_timeout: http::HEAD_TIMEOUT,
    };
    common::serve(hello).await
}
