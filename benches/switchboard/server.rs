//! Server mode: the bench binary re-executed with `SWITCHBOARD_BENCH_SERVER`
//! set runs one server and nothing else, so that its memory, allocations and
//! instructions are its own.
//!
//! Protocol with the bench process, one line each way:
//! - stdout, first: `listening on ADDR`;
//! - stdin `stats` → stdout `stats allocs=N reallocs=N bytes=N live_blocks=N
//!   live_bytes=N` (allocator calls and bytes so far, blocks and bytes live);
//! - stdin `exit` (or EOF) → switchboard servers trigger their graceful
//!   shutdown and time it; every server then prints
//!   `exit shutdown_ns=N` with the same counters and exits.
//!
//! Besides the mode, the bench sets [`THREADS_VAR`] (runtime worker
//! threads) and, for the `scale` scenario, [`CPUS_VAR`] (the cores the
//! server pins itself to before it starts any thread) and [`ACCEPT_TASKS_VAR`]
//! (switchboard's accept tasks per listener; see [`with_accept_tasks`]).
//!
//! Every mode runs with the same global allocator (the counting one in
//! `main.rs`), the same runtime and `TCP_NODELAY`, so that the servers differ
//! only in the code that serves a connection.

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard::{Builder, Connection, Handler, Server, ShutdownHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{GLOBAL, echo, http, routes, scale, serve};

/// The environment variable that selects server mode and names the server.
pub(crate) const MODE_VAR: &str = "SWITCHBOARD_BENCH_SERVER";
/// Runtime worker threads in server mode; 0 means a current-thread runtime.
pub(crate) const THREADS_VAR: &str = "SWITCHBOARD_BENCH_THREADS";
/// switchboard's accept tasks per listener in server mode; unset: the
/// library's default. See [`with_accept_tasks`].
pub(crate) const ACCEPT_TASKS_VAR: &str = "SWITCHBOARD_BENCH_ACCEPT_TASKS";
/// The cores (`0,1,2`) a server pins itself to; unset: not pinned.
pub(crate) const CPUS_VAR: &str = "SWITCHBOARD_BENCH_CPUS";

/// The servers the bench can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// switchboard serving the hello example's handler.
    SbHello,
    /// A hand-written accept + spawn loop running the same HTTP code.
    TokioHello,
    /// hyper 1.x's HTTP/1 server with the same body.
    HyperHello,
    /// switchboard serving the echo example's handler.
    SbEcho,
    /// A hand-written echo loop whose future holds an 8 KiB buffer.
    TokioEcho,
    /// switchboard serving that same naive echo code (8 KiB buffer, no
    /// shutdown check): the library's own cost on identical work.
    SbNaiveEcho,
    /// A hand-written echo loop that allocates its buffer once readable.
    LeanEcho,
    /// One OS thread per connection, blocking std I/O, 8 KiB stack buffer.
    ThreadEcho,
    /// switchboard running the scale scenario's churn reply
    /// ([`scale::churn_reply`]).
    SbChurn,
    /// The hand-written loop running that same code.
    TokioChurn,
    /// switchboard serving the axum example's router with the example's
    /// handler (hyper, HTTP/1.1 and h2c, graceful per connection).
    SbAxum,
    /// `axum::serve` on the same router.
    AxumServe,
}

impl Mode {
    pub(crate) const ALL: [Mode; 12] = [
        Mode::SbHello,
        Mode::TokioHello,
        Mode::HyperHello,
        Mode::SbEcho,
        Mode::TokioEcho,
        Mode::SbNaiveEcho,
        Mode::LeanEcho,
        Mode::ThreadEcho,
        Mode::SbChurn,
        Mode::TokioChurn,
        Mode::SbAxum,
        Mode::AxumServe,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::SbHello => "switchboard-hello",
            Mode::TokioHello => "tokio-hello",
            Mode::HyperHello => "hyper-hello",
            Mode::SbEcho => "switchboard-echo",
            Mode::TokioEcho => "tokio-echo",
            Mode::SbNaiveEcho => "switchboard-naive-echo",
            Mode::LeanEcho => "lean-echo",
            Mode::ThreadEcho => "thread-echo",
            Mode::SbChurn => "switchboard-churn",
            Mode::TokioChurn => "tokio-churn",
            Mode::SbAxum => "switchboard-axum",
            Mode::AxumServe => "axum-serve",
        }
    }

    pub(crate) fn is_switchboard(self) -> bool {
        matches!(
            self,
            Mode::SbHello | Mode::SbEcho | Mode::SbNaiveEcho | Mode::SbChurn | Mode::SbAxum
        )
    }
}

/// Runs the server named by [`MODE_VAR`]; returns when told to exit.
pub(crate) fn main(name: &str) {
    let Some(mode) = Mode::ALL.into_iter().find(|m| m.name() == name) else {
        eprintln!("unknown server mode {name:?}");
        std::process::exit(2);
    };
    let cfg = ServerConfig::from_env();
    // Before any thread starts, so that every thread inherits the mask; the
    // bench reads the mask back and says so when it did not take.
    if !cfg.cpus.is_empty() {
        if let Err(e) = scale::pin_current_thread(&cfg.cpus) {
            eprintln!("{name}: not pinned to cores {:?}: {e}", cfg.cpus);
        }
    }
    if mode == Mode::ThreadEcho {
        thread_echo();
        return;
    }
    let mut builder = if cfg.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.threads);
        b
    };
    let runtime = builder.enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        match mode {
            Mode::SbHello => run_switchboard(http::Hello::default(), &cfg).await,
            Mode::SbEcho => run_switchboard(echo::Echo, &cfg).await,
            Mode::TokioHello => {
                run_loop(|stream| async move {
                    let _ =
                        http::serve_http(stream, std::future::pending(), http::HEAD_TIMEOUT).await;
                })
                .await
            }
            Mode::HyperHello => run_loop(hyper_hello).await,
            Mode::TokioEcho => run_loop(naive_echo::<TcpStream>).await,
            Mode::SbNaiveEcho => run_switchboard(NaiveEcho, &cfg).await,
            Mode::LeanEcho => run_loop(lean_echo).await,
            Mode::SbChurn => run_switchboard(scale::ChurnReply, &cfg).await,
            // The accept loop as a task on the workers, where switchboard's
            // runs: the scale scenario compares the libraries, not where
            // the loop runs.
            Mode::TokioChurn => tokio::spawn(run_loop(scale::churn_reply::<TcpStream>))
                .await
                .expect("the accept loop"),
            Mode::SbAxum => run_switchboard(serve::Http::new(routes::router()), &cfg).await,
            Mode::AxumServe => crate::axum::axum_serve().await,
            Mode::ThreadEcho => unreachable!("handled above"),
        }
    });
}

/// How the bench launched this server, read from the environment.
#[derive(Debug, Clone)]
struct ServerConfig {
    /// Runtime worker threads ([`THREADS_VAR`]); 0 for a current-thread
    /// runtime. Default 2.
    threads: usize,
    /// switchboard's accept tasks per listener ([`ACCEPT_TASKS_VAR`]); `None`
    /// leaves the library's default. Only [`with_accept_tasks`] reads it.
    accept_tasks: Option<usize>,
    /// The cores to pin to ([`CPUS_VAR`]); empty: not pinned.
    cpus: Vec<usize>,
}

impl ServerConfig {
    fn from_env() -> ServerConfig {
        let var = |name: &str| std::env::var(name).ok();
        ServerConfig {
            threads: var(THREADS_VAR).and_then(|t| t.parse().ok()).unwrap_or(2),
            accept_tasks: var(ACCEPT_TASKS_VAR)
                .and_then(|n| n.trim().parse().ok())
                .filter(|&n| n > 0),
            cpus: var(CPUS_VAR)
                .map(|list| {
                    list.split(',')
                        .filter_map(|c| c.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// When `exit` arrived, so that the shutdown can be timed from the trigger.
static TRIGGERED: OnceLock<Instant> = OnceLock::new();

/// The switchboard server with its defaults on (connection limit, idle
/// timeout, TCP_NODELAY, stats, tracking, shutdown signal); `exit` triggers
/// the graceful shutdown.
async fn run_switchboard(handler: impl Handler, cfg: &ServerConfig) {
    let builder = Server::builder()
        .bind("127.0.0.1:0")
        .handler(handler)
        // Above the 10,000 idle connections the bench holds (plus any still
        // closing), so the limit is checked but never makes a client wait.
        .max_connections(15_000)
        .drain_timeout(Duration::from_secs(10));
    let server = with_accept_tasks(builder, cfg.accept_tasks)
        .build()
        .await
        .expect("bind the switchboard server");
    announce(server.local_addr().as_tcp().expect("a TCP listener"));
    let handle = server.shutdown_handle();
    spawn_commands(Some(handle));
    let report = server.run().await.expect("Server::run");
    let shutdown = TRIGGERED.get().map_or(Duration::ZERO, Instant::elapsed);
    if report.failed + report.panicked + report.aborted > 0 {
        eprintln!("switchboard server: {report}");
    }
    exit_line(shutdown);
}

/// Whether [`with_accept_tasks`] passes the count on: the scale scenario's
/// table says so when it does not.
pub(crate) const ACCEPT_TASKS_APPLIED: bool = true;

/// The one place where the bench's accept-task count ([`ACCEPT_TASKS_VAR`])
/// reaches switchboard (`None`: the library's default).
fn with_accept_tasks(builder: Builder, accept_tasks: Option<usize>) -> Builder {
    match accept_tasks {
        Some(tasks) => builder.accept_tasks(tasks),
        None => builder,
    }
}

/// The hand-written server: the accept + spawn loop people write, with
/// `TCP_NODELAY` like switchboard's default. It has no graceful shutdown:
/// `exit` ends the process.
async fn run_loop<F, Fut>(serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    announce(listener.local_addr().expect("local_addr"));
    spawn_commands(None);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            // Out of descriptors and the like: do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The naive echo: the 8 KiB buffer lives in the task's future, so every
/// idle connection keeps it. Generic, so that switchboard runs the very
/// same code ([`NaiveEcho`]).
async fn naive_echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The naive echo as a switchboard handler.
struct NaiveEcho;

impl Handler for NaiveEcho {
    type Error = Infallible;

    async fn handle(&self, conn: Connection) -> Result<(), Infallible> {
        naive_echo(conn).await;
        Ok(())
    }
}

/// The lean tokio echo as it is usually written: wait for readiness with no
/// buffer, then read into a buffer allocated only then (the same chunk size
/// as the echo example). `try_read_buf` clears the readiness only at
/// `WouldBlock`, so after each message a second buffer is allocated for the
/// read that meets it: two allocations per round trip. (A stack buffer
/// instead would be zeroed on every readiness, 4 KiB of `memset` that
/// callgrind counts byte by byte; `read_chunk` zeroes its per-thread buffer
/// once.)
async fn lean_echo(mut stream: TcpStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut buf = BytesMut::with_capacity(echo::CHUNK);
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// hyper's HTTP/1 server answering every request like the hello example.
async fn hyper_hello(stream: TcpStream) {
    let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(http::BODY.as_bytes())));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response.headers_mut().insert(
            hyper::header::SERVER,
            hyper::header::HeaderValue::from_static("switchboard-hello"),
        );
        Ok::<_, Infallible>(response)
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A thread per connection over blocking std sockets.
fn thread_echo() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    announce(listener.local_addr().expect("local_addr"));
    spawn_commands(None);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let spawned = std::thread::Builder::new().spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        if spawned.is_err() {
            // Out of threads: the connection is dropped, the bench sees it.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

pub(crate) fn announce(addr: SocketAddr) {
    println!("listening on {addr}");
}

/// Reads commands from stdin on a thread of its own, so that it works the
/// same whatever the server's runtime.
pub(crate) fn spawn_commands(shutdown: Option<ShutdownHandle>) {
    let shutdown = shutdown.map(Arc::new);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdin.lock().read_line(&mut line).unwrap_or(0);
            match line.trim() {
                "stats" if n > 0 => println!("stats {}", alloc_fields()),
                // `exit`, EOF, or anything else: end the server.
                _ => {
                    let _ = TRIGGERED.set(Instant::now());
                    match &shutdown {
                        // `run_switchboard` prints the exit line once drained.
                        Some(handle) => handle.shutdown(),
                        None => {
                            exit_line(Duration::ZERO);
                            std::process::exit(0);
                        }
                    }
                    return;
                }
            }
        }
    });
}

fn exit_line(shutdown: Duration) {
    println!(
        "exit shutdown_ns={} {}",
        shutdown.as_nanos(),
        alloc_fields()
    );
    let _ = std::io::stdout().flush();
}

fn alloc_fields() -> String {
    let stats = GLOBAL.stats();
    format!(
        "allocs={} reallocs={} bytes={} live_blocks={} live_bytes={}",
        stats.allocations,
        stats.reallocations,
        stats.bytes_allocated,
        stats.allocations.saturating_sub(stats.deallocations),
        stats
            .bytes_allocated
            .saturating_sub(stats.bytes_deallocated),
    )
}
