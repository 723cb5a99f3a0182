//! Behind a load balancer that sends a PROXY header, the lines the library
//! logs for a connection name the client, not the balancer, even where the
//! per-connection span is filtered out (here: `warn` and above only).
//!
//! A test binary of its own because it installs a global log subscriber.

mod common;

use std::io;

use common::{Logs, within};
use switchboard::{Connection, Listen, ProxyProtocol, Server, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn failures_behind_a_balancer_are_logged_with_the_client() {
    let logs = Logs::install(tracing::Level::WARN);
    let server = Server::builder()
        .listen(Listen::tcp("127.0.0.1:0").proxy_protocol(ProxyProtocol::required()))
        .handler(handler_fn(|mut conn: Connection| async move {
            let word = conn.read_chunk(16).await?;
            match &word[..] {
                b"err" => Err(io::Error::other("disk on fire")),
                _ => panic!("kaboom"),
            }
        }))
        .build()
        .await
        .unwrap();
    let addr = server.local_addr().as_tcp().unwrap();
    let shutdown = server.shutdown_handle();
    let run = tokio::spawn(server.run());
    for (port, word) in [(51000, "err"), (51001, "panic")] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let header = format!("PROXY TCP4 203.0.113.7 192.0.2.1 {port} 443\r\n{word}");
        client.write_all(header.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = within("the server to close", client.read_to_end(&mut rest)).await;
    }
    shutdown.shutdown();
    let report = within("run to return", run).await.unwrap().unwrap();
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
