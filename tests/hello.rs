//! The hello example's HTTP/1.1 behaviour, over real sockets.

mod common;
#[allow(dead_code)] // the example's module has more than these tests use
#[path = "../examples/hello/http.rs"]
mod http;

use std::time::Duration;

use std::time::Instant;

use common::{Running, assert_adds_up, assert_closed, read_response, request, start, within};
use http::{BODY, Hello, MAX_BODY, MAX_HEAD, MAX_HEADERS, Method, Status, parse_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn hello() -> Running {
    hello_with(Hello::default()).await
}

async fn hello_with(hello: Hello) -> Running {
    start(hello, |b| b.drain_timeout(Duration::from_secs(10))).await
}

/// The hello handler with a request head deadline of `timeout`.
fn with_head_timeout(timeout: Duration) -> Hello {
    Hello {
        head_timeout: timeout,
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn answers_get_with_the_greeting() {
    let running = hello().await;
    let mut client = running.connect().await;
    let response = request(&mut client, GET).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, BODY.as_bytes());
    assert_eq!(response.header("content-length"), Some("22"));
    assert!(
        response.header("date").is_some(),
        "origin servers send Date"
    );
    assert_eq!(
        response.header("connection"),
        None,
        "HTTP/1.1 is persistent by default"
    );
    running.stop().await;
}

#[tokio::test]
async fn keeps_the_connection_alive_for_several_requests() {
    let running = hello().await;
    let mut client = running.connect().await;
    for _ in 0..3 {
        assert_eq!(request(&mut client, GET).await.status, 200);
    }
    // Two pipelined requests in one write are both answered, in order.
    client
        .write_all(&[GET, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"].concat())
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut client, false).await.body,
        BODY.as_bytes()
    );
    let head = read_response(&mut client, true).await;
    assert_eq!(head.header("content-length"), Some("22"));
    let report = running.stop().await;
    assert_eq!(report.accepted, 1, "one connection served all requests");
}

#[tokio::test]
async fn honours_connection_close() {
    let running = hello().await;
    let mut client = running.connect().await;
    let response = request(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let running = hello().await;
    let mut client = running.connect().await;
    let response = request(&mut client, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut client).await;

    let mut client = running.connect().await;
    for _ in 0..2 {
        let response = request(
            &mut client,
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    running.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_a_close() {
    let running = hello().await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n", // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let mut client = running.connect().await;
        let response = request(&mut client, bad).await;
        assert_eq!(
            response.status,
            400,
            "for {:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(response.header("connection"), Some("close"));
        // The server lingers until the client is done sending.
        client.shutdown().await.unwrap();
        assert_closed(&mut client).await;
    }
    let report = running.stop().await;
    assert_eq!(
        report.failed, 0,
        "a bad request is the client's fault, not a handler failure"
    );
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_a_close() {
    let running = hello().await;
    let mut client = running.connect().await;
    let mut oversized = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    oversized.resize(MAX_HEAD + 100, b'a');
    // The client may still be writing when the server answers and stops
    // reading; the server lingers so the response is not lost to a reset.
    let response = request(&mut client, &oversized).await;
    assert_eq!(response.status, 431);
    client.shutdown().await.unwrap();
    assert_closed(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn more_headers_than_max_headers_get_431_and_a_close() {
    let running = hello().await;
    let mut head = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 1..MAX_HEADERS {
        head.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
    }
    let mut client = running.connect().await;
    let at_the_cap = [&head[..], b"\r\n"].concat();
    assert_eq!(request(&mut client, &at_the_cap).await.status, 200);
    head.extend_from_slice(b"X-One-Too-Many: a\r\n\r\n");
    assert!(
        head.len() < MAX_HEAD,
        "the count is the limit, not the size"
    );
    let response = request(&mut client, &head).await;
    assert_eq!(response.status, 431);
    assert_eq!(response.header("connection"), Some("close"));
    client.shutdown().await.unwrap();
    assert_closed(&mut client).await;
    running.stop().await;
}

#[tokio::test]
async fn other_methods_get_405_and_bodies_are_skipped() {
    let running = hello().await;
    let mut client = running.connect().await;
    let response = request(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
    // The body was consumed: the next request on the connection works.
    assert_eq!(request(&mut client, GET).await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_clients_never_hold_up_shutdown() {
    let running = hello().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = running.connect().await;
        assert_eq!(request(&mut client, GET).await.status, 200);
        clients.push(client); // now idle, kept alive
    }
    let report = running.stop().await;
    assert_eq!(report.active_at_shutdown, 20);
    assert_eq!(
        report.drained, 20,
        "every idle client was let go: {report:?}"
    );
    assert_eq!(report.aborted, 0);
    assert!(report.drain_duration < Duration::from_secs(1), "{report:?}");
    assert_adds_up(&report);
    for client in &mut clients {
        assert_closed(client).await;
    }
}

#[tokio::test]
async fn the_request_in_flight_at_shutdown_is_answered_with_connection_close() {
    let running = hello().await;
    // One client mid-request, one idle: the idle one's close tells the test
    // that the connections' shutdown signal has fired.
    let mut busy = running.connect().await;
    busy.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    let mut idle = running.connect().await;
    request(&mut idle, GET).await;

    running.shutdown.shutdown();
    assert_closed(&mut idle).await;
    busy.write_all(b" t\r\n\r\n").await.unwrap();
    let response = read_response(&mut busy, false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, BODY.as_bytes());
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut busy).await;
    let report = running.finish().await;
    assert_eq!((report.drained, report.aborted), (2, 0));
}

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_or_the_refusal_at_once() {
    let running = hello().await;
    // Accepted: 100 Continue comes before the client sends its body.
    let mut client = running.connect().await;
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = [0; CONTINUE.len()];
    within("100 Continue", client.read_exact(&mut interim))
        .await
        .unwrap();
    assert_eq!(interim, CONTINUE, "{}", interim.escape_ascii());
    let response = request(&mut client, b"hello").await;
    assert_eq!(response.status, 200);
    assert_eq!(request(&mut client, GET).await.status, 200, "still alive");

    // Refused whatever the body: the final response comes at once, and
    // the connection closes (the client may or may not send the body).
    let too_large = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let refusals = [
        (
            &b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"[..],
            405,
        ),
        (too_large.as_bytes(), 413),
    ];
    for (head, status) in refusals {
        let mut client = running.connect().await;
        let response = request(&mut client, head).await;
        assert_eq!(response.status, status, "{}", head.escape_ascii());
        assert_eq!(response.header("connection"), Some("close"));
        if status == 405 {
            assert_eq!(response.header("allow"), Some("GET, HEAD"));
        }
        client.shutdown().await.unwrap();
        assert_closed(&mut client).await;
    }

    // HTTP/1.0 knows no 100 Continue: the expectation is ignored (RFC 9110
    // §10.1.1), and the response is the final one.
    let mut client = running.connect().await;
    let response = request(
        &mut client,
        b"GET / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(response.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn empty_lines_before_the_request_line_are_ignored() {
    let running = hello().await;
    let mut client = running.connect().await;
    let response = request(&mut client, &[&b"\r\n\r\n"[..], GET].concat()).await;
    assert_eq!(response.status, 200);
    // As some clients send after a request body, on a kept-alive connection.
    let response = request(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(response.status, 405);
    assert_eq!(request(&mut client, GET).await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn a_higher_http_1_minor_version_is_served_as_http_1_1() {
    let running = hello().await;
    let mut client = running.connect().await;
    within(
        "the request to be sent",
        client.write_all(b"GET / HTTP/1.2\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    within("the response", client.read_to_end(&mut response))
        .await
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        response.escape_ascii()
    );
    assert!(response.ends_with(BODY.as_bytes()));
    running.stop().await;
}

#[tokio::test]
async fn a_request_head_that_trickles_in_is_cut_off_at_its_deadline() {
    let deadline = Duration::from_millis(400);
    let running = hello_with(with_head_timeout(deadline)).await;
    let (mut reader, mut writer) = running.connect().await.into_split();
    // A byte every 20 ms: never idle, never done.
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await?;
        for _ in 0..1_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.write_all(b"a").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let response = read_response(&mut reader, false).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(elapsed >= deadline, "cut off after {elapsed:?}");
    trickle.abort();
    assert_closed(&mut reader).await;
    let report = running.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test]
async fn the_head_deadline_leaves_out_the_wait_between_requests() {
    let deadline = Duration::from_millis(200);
    let running = hello_with(with_head_timeout(deadline)).await;
    let mut client = running.connect().await;
    assert_eq!(request(&mut client, GET).await.status, 200);
    // Idle for longer than the deadline: a keep-alive wait, not a slow head.
    tokio::time::sleep(deadline * 2).await;
    assert_eq!(request(&mut client, GET).await.status, 200);
    running.stop().await;
}

#[test]
fn parses_request_heads() {
    let request =
        parse_head(b"GET /x?y HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Close\r\n\r\n")
            .unwrap();
    assert_eq!(request.method, Method::Get);
    assert!(!request.keep_alive, "close wins");
    let request =
        parse_head(b"PUT / HTTP/1.1\r\nhost: a\r\ncontent-length: 7\r\nContent-Length: 7\r\n\r\n")
            .unwrap();
    assert_eq!((request.method, request.content_length), (Method::Other, 7));
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Err(Status::BadRequest)
    );
    assert_eq!(
        parse_head(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        Err(Status::VersionNotSupported)
    );
    // RFC 9110 §2.5: a higher minor version is processed as HTTP/1.1.
    let request = parse_head(b"GET / HTTP/1.9\r\nHost: a\r\n\r\n").unwrap();
    assert!(request.http11 && request.keep_alive);
    assert_eq!(
        parse_head(b"GET / HTTP/1.9\r\n\r\n"),
        Err(Status::BadRequest),
        "as HTTP/1.1, it needs a Host"
    );
    assert!(
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .expect_continue
    );
    assert!(
        !parse_head(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .expect_continue,
        "HTTP/1.0 ignores it"
    );
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(Status::NotImplemented)
    );
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n"),
        Err(Status::BadRequest)
    );
    assert_eq!(
        parse_head(b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"),
        Err(Status::BadRequest)
    );
    // Versions httparse refuses, around the one it is retried with.
    assert_eq!(
        parse_head(b"GET / HTTP/3.0\r\nHost: a\r\n\r\n"),
        Err(Status::VersionNotSupported)
    );
    for bad in [
        &b"GET / HTTP/1.x\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.9 HTTP/1.9\r\nHost: a\r\n\r\n",
        b"GET / XTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            parse_head(bad),
            Err(Status::BadRequest),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
