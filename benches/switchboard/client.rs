//! The load generator: the bench process's own clients, the same for every
//! server. Every loop is bounded by a deadline and an operation count, every
//! operation by a timeout, and errors are counted rather than fatal.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a churn client sends: one request, then the server closes.
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
/// What a keep-alive HTTP client sends, again and again on one connection.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
/// The echo payload of a keep-alive round trip.
pub(crate) const PAYLOAD: [u8; 64] = [b'x'; 64];
/// The most response bytes a client reads before it calls the answer wrong.
const MAX_RESPONSE: usize = 64 * 1024;
/// A client task gives up after this many errors, so a broken server cannot
/// keep the bench busy.
const MAX_ERRORS_PER_TASK: u64 = 50;

/// How much load to send: until `duration` has passed or `max_ops`
/// operations were started, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) duration: Duration,
    pub(crate) max_ops: u64,
    /// The bound on one operation.
    pub(crate) op_timeout: Duration,
    /// A pause after each operation, so that the server always finds its
    /// socket drained and parks before the next request: then every
    /// operation takes the same path (for instruction counts).
    pub(crate) pace: Option<Duration>,
}

impl Budget {
    /// A timed load.
    pub(crate) fn timed(duration: Duration) -> Budget {
        Budget {
            duration,
            max_ops: u64::MAX,
            op_timeout: Duration::from_secs(5),
            pace: None,
        }
    }

    /// A load of a fixed number of operations, bounded in time all the same.
    pub(crate) fn counted(max_ops: u64, limit: Duration) -> Budget {
        Budget {
            duration: limit,
            max_ops,
            op_timeout: Duration::from_secs(30),
            pace: None,
        }
    }

    /// The same budget with a pause after each operation.
    pub(crate) fn paced(self, pace: Duration) -> Budget {
        Budget {
            pace: Some(pace),
            ..self
        }
    }
}

/// The outcome of a load.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    /// Latency of every successful operation, in microseconds.
    pub(crate) latencies_us: Vec<u32>,
}

impl Load {
    /// Successful operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The 99th percentile latency in microseconds.
    pub(crate) fn p99_us(&mut self) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = (self.latencies_us.len() * 99).div_ceil(100) - 1;
        f64::from(self.latencies_us[i])
    }

    /// A one-line description of what went wrong, if anything did.
    pub(crate) fn problem(&self) -> Option<String> {
        (self.errors > 0).then(|| {
            format!(
                "{} errors in {} ops (first: {})",
                self.errors,
                self.ops + self.errors,
                self.first_error.as_deref().unwrap_or("?")
            )
        })
    }
}

/// One new connection per request (`Connection: close`), `clients` at a time.
pub(crate) async fn churn(server: SocketAddr, clients: usize, budget: Budget) -> Load {
    drive(server, clients, budget, || Churn(Vec::with_capacity(1024))).await
}

/// `clients` persistent connections, each doing 64-byte echo round trips.
pub(crate) async fn echo(server: SocketAddr, clients: usize, budget: Budget) -> Load {
    drive(server, clients, budget, || Echo([0; PAYLOAD.len()])).await
}

/// `clients` persistent HTTP/1.1 connections, one request in flight each.
pub(crate) async fn http(server: SocketAddr, clients: usize, budget: Budget) -> Load {
    drive(server, clients, budget, || {
        Http(BytesMut::with_capacity(4096))
    })
    .await
}

/// One operation of a workload, on a connection the client task holds.
trait Exchange: Send + 'static {
    /// Whether the connection serves the next operation too.
    const PERSISTENT: bool;

    /// Forgets what a previous connection left behind.
    fn reset(&mut self) {}

    fn once(&mut self, stream: &mut TcpStream) -> impl Future<Output = io::Result<()>> + Send;
}

/// One request with `Connection: close`; the server closes.
struct Churn(Vec<u8>);

impl Exchange for Churn {
    const PERSISTENT: bool = false;

    async fn once(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        stream.write_all(REQUEST_CLOSE).await?;
        self.0.clear();
        stream
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut self.0)
            .await?;
        if !self.0.starts_with(b"HTTP/1.1 200 ") {
            return Err(io::Error::other("not a 200 response"));
        }
        Ok(())
    }
}

/// A 64-byte echo round trip.
struct Echo([u8; PAYLOAD.len()]);

impl Exchange for Echo {
    const PERSISTENT: bool = true;

    async fn once(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        stream.write_all(&PAYLOAD).await?;
        stream.read_exact(&mut self.0).await?;
        Ok(())
    }
}

/// A keep-alive HTTP request and its whole response.
struct Http(BytesMut);

impl Exchange for Http {
    const PERSISTENT: bool = true;

    fn reset(&mut self) {
        self.0.clear();
    }

    async fn once(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        stream.write_all(REQUEST).await?;
        read_response(stream, &mut self.0).await
    }
}

/// One client task: operations while the budget lasts, on a connection
/// kept while the workload allows and nothing failed.
async fn run<E: Exchange>(server: SocketAddr, shared: Arc<Shared>, mut exchange: E) -> Tally {
    let mut tally = Tally::default();
    let mut stream = None;
    while shared.take() {
        let start = Instant::now();
        let result = tokio::time::timeout(shared.op_timeout, async {
            if stream.is_none() {
                exchange.reset();
                stream = Some(connect(server).await?);
            }
            let s = stream.as_mut().expect("just connected");
            exchange.once(s).await
        })
        .await;
        if !E::PERSISTENT || !matches!(result, Ok(Ok(()))) {
            stream = None;
        }
        tally.record(start, result).await;
        shared.pause().await;
        if tally.errors > MAX_ERRORS_PER_TASK {
            break;
        }
    }
    tally
}

/// Reads one `200` response with a `Content-Length` body and consumes it.
async fn read_response(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        fill(stream, buf).await?;
    };
    let head = &buf[..head_end];
    if !head.starts_with(b"HTTP/1.1 200 ") {
        return Err(io::Error::other("not a 200 response"));
    }
    let body_len = content_length(head).ok_or_else(|| io::Error::other("no content-length"))?;
    while buf.len() < head_end + body_len {
        fill(stream, buf).await?;
    }
    buf.advance(head_end + body_len);
    Ok(())
}

async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    if buf.len() >= MAX_RESPONSE {
        return Err(io::Error::other("response too large"));
    }
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"content-length") {
            return None;
        }
        std::str::from_utf8(&line[colon + 1..])
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Opens connections until `held` has `total`, each doing one echo round
/// trip so that its server-side handler is parked in a read.
///
/// The held sockets leave this runtime (`into_std`): an idle client does
/// nothing, so when the server closes them this process must not wake on
/// every FIN and compete with the server for the machine's two cores. A
/// client on another machine would not; the kernel's receive path over
/// loopback still runs, inline in the server's `close`.
pub(crate) async fn hold(
    server: SocketAddr,
    total: usize,
    held: &mut Vec<std::net::TcpStream>,
    limit: Duration,
) -> Result<(), String> {
    const WORKERS: usize = 64;
    let more = total.saturating_sub(held.len());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let count = more / WORKERS + usize::from(w < more % WORKERS);
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(count);
            let mut back = [0u8; PAYLOAD.len()];
            for _ in 0..count {
                let mut s = connect(server).await?;
                s.write_all(&PAYLOAD).await?;
                s.read_exact(&mut back).await?;
                mine.push(s.into_std()?);
            }
            Ok::<_, io::Error>(mine)
        });
    }
    let collected = tokio::time::timeout(limit, async {
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(mine)) => held.extend(mine),
                Ok(Err(e)) => first_error = first_error.or(Some(e.to_string())),
                Err(e) => first_error = first_error.or(Some(e.to_string())),
            }
        }
        first_error
    })
    .await;
    match collected {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(format!(
            "holding {total} connections: {e} ({} held)",
            held.len()
        )),
        Err(_) => Err(format!(
            "holding {total} connections: timed out ({} held)",
            held.len()
        )),
    }
}

/// Connects from a different loopback source address each time (all of
/// 127.1.0.0/16 routes to `lo`), so that tens of thousands of short
/// connections in TIME_WAIT never exhaust one address's ephemeral ports.
async fn connect(server: SocketAddr) -> io::Result<TcpStream> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed) % (250 * 250);
    // Both bytes are below 251 by the modulo above.
    let (hi, lo) = ((k / 250) as u8, (k % 250) as u8);
    let source = SocketAddr::from(([127, 1, hi + 1, lo + 1], 0));
    let socket = TcpSocket::new_v4()?;
    socket.bind(source)?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What the client tasks share: the budget left.
struct Shared {
    deadline: Instant,
    max_ops: u64,
    op_timeout: Duration,
    pace: Option<Duration>,
    started: AtomicU64,
}

impl Shared {
    /// Claims one operation if the budget has any left.
    fn take(&self) -> bool {
        Instant::now() < self.deadline
            && self.started.fetch_add(1, Ordering::Relaxed) < self.max_ops
    }

    async fn pause(&self) {
        if let Some(pace) = self.pace {
            tokio::time::sleep(pace).await;
        }
    }
}

/// One client task's results.
#[derive(Debug, Default)]
struct Tally {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    async fn record(
        &mut self,
        start: Instant,
        result: Result<io::Result<()>, tokio::time::error::Elapsed>,
    ) {
        let error = match result {
            Ok(Ok(())) => {
                self.ops += 1;
                let us = start.elapsed().as_micros();
                self.latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.errors += 1;
        self.first_error.get_or_insert(error);
        // Do not hammer a server that refuses or resets.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `clients` client tasks, each with its own exchange from `exchange`,
/// and merges their tallies.
async fn drive<E: Exchange>(
    server: SocketAddr,
    clients: usize,
    budget: Budget,
    exchange: impl Fn() -> E,
) -> Load {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: start + budget.duration,
        max_ops: budget.max_ops,
        op_timeout: budget.op_timeout,
        pace: budget.pace,
        started: AtomicU64::new(0),
    });
    let handles: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(run(server, Arc::clone(&shared), exchange())))
        .collect();
    let mut load = Load::default();
    for handle in handles {
        match handle.await {
            Ok(tally) => {
                load.ops += tally.ops;
                load.errors += tally.errors;
                if load.first_error.is_none() {
                    load.first_error = tally.first_error;
                }
                load.latencies_us.extend(tally.latencies_us);
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    load.elapsed = start.elapsed();
    load
}
