//! The hello example's HTTP/1.1 behaviour, over real sockets.

mod common;
#[allow(dead_code)] // the example's module has more than these tests use
#[path = "../examples/hello/http.rs"]
mod http;

use std::time::Duration;

use common::{Running, assert_adds_up, assert_closed, read_response, request, start};
use http::{BODY, Hello, MAX_HEAD, Method, Status, parse_head};
use tokio::io::AsyncWriteExt;

async fn hello() -> Running {
    start(Hello, |b| b.drain_timeout(Duration::from_secs(10))).await
}

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
}
