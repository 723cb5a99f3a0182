//! Two hello processes share a port with `SO_REUSEPORT`; under churn, one
//! after the other is stopped with SIGTERM and replaced. A measurement, not
//! a pass/fail test of the library (what is lost at a switch depends on the
//! kernel: see `net.ipv4.tcp_migrate_req` in the README), so it is ignored
//! by default:
//!
//! ```text
//! cargo test --release --test reuse_port_switch -- --ignored --nocapture
//! ```

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Example, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients in flight at once.
const CLIENTS: usize = 32;
/// Switches measured.
const SWITCHES: usize = 6;
/// Churn before each switch.
const BETWEEN: Duration = Duration::from_millis(400);

#[derive(Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
    /// Reset or closed before the whole response.
    cut: AtomicU64,
}

/// Starts the ops example (the hello handler) on `port` (0: a free one) with `SO_REUSEPORT`.
async fn hello(port: u16) -> Example {
    let mut command = tokio::process::Command::new(common::example_path("ops"));
    command
        .arg(format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_REUSE_PORT", "1")
        .stderr(std::process::Stdio::null());
    Example::start(command).await
}

async fn one_request(addr: SocketAddr, tally: &Tally) {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(_) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    let done = async {
        stream.write_all(request).await?;
        stream.read_to_end(&mut response).await
    };
    match tokio::time::timeout(Duration::from_secs(5), done).await {
        Ok(Ok(_)) if response.starts_with(b"HTTP/1.1 200") => {
            tally.served.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            tally.cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn switching_reuse_port_processes_under_churn() {
    let first = hello(0).await;
    let port = first.addr.port();
    let addr = first.addr;
    let mut older = first;
    let mut newer = hello(port).await;
    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (tally, running) = (Arc::clone(&tally), Arc::clone(&running));
        clients.push(tokio::spawn(async move {
            // Bounded: the test stops it after its switches.
            for _ in 0..10_000_000u64 {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                one_request(addr, &tally).await;
            }
        }));
    }
    let mut lost_per_switch = Vec::new();
    for _ in 0..SWITCHES {
        tokio::time::sleep(BETWEEN).await;
        let before = tally.refused.load(Ordering::Relaxed) + tally.cut.load(Ordering::Relaxed);
        let report = older.terminate().await;
        tokio::time::sleep(BETWEEN).await;
        let after = tally.refused.load(Ordering::Relaxed) + tally.cut.load(Ordering::Relaxed);
        lost_per_switch.push(after - before);
        println!("stopped: {}", report.trim());
        older = newer;
        newer = hello(port).await;
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        within("a client loop to end", client).await.unwrap();
    }
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .map_or_else(|_| "unknown".to_owned(), |v| v.trim().to_owned());
    println!(
        "served {}, refused {}, cut {}; lost per switch {:?} (net.ipv4.tcp_migrate_req = {migrate})",
        tally.served.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
        lost_per_switch
    );
    older.terminate().await;
    newer.terminate().await;
}
