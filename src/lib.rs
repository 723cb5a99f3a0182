//! Accept TCP connections and handle each one in its own tokio task, with
//! the production parts done right: connection tracking, tracing, live
//! statistics, panic isolation and a two-phase graceful shutdown that returns
//! an exact report.
//!
//! You implement one async [`Handler`]; switchboard owns binding, the accept
//! loop, one task per connection and the shutdown.
//!
//! # Quick start
//!
//! With `switchboard`, `tokio` (feature `full`) and `tracing-subscriber`
//! (feature `env-filter`) in `Cargo.toml`:
//!
//! ```no_run
//! use switchboard::{Connection, Handler, Server};
//! use tokio::io::AsyncWriteExt;
//! use tracing_subscriber::EnvFilter;
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     type Error = std::io::Error;
//!
//!     async fn handle(&self, mut conn: Connection) -> Result<(), Self::Error> {
//!         conn.write_all(b"hello\n").await
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), switchboard::Error> {
//!     // switchboard logs through `tracing`: without a subscriber nothing is
//!     // shown, not even a handler's error (`warn`). `RUST_LOG=debug` adds a
//!     // line per connection.
//!     tracing_subscriber::fmt()
//!         .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
//!         .init();
//!     let server = Server::builder()
//!         .bind("127.0.0.1:8080")
//!         .handler(Hello)
//!         .shutdown_on(switchboard::termination()) // Ctrl-C or SIGTERM
//!         .build()
//!         .await?;
//!     println!("listening on {}", server.local_addr());
//!     let report = server.run().await?; // returns after a graceful shutdown
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! If the port is taken, `main` ends with
//! `Error: cannot bind 127.0.0.1:8080: Address already in use (os error 98)`:
//! every [`Error`] names what failed and why.
//!
//! # A connection's life
//!
//! ```text
//! bind ─> accept loop ─> Connection ─> spawn task ─> Handler::handle(conn)
//!          │  (skip per-connection     (id, peer,      span conn{id, peer}
//!          │   errors, back off when    shutdown        │
//!          │   out of descriptors)      signal)         ▼
//!          │                                      task ends: outcome counted,
//!          │                                      "connection closed" logged
//!          ▼
//!   shutdown trigger (ShutdownHandle::shutdown, Builder::shutdown_on)
//! ```
//!
//! Each connection runs in a task of its own, inside a `debug`-level
//! `tracing` span `conn` carrying `id` and `peer`. A handler that returns an
//! error is logged at `warn` and counted as failed; one that panics is caught
//! at the task boundary, logged at `error` and counted as panicked. Neither
//! stops the server. Accepted sockets get `TCP_NODELAY` unless
//! [`Builder::tcp_nodelay`] turns it off.
//!
//! A task the handler spawns with [`Connection::spawn`] (or a [`Spawner`],
//! or a half's `spawn`) is part of the connection: the connection ends, and
//! frees its place under the limits, once its handler and all such
//! sub-tasks have ended; the drain waits for them; a timeout, the drain
//! deadline or dropping `run` aborts them with the handler; and a panic in
//! one counts the connection as panicked. A task from `tokio::spawn`
//! escapes all of that.
//!
//! # Shutdown in two phases
//!
//! ```text
//! trigger ──> 1. listeners stop taking new clients; the clients already
//!                waiting in their queues are accepted as places free
//!             2. every Connection's shutdown signal fires
//!             3. each listener closes once its queue is empty
//!                (new connects are refused)
//!        ──> drain: wait up to drain_timeout for handlers to return
//!        ──> close what still waits in the queues, abort the rest
//!        ──> run() returns ShutdownReport
//! ```
//!
//! The trigger is [`ShutdownHandle::shutdown`] (from
//! [`Server::shutdown_handle`], cloneable, usable from any thread) or the
//! future given to [`Builder::shutdown_on`], such as [`termination`].
//! Handlers cooperate by watching [`Connection::shutdown_requested`] (a
//! cancel-safe future for `tokio::select!`) or asking
//! [`Connection::is_shutting_down`] between requests: a keep-alive handler
//! answers the request in flight, closes, and returns. The application's
//! own background tasks stop with the server by awaiting
//! [`ShutdownHandle::requested`]. A client whose
//! connection the kernel completed before the trigger is the server's client:
//! it is served with its signal already fired, so it gets one answer and a
//! close rather than a reset. A handler that ignores the signal is aborted at
//! the drain timeout, and the report says so.
//!
//! [`Server::run`] returns a [`ShutdownReport`] whose counts are exact:
//!
//! ```text
//! accepted                              == completed + failed + panicked + timed_out
//!                                          + aborted + proxy_rejected + tls_failed
//! active_at_shutdown + backlog_accepted == drained + aborted
//! ```
//!
//! While the server runs, [`Stats::snapshot`] gives the same counters live.
//!
//! ## The trigger and the notice
//!
//! Two different things take part in a shutdown, and their names keep them
//! apart:
//!
//! | | the *trigger*: starts the shutdown | the *notice*: tells a handler it has begun |
//! | --- | --- | --- |
//! | fired by | [`ShutdownHandle::shutdown`]; the future given to [`Builder::shutdown_on`] ([`termination`]: Ctrl-C, SIGTERM); a failing listener | the server, once the listeners stop taking new clients |
//! | type | [`ShutdownHandle`], from [`Server::shutdown_handle`] | [`ShutdownSignal`], from [`Connection::shutdown_signal`] |
//! | wait for it | [`ShutdownHandle::requested`] (the application's tasks) | [`Connection::shutdown_requested`], [`ShutdownSignal::shutdown_requested`] (handlers and the tasks they spawn) |
//! | ask | [`ShutdownHandle::is_shutting_down`] | [`Connection::is_shutting_down`] |
//!
//! (`Builder::shutdown_signal` is the trigger's former name, kept as a
//! deprecated alias of [`Builder::shutdown_on`].)
//!
//! # Limits and timeouts
//!
//! Every connection holds a place under [`Builder::max_connections`], taken
//! *before* `accept`: a full server leaves clients queued in the kernel's
//! backlog instead of accepting until the machine runs out of descriptors.
//! A full server with clients waiting takes places back from the address
//! that holds more than its fair share, idlest connections first
//! ([`Builder::reclaim_when_full`], on by default), so that connections
//! trickling a byte now and then from one address (Slowloris) cannot keep
//! everyone else out.
//! Accept errors never stop or spin the loop: per-connection errors are
//! skipped, running out of descriptors or memory backs off and recovers by
//! itself, anything else ends [`Server::run`] with [`Error::Accept`] after a
//! drain. Below the protocol, [`Builder::idle_timeout`],
//! [`Builder::first_read_timeout`] and [`Builder::max_connection_age`] close
//! connections that would otherwise pin resources, whatever the protocol.
//! Idleness counts only while the handler waits on the connection: a
//! handler awaiting a slow backend is never cut off. Each timeout is logged
//! at `info` with its kind.
//!
//! Every option, its default and why:
//!
#![doc = include_str!("../docs/defaults.md")]
//!
//! # Writing handlers
//!
//! [`Handler`] is implemented with a plain `async fn` and any error type
//! convertible into [`BoxError`]; small handlers can be closures through
//! [`handler_fn`]. The trait is dyn-compatible, so a handler chosen at run
//! time can be passed as `Arc<dyn Handler>`. See the [`Handler`] docs for
//! why the trait is shaped this way.
//!
//! ## Shared state
//!
//! The server keeps one handler for all its connections, so what the
//! handler struct holds, every connection sees. State that the handlers
//! change goes behind a lock; an `Arc` around it lets the application keep
//! a reference of its own (for an admin task, or for tests that serve
//! several connections with clones of one handler). A `std::sync::Mutex` is
//! the right lock when it is never held across an `.await` (clippy's
//! `await_holding_lock` catches the mistake): each operation below takes it
//! for one map operation and no longer.
//!
//! A key-value store over a line protocol (`SET key value`, `GET key`),
//! with two connections sharing one store:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex, PoisonError};
//!
//! use switchboard::{Connection, Handler};
//! use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
//!
//! /// The longest line read: a client cannot make the server buffer more.
//! const MAX_LINE: u64 = 1024;
//!
//! #[derive(Clone, Default)]
//! struct Kv {
//!     store: Arc<Mutex<HashMap<String, String>>>,
//! }
//!
//! impl Kv {
//!     fn apply(&self, command: &str) -> String {
//!         // Each operation is whole, so a panic elsewhere while the lock
//!         // was held leaves the map usable: poisoning is ignored.
//!         let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
//!         let mut words = command.splitn(3, ' ');
//!         match (words.next(), words.next(), words.next()) {
//!             (Some("SET"), Some(key), Some(value)) => {
//!                 store.insert(key.to_owned(), value.to_owned());
//!                 "OK\n".to_owned()
//!             }
//!             (Some("GET"), Some(key), None) => match store.get(key) {
//!                 Some(value) => format!("{value}\n"),
//!                 None => "NONE\n".to_owned(),
//!             },
//!             _ => "ERR unknown command\n".to_owned(),
//!         }
//!     }
//! }
//!
//! impl Handler for Kv {
//!     type Error = std::io::Error;
//!
//!     async fn handle(&self, conn: Connection) -> Result<(), Self::Error> {
//!         let mut shutdown = conn.shutdown_requested();
//!         let mut conn = BufReader::new(conn);
//!         let mut line = String::new();
//!         loop {
//!             line.clear();
//!             let mut limited = (&mut conn).take(MAX_LINE);
//!             let read = tokio::select! {
//!                 read = limited.read_line(&mut line) => read?,
//!                 () = &mut shutdown => return Ok(()),
//!             };
//!             if read == 0 {
//!                 return Ok(()); // the client closed
//!             }
//!             let Some(command) = line.strip_suffix('\n') else {
//!                 return conn.write_all(b"ERR line too long\n").await;
//!             };
//!             let reply = self.apply(command.trim_end_matches('\r'));
//!             conn.write_all(reply.as_bytes()).await?;
//!         }
//!     }
//! }
//!
//! // A server: `Server::builder().handler(Kv::default())`. Here, two test
//! // connections served by clones of one handler, as a server would serve
//! // them:
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::BoxError> {
//! use switchboard::testing::TestConnection;
//!
//! let kv = Kv::default();
//! let mut first = TestConnection::new().id(1).serve(kv.clone());
//! let mut second = TestConnection::new().id(2).serve(kv.clone());
//! first.client.write_all(b"SET greeting hello\n").await?;
//! let mut reply = [0; 3];
//! first.client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"OK\n");
//! second.client.write_all(b"GET greeting\n").await?;
//! let mut reply = [0; 6];
//! second.client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"hello\n");
//! # Ok(()) }
//! ```
//!
//! # Listeners
//!
//! A server listens on one or more addresses, TCP and Unix mixed
//! ([`Builder::bind`], [`Builder::bind_unix`], already-bound std listeners,
//! systemd socket activation); they share the handler, the limits, the
//! statistics (also per listener: [`Stats::by_listener`]) and the shutdown.
//! [`Connection::peer_addr`] is an [`Addr`], which says "IP and port" or
//! "Unix path", so a handler serves every transport unchanged.
//!
//! # Behind a load balancer, TLS, restarts
//!
//! A listener can read the PROXY protocol header that load balancers send
//! ([`Listen::proxy_protocol`], [`ProxyProtocol`]), so that
//! [`Connection::peer_addr`] names the real client; serve TLS with the `tls`
//! feature (`Listen::tls`, `TlsConfig`); and a server can hand its listening
//! sockets to a new process for a restart that refuses no client
//! ([`Builder::handover`]). When shutdown begins the listeners close at once,
//! so a balancer's health checks fail over while connections drain. Each of
//! the three is a cargo feature (see [Features](#features)).
//!
// Without a feature its items are missing: their links lead to the
// Features section instead.
#![cfg_attr(
    feature = "proxy-protocol",
    doc = "[`Listen::proxy_protocol`]: Listen::proxy_protocol\n[`ProxyProtocol`]: ProxyProtocol"
)]
#![cfg_attr(
    not(feature = "proxy-protocol"),
    doc = "[`Listen::proxy_protocol`]: #features\n[`ProxyProtocol`]: #features"
)]
#![cfg_attr(
    all(unix, feature = "handover"),
    doc = "[`Builder::handover`]: Builder::handover"
)]
#![cfg_attr(
    not(all(unix, feature = "handover")),
    doc = "[`Builder::handover`]: #features"
)]
//!
//! # Features
//!
//! The optional parts are cargo features, so that a server that needs none
//! of them compiles none of their code or dependencies:
//!
//! | feature | default | what it adds | dependencies it adds |
//! | --- | --- | --- | --- |
//! | `proxy-protocol` | on | `Listen::proxy_protocol`, `ProxyProtocol`, the `proxy` module's header types, `Connection::proxy_header` and `balancer_addr` | none |
//! | `handover` | on | `Builder::handover`: zero-downtime restarts (Unix; nothing elsewhere) | none (`rustix`'s `net` part) |
//! | `tls` | off | `Listen::tls`, `TlsConfig`, `TlsInfo`, `Connection::tls_info`, the `rustls` re-export | 10 (`tokio-rustls`, `rustls`, `ring`, ...) |
//! | `metrics` | off | the live counters, a gauge of active connections and a histogram of connection durations, published through the `metrics` facade (see [Metrics](#metrics)) | 3 (`metrics`, `rapidhash`, `rustversion`) |
//!
//! The defaults keep what switchboard offered before these parts were
//! optional; TLS stays opt-in for its build cost. A server that needs none:
//! `switchboard = { version = "0.1", default-features = false }`. Its
//! dependency graph has 25 packages, as the defaults' (38 with every
//! feature), and a clean release build of the crate and its dependencies
//! took 12.6 s instead of 14.6 s (29.6 s with every feature but
//! `metrics`), on 2 cores.
//! Without PROXY and TLS no listener does anything before its handler, and
//! that code is left out. [`StatsSnapshot::proxy_rejected`],
//! [`StatsSnapshot::tls_failed`] and [`ShutdownReport::handed_over`] are
//! always there, and stay 0 (`false`) without their feature.
//!
//! ## Metrics
//!
//! With the `metrics` feature, [`Server::run`] publishes the server's
//! counters through the [`metrics`](https://docs.rs/metrics/0.24) facade,
//! so that any exporter plugged into it (Prometheus, StatsD,
//! OpenTelemetry, ...) shows them. Each is labelled `listener`, the
//! listener's address as [`Addr`] displays it (`127.0.0.1:8080`,
//! `unix:/run/app.sock`):
//!
//! | metric | type | from |
//! | --- | --- | --- |
//! | `switchboard_connections_accepted_total` | counter | [`StatsSnapshot::accepted`] |
//! | `switchboard_connections_completed_total` | counter | [`StatsSnapshot::completed`] |
//! | `switchboard_connections_failed_total` | counter | [`StatsSnapshot::failed`] |
//! | `switchboard_connections_panicked_total` | counter | [`StatsSnapshot::panicked`] |
//! | `switchboard_connections_timed_out_total` | counter, label `kind`: `idle`, `first_read`, `max_age`, `overload` | [`StatsSnapshot::timed_out_idle`] and the others |
//! | `switchboard_connections_aborted_total` | counter | [`StatsSnapshot::aborted`] |
//! | `switchboard_connections_proxy_rejected_total` | counter (feature `proxy-protocol`) | [`StatsSnapshot::proxy_rejected`] |
//! | `switchboard_connections_tls_failed_total` | counter (feature `tls`) | [`StatsSnapshot::tls_failed`] |
//! | `switchboard_connections_rejected_total` | counter | [`StatsSnapshot::rejected`] |
//! | `switchboard_connections_backlog_closed_total` | counter | [`StatsSnapshot::backlog_closed`] |
//! | `switchboard_accept_errors_total` | counter | [`StatsSnapshot::accept_errors`] |
//! | `switchboard_connections_active` | gauge | [`StatsSnapshot::active`] |
//! | `switchboard_connection_duration_seconds` | histogram | each connection's life, accept to end (millisecond resolution) |
//!
//! The counters and the gauge are published every second by a task that
//! `run` spawns, from [`Stats::by_listener`], and once more when `run`
//! ends, so that their last values equal the [`ShutdownReport`]'s: a
//! connection writes nothing that other cores share for them. Only the
//! duration is recorded by each connection, when it ends. Without the
//! feature none of this is compiled.
//!
//! The metrics are registered with the recorder installed when `run`
//! starts: install it before (a server built earlier is fine), or nothing
//! is published; without any, every update is a no-op. For Prometheus,
//! with `metrics-exporter-prometheus` (its default features off, if the
//! application serves the text itself), a `GET /metrics` route answers
//! with `handle.render()`:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! # async fn demo(handler: impl switchboard::Handler) -> Result<(), Box<dyn std::error::Error>> {
//!
//! // First: the server's metrics go to the recorder installed when `run` starts.
//! let prometheus = PrometheusBuilder::new().install_recorder()?;
//! let upkeep = prometheus.clone();
//! tokio::spawn(async move {
//!     loop {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         upkeep.run_upkeep(); // drains the histograms' samples
//!     }
//! });
//! let server = switchboard::Server::builder()
//!     .bind("127.0.0.1:8080")
//!     .handler(handler)
//!     .build()
//!     .await?;
//! tokio::spawn(server.run());
//! // The body of a `GET /metrics` response (text/plain; version=0.0.4):
//! let body: String = prometheus.render();
//! # drop(body);
//! # Ok(()) }
//! ```
//!
//! # Testing handlers
//!
//! [`testing::TestConnection`] runs a handler on an in-memory connection with
//! the peer address and id a test chooses, and hands the test the client's
//! end and the shutdown trigger: no sockets, deterministic, fine under a
//! paused clock.
//!
//! # Choosing switchboard
//!
//! switchboard is for your own protocol over TCP or Unix sockets: a line
//! protocol, a binary RPC, a proxy, a game server, a chat. It owns the
//! connection's life (accept, limits, timeouts, shutdown, accounting) and
//! leaves the bytes to you. For HTTP, use hyper, axum or another HTTP stack:
//! they parse HTTP/1 and HTTP/2 fully and run on the same tokio runtime (the
//! `hello` example's small HTTP/1.1 server is a demonstration, not an HTTP
//! stack). Compared with writing the accept loop yourself, you get the parts
//! that are easy to get wrong: backpressure before `accept`, recovery from
//! running out of descriptors, panic isolation, exact accounting, and a
//! shutdown that neither drops work in flight nor waits for idle clients.
//!
//! # Layout
//!
//! The source follows a connection's path; each line is one file's job.
//!
//! ```text
//! bind      builder.rs            Builder: the options, their validation, build()
//!           config.rs             the options the running server reads
//!           listen/mod.rs         Listen: what to listen on, and its PROXY/TLS settings
//!           listen/target.rs      ToBindAddr: what bind() accepts, resolved
//!           listen/open.rs        opening each Listen: bind it, or take it over
//!           listen/bind.rs        Listener: TCP and Unix sockets, std and systemd ones
//!           socket_file.rs        Unix socket files made without races, removed if ours
//! accept    server/accept.rs      the accept loops (one a listener, or several): accept, admit, spawn; close
//!           backoff.rs            accept errors: skip, back off, or stop
//! admission admission.rs          the connection limit and the per-address limit
//!           server/overload.rs    a full server takes places back (Slowloris)
//! task      server/task.rs        a connection's task: panics caught, outcome counted
//!           preamble.rs           before the handler: the PROXY header, the TLS handshake
//!           proxy/                PROXY protocol: parse.rs, tlv.rs, read.rs
//!           tls.rs                TLS settings and the handshake (feature `tls`)
//!           handler.rs            the Handler trait
//!           conn/mod.rs           Connection: the stream a handler gets, and its facts
//!           conn/split.rs         Connection::into_split: owned read and write halves
//!           conn/subtask.rs       Connection::spawn: sub-tasks, parts of their connection
//!           conn/record.rs        a connection's record; its listener's shared part
//!           conn/registry.rs      the live connections: drained, expired, aborted
//!           timeout.rs            the timeouts' rules
//!           server/sweeper.rs     the thread that applies them every tick
//! drain     shutdown.rs           the trigger and the connections' signal
//!           signal.rs             Ctrl-C and SIGTERM
//!           server/mod.rs         Server::run: the two phases, the drain, the report
//! report    stats.rs              live counters; the report's arithmetic
//!           metrics.rs            the counters through the `metrics` facade (feature `metrics`)
//! restart   handover/             zero-downtime restart: protocol.rs, control.rs,
//!                                 inherited.rs, pair.rs, and the server glue in mod.rs
//! support   addr.rs, error.rs, log_limit.rs, testing.rs, sync.rs (std or loom),
//!           shard.rs (per-core copies of the shared counters, places, registry),
//!           server/bench.rs (the bookkeeping, for the contention bench)
//! ```
//!
//! Modules depend downwards only: `conn` knows nothing of `server`, `handler`
//! nothing of the task that runs it, `handover` nothing of `listen`.
//!
//! # Runtime
//!
//! switchboard runs on the caller's tokio runtime, multi-thread or
//! current-thread, and never creates one. When any timeout is set (the idle
//! timeout is, by default), `run` starts one small thread of its own,
//! `switchboard-sweeper`, that wakes every tick to close expired
//! connections: a tokio timer would cost every wake-up of the runtime more
//! than the thread costs once. It ends before `run` returns.
//!
//! On a runtime of many worker threads, nothing a connection's start or end
//! writes is shared by every core: the counters, the connection limit's
//! free places and the registry of live connections are split per core,
//! and a snapshot, the drain and the sweeper visit every part. One accept
//! task per listener takes every connection, as the hand-written loop does;
//! [`Builder::accept_tasks`] lets several take them from the same socket. The library
//! never prints; it
//! speaks through `tracing` (`info` for lifecycle, `debug` per connection,
//! `warn` for accept and handler errors, `error` for panics).

// Library code states the invariant behind every unwrap (as an `expect`);
// unit tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
// docs.rs marks each item that needs a feature with the feature's name.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod addr;
mod admission;
mod backoff;
mod builder;
mod config;
mod conn;
mod error;
mod handler;
#[cfg(all(unix, feature = "handover"))]
mod handover;
mod listen;
#[cfg(feature = "proxy-protocol")]
mod log_limit;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(any(feature = "proxy-protocol", feature = "tls"))]
mod preamble;
// Without PROXY and TLS no listener has work before its handler: a
// `Preamble` that cannot exist, so that the server's code reads the same.
#[cfg(not(any(feature = "proxy-protocol", feature = "tls")))]
#[path = "preamble_none.rs"]
mod preamble;
#[cfg(feature = "proxy-protocol")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub mod proxy;
mod server;
mod shard;
mod shutdown;
mod signal;
#[cfg(unix)]
mod socket_file;
mod stats;
mod sync;
pub mod testing;
mod timeout;
#[cfg(feature = "tls")]
mod tls;

pub use addr::Addr;
pub use admission::DEFAULT_MAX_CONNECTIONS;
pub use builder::{Builder, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT};
pub use conn::{
    Connection, OwnedReadHalf, OwnedWriteHalf, READ_CHUNK_MAX, ReadChunk, ReuniteError, Spawner,
    Transport,
};
pub use error::Error;
pub use handler::{BoxError, Handler, HandlerFn, handler_fn};
pub use listen::Listen;
pub use listen::target::ToBindAddr;
#[cfg(feature = "proxy-protocol")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub use listen::{DEFAULT_PROXY_HEADER_TIMEOUT, ProxyProtocol};
pub use server::{Server, ShutdownReport};
pub use shutdown::{ShutdownHandle, ShutdownRequested, ShutdownSignal};
pub use signal::termination;
pub use stats::{Stats, StatsSnapshot};
pub use timeout::DEFAULT_IDLE_TIMEOUT;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{
    DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONCURRENT_HANDSHAKES,
    TlsConfig, TlsConfigError, TlsInfo,
};
/// The `rustls` version this crate's TLS is built on, for
/// [`TlsConfig::new`] and [`TlsInfo`].
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls::rustls;

/// The benchmarks' view of the per-connection bookkeeping: not part of the
/// API, no semver guarantees.
#[doc(hidden)]
pub mod __bench {
    pub use crate::server::bench::{Bookkeeping, Open, Opener};
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
