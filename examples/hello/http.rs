//! A small, correct HTTP/1.1 "hello" server as a switchboard `Handler`.
//!
//! It reads each request head under an 8 KiB cap and a deadline (10 s from
//! its first byte, as Go's `ReadHeaderTimeout` or nginx's
//! `client_header_timeout`: a client that trickles its head in gets `408`),
//! parses it with `httparse` (the parser hyper uses), answers `GET` and `HEAD` with `Hello from async Rust!`, keeps connections
//! alive as HTTP/1.1 says (`Connection: close` and HTTP/1.0 are honoured),
//! answers `Expect: 100-continue` (a `100 Continue` before reading a body
//! it accepts, the final response at once for one it refuses), and once
//! the server begins shutting down it answers the request in flight with
//! `Connection: close` and returns, so idle keep-alive clients never hold a
//! shutdown up.
//!
//! The HTTP logic is generic over the byte stream ([`Stream`]), so that the
//! benchmarks' hand-written tokio server runs exactly the same code on a bare
//! `TcpStream` as the [`Hello`] handler runs on a switchboard `Connection`.
//!
//! Shared by the `hello` example, its tests and the benchmarks.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use switchboard::{Connection, Handler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The body of every successful response.
pub(crate) const BODY: &str = "Hello from async Rust!";
/// The largest request head (request line and headers) read; a larger one
/// gets `431 Request Header Fields Too Large`.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The most header fields a request head may have (hyper's default too); a
/// head with more gets `431`. They are parsed into an array on the stack.
pub(crate) const MAX_HEADERS: usize = 100;
/// The largest request body read (and discarded); a larger one gets `413`.
pub(crate) const MAX_BODY: u64 = 64 * 1024;
/// How long a request head may take from its first byte to its blank line
/// before the client gets `408 Request Timeout`. It bounds a client that
/// keeps a connection busy by sending its head a byte at a time, which the
/// server's idle timeout cannot see (the connection is never idle). The
/// wait for the next request on a kept-alive connection is not part of it.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Once shutdown has begun, how long a new connection may take to send its
/// first request before it is closed.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// After an error response, how long and how much the handler keeps reading
/// before it closes, so that the client sees the response instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 64 * 1024;

/// The HTTP hello handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hello {
    /// The request head deadline; see [`HEAD_TIMEOUT`].
    pub(crate) head_timeout: Duration,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

impl Handler for Hello {
    type Error = io::Error;

    async fn handle(&self, conn: Connection) -> io::Result<()> {
        let shutdown = conn.shutdown_requested();
        serve_http(conn, shutdown, self.head_timeout).await
    }
}

/// A byte stream the HTTP logic can serve, and whether its server is
/// shutting down.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Asked after each request: once true, the response says
    /// `Connection: close` and the connection ends.
    fn is_shutting_down(&self) -> bool;
}

impl Stream for Connection {
    fn is_shutting_down(&self) -> bool {
        Connection::is_shutting_down(self)
    }
}

/// A bare socket, as a hand-written server without graceful shutdown has.
impl Stream for TcpStream {
    fn is_shutting_down(&self) -> bool {
        false
    }
}

/// Serves HTTP requests on `conn` until the client closes, or until
/// `shutdown` completes (then an idle connection ends at once, and a request
/// in flight is answered with `Connection: close`). Each request head must
/// be complete within `head_timeout` of its first byte ([`HEAD_TIMEOUT`]
/// suits most uses).
pub(crate) async fn serve_http<S: Stream>(
    conn: S,
    shutdown: impl Future<Output = ()>,
    head_timeout: Duration,
) -> io::Result<()> {
    match serve(conn, shutdown, head_timeout).await {
        // A client that resets or vanishes is not a server failure.
        Err(err) if client_gone(&err) => Ok(()),
        result => result,
    }
}

fn client_gone(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// Serves requests on one connection until it closes or shutdown begins.
async fn serve<S: Stream>(
    mut conn: S,
    shutdown: impl Future<Output = ()>,
    head_timeout: Duration,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut out = Vec::with_capacity(256);
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let head = read_head(&mut conn, &mut buf, shutdown.as_mut(), first, head_timeout).await?;
        first = false;
        let (start, end) = match head {
            Head::Complete { start, end } => (start, end),
            Head::Idle => return Ok(()),
            Head::TooLarge => return reject(conn, Status::HeaderFieldsTooLarge).await,
            Head::TimedOut => return reject(conn, Status::RequestTimeout).await,
        };
        let request = match parse_head(&buf[start..end]) {
            Ok(request) => request,
            Err(status) => return reject(conn, status).await,
        };
        buf.advance(end);
        // Refusals that do not depend on the body come before it, so that a
        // client waiting for `100 Continue` gets its answer at once (RFC
        // 9110 §10.1.1). Having answered without reading the body, the
        // server cannot tell whether the client sends it anyway: it closes.
        if request.content_length > MAX_BODY {
            return reject(conn, Status::PayloadTooLarge).await;
        }
        if request.expect_continue && request.content_length > 0 {
            if request.method == Method::Other {
                out.clear();
                write_response(&mut out, &request, false);
                return send_and_close(conn, &out).await;
            }
            // A client that did not wait (part of the body is here) needs
            // no interim response.
            if buf.is_empty() {
                conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
        }
        if !discard_body(&mut conn, &mut buf, request.content_length).await? {
            return Ok(()); // the client left mid-body: nobody to answer
        }
        let keep_alive = request.keep_alive && !conn.is_shutting_down();
        out.clear();
        write_response(&mut out, &request, keep_alive);
        conn.write_all(&out).await?;
        if !keep_alive {
            return conn.shutdown().await;
        }
    }
}

/// A response status this server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    HeaderFieldsTooLarge,
    NotImplemented,
    VersionNotSupported,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::PayloadTooLarge => "413 Content Too Large",
            Status::HeaderFieldsTooLarge => "431 Request Header Fields Too Large",
            Status::NotImplemented => "501 Not Implemented",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

/// What the handler needs to know of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: Method,
    /// HTTP/1.1 (true) or HTTP/1.0.
    pub(crate) http11: bool,
    pub(crate) keep_alive: bool,
    pub(crate) content_length: u64,
    /// `Expect: 100-continue` in an HTTP/1.1 request: the client may wait
    /// for `100 Continue` before it sends the body.
    pub(crate) expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Other,
}

enum Head {
    /// A complete head is buffered at `start..end` (terminator included);
    /// empty lines before it end at `start`.
    Complete {
        start: usize,
        end: usize,
    },
    /// The client closed, or shutdown began, between requests.
    Idle,
    TooLarge,
    /// Not complete within the head deadline.
    TimedOut,
}

/// Reads until the buffer holds a complete request head. `first`: this is
/// the connection's first request, which a client that just connected is
/// about to send. The head must be complete within `timeout` of the read
/// that brought its first byte (for bytes already buffered, of the call).
async fn read_head<S: Stream>(
    conn: &mut S,
    buf: &mut BytesMut,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    first: bool,
    timeout: Duration,
) -> io::Result<Head> {
    let mut searched = 0;
    // Set only once a read has left the head incomplete: a head that comes
    // whole in one read, as nearly all do, never touches the clock.
    let mut deadline = None;
    loop {
        // RFC 9112 §2.2: empty lines before the request line are ignored
        // (they still count towards the cap and the deadline).
        let start = leading_empty_lines(buf);
        if let Some(end) = find_head_end(buf, searched.max(start)) {
            return Ok(if end > MAX_HEAD {
                Head::TooLarge
            } else {
                Head::Complete { start, end }
            });
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        if !buf.is_empty() && deadline.is_none() {
            deadline = Some(Instant::now() + timeout);
        }
        // The terminator may straddle two reads: search its last 3 bytes again.
        searched = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        let read = if start == buf.len() {
            // Between requests: this is where an idle keep-alive connection
            // waits, so this is where it leaves when shutdown begins. The read
            // comes first so that a request that has already arrived is
            // answered (with `Connection: close`) rather than dropped.
            tokio::select! {
                biased;
                n = read_before(conn, buf, deadline) => n?,
                () = &mut shutdown => {
                    if !first {
                        return Ok(Head::Idle);
                    }
                    // A connection accepted just before shutdown began has
                    // its first request on the way: closing it now would
                    // fail a client that did nothing wrong. Wait briefly.
                    match tokio::time::timeout(FIRST_REQUEST_GRACE, conn.read_buf(buf)).await {
                        Ok(n) => Some(n?),
                        Err(_elapsed) => return Ok(Head::Idle),
                    }
                }
            }
        } else {
            read_before(conn, buf, deadline).await?
        };
        match read {
            None => return Ok(Head::TimedOut),
            // EOF: between requests a normal close; mid-head nothing to answer.
            Some(0) => return Ok(Head::Idle),
            Some(_) => {}
        }
    }
}

/// Reads into `buf`, by `deadline` if there is one: `None` when it passed.
async fn read_before<S: Stream>(
    conn: &mut S,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> io::Result<Option<usize>> {
    match deadline {
        None => conn.read_buf(buf).await.map(Some),
        Some(deadline) => match tokio::time::timeout_at(deadline, conn.read_buf(buf)).await {
            Ok(n) => n.map(Some),
            Err(_elapsed) => Ok(None),
        },
    }
}

/// How many bytes of empty lines (`\r\n`) `buf` starts with.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    start
}

/// The length of the head (through the blank line) if `buf` holds one.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|pos| from + pos + 4)
}

/// Parses a request head (request line, headers, blank line) with
/// `httparse`, the parser hyper uses, and keeps what the handler needs.
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, Status> {
    // Uninitialised slots, which httparse fills as it parses (safe API): an
    // array of empty headers would cost a 3 KiB fill on every request.
    let mut headers = [std::mem::MaybeUninit::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        // The caller found the blank line, so a partial head is malformed.
        Ok(httparse::Status::Partial) => return Err(Status::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Err(Status::HeaderFieldsTooLarge),
        Err(httparse::Error::Version) => return parse_later_version(head),
        Err(_) => return Err(Status::BadRequest),
    }
    let http11 = parsed.version == Some(1);
    let method = match parsed.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let (mut close, mut keep_alive_token, mut expect_continue) = (false, false, false);
    let mut content_length: Option<u64> = None;
    let mut hosts = 0;
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(value).ok_or(Status::BadRequest)?;
            if content_length.is_some_and(|seen| seen != len) {
                return Err(Status::BadRequest);
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are not supported by this small server.
            return Err(Status::NotImplemented);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is a 400.
    if http11 && hosts != 1 {
        return Err(Status::BadRequest);
    }
    Ok(Request {
        method,
        http11,
        keep_alive: if http11 {
            !close
        } else {
            keep_alive_token && !close
        },
        content_length: content_length.unwrap_or(0),
        // RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored.
        expect_continue: expect_continue && http11,
    })
}

/// A head whose version `httparse` refused: it knows HTTP/1.0 and 1.1 only.
/// RFC 9110 §2.5: a later minor version of a major version the server
/// implements is processed as the highest minor version it implements (and
/// every response says HTTP/1.1); another major version gets `505`.
fn parse_later_version(head: &[u8]) -> Result<Request, Status> {
    // The version is what follows the request line's second space (httparse
    // allows one space after the method and one after the target).
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut spaces = line.iter().enumerate().filter(|&(_, &b)| b == b' ');
    let at = spaces.nth(1).map_or(line.len(), |(i, _)| i + 1);
    match line[at..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if (b'2'..=b'9').contains(&minor) => {
            // Parsed again as HTTP/1.1, which httparse accepts (and which
            // this arm does not match again). A rare request: the copy costs
            // the common path nothing.
            let mut as_1_1 = head.to_vec();
            as_1_1[at + 7] = b'1';
            parse_head(&as_1_1)
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(Status::VersionNotSupported)
        }
        _ => Err(Status::BadRequest),
    }
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reads and drops a request body of `len` bytes, part of which may be
/// buffered already. Returns `false` if the client closed first.
async fn discard_body<S: Stream>(conn: &mut S, buf: &mut BytesMut, len: u64) -> io::Result<bool> {
    let buffered = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    buf.advance(buffered);
    let mut rest = len - buffered as u64;
    if rest == 0 {
        return Ok(true);
    }
    let copied = tokio::io::copy(&mut (&mut *conn).take(rest), &mut tokio::io::sink()).await?;
    rest -= copied;
    Ok(rest == 0)
}

fn write_response(out: &mut Vec<u8>, request: &Request, keep_alive: bool) {
    let status = match request.method {
        Method::Get | Method::Head => Status::Ok,
        Method::Other => Status::MethodNotAllowed,
    };
    let body = if status == Status::Ok {
        BODY
    } else {
        "method not allowed\n"
    };
    write_head(out, status, body.len(), keep_alive, request.http11);
    if status == Status::MethodNotAllowed {
        // Inserted before the blank line that ends the head.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Allow: GET, HEAD\r\n\r\n");
    }
    if request.method != Method::Head {
        out.extend_from_slice(body.as_bytes());
    }
}

fn write_head(out: &mut Vec<u8>, status: Status, body_len: usize, keep_alive: bool, http11: bool) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.line().as_bytes());
    out.extend_from_slice(b"\r\nServer: switchboard-hello\r\nDate: ");
    write_http_date(out);
    let _ = write!(
        out,
        "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\n"
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if !http11 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends an error response, then closes the connection without losing it
/// to a reset: see [`LINGER`].
async fn reject<S: Stream>(conn: S, status: Status) -> io::Result<()> {
    let body = format!("{}\n", status.line());
    let mut out = Vec::with_capacity(256);
    write_head(&mut out, status, body.len(), false, true);
    out.extend_from_slice(body.as_bytes());
    send_and_close(conn, &out).await
}

/// Sends `out`, a response that says `Connection: close`, then closes the
/// connection without losing the response to a reset: see [`LINGER`].
async fn send_and_close<S: Stream>(mut conn: S, out: &[u8]) -> io::Result<()> {
    conn.write_all(out).await?;
    conn.shutdown().await?;
    // Closing with unread bytes in the receive queue makes the kernel send a
    // reset, which can destroy the response before the client reads it.
    // Read (and drop) what the client is still sending, briefly and boundedly.
    let mut rest = (&mut conn).take(LINGER_BYTES);
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut rest, &mut sink)).await;
    Ok(())
}

/// Appends the current time as an HTTP date, formatted at most once a
/// second per thread.
fn write_http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}
