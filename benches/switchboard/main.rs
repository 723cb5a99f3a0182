//! `cargo bench`: switchboard against hand-written tokio servers doing the
//! same work, each server in its own process, driven by this process as the
//! load generator; see `scenarios.rs` for what is measured and how.
//!
//! The same binary is the server: started with `SWITCHBOARD_BENCH_SERVER`
//! set (see `server.rs`), it runs one server and nothing else.
//!
//! ```text
//! cargo bench                          # everything, about 5 minutes on 2 cores
//! cargo bench -- churn idle            # only the scenarios whose names contain these
//! cargo bench -- scale                 # only the scaling with cores (see scale.rs)
//! cargo bench -- axum                  # the axum example against axum::serve
//! SWITCHBOARD_BENCH_ROUNDS=5 SWITCHBOARD_BENCH_SECS=5 cargo bench
//! python3 benches/chart.py             # docs/memory.svg from the results
//! ```
//!
//! The binary runs on its own, e.g. on a bigger machine: `cargo bench
//! --no-run` prints its path, then `target/release/deps/switchboard-HASH
//! scale` runs the scale scenario alone (set `CARGO_TARGET_DIR` to choose
//! where `bench/results.json` goes when the binary was moved).

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

// The axum scenarios' server (`axum::serve`) and h2c client; the crate
// `axum` itself is named `::axum` there.
mod axum;
mod client;
mod cputime;
#[allow(dead_code)] // the example's module has more than the bench uses
#[path = "../../examples/echo/echo.rs"]
mod echo;
#[allow(dead_code)] // the example's module has more than the bench uses
#[path = "../../examples/hello/http.rs"]
mod http;
mod proc;
mod report;
#[allow(dead_code)] // the example's module has more than the bench uses
#[path = "../../examples/axum/routes.rs"]
mod routes;
mod scale;
mod scenarios;
#[path = "../../examples/axum/serve.rs"]
mod serve;
mod server;

/// Counts every allocation, in the server processes (where it is read) and
/// in the load generator alike: every server mode pays the same for it.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    match std::env::var(server::MODE_VAR) {
        Ok(mode) => server::main(&mode),
        Err(_) => scenarios::main(),
    }
}
