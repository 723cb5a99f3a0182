//! Unix domain sockets: the same handler serves them; the stale socket file
//! policy; permissions; cleanup.
#![cfg(unix)]

mod common;

use std::io;
use std::os::unix::fs::PermissionsExt;

use common::{assert_adds_up, assert_echoes, noop, temp_dir, within};
use switchboard::{Addr, Builder, Connection, Error, Handler, Server, Transport, handler_fn};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Reports the connection's addresses, then echoes one chunk.
fn reporter(tx: mpsc::UnboundedSender<(Addr, Addr, Transport)>) -> impl Handler {
    handler_fn(move |mut conn: Connection| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((conn.peer_addr(), conn.local_addr(), conn.transport()));
            let chunk = conn.read_chunk(64).await?;
            conn.write_all(&chunk).await?;
            Ok::<_, io::Error>(())
        }
    })
}

#[tokio::test]
async fn a_unix_socket_is_served_by_the_same_handler() {
    let dir = temp_dir("unix-serve");
    let path = dir.path().join("app.sock");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .bind_unix(&path)
        .handler(reporter(tx))
        .build()
        .await
        .unwrap();
    assert_eq!(server.local_addr(), Addr::Unix(Some(path.clone())));
    assert_eq!(
        server.local_addr().to_string(),
        format!("unix:{}", path.display())
    );
    // Run by hand: `common::run` needs a TCP listener for `Running::addr`.
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.run());

    let mut client = within("connect", UnixStream::connect(&path)).await.unwrap();
    assert_echoes("the echo", &mut client, b"over unix").await;
    let (peer, local, transport) = within("the report", rx.recv()).await.unwrap();
    assert_eq!(peer, Addr::Unix(None), "clients' sockets are unnamed");
    assert_eq!(local, Addr::Unix(Some(path.clone())));
    assert_eq!(transport, Transport::Unix);
    assert_eq!(transport.to_string(), "unix");

    shutdown.shutdown();
    let report = within("run to return", task).await.unwrap().unwrap();
    assert_eq!((report.accepted, report.completed), (1, 1));
    assert_adds_up(&report);
    assert!(
        !path.exists(),
        "the socket file is removed when the server stops"
    );
}

/// A builder for a server that does nothing, listening on the Unix socket
/// `path`.
fn noop_at(path: &std::path::Path) -> Builder {
    Server::builder().bind_unix(path).handler(noop())
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = temp_dir("unix-stale");
    let path = dir.path().join("stale.sock");
    // A server that died leaves its socket file, with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = noop_at(&path).build().await;
    assert!(server.is_ok(), "the stale file is replaced: {server:?}");
    let _client = within("connect", UnixStream::connect(&path)).await.unwrap();
}

#[tokio::test]
async fn a_live_socket_is_address_in_use() {
    let dir = temp_dir("unix-live");
    let path = dir.path().join("live.sock");
    let first = noop_at(&path).build().await.unwrap();
    let second = noop_at(&path).build().await;
    match second {
        Err(Error::Bind { addr, source }) => {
            assert_eq!(addr, Addr::Unix(Some(path.clone())));
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    // The live server's socket was not touched.
    assert!(path.exists());
    drop(first);
    assert!(
        !path.exists(),
        "dropping an unrun server removes its socket file"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = temp_dir("unix-file");
    let path = dir.path().join("important.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let result = noop_at(&path).build().await;
    assert!(
        matches!(&result, Err(Error::Bind { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists),
        "{result:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[tokio::test]
async fn socket_permissions_can_be_set() {
    let dir = temp_dir("unix-mode");
    let path = dir.path().join("private.sock");
    let _server = noop_at(&path)
        .unix_permissions(0o600)
        .build()
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
