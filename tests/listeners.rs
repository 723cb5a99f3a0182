//! Several listeners, one server: one handler, one set of limits, one
//! statistics view (broken down per listener) and one shutdown.

mod common;

use std::io;
use std::net::SocketAddr;

use common::{assert_adds_up, assert_echoes, run, within};
use switchboard::{Addr, Connection, Server, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn echo_once() -> impl switchboard::Handler {
    handler_fn(|mut conn: Connection| async move {
        let chunk = conn.read_chunk(64).await?;
        conn.write_all(&chunk).await?;
        Ok::<_, io::Error>(())
    })
}

async fn round_trip(addr: SocketAddr) {
    let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
    assert_echoes("the echo", &mut client, b"hi").await;
}

#[tokio::test]
async fn tcp_listeners_and_a_given_std_listener_share_one_server() {
    let given = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let given_addr = given.local_addr().unwrap();
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .bind(("127.0.0.1", 0))
        .tcp_listener(given)
        .handler(echo_once())
        .build()
        .await
        .unwrap();
    let local_addr = server.local_addr();
    let running = run(server);
    let addrs = running.tcp_addrs();
    assert_eq!(addrs.len(), 3);
    assert_eq!(
        addrs[2], given_addr,
        "listeners keep the order they were given in"
    );
    assert_eq!(local_addr, Addr::Tcp(addrs[0]));

    for (i, &addr) in addrs.iter().enumerate() {
        for _ in 0..=i {
            round_trip(addr).await;
        }
    }
    let live = running.stats.by_listener();
    let accepted: Vec<u64> = live.iter().map(|(_, s)| s.accepted).collect();
    assert_eq!(
        accepted,
        [1, 2, 3],
        "each listener counts its own connections"
    );
    assert_eq!(running.stats.snapshot().accepted, 6);

    // One shutdown closes every listener.
    let report = running.stop().await;
    for addr in addrs {
        let refused = within("a connect after the shutdown", TcpStream::connect(addr)).await;
        assert_eq!(
            refused.expect_err("closed").kind(),
            io::ErrorKind::ConnectionRefused
        );
    }
    assert_eq!(report.accepted, 6);
    let per_listener: Vec<u64> = report
        .by_listener
        .iter()
        .map(|(_, s)| s.completed)
        .collect();
    assert_eq!(per_listener, [1, 2, 3]);
    assert_adds_up(&report);
}

/// A server on two TCP listeners that share one place.
async fn two_listeners_one_place(handler: impl switchboard::Handler) -> common::Running {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .max_connections(1)
        .handler(handler)
        .build()
        .await
        .unwrap();
    run(server)
}

#[tokio::test]
async fn listeners_share_one_connection_limit() {
    let running = two_listeners_one_place(handler_fn(|mut conn: Connection| async move {
        conn.write_all(b"in").await?;
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await?;
        Ok::<_, io::Error>(())
    }))
    .await;
    let addrs = running.tcp_addrs();

    let mut first = TcpStream::connect(addrs[0]).await.unwrap();
    let mut greeting = [0u8; 2];
    within("the first greeting", first.read_exact(&mut greeting))
        .await
        .unwrap();
    // The other listener's client waits: the one place is taken.
    let mut second = TcpStream::connect(addrs[1]).await.unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        second.read_exact(&mut greeting),
    )
    .await;
    assert!(
        waited.is_err(),
        "a second connection was served past the shared limit"
    );
    drop(first);
    within(
        "the second greeting once the place is free",
        second.read_exact(&mut greeting),
    )
    .await
    .unwrap();
    assert_eq!(running.stats.snapshot().accepted, 2);
    drop(second);
    running.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn tcp_and_unix_listeners_mixed() {
    let dir = common::temp_dir("mixed");
    let path = dir.path().join("mixed.sock");
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .bind_unix(&path)
        .handler(echo_once())
        .build()
        .await
        .unwrap();
    let running = run(server);
    round_trip(running.addr).await;
    let mut unix = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert_echoes("the unix echo", &mut unix, b"yo").await;
    let report = running.stop().await;
    assert_eq!(report.by_listener.len(), 2);
    assert_eq!(report.by_listener[1].0, Addr::Unix(Some(path)));
    assert_eq!(
        (
            report.by_listener[0].1.accepted,
            report.by_listener[1].1.accepted
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn a_quiet_listener_holds_no_place_under_the_limit() {
    // With one place, the first listener (no clients at all) must not keep
    // it while the second listener's client waits.
    let running = two_listeners_one_place(echo_once()).await;
    for _ in 0..3 {
        round_trip(running.tcp_addrs()[1]).await;
    }
    let report = running.stop().await;
    assert_eq!(report.by_listener[1].1.completed, 3);
}
