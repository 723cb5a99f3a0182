//! Behind a load balancer that sends a PROXY header, the lines the library
//! logs for a connection name the client, not the balancer, even where the
//! per-connection span is filtered out (here: `warn` and above only).
//!
//! A test binary of its own because it installs a global log subscriber.

mod common;

use std::io;

use common::{Logs, exchange, start_on};
use switchboard::{Connection, Listen, ProxyProtocol, handler_fn};

#[tokio::test]
async fn failures_behind_a_balancer_are_logged_with_the_client() {
    let logs = Logs::install(tracing::Level::WARN);
    let running = start_on(
        Listen::tcp("127.0.0.1:0").proxy_protocol(ProxyProtocol::required()),
        handler_fn(|mut conn: Connection| async move {
            let word = conn.read_chunk(16).await?;
            match &word[..] {
                b"err" => Err(io::Error::other("disk on fire")),
                _ => panic!("kaboom"),
            }
        }),
    )
    .await;
    for (port, word) in [(51000, "err"), (51001, "panic")] {
        let header = format!("PROXY TCP4 203.0.113.7 192.0.2.1 {port} 443\r\n{word}");
        exchange(running.addr, header.as_bytes()).await;
    }
    let report = running.stop().await;
    assert_eq!((report.failed, report.panicked), (1, 1), "{report:?}");

    let failed = logs.lines_with("handler failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("peer=203.0.113.7:51000"), "{failed:?}");
    let panicked = logs.lines_with("handler panicked");
    assert_eq!(panicked.len(), 1, "{panicked:?}");
    assert!(
        panicked[0].contains("peer=203.0.113.7:51001"),
        "{panicked:?}"
    );
}
