//! Helpers shared by the integration tests: starting and stopping a server
//! on `127.0.0.1:0`, bounding every wait, the exchanges clients repeat
//! (an echo, an HTTP/1.1 request), and the example binaries as processes.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard::{
    Addr, Builder, Connection, Error, Handler, Listen, Server, ShutdownHandle, ShutdownReport,
    Stats, handler_fn,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`], panicking with `what` if it takes longer.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(WAIT, what, fut).await
}

/// Awaits `fut` for at most `limit`, panicking with `what` if it takes longer.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A running server and what a test needs to drive it.
pub struct Running {
    /// The first TCP listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in the order they were given.
    pub addrs: Vec<Addr>,
    pub shutdown: ShutdownHandle,
    pub stats: Stats,
    pub task: JoinHandle<Result<ShutdownReport, Error>>,
}

impl Running {
    /// Triggers shutdown and waits (bounded) for the report.
    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.shutdown();
        self.finish().await
    }

    /// Waits (bounded) for `run` to return after a shutdown triggered elsewhere.
    pub async fn finish(self) -> ShutdownReport {
        within("Server::run to return", self.task)
            .await
            .expect("server task panicked")
            .expect("Server::run failed")
    }

    /// Connects a client to [`Running::addr`] (bounded).
    pub async fn connect(&self) -> TcpStream {
        within("connect", TcpStream::connect(self.addr))
            .await
            .expect("connects")
    }

    /// Every listener's address, for servers that listen on TCP only.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .map(|addr| addr.as_tcp().unwrap_or_else(|| panic!("{addr} is not TCP")))
            .collect()
    }
}

/// Builds `handler` on `127.0.0.1:0` with the builder options `configure`
/// sets, for a test that looks at the server before it runs (or never runs it).
pub async fn build(handler: impl Handler, configure: impl FnOnce(Builder) -> Builder) -> Server {
    let builder = configure(Server::builder().bind("127.0.0.1:0").handler(handler));
    builder.build().await.expect("server builds")
}

/// Starts `handler` on `127.0.0.1:0` with the builder options `configure` sets.
pub async fn start(handler: impl Handler, configure: impl FnOnce(Builder) -> Builder) -> Running {
    run(build(handler, configure).await)
}

/// Starts `handler` on the one listener `listen` describes (with the PROXY
/// protocol, TLS, ...).
pub async fn start_on(listen: Listen, handler: impl Handler) -> Running {
    let builder = Server::builder().listen(listen).handler(handler);
    run(builder.build().await.expect("server builds"))
}

/// Runs a server the test built itself (other listeners than one on
/// `127.0.0.1:0`, or a look at it before it runs).
///
/// # Panics
///
/// If the server has no TCP listener: `Running::addr` would have no value.
pub fn run(server: Server) -> Running {
    let addrs = server.local_addrs();
    let addr = addrs
        .iter()
        .find_map(Addr::as_tcp)
        .expect("a TCP listener (Running::addr)");
    let shutdown = server.shutdown_handle();
    let stats = server.stats();
    let task = tokio::spawn(server.run());
    Running {
        addr,
        addrs,
        shutdown,
        stats,
        task,
    }
}

/// A handler that does nothing: the connection is closed at once.
pub fn noop() -> impl Handler {
    handler_fn(|_conn: Connection| async { Ok::<_, std::io::Error>(()) })
}

/// A handler that sends what `look` sees of each connection to the returned
/// receiver, then closes the connection (or fails with `look`'s error,
/// sending nothing).
pub fn reporter<T, F>(look: F) -> (impl Handler, mpsc::UnboundedReceiver<T>)
where
    T: Send + 'static,
    F: Fn(&Connection) -> std::io::Result<T> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |conn: Connection| {
        let sent = look(&conn).map(|seen| {
            let _ = tx.send(seen);
        });
        async move { sent }
    });
    (handler, rx)
}

/// A handler that answers every connection with `name` and closes it, so
/// a client can tell which server it reached.
pub fn greeter(name: &'static str) -> impl Handler {
    handler_fn(move |mut conn: Connection| async move {
        conn.write_all(name.as_bytes()).await?;
        Ok::<_, std::io::Error>(())
    })
}

/// Connects to the Unix socket at `path` and reads which [`greeter`]
/// answered.
#[cfg(unix)]
pub async fn greeting(path: &std::path::Path) -> String {
    let mut client = within("connect", tokio::net::UnixStream::connect(path))
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", path.display()));
    let mut text = String::new();
    within("the greeting", client.read_to_string(&mut text))
        .await
        .expect("the greeting arrives");
    text
}

/// Asserts the report's identities.
pub fn assert_adds_up(report: &ShutdownReport) {
    assert_eq!(
        report.accepted,
        report.completed
            + report.failed
            + report.panicked
            + report.timed_out
            + report.aborted
            + report.proxy_rejected
            + report.tls_failed,
        "every accepted connection ends in exactly one outcome: {report:?}"
    );
    assert_eq!(
        report.active_at_shutdown + report.backlog_accepted,
        report.drained + report.aborted,
        "every connection live at shutdown or accepted from a queue since is drained or aborted: {report:?}"
    );
}

/// An HTTP/1.1 response as the tests see it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (head, then `Content-Length` bytes of body unless
/// `head_request`). Reads byte by byte so nothing of the next response is
/// consumed; fine for tests.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, head_request: bool) -> Response {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within("a response byte", stream.read_u8())
            .await
            .unwrap_or_else(|e| panic!("connection ended mid-head after {head:?}: {e}"));
        head.push(byte);
        assert!(head.len() < 16 * 1024, "response head too long");
    }
    let text = String::from_utf8(head).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header has a colon");
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = response
        .header("content-length")
        .expect("Content-Length present")
        .parse()
        .expect("numeric Content-Length");
    if !head_request {
        response.body = vec![0; len];
        within("the response body", stream.read_exact(&mut response.body))
            .await
            .expect("whole body");
    }
    response
}

/// Sends `request` and reads the response to it (not to a `HEAD`).
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Response {
    within("the request to be sent", stream.write_all(request))
        .await
        .expect("the request is sent");
    read_response(stream, false).await
}

/// Sends `bytes` and asserts that the same bytes come back; `what` names
/// the echo in the timeout's message.
pub async fn assert_echoes<S: AsyncRead + AsyncWrite + Unpin>(
    what: &str,
    stream: &mut S,
    bytes: &[u8],
) {
    within("the bytes to be sent", stream.write_all(bytes))
        .await
        .expect("the bytes are sent");
    let mut back = vec![0; bytes.len()];
    within(what, stream.read_exact(&mut back))
        .await
        .expect("the echo arrives whole");
    assert_eq!(back, bytes, "the echo differs from what was sent");
}

/// Connects to `addr`, sends `bytes` and reads until the server closes; a
/// reset ends the read like a close (a handler that fails or panics drops
/// the connection).
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut client = within("connect", TcpStream::connect(addr))
        .await
        .expect("connects");
    within("the bytes to be sent", client.write_all(bytes))
        .await
        .expect("the bytes are sent");
    let mut reply = Vec::new();
    let _ = within("the server to close", client.read_to_end(&mut reply)).await;
    reply
}

/// Asserts that the peer closes: the next read returns EOF (or a reset).
pub async fn assert_closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut byte = [0u8; 1];
    match within("the server to close the connection", stream.read(&mut byte)).await {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("expected the connection to be closed, got data {byte:?}"),
    }
}

/// A fresh, empty directory for this test's files (Unix sockets, a
/// certificate), named `switchboard-{name}-XXXXXX` in the system's temporary
/// directory (short enough for a Unix socket path), and removed when the
/// returned guard is dropped.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("switchboard-{name}-"))
        .tempdir()
        .expect("create a temporary directory")
}

/// Collects what a `tracing_subscriber::fmt` subscriber writes, for tests
/// that check log lines (each in a test binary of its own, since the
/// subscriber is global).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs a global subscriber at `level` writing here, without colours.
    pub fn install(level: tracing::Level) -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(level)
            .with_ansi(false)
            .init();
        logs
    }

    /// The lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// A listening socket on `127.0.0.1:0` that a child process inherits (no
/// close-on-exec), as systemd or HAProxy are handed theirs, and its address.
#[cfg(unix)]
pub fn inheritable_listener() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(64).unwrap();
    socket.set_cloexec(false).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// `cargo test` builds the examples next to the test binaries:
/// target/<profile>/examples/<name>.
pub fn example_path(name: &str) -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// An example binary running as a user runs it.
pub struct Example {
    pub child: tokio::process::Child,
    /// Kept open: the example prints its report at exit.
    pub stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
    /// The first address of its first line, `listening on ADDR[, ADDR...]`.
    pub addr: SocketAddr,
    /// Every address of that line, as printed.
    pub listening: String,
}

impl Example {
    /// Starts example `name` with `command`'s arguments and environment
    /// (`command` names the program; pass `Example::command(name)`), and
    /// reads the address it listens on. If it prints nothing, the panic
    /// shows its stderr where `command` pipes it.
    pub async fn start(mut command: tokio::process::Command) -> Example {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example starts");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        within("the `listening on` line", stdout.read_line(&mut first))
            .await
            .unwrap();
        if first.is_empty() {
            let mut err = String::from("(not piped)");
            if let Some(mut stderr) = child.stderr.take() {
                err.clear();
                let _ = within("its stderr", stderr.read_to_string(&mut err)).await;
            }
            panic!("the example printed nothing; stderr: {err}");
        }
        let listening = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is {first:?}"))
            .to_owned();
        let addr = listening
            .split(", ")
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("first line is {first:?}: a socket address first"));
        Example {
            child,
            stdout,
            addr,
            listening,
        }
    }

    /// The command that runs example `name` on `127.0.0.1:0`.
    pub fn command(name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(example_path(name));
        command
            .arg("127.0.0.1:0")
            .stderr(std::process::Stdio::null());
        command
    }

    /// Sends SIGTERM, expects exit status 0, returns the rest of stdout.
    pub async fn terminate(self) -> String {
        let pid = self.child.id().expect("still running").to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(kill.success());
        self.exit().await
    }

    /// Waits for the example to exit by itself, expects status 0, returns
    /// the rest of stdout.
    pub async fn exit(mut self) -> String {
        let status = within("the example to exit", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}");
        let mut rest = String::new();
        within("the rest of stdout", self.stdout.read_to_string(&mut rest))
            .await
            .unwrap();
        rest
    }
}

/// `shutdown report: accepted N, ...` -> N.
pub fn accepted_in(report: &str) -> u64 {
    report
        .split("accepted ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accepted count in {report:?}"))
}

// ---- the descriptor table (tests that run out of descriptors) -------------

/// How many descriptors this process has open.
#[cfg(target_os = "linux")]
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// This process's RLIMIT_NOFILE: (soft, hard).
#[cfg(target_os = "linux")]
pub fn nofile_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a NOFILE line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Sets this process's RLIMIT_NOFILE, through util-linux's `prlimit`.
#[cfg(target_os = "linux")]
pub fn set_nofile(soft: u64, hard: u64) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");
    assert_eq!(nofile_limits().0, soft);
}

/// Opens `/dev/null` until the process has no descriptor left (the limit
/// lowered first with [`set_nofile`]), and returns the files.
#[cfg(target_os = "linux")]
pub fn fill_descriptor_table() -> Vec<std::fs::File> {
    const EMFILE: i32 = 24;
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => filler.push(file),
            Err(err) if err.raw_os_error() == Some(EMFILE) => return filler,
            Err(err) => panic!("unexpected error filling the table: {err}"),
        }
        assert!(filler.len() < 1000, "the lowered limit did not take effect");
    }
}

// ---- raw loopback sockets ---------------------------------------------------

/// A connected pair over `listener`: (the client, the server's side).
pub async fn tcp_pair(listener: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
    let addr = listener.local_addr().expect("listener address");
    let (client, accepted) = within("a loopback connection", async {
        tokio::join!(TcpStream::connect(addr), listener.accept())
    })
    .await;
    (client.expect("connect"), accepted.expect("accept").0)
}

/// Sends `bytes` from `client` and returns once all of them are in
/// `server`'s socket (unread).
pub async fn send_and_arrive(client: &mut TcpStream, server: &TcpStream, bytes: &[u8]) {
    within("client write", client.write_all(bytes))
        .await
        .expect("client write");
    within("the bytes to arrive", async {
        let mut probe = vec![0; bytes.len()];
        while server.peek(&mut probe).await.expect("peek") < bytes.len() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Polls `fut` once.
pub async fn poll_once<F: Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
}

/// A keep-alive handler of one-byte requests: answers `ok` to each, and
/// closes when shutdown begins, at once if idle, or after answering the
/// request that is already there. Says on `answered` when it answered.
pub fn keep_alive(answered: mpsc::UnboundedSender<()>) -> impl switchboard::Handler {
    handler_fn(move |mut conn: Connection| {
        let answered = answered.clone();
        async move {
            let mut shutdown = conn.shutdown_requested();
            let mut request = [0u8; 1];
            loop {
                // A request already there is answered, signal or not.
                let n = tokio::select! {
                    biased;
                    n = conn.read(&mut request) => n?,
                    () = &mut shutdown => return Ok(()),
                };
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                conn.write_all(b"ok").await?;
                let _ = answered.send(());
                if conn.is_shutting_down() {
                    return Ok(());
                }
            }
        }
    })
}

/// Reads what the server sends until it closes; a reset ends it too.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        match within("the server to answer and close", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// `n` clients of `running`, each connected and having sent `request`.
/// `connect` returns once the kernel completed the connection: each client
/// is in the server's queue (or served) from then on.
pub async fn clients_sent(running: &Running, n: usize, request: &[u8]) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = running.connect().await;
        within("the request to be sent", client.write_all(request))
            .await
            .unwrap();
        clients.push(client);
    }
    clients
}
