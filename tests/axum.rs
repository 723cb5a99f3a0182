//! The axum example, run as a user runs it (started on port 0, stopped with
//! SIGTERM) and talked to by real clients: curl over HTTP/1.1 and h2c, raw
//! HTTP/1.1, and a minimal HTTP/2 client written here frame by frame, so
//! that the test knows exactly which bytes the server has been sent and
//! sees each GOAWAY the server sends. Plus one in-process test of the
//! example's handler where only the builder can set the situation up.
#![cfg(unix)]

mod common;
#[allow(dead_code)] // the example's module has more than these tests use
#[path = "../examples/axum/routes.rs"]
mod routes;
#[allow(dead_code)] // the example's module has more than these tests use
#[path = "../examples/axum/serve.rs"]
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{Example, assert_closed, read_response, request, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const GET_SLOW: &[u8] = b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n";

async fn launch() -> Example {
    Example::start(Example::command("axum")).await
}

/// Sends SIGTERM without waiting for the exit, so that the test can watch
/// its clients while the example drains.
async fn sigterm(example: &Example) {
    let pid = example.child.id().expect("still running").to_string();
    let kill = within(
        "kill",
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status(),
    )
    .await
    .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid} failed");
}

/// Runs curl against `url` with `protocol` (`--http1.1`, ...): its exit
/// status, stdout, and the HTTP version it used. `None` if curl is not
/// installed.
async fn curl(protocol: &str, url: &str) -> Option<(std::process::ExitStatus, String, String)> {
    let run = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            protocol,
            "--write-out",
            "\n%{http_version}",
            url,
        ])
        .kill_on_drop(true)
        .output();
    let out = match within("curl", run).await {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => panic!("curl: {err}"),
    };
    let text = String::from_utf8(out.stdout).expect("UTF-8 from curl");
    let (body, version) = text.rsplit_once('\n').expect("curl's --write-out line");
    Some((out.status, body.to_owned(), version.to_owned()))
}

#[tokio::test]
async fn curl_gets_the_greeting_over_http1_and_h2c_on_one_port() {
    let example = launch().await;
    let url = format!("http://{}/", example.addr);
    for (protocol, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let Some((status, body, used)) = curl(protocol, &url).await else {
            eprintln!("SKIPPED: curl is not installed; the other tests cover both protocols");
            return;
        };
        assert!(status.success(), "curl {protocol}: {status}");
        assert_eq!(body, routes::HELLO, "curl {protocol}");
        assert_eq!(used, version, "curl {protocol} spoke HTTP/{used}");
    }
    let out = example.terminate().await;
    assert!(
        out.contains("shutdown report: accepted 2, completed 2, failed 0"),
        "{out}"
    );
}

/// A request sent before SIGTERM is the server's to answer, whether the
/// signal lands while the handler sleeps or before hyper has read it: the
/// answer is `done`, with `Connection: close`, and the connection then
/// closes.
#[tokio::test]
async fn a_slow_http1_request_sent_before_sigterm_is_answered() {
    let example = launch().await;
    let mut client = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    within("the request to be sent", client.write_all(GET_SLOW))
        .await
        .unwrap();
    sigterm(&example).await;
    let response = read_response(&mut client, false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, routes::DONE.as_bytes());
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut client).await;
    let out = example.exit().await;
    assert!(
        out.contains("shutdown report: accepted 1, completed 1, failed 0"),
        "{out}"
    );
    assert!(out.contains(" 0 aborted"), "{out}");
}

/// The same over h2c: the server's GOAWAY comes while the stream is open,
/// the stream is finished all the same, and the connection then closes.
#[tokio::test]
async fn a_slow_h2c_request_sent_before_sigterm_is_answered_after_a_goaway() {
    let example = launch().await;
    let mut client = H2::connect(example.addr).await;
    client.get(1, "/slow").await;
    sigterm(&example).await;
    client.until_closed().await;
    assert!(client.goaway.is_some(), "no GOAWAY before the close");
    assert_eq!(client.body(1), routes::DONE.as_bytes());
    assert!(client.ended(1), "stream 1 was not finished");
    let out = example.exit().await;
    assert!(
        out.contains("shutdown report: accepted 1, completed 1, failed 0"),
        "{out}"
    );
    assert!(out.contains(" 0 aborted"), "{out}");
}

/// Idle keep-alive connections, HTTP/1.1 and h2c, do not hold the exit up:
/// the HTTP/1.1 one is closed, the h2c one gets a GOAWAY that refuses no
/// stream it opened, then is closed.
#[tokio::test]
async fn idle_keep_alive_connections_close_at_sigterm() {
    let example = launch().await;
    let mut http1 = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    let response = request(&mut http1, GET).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), None, "kept alive");
    let mut h2 = H2::connect(example.addr).await;
    h2.get(1, "/").await;
    h2.until_ended(1).await;
    assert_eq!(h2.body(1), routes::HELLO.as_bytes());

    sigterm(&example).await;
    assert_closed(&mut http1).await;
    h2.until_closed().await;
    let last = h2.goaway.expect("a GOAWAY before the close");
    assert_eq!(last, 1, "the GOAWAY's last stream is the one served");
    let out = example.exit().await;
    assert!(
        out.contains("shutdown report: accepted 2, completed 2, failed 0"),
        "{out}"
    );
    assert!(out.contains("2 active: 2 drained, 0 aborted"), "{out}");
}

/// A client the kernel queued before shutdown began is the server's client
/// (see the crate docs): accepted only after the trigger, its shutdown
/// notice has fired before hyper has read a byte, and hyper's graceful
/// shutdown alone would close it unanswered. Only one place, taken by an
/// idle keep-alive client, keeps the second one queued until then.
#[tokio::test]
async fn a_client_queued_at_shutdown_gets_its_request_answered() {
    let running = common::start(serve::Http::new(routes::router()), |b| {
        b.max_connections(1).reclaim_when_full(false)
    })
    .await;
    let mut first = running.connect().await;
    assert_eq!(request(&mut first, GET).await.status, 200);
    let mut queued = running.connect().await;
    within("the request to be sent", queued.write_all(GET))
        .await
        .unwrap();

    running.shutdown.shutdown();
    assert_closed(&mut first).await;
    let response = read_response(&mut queued, false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, routes::HELLO.as_bytes());
    // Answered, perhaps before hyper heard of the shutdown (then without
    // `Connection: close`), and closed.
    assert_closed(&mut queued).await;
    let report = running.finish().await;
    assert_eq!(report.backlog_accepted, 1, "{report:?}");
    assert_eq!((report.completed, report.failed), (2, 0), "{report:?}");
    common::assert_adds_up(&report);
}

// ---- a minimal HTTP/2 client, frame by frame --------------------------------

/// An h2c connection (HTTP/2 with prior knowledge) that writes its frames
/// itself: once `get` returns, the request is in the kernel's hands, ahead
/// of anything the client sends later (its PING acknowledgements above all,
/// which is what a graceful GOAWAY waits for).
struct H2 {
    stream: TcpStream,
    /// The last stream id of the latest GOAWAY received.
    goaway: Option<u32>,
    /// DATA received per stream.
    bodies: HashMap<u32, Vec<u8>>,
    /// Streams the server ended (END_STREAM seen).
    ends: Vec<u32>,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The largest frame payload a server may send without our SETTINGS saying
/// otherwise (RFC 9113 §4.2).
const MAX_FRAME: usize = 16_384;

impl H2 {
    async fn connect(addr: SocketAddr) -> H2 {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        let mut h2 = H2 {
            stream,
            goaway: None,
            bodies: HashMap::new(),
            ends: Vec::new(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello).await;
        h2
    }

    /// Sends `GET path` on stream `id` (odd, increasing), with no body.
    async fn get(&mut self, id: u32, path: &str) {
        // HPACK: `:method GET` and `:scheme http` from the static table
        // (indices 2 and 6), `:path` as a literal with the static name 4.
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        let headers = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        self.send(&headers).await;
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("the frames to be sent", self.stream.write_all(bytes))
            .await
            .expect("the frames are sent");
    }

    /// Reads frames until stream `id` has ended.
    async fn until_ended(&mut self, id: u32) {
        while !self.ended(id) {
            assert!(
                self.next().await,
                "connection closed before stream {id} ended"
            );
        }
    }

    /// Reads frames until the server closes the connection.
    async fn until_closed(&mut self) {
        for _ in 0..1000 {
            if !self.next().await {
                return;
            }
        }
        panic!("1000 frames and the connection is still open");
    }

    fn body(&self, id: u32) -> &[u8] {
        self.bodies.get(&id).map_or(&[], Vec::as_slice)
    }

    fn ended(&self, id: u32) -> bool {
        self.ends.contains(&id)
    }

    /// Reads and handles one frame; `false` once the connection is closed.
    async fn next(&mut self) -> bool {
        let mut head = [0u8; 9];
        match within("a frame", self.stream.read_exact(&mut head)).await {
            Ok(_) => {}
            // EOF or a reset: the server has closed.
            Err(_) => return false,
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        assert!(len <= MAX_FRAME, "a frame of {len} bytes");
        let mut payload = vec![0; len];
        within("a frame's payload", self.stream.read_exact(&mut payload))
            .await
            .expect("the whole frame");
        match kind {
            DATA => self.bodies.entry(id).or_default().extend(&payload),
            HEADERS => {
                // `:status 200` is static-table index 8; hyper sends the
                // status first.
                assert_eq!(payload.first(), Some(&0x88), "not a 200 on stream {id}");
            }
            RST_STREAM => panic!("stream {id} reset: {payload:?}"),
            SETTINGS if flags & ACK == 0 => {
                self.reply(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            PING if flags & ACK == 0 => self.reply(&frame(PING, ACK, 0, &payload)).await,
            GOAWAY => {
                let last = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                self.goaway = Some(last & 0x7fff_ffff);
                let code = u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes"));
                assert_eq!(code, 0, "GOAWAY with error code {code}");
            }
            _ => {}
        }
        if matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
            self.ends.push(id);
        }
        true
    }

    /// Sends an acknowledgement; the server may have closed meanwhile.
    async fn reply(&mut self, bytes: &[u8]) {
        let _ = within("an acknowledgement", self.stream.write_all(bytes)).await;
    }
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// With the `metrics` feature, `GET /metrics` serves the server's own
/// metrics in Prometheus' text format: after two requests, each on a
/// connection of its own, a scrape on a third connection (kept alive) sees
/// them once the server has published, which it does every second.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_are_scraped_after_traffic() {
    const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    let example = launch().await;
    for _ in 0..2 {
        let mut client = within("connect", TcpStream::connect(example.addr))
            .await
            .unwrap();
        let response = request(&mut client, CLOSE).await;
        assert_eq!(response.body, routes::HELLO.as_bytes());
        assert_closed(&mut client).await;
    }
    let label = format!("{{listener=\"{}\"}}", example.addr);
    let value = |text: &str, name: &str| -> Option<f64> {
        let series = format!("{name}{label} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut scraper = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    // Published every second: bounded in tries (and each try in time).
    let mut last = String::new();
    for _ in 0..120 {
        let response = request(&mut scraper, SCRAPE).await;
        assert_eq!(response.status, 200);
        last = String::from_utf8(response.body).expect("UTF-8 metrics");
        if value(&last, "switchboard_connections_completed_total") == Some(2.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        value(&last, "switchboard_connections_completed_total"),
        Some(2.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "switchboard_connections_accepted_total"),
        Some(3.0),
        "the two, and the scraper's own: {last}"
    );
    assert_eq!(
        value(&last, "switchboard_connections_active"),
        Some(1.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "switchboard_connections_failed_total"),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "switchboard_connection_duration_seconds_count"),
        Some(2.0),
        "{last}"
    );
    drop(scraper);
    let out = example.terminate().await;
    assert!(out.contains("accepted 3, completed 3, failed 0"), "{out}");
}
