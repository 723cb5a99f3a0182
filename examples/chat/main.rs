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

#[path = "../common/mod.rs"]
mod common;
mod room;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::serve(room::Room::new()).await
}
