//! A peer that can connect cannot flood the log with refused PROXY headers:
//! a listener logs at most one `warn` line per interval for them, and that
//! line carries the count of the refusals it stands for.
//!
//! A test binary of its own because it installs a global log subscriber.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Logs, assert_closed, noop, start_on, within};
use switchboard::{Listen, ProxyProtocol};
use tokio::net::TcpStream;

/// The interval the library documents for these lines (`ProxyProtocol`).
const INTERVAL: Duration = Duration::from_secs(5);

/// How many refused connections the flood makes.
const FLOOD: u64 = 3_000;

/// The `suppressed=N` field of a log line; 0 where it has none.
fn suppressed(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("suppressed="))
        .map_or(0, |n| n.parse().expect("a number of suppressed lines"))
}

#[tokio::test]
async fn refused_headers_are_summarised_not_logged_one_by_one() {
    let logs = Logs::install(tracing::Level::WARN);
    // Every connection from loopback is refused at once: only the balancer
    // at 10.0.0.5 may send a header.
    let balancer: IpAddr = "10.0.0.5".parse().unwrap();
    let running = start_on(
        Listen::tcp("127.0.0.1:0").proxy_protocol(ProxyProtocol::required().trust(balancer)),
        noop(),
    )
    .await;
    let refused = |what: &'static str| {
        let addr = running.addr;
        async move {
            let mut client = within(what, TcpStream::connect(addr)).await.unwrap();
            assert_closed(&mut client).await;
        }
    };

    let started = Instant::now();
    for _ in 0..FLOOD {
        refused("a connection of the flood").await;
    }
    let elapsed = started.elapsed();
    assert_eq!(running.stats.snapshot().proxy_rejected, FLOOD);
    let lines = logs.lines_with("PROXY protocol");
    // One line at once, then at most one for each interval begun since.
    let bound = 2 + elapsed.as_secs() / INTERVAL.as_secs();
    assert!(
        !lines.is_empty() && lines.len() as u64 <= bound,
        "{} warn lines for {FLOOD} refusals in {elapsed:?} (at most {bound} expected): {:?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );

    // After the interval, the next refusal is logged with the count of
    // those that were not: together the lines account for every refusal.
    tokio::time::sleep(INTERVAL).await;
    refused("the connection after the interval").await;
    let lines = logs.lines_with("PROXY protocol");
    let last = lines.last().expect("a line after the interval");
    assert!(suppressed(last) > 0, "the line after the flood: {last}");
    let accounted: u64 = lines.iter().map(|line| 1 + suppressed(line)).sum();
    assert_eq!(accounted, FLOOD + 1, "{lines:#?}");
    running.stop().await;
}
