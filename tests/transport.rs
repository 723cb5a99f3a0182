//! `Connection::transport`: a `Transport` a handler can match, and the
//! lowercase name it displays for logs.

mod common;

use std::collections::HashSet;
use std::io;

use common::{start, within};
use switchboard::testing::TestConnection;
use switchboard::{Connection, Transport, handler_fn};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

#[test]
fn each_transport_displays_its_lowercase_name() {
    let names = [
        (Transport::Tcp, "tcp"),
        (Transport::Unix, "unix"),
        (Transport::Tls, "tls"),
        (Transport::Memory, "memory"),
    ];
    for (transport, name) in names {
        assert_eq!(transport.to_string(), name);
        assert_eq!(transport.as_str(), name);
        assert_eq!(
            format!("{transport:>8}|"),
            format!("{name:>8}|"),
            "a width is honoured"
        );
    }
    // Copy, Eq and Hash: usable as a map key and compared without clones.
    let distinct: HashSet<Transport> = names.iter().map(|&(t, _)| t).collect();
    assert_eq!(distinct.len(), names.len());
}

#[test]
fn transport_is_send_sync_copy() {
    fn check<T: Send + Sync + Copy + Eq + std::hash::Hash + std::fmt::Debug + 'static>() {}
    check::<Transport>();
}

#[tokio::test]
async fn a_tcp_connection_says_tcp() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |conn: Connection| {
            let _ = tx.send(conn.transport());
            async { Ok::<_, io::Error>(()) }
        }),
        |b| b,
    )
    .await;
    let mut client = running.connect().await;
    let transport = within("the handler's report", rx.recv()).await.unwrap();
    assert_eq!(transport, Transport::Tcp);
    let mut rest = Vec::new();
    within("the close", client.read_to_end(&mut rest))
        .await
        .unwrap();
    running.stop().await;
}

#[tokio::test]
async fn a_test_connection_says_memory() {
    let (conn, _client, _shutdown) = TestConnection::new().pair();
    assert_eq!(conn.transport(), Transport::Memory);
    assert_eq!(conn.transport().to_string(), "memory");
    let debug = format!("{conn:?}");
    assert!(debug.contains("transport: Memory"), "{debug}");
}
