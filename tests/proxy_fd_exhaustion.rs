//! The PROXY header reader needs no descriptor of its own: a header whose
//! start arrives in pieces is read even when the process has no descriptor
//! left (the state the accept loop's backoff exists for).
//!
//! A test binary of its own: it lowers this process's descriptor limit
//! (RLIMIT_NOFILE, through util-linux's `prlimit`), which would disturb
//! other tests.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;

use common::{
    fill_descriptor_table, nofile_limits, open_descriptors, poll_once, send_and_arrive, set_nofile,
    tcp_pair, within,
};
use switchboard::proxy::{DEFAULT_V2_MAX_LEN, read_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn a_header_in_pieces_is_read_with_no_descriptor_left() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, mut server) = tcp_pair(&listener).await;

    let (soft, hard) = nofile_limits();
    set_nofile(open_descriptors() as u64 + 20, hard);
    let filler = fill_descriptor_table();

    // Within the first 16 bytes: the reader finds the header incomplete
    // and waits for bytes behind the ones it has seen.
    send_and_arrive(&mut client, &server, b"PROXY TCP4 1.2.").await;
    let header = {
        let mut reading = std::pin::pin!(read_header(&mut server, DEFAULT_V2_MAX_LEN));
        let once = poll_once(&mut reading).await;
        assert!(once.is_pending(), "{once:?}");
        client
            .write_all(b"3.4 5.6.7.8 1000 443\r\npayload")
            .await
            .unwrap();
        within("the rest of the header", reading)
            .await
            .expect("the header, with no descriptor left")
    };
    assert_eq!(
        header.source_addr(),
        Some(SocketAddr::from(([1, 2, 3, 4], 1000)))
    );
    drop(filler);
    set_nofile(soft, hard);

    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the payload", server.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"payload");
}
