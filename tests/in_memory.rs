//! The examples' handlers tested without sockets, through
//! `switchboard::testing::TestConnection`: fast, deterministic, paused clock.

mod common;

#[allow(dead_code)]
#[path = "../examples/echo/echo.rs"]
mod echo;
#[allow(dead_code)]
#[path = "../examples/hello/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../examples/chat/room.rs"]
mod room;

use std::sync::Arc;

use common::{read_response, request, within};
use switchboard::testing::TestConnection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// Waits (bounded) for a handler's task to end, and expects it to succeed.
async fn ended(what: &str, task: JoinHandle<Result<(), switchboard::BoxError>>) {
    within(what, task)
        .await
        .expect("the handler did not panic")
        .expect("the handler succeeded");
}

#[tokio::test(start_paused = true)]
async fn hello_keeps_alive_then_leaves_at_shutdown() {
    let mut served = TestConnection::new().serve(http::Hello::default());
    for _ in 0..2 {
        let response = request(&mut served.client, GET).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, http::BODY.as_bytes());
    }
    // Idle between requests: the shutdown signal ends the handler at once.
    served.shutdown.shutdown();
    ended("the handler to end", served.task).await;
    let mut rest = Vec::new();
    within("EOF", served.client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "closed without another byte");
}

#[tokio::test(start_paused = true)]
async fn hello_answers_the_request_in_flight_with_connection_close() {
    let mut served = TestConnection::new().serve(http::Hello::default());
    served
        .client
        .write_all(b"GET / HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    served.shutdown.shutdown();
    served.client.write_all(b"st: t\r\n\r\n").await.unwrap();
    let response = within("a response", read_response(&mut served.client, false)).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    ended("the handler to end", served.task).await;
}

#[tokio::test(start_paused = true)]
async fn hello_rejects_a_malformed_request() {
    let mut served = TestConnection::new().serve(http::Hello::default());
    let response = request(&mut served.client, b"NOT HTTP\r\n\r\n").await;
    assert_eq!(response.status, 400);
    served.client.shutdown().await.unwrap();
    ended("the handler to end", served.task).await;
}

#[tokio::test(start_paused = true)]
async fn echo_echoes_until_eof() {
    let served = TestConnection::new().buffer_size(16).serve(echo::Echo);
    // More than the pipe holds: the handler's writes wait for our reads.
    let message = vec![b'e'; 100];
    let (mut reader, mut writer) = tokio::io::split(served.client);
    let sender = tokio::spawn(async move {
        writer.write_all(&message).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    within("the echo", reader.read_to_end(&mut back))
        .await
        .unwrap();
    within("the sender", sender).await.unwrap();
    assert_eq!(back, vec![b'e'; 100]);
    ended("the handler to end", served.task).await;
}

#[tokio::test(start_paused = true)]
async fn chat_delivers_lines_and_says_goodbye_at_shutdown() {
    let room = Arc::new(room::Room::new());
    let alice = TestConnection::new().id(1).serve(Arc::clone(&room));
    let bob = TestConnection::new().id(2).serve(Arc::clone(&room));
    let mut alice_lines = BufReader::new(alice.client).lines();
    let mut bob_lines = BufReader::new(bob.client);
    let next = async |lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>| {
        within("a line", lines.next_line())
            .await
            .unwrap()
            .expect("a line")
    };
    assert!(
        next(&mut alice_lines)
            .await
            .starts_with("*** welcome, you are guest-1")
    );
    let mut line = String::new();
    within("bob's welcome", bob_lines.read_line(&mut line))
        .await
        .unwrap();
    assert!(line.starts_with("*** welcome, you are guest-2"), "{line}");
    assert_eq!(next(&mut alice_lines).await, "*** guest-2 joined");

    bob_lines
        .get_mut()
        .write_all(b"/nick bob\nhello alice\n")
        .await
        .unwrap();
    assert_eq!(next(&mut alice_lines).await, "*** guest-2 is now bob");
    assert_eq!(next(&mut alice_lines).await, "<bob> hello alice");

    alice.shutdown.shutdown();
    assert_eq!(next(&mut alice_lines).await, room::GOODBYE);
    ended("alice's handler to end", alice.task).await;
    bob.shutdown.shutdown();
    ended("bob's handler to end", bob.task).await;
}
