//! Slowloris against the hello example built with the defaults: 10,050
//! connections from 127.0.0.1, each sending a partial request head and then
//! one byte every few seconds (reconnecting when closed), while a client
//! from 127.0.0.2 makes five requests, one after the other. A measurement
//! at full scale (it needs about 10,000 descriptors in each process), so it
//! is ignored by default; tests/overload.rs checks the behaviour at a small
//! scale on every run.
//!
//! ```text
//! cargo build --release --examples
//! cargo test --release --test slowloris -- --ignored --nocapture
//! ```

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Example;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKERS: usize = 10_050;
/// Between two bytes of one attacker.
const TRICKLE: Duration = Duration::from_secs(3);
const REQUESTS: usize = 5;
/// How long a legitimate request may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(15);

async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// One attacker: a partial head, then a byte every [`TRICKLE`]; a new
/// connection whenever the server closes this one. Stops with `running`.
async fn attacker(to: SocketAddr, running: Arc<AtomicBool>, connected: Arc<AtomicU64>) {
    let mut first = true;
    // Bounded: at most one reconnection per trickle for the test's life.
    for _ in 0..1_000 {
        if !running.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut conn) = connect_from([127, 0, 0, 1], to).await else {
            tokio::time::sleep(TRICKLE).await;
            continue;
        };
        if first {
            connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        if conn
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        while running.load(Ordering::Relaxed) {
            tokio::time::sleep(TRICKLE).await;
            if conn.write_all(b"X").await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement at full scale: run with --ignored --nocapture"]
async fn legitimate_requests_are_answered_during_a_slowloris_attack() {
    let hello = Example::start(Example::command("hello")).await;
    let to = hello.addr;

    let running = Arc::new(AtomicBool::new(true));
    let connected = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attacker(to, Arc::clone(&running), Arc::clone(&connected))))
        .collect();
    common::within_for(Duration::from_secs(60), "the attackers to connect", async {
        while connected.load(Ordering::Relaxed) < ATTACKERS as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Every place is taken now, and the attack trickles on.
    tokio::time::sleep(TRICKLE).await;

    let mut latencies = Vec::new();
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let answered = tokio::time::timeout(PATIENCE, async {
            let mut conn = connect_from([127, 0, 0, 2], to).await?;
            conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = Vec::new();
            conn.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response.starts_with(b"HTTP/1.1 200"))
        })
        .await;
        let elapsed = start.elapsed();
        match answered {
            Ok(Ok(true)) => latencies.push(Some(elapsed)),
            _ => latencies.push(None),
        }
    }
    running.store(false, Ordering::Relaxed);
    let report = hello.terminate().await;
    for attacker in attackers {
        attacker.abort();
    }
    println!("legitimate requests (None: not answered within {PATIENCE:?}): {latencies:?}");
    println!("server: {}", report.trim());
    assert!(
        latencies
            .iter()
            .all(|l| l.is_some_and(|l| l < Duration::from_secs(2))),
        "every legitimate request answered within 2 s: {latencies:?}"
    );
}
