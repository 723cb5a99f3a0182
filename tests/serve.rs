//! Serving: one task per connection, many at once, errors and panics
//! counted without stopping the server.

mod common;

use std::io;
use std::sync::Arc;

use common::{assert_adds_up, exchange, reporter, run, start, within};
use switchboard::{Connection, Handler, handler_fn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, mpsc};

/// Announces itself on `started`, then echoes one line.
struct EchoLine {
    started: mpsc::UnboundedSender<u64>,
}

impl Handler for EchoLine {
    type Error = io::Error;

    async fn handle(&self, conn: Connection) -> io::Result<()> {
        let _ = self.started.send(conn.id());
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        conn.write_all(line.as_bytes()).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_at_once_are_all_served() {
    const CLIENTS: usize = 1000;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let running = start(
        EchoLine {
            started: started_tx,
        },
        |b| b,
    )
    .await;

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(running.connect().await);
    }
    // Every handler has started before any client speaks: 1,000 connections
    // are being served at the same time.
    let mut ids = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        ids.push(
            within("a handler to start", started_rx.recv())
                .await
                .unwrap(),
        );
    }
    assert_eq!(running.stats.snapshot().active, CLIENTS as u64);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "connection ids are unique");

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for (i, mut client) in clients.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let msg = format!("client {i}\n");
            client.write_all(msg.as_bytes()).await.unwrap();
            let mut back = String::new();
            client.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for task in tasks {
        within("a client round trip", task).await.unwrap();
    }
    let report = running.stop().await;
    assert_eq!(report.accepted, CLIENTS as u64);
    assert_eq!(report.completed, CLIENTS as u64);
    assert_adds_up(&report);
}

/// Reads one word and acts on it: `ok`, `err` or `panic`.
fn by_word() -> impl Handler {
    handler_fn(|conn: Connection| async move {
        let mut conn = BufReader::new(conn);
        let mut word = String::new();
        conn.read_line(&mut word).await?;
        match word.trim() {
            "err" => Err(io::Error::other("the client asked for an error")),
            "panic" => panic!("the client asked for a panic"),
            _ => conn.write_all(b"ok\n").await,
        }
    })
}

async fn ask(addr: std::net::SocketAddr, word: &str) -> String {
    // An error or a panic closes the connection: the reply is empty.
    let reply = exchange(addr, format!("{word}\n").as_bytes()).await;
    String::from_utf8(reply).expect("a UTF-8 reply")
}

#[tokio::test]
async fn handler_errors_and_panics_are_counted_and_the_server_keeps_serving() {
    let running = start(by_word(), |b| b).await;
    assert_eq!(ask(running.addr, "ok").await, "ok\n");
    assert_eq!(ask(running.addr, "err").await, "");
    assert_eq!(ask(running.addr, "panic").await, "");
    assert_eq!(ask(running.addr, "panic").await, "");
    assert_eq!(
        ask(running.addr, "ok").await,
        "ok\n",
        "still serving after panics"
    );
    let report = running.stop().await;
    assert_eq!(report.accepted, 5);
    assert_eq!(report.completed, 2);
    assert_eq!(report.failed, 1);
    assert_eq!(report.panicked, 2);
    assert_eq!(report.aborted, 0);
    assert_adds_up(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counters_add_up_under_concurrent_load() {
    let running = start(by_word(), |b| b).await;
    let words = ["ok", "err", "panic", "ok", "silent"];
    // The silent clients hold their connections until every other client
    // is done, then close them without a word (no timeout involved: on a
    // busy machine a talking client could be slow enough to meet one).
    let (talked_tx, talked) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut talkers = Vec::new();
    for i in 0..500 {
        let addr = running.addr;
        match words[i % words.len()] {
            "silent" => {
                let mut talked = talked.clone();
                tasks.push(tokio::spawn(async move {
                    let client = within("connect", TcpStream::connect(addr)).await.unwrap();
                    within("the talkers", talked.wait_for(|done| *done))
                        .await
                        .unwrap();
                    drop(client);
                }));
            }
            word => talkers.push(tokio::spawn(async move {
                ask(addr, word).await;
            })),
        }
    }
    // Once every talker is done, the silent clients close.
    let talkers = tokio::spawn(async move {
        for talker in talkers {
            within("a client", talker).await.unwrap();
        }
        talked_tx.send_replace(true);
    });
    // Read the live counters while the load runs.
    let mut snapshots = 0;
    while tasks.iter().any(|t| !t.is_finished()) && snapshots < 100_000 {
        // `active` is what is accepted and not ended; a snapshot that saw
        // an end before the acceptance it follows would count more ends.
        let s = running.stats.snapshot();
        let ended = s.completed + s.failed + s.panicked + s.timed_out() + s.aborted;
        assert!(
            ended <= s.accepted,
            "an end seen before its acceptance: {s:?}"
        );
        assert_eq!(s.active, s.accepted - ended, "{s:?}");
        snapshots += 1;
        tokio::task::yield_now().await;
    }
    within("the talkers", talkers).await.unwrap();
    for task in tasks {
        within("a client", task).await.unwrap();
    }
    let report = running.stop().await;
    assert_eq!(report.accepted, 500);
    assert_eq!(
        (
            report.completed,
            report.failed,
            report.panicked,
            report.timed_out
        ),
        (300, 100, 100, 0)
    );
    assert_adds_up(&report);
}

#[tokio::test]
async fn connections_know_their_addresses_and_nodelay_is_on_by_default() {
    let (handler, mut rx) = reporter(|conn| {
        let tcp = conn.as_tcp().expect("a TCP connection");
        Ok((
            conn.id(),
            conn.peer_addr(),
            conn.local_addr(),
            tcp.nodelay()?,
        ))
    });
    let running = start(handler, |b| b).await;
    for expected_id in 1..=2 {
        let client = running.connect().await;
        let (id, peer, local, nodelay) = within("the handler's report", rx.recv()).await.unwrap();
        assert_eq!(id, expected_id, "ids count up from 1");
        assert_eq!(peer.as_tcp(), Some(client.local_addr().unwrap()));
        assert_eq!(local.as_tcp(), Some(running.addr));
        assert!(nodelay, "TCP_NODELAY is on by default");
    }
    running.stop().await;
}

#[tokio::test]
async fn nodelay_can_be_turned_off() {
    let (handler, mut rx) = reporter(|conn| conn.as_tcp().expect("tcp").nodelay());
    let running = start(handler, |b| b.tcp_nodelay(false)).await;
    let _client = running.connect().await;
    assert!(!within("the handler's report", rx.recv()).await.unwrap());
    running.stop().await;
}

#[tokio::test]
async fn a_wildcard_listener_reports_the_address_the_client_reached() {
    let (handler, mut rx) = reporter(|conn| Ok(conn.local_addr()));
    let server = switchboard::Server::builder()
        .bind("0.0.0.0:0")
        .handler(handler)
        .build()
        .await
        .unwrap();
    let running = run(server);
    let port = running.addr.port();
    let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let local = within("the handler's report", rx.recv()).await.unwrap();
    assert_eq!(
        local.as_tcp(),
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    );
    running.stop().await;
}
