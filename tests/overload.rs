//! A full server reclaims places from the address that holds the most
//! (Slowloris that trickles bytes, which no idle timeout catches).

mod common;

use std::io;
use std::net::SocketAddr;

use common::{assert_adds_up, start, within};
use switchboard::{Connection, handler_fn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Answers one line with `ok`, then closes.
fn line_server() -> impl switchboard::Handler {
    handler_fn(|conn: Connection| async move {
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        conn.get_mut().write_all(b"ok\n").await?;
        Ok::<_, io::Error>(())
    })
}

/// The connections a report says were reclaimed.
fn overload(report: &switchboard::ShutdownReport) -> u64 {
    report
        .by_listener
        .iter()
        .map(|(_, s)| s.timed_out_overload)
        .sum()
}

/// Connects from `from` (a loopback address of the test's choosing).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    within("connect", socket.connect(to)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_reclaims_places_from_the_address_holding_the_most() {
    const MAX: usize = 100;
    const ATTACK: usize = 110;
    const LEGIT: usize = 5;
    // Defaults but a smaller limit: reclaiming is on by default, and the
    // idle timeout (300 s) never fires here.
    let running = start(line_server(), |b| b.max_connections(MAX)).await;
    let mut attack = Vec::with_capacity(ATTACK);
    for _ in 0..ATTACK {
        // A request line that never ends: the handler waits for the rest.
        let mut conn = connect_from([127, 0, 0, 1], running.addr).await;
        conn.write_all(b"GET / HTTP/1.1").await.unwrap();
        attack.push(conn);
    }
    within("the server to fill up", async {
        while running.stats.snapshot().accepted < MAX as u64 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    for i in 0..LEGIT {
        let mut client = connect_from([127, 0, 0, 2], running.addr).await;
        client.write_all(b"hello\n").await.unwrap();
        let mut answer = String::new();
        within(
            "a legitimate client's answer on a full server",
            client.read_to_string(&mut answer),
        )
        .await
        .unwrap();
        assert_eq!(answer, "ok\n", "client {i}");
    }
    drop(attack);
    let report = running.stop().await;
    assert_adds_up(&report);
    // Counted once their tasks ended (their clients may see the close
    // first): the report is where every count is final.
    assert!(overload(&report) > 0, "{report:?}");
    assert!(
        report.completed >= LEGIT as u64,
        "the legitimate clients were served: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_of_fair_clients_reclaims_nothing() {
    const MAX: usize = 4;
    let running = start(line_server(), |b| b.max_connections(MAX)).await;
    // One connection from each of four addresses: each holds its fair
    // share, so a fifth client waits for a place instead.
    let mut held = Vec::new();
    for last in 1..=MAX as u8 {
        let mut conn = connect_from([127, 0, 0, last], running.addr).await;
        conn.write_all(b"partial").await.unwrap();
        held.push(conn);
    }
    within("the server to fill up", async {
        while running.stats.snapshot().active < MAX as u64 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut waiting = connect_from([127, 0, 0, 9], running.addr).await;
    waiting.write_all(b"hello\n").await.unwrap();
    // Served once a place frees, not before.
    held[0].write_all(b"\n").await.unwrap();
    let mut answer = String::new();
    within(
        "the waiting client's answer",
        waiting.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(answer, "ok\n");
    drop(held);
    let report = running.stop().await;
    assert_eq!(overload(&report), 0, "{report:?}");
}
