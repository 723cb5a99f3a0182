//! `Connection::read_chunk`: buffers sized to what arrived, at most `max`
//! (and `READ_CHUNK_MAX`) bytes, EOF as an empty chunk, over a socket and an
//! in-memory pipe.

mod common;

use common::{start, within};
use switchboard::testing::TestConnection;
use switchboard::{Connection, READ_CHUNK_MAX, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test]
async fn chunks_are_sized_to_what_arrived_and_capped_at_max() {
    let (mut conn, mut client, _shutdown) = TestConnection::new().buffer_size(1 << 20).pair();
    client.write_all(&[7; 100]).await.unwrap();
    let chunk = within("a chunk", conn.read_chunk(4096)).await.unwrap();
    assert_eq!(&chunk[..], &[7; 100][..]);
    assert_eq!(chunk.capacity(), 100, "no slack beyond what arrived");

    client.write_all(b"0123456789").await.unwrap();
    let mut pieces = Vec::new();
    for _ in 0..3 {
        pieces.push(within("a piece", conn.read_chunk(4)).await.unwrap());
    }
    assert_eq!(pieces, [&b"0123"[..], b"4567", b"89"]);

    // More than one call may read: the rest comes in later chunks.
    let big = vec![1u8; READ_CHUNK_MAX + 1000];
    client.write_all(&big).await.unwrap();
    let first = within("a big chunk", conn.read_chunk(usize::MAX))
        .await
        .unwrap();
    assert_eq!(
        first.len(),
        READ_CHUNK_MAX,
        "at most READ_CHUNK_MAX at a time"
    );
    let second = within("the rest", conn.read_chunk(usize::MAX))
        .await
        .unwrap();
    assert_eq!(second.len(), 1000);

    drop(client);
    let eof = within("EOF", conn.read_chunk(16)).await.unwrap();
    assert!(eof.is_empty(), "EOF is an empty chunk");
}

#[tokio::test]
async fn chunks_over_a_socket_keep_order_and_end_at_eof() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |mut conn: Connection| {
        let tx = tx.clone();
        async move {
            loop {
                let chunk = conn.read_chunk(64).await?;
                let eof = chunk.is_empty();
                conn.write_all(&chunk).await?;
                tx.send((chunk.len(), chunk.capacity())).unwrap();
                if eof {
                    return Ok::<_, std::io::Error>(());
                }
            }
        }
    });
    let server = start(handler, |b| b).await;
    let mut client = server.connect().await;
    let sent: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut echoed = vec![0; sent.len()];
    // One message at a time, each echoed before the next is sent, so that a
    // message arrives whole: the chunk then has its exact length.
    for message in sent.chunks(50) {
        client.write_all(message).await.unwrap();
        let (len, capacity) = within("a chunk", rx.recv()).await.unwrap();
        assert_eq!((len, capacity), (50, 50));
    }
    within("the echo", client.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, sent);
    client.shutdown().await.unwrap();
    let (len, _) = within("EOF", rx.recv()).await.unwrap();
    assert_eq!(len, 0, "EOF is an empty chunk");
    let report = server.stop().await;
    assert_eq!(report.completed, 1);
}
