//! `Connection::into_split`: a reader task and a writer task on one
//! connection, over TCP, Unix and TLS; half-close; the idle timeout with
//! halves; the `proxy` example end to end.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::{assert_adds_up, start, within};
use switchboard::{
    Addr, Connection, Handler, OwnedReadHalf, OwnedWriteHalf, ReuniteError, handler_fn,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What [`shouter`] is sent after the client's end of input, before it
/// closes its write side.
const TRAILER: &[u8] = b"-- end\n";

/// What the halves of a connection said of it.
#[derive(Debug)]
struct Facts {
    ids: (u64, u64),
    peers: (Addr, Addr),
    locals: (Addr, Addr),
}

/// Splits each connection: the handler reads and hands each chunk,
/// upper-cased, to a writer task over a channel; at the end of input the
/// writer sends what is left and [`TRAILER`], then shuts its side down.
/// What the halves say of the connection goes to `facts`.
fn shouter(facts: mpsc::UnboundedSender<Facts>) -> impl Handler {
    handler_fn(move |conn: Connection| {
        let facts = facts.clone();
        async move {
            let (mut read, mut write) = conn.into_split();
            let _ = facts.send(Facts {
                ids: (read.id(), write.id()),
                peers: (read.peer_addr(), write.peer_addr()),
                locals: (read.local_addr(), write.local_addr()),
            });
            let (chunks, mut to_send) = mpsc::channel::<bytes::BytesMut>(4);
            let mut writer = JoinSet::new();
            writer.spawn(async move {
                while let Some(chunk) = to_send.recv().await {
                    write.write_all(&chunk).await?;
                }
                write.write_all(TRAILER).await?;
                write.shutdown().await
            });
            loop {
                let mut chunk = read.read_chunk(1024).await?;
                if chunk.is_empty() {
                    break;
                }
                chunk.make_ascii_uppercase();
                if chunks.send(chunk).await.is_err() {
                    break;
                }
            }
            drop(chunks);
            while let Some(written) = writer.join_next().await {
                written??;
            }
            Ok::<_, switchboard::BoxError>(())
        }
    })
}

/// Talks to a [`shouter`]: two round trips, then the client shuts its write
/// side and still reads the rest.
async fn talk_to_shouter<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) {
    for word in [&b"hello"[..], b"world"] {
        within("a word sent", client.write_all(word)).await.unwrap();
        let mut back = vec![0; word.len()];
        within("the word shouted back", client.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, word.to_ascii_uppercase());
    }
    // Half-close: the server sees the end of input, and its writer still
    // sends the last chunk and the trailer.
    within("a last word", client.write_all(b"bye"))
        .await
        .unwrap();
    within("the client's half-close", client.shutdown())
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(
        "the rest after the half-close",
        client.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(rest, [&b"BYE"[..], TRAILER].concat());
}

#[test]
fn the_halves_are_send_sync_and_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<OwnedReadHalf>();
    assert_send_sync_static::<OwnedWriteHalf>();
    assert_send_sync_static::<ReuniteError>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_task_and_a_writer_task_share_a_tcp_connection() {
    let (tx, mut facts) = mpsc::unbounded_channel();
    let running = start(shouter(tx), |b| b).await;
    let mut client = running.connect().await;
    talk_to_shouter(&mut client).await;

    let facts = within("the halves' facts", facts.recv()).await.unwrap();
    assert_eq!(facts.ids, (1, 1));
    let me = Addr::Tcp(client.local_addr().unwrap());
    assert_eq!(facts.peers, (me.clone(), me));
    let server = Addr::Tcp(running.addr);
    assert_eq!(facts.locals, (server.clone(), server));
    drop(client);
    let report = running.stop().await;
    assert_eq!((report.accepted, report.completed), (1, 1), "{report:?}");
    assert_adds_up(&report);
}

#[cfg(unix)]
#[tokio::test]
async fn a_unix_connection_splits_too() {
    let dir = common::temp_dir("split-unix");
    let path = dir.path().join("split.sock");
    let (tx, mut facts) = mpsc::unbounded_channel();
    let server = switchboard::Server::builder()
        .bind_unix(&path)
        .handler(shouter(tx))
        .build()
        .await
        .unwrap();
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    let mut client = within("connect", tokio::net::UnixStream::connect(&path))
        .await
        .unwrap();
    talk_to_shouter(&mut client).await;
    let facts = within("the halves' facts", facts.recv()).await.unwrap();
    assert_eq!(facts.locals.0, Addr::Unix(Some(path.clone())));
    shutdown.shutdown();
    let report = within("the server to stop", task).await.unwrap().unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
}

/// Dropping the write half sends no FIN (tokio's TCP write half would): the
/// connection closes when both halves are gone, as under TLS.
#[tokio::test]
async fn dropping_the_write_half_closes_nothing_until_the_read_half_goes() {
    let (tx, mut read_back) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |conn: Connection| {
            let tx = tx.clone();
            async move {
                let (mut read, write) = conn.into_split();
                drop(write);
                let chunk = read.read_chunk(8).await?;
                let _ = tx.send(chunk);
                // Until the client's end of input.
                while !read.read_chunk(8).await?.is_empty() {}
                Ok::<_, io::Error>(())
            }
        }),
        |b| b,
    )
    .await;
    let mut client = running.connect().await;
    within("a byte sent", client.write_all(b"x")).await.unwrap();
    // The server read it after the drop: a FIN from the drop would be here.
    let chunk = within("the server's read", read_back.recv()).await.unwrap();
    assert_eq!(&chunk[..], b"x");
    let mut probe = [std::mem::MaybeUninit::uninit(); 1];
    let peeked = socket2::SockRef::from(&client).peek(&mut probe);
    assert_eq!(
        peeked.map_err(|err| err.kind()).unwrap_err(),
        io::ErrorKind::WouldBlock,
        "nothing to read, and no end of input"
    );
    within("the client's half-close", client.shutdown())
        .await
        .unwrap();
    let mut rest = Vec::new();
    within("the close", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(running.stop().await.completed, 1);
}

// ---- the idle timeout with halves -------------------------------------------

/// Splits each connection and hands the test, on `feeds`, a sender whose
/// bytes the connection's writer task writes; the handler itself reads,
/// and returns at the client's end of input.
///
/// The feed is sent just before the first read: on a current-thread
/// runtime the test gets it only once that read waits for the peer.
fn fed_writer(feeds: mpsc::UnboundedSender<mpsc::UnboundedSender<Vec<u8>>>) -> impl Handler {
    handler_fn(move |conn: Connection| {
        let feeds = feeds.clone();
        async move {
            let (mut read, mut write) = conn.into_split();
            let (feed, mut fed) = mpsc::unbounded_channel::<Vec<u8>>();
            let mut writer = JoinSet::new();
            writer.spawn(async move {
                while let Some(bytes) = fed.recv().await {
                    write.write_all(&bytes).await?;
                }
                Ok::<_, io::Error>(())
            });
            let _ = feeds.send(feed);
            while !read.read_chunk(64).await?.is_empty() {}
            Ok::<_, io::Error>(())
        }
    })
}

/// Reads until the server closes; returns how long after `since` that was.
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

/// A chat client in a quiet room: the reader waits on a silent peer, the
/// writer wrote once (after the read began to wait) and now waits for
/// something to send. The connection is idle, and cut. A single "waiting"
/// flag set by each half's last poll would say "busy" after that write and
/// never cut it (the test would time out waiting for the close).
#[tokio::test]
async fn a_silent_peer_is_cut_even_after_the_writer_wrote() {
    const IDLE: Duration = Duration::from_millis(300);
    let (feeds, mut fed) = mpsc::unbounded_channel();
    let running = start(fed_writer(feeds), |b| b.idle_timeout(IDLE)).await;
    let mut client = running.connect().await;
    // Current-thread runtime: the handler's read waits by now.
    let feed = within("the connection's feed", fed.recv()).await.unwrap();
    // Taken before the write: no later than the activity the server saw.
    let since = Instant::now();
    feed.send(b"welcome".to_vec()).unwrap();
    let mut welcome = [0u8; 7];
    within("the welcome", client.read_exact(&mut welcome))
        .await
        .unwrap();

    let waited = within(
        "the silent peer to be cut",
        closed_after(&mut client, since),
    )
    .await;
    // The sweeper stamps an activity with the time of the tick that saw it
    // (no earlier than the write) and cuts once its clock's milliseconds
    // show IDLE since: so never within IDLE less one millisecond.
    assert!(
        waited > IDLE - Duration::from_millis(1),
        "cut {waited:?} after the write"
    );
    let report = running.stop().await;
    assert_eq!(report.timed_out, 1, "{report:?}");
    assert_adds_up(&report);
}

/// The writer keeps writing while the reader waits on a silent peer: the
/// connection is not idle. The test measures, from the client, an upper
/// bound on every gap between two of the server's writes; the sweeper can
/// only cut after a gap of more than the idle timeout less a millisecond.
/// So a cut after gaps all shorter than that is a failure, and a run whose
/// machine stalled longer than that proves nothing: it is tried again with
/// a longer timeout (three tries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_keeps_writing_is_not_cut_while_the_reader_waits() {
    let mut idle = Duration::from_millis(200);
    for _ in 0..3 {
        match keep_writing(idle).await {
            Outcome::Kept { rounds, longest } => {
                println!(
                    "kept: {rounds} writes over 3 idle timeouts of {idle:?}, longest gap {longest:?}"
                );
                return;
            }
            Outcome::Stalled { longest } => {
                println!("inconclusive: a gap of {longest:?} against {idle:?}; trying longer");
                idle *= 4;
            }
        }
    }
    panic!("the machine stalled longer than the idle timeout in every try");
}

enum Outcome {
    /// Not cut, and every gap was short enough for that to mean something.
    Kept { rounds: usize, longest: Duration },
    /// A gap as long as the idle timeout: a cut would have been right.
    Stalled { longest: Duration },
}

async fn keep_writing(idle: Duration) -> Outcome {
    let (feeds, mut fed) = mpsc::unbounded_channel();
    let running = start(fed_writer(feeds), |b| b.idle_timeout(idle)).await;
    // No later than the acceptance: the first gap runs from here.
    let mut last_sent = Instant::now();
    let mut client = running.connect().await;
    let feed = within("the connection's feed", fed.recv()).await.unwrap();
    let start = Instant::now();
    let mut longest = Duration::ZERO;
    let mut rounds = 0;
    let mut cut = false;
    while start.elapsed() < idle * 3 && rounds < 10_000 {
        let sent = Instant::now();
        // Fails only if the handler (and its writer) is gone: cut.
        let fed = feed.send(b"x".to_vec());
        let mut byte = [0u8; 1];
        let read = within("a written byte", client.read_exact(&mut byte)).await;
        // The write before this one was no earlier than `last_sent`, this
        // one no later than now.
        longest = longest.max(last_sent.elapsed());
        if fed.is_err() || read.is_err() {
            cut = true;
            break;
        }
        last_sent = sent;
        rounds += 1;
        tokio::time::sleep(idle / 5).await; // pacing, not synchronisation
    }
    let timed_out = running.stats.snapshot().timed_out_idle;
    longest = longest.max(last_sent.elapsed());
    drop(client);
    let report = running.stop().await;
    if longest >= idle - Duration::from_millis(1) {
        return Outcome::Stalled { longest };
    }
    assert!(
        !cut && timed_out == 0,
        "cut though the writer wrote at least every {longest:?} (idle timeout {idle:?}): {report:?}"
    );
    assert_eq!(report.completed, 1, "{report:?}");
    Outcome::Kept { rounds, longest }
}

// ---- TLS ----------------------------------------------------------------------

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use switchboard::rustls::pki_types::ServerName;
    use switchboard::rustls::{ClientConfig, RootCertStore};
    use switchboard::{Listen, TlsConfig};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::common::start_on;

    /// A TLS listener's halves: the same reader and writer tasks, and a
    /// half-close (`close_notify`, then FIN) from the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tls_connection_splits_and_honours_half_close() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = TlsConfig::from_pem(
            cert.pem().as_bytes(),
            signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let (tx, _facts) = mpsc::unbounded_channel();
        let running = start_on(Listen::tcp("127.0.0.1:0").tls(tls), shouter(tx)).await;

        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(switchboard::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = running.connect().await;
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = within(
            "the handshake",
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .unwrap();
        talk_to_shouter(&mut client).await;
        drop(client);
        let report = running.stop().await;
        assert_eq!(report.completed, 1, "{report:?}");
        assert_adds_up(&report);
    }
}

// ---- the proxy example --------------------------------------------------------

/// An upstream for the proxy: echoes each connection until its end of
/// input, then sends `upstream saw EOF` and closes.
async fn upstream_echo() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            conns.spawn(async move {
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.write_all(b"upstream saw EOF").await;
            });
        }
    });
    (addr, task)
}

#[cfg(unix)]
#[tokio::test]
async fn the_proxy_example_copies_both_ways_and_passes_half_close_on() {
    use common::Example;

    let (upstream, upstream_task) = upstream_echo().await;
    let mut command = Example::command("proxy");
    command.arg(upstream.to_string());
    let example = Example::start(command).await;

    let mut client = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    common::assert_echoes("the echo through the proxy", &mut client, b"ping").await;
    // A second client, through to the upstream, left open at shutdown.
    let mut open = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    common::assert_echoes("the second client's echo", &mut open, b"pong").await;

    // The client shuts its write side: the upstream sees its end of input
    // (so the proxy shut its write side too), and its answer still comes.
    within("the half-close", client.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    within("the rest", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"upstream saw EOF");

    // SIGTERM: the open connection is closed, and the report printed.
    let out = example.terminate().await;
    assert!(
        out.contains("shutdown report: accepted 2, completed 2, failed 0"),
        "{out}"
    );
    assert!(out.contains(", 0 aborted"), "{out}");
    common::assert_closed(&mut open).await;
    upstream_task.abort();
}
