//! Admission control: the global connection limit is backpressure before
//! `accept`; the per-IP limit closes extra connections at once.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use common::{assert_adds_up, assert_closed, noop, start, within};
use switchboard::{Connection, handler_fn};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Announces each connection, then holds it until the client closes or the
/// server shuts down.
fn holder(started: mpsc::UnboundedSender<u64>) -> impl switchboard::Handler {
    handler_fn(move |mut conn: Connection| {
        let started = started.clone();
        async move {
            let _ = started.send(conn.id());
            let shutdown = conn.shutdown_requested();
            let mut rest = Vec::new();
            tokio::select! {
                read = conn.read_to_end(&mut rest) => read.map(drop),
                () = shutdown => Ok::<_, io::Error>(()),
            }
        }
    })
}

#[tokio::test]
async fn a_full_server_stops_accepting_until_a_connection_ends() {
    let (tx, mut started) = mpsc::unbounded_channel();
    // Without reclaiming places for the waiting clients (see
    // tests/overload.rs): this test is about the limit itself.
    let running = start(holder(tx), |b| {
        b.max_connections(2).reclaim_when_full(false)
    })
    .await;

    let mut clients = Vec::new();
    for _ in 0..5 {
        // The kernel completes the handshake for the backlog: connect works.
        clients.push(running.connect().await);
    }
    within("the first handler", started.recv()).await.unwrap();
    within("the second handler", started.recv()).await.unwrap();
    // The other three wait in the backlog, unaccepted: no handler starts.
    let third = tokio::time::timeout(Duration::from_millis(300), started.recv()).await;
    assert!(
        third.is_err(),
        "a third connection was accepted past the limit"
    );
    let snapshot = running.stats.snapshot();
    assert_eq!((snapshot.accepted, snapshot.active), (2, 2));

    // One connection ends: exactly one more is accepted.
    drop(clients.remove(0));
    within("the third handler", started.recv()).await.unwrap();
    let fourth = tokio::time::timeout(Duration::from_millis(300), started.recv()).await;
    assert!(fourth.is_err(), "only one place was freed");
    assert!(running.stats.snapshot().active <= 2);

    // Everything queued is served in turn as places free up.
    drop(clients.remove(0));
    within("the fourth handler", started.recv()).await.unwrap();
    drop(clients.remove(0));
    within("the fifth handler", started.recv()).await.unwrap();
    drop(clients);
    let report = running.stop().await;
    assert_eq!(report.accepted, 5);
    assert_eq!(report.completed, 5);
    assert_adds_up(&report);
}

async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    within("connect", socket.connect(addr)).await.unwrap()
}

#[tokio::test]
async fn the_per_ip_limit_closes_extra_connections_from_one_address() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let running = start(holder(tx), |b| b.max_connections_per_ip(2)).await;

    let a1 = connect_from([127, 0, 0, 1], running.addr).await;
    let _a2 = connect_from([127, 0, 0, 1], running.addr).await;
    within("a handler", started.recv()).await.unwrap();
    within("a handler", started.recv()).await.unwrap();
    let mut extra = connect_from([127, 0, 0, 1], running.addr).await;
    assert_closed(&mut extra).await;
    assert_eq!(running.stats.snapshot().rejected, 1);

    // Another address has its own count.
    let _b1 = connect_from([127, 0, 0, 2], running.addr).await;
    within("a handler for the second address", started.recv())
        .await
        .unwrap();

    // A freed place can be taken again.
    drop(a1);
    let _a3 = within("a place to free up", async {
        loop {
            let mut again = connect_from([127, 0, 0, 1], running.addr).await;
            let mut byte = [0u8; 1];
            // Rejected connections are closed at once; an admitted one stays open.
            match tokio::time::timeout(Duration::from_millis(100), again.read(&mut byte)).await {
                Err(_) => break again,
                Ok(_) => continue,
            }
        }
    })
    .await;
    within("the re-admitted handler", started.recv())
        .await
        .unwrap();

    let snapshot = running.stats.snapshot();
    assert_eq!(snapshot.active, 3, "{snapshot:?}");
    assert!(snapshot.rejected >= 1);
    assert_eq!(
        snapshot.accepted, 4,
        "rejected connections are not accepted: {snapshot:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn limits_must_be_positive() {
    use switchboard::{Error, Server};
    for (builder, option) in [
        (Server::builder().max_connections(0), "max_connections"),
        (
            Server::builder().max_connections_per_ip(0),
            "max_connections_per_ip",
        ),
        (
            Server::builder().idle_timeout(Duration::ZERO),
            "idle_timeout",
        ),
        (
            Server::builder().first_read_timeout(Duration::ZERO),
            "first_read_timeout",
        ),
        (
            Server::builder().max_connection_age(Duration::ZERO),
            "max_connection_age",
        ),
        (
            Server::builder().tcp_keepalive(Duration::ZERO),
            "tcp_keepalive",
        ),
    ] {
        let result = builder.bind("127.0.0.1:0").handler(noop()).build().await;
        match result {
            Err(Error::InvalidConfig { option: named, .. }) => assert_eq!(named, option),
            other => panic!("{option}: expected InvalidConfig, got {other:?}"),
        }
    }
}
