//! Zero-downtime restart: a second process takes over the first one's
//! listening sockets while clients keep connecting, and not one connection
//! is refused or fails.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Example, accepted_in, greeter, greeting, read_response, run, temp_dir, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_hello(control: &Path) -> Example {
    let mut command = Example::command("ops");
    command
        .env("SWITCHBOARD_HANDOVER", control)
        .stderr(std::process::Stdio::inherit());
    Example::start(command).await
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One request per connection, over and over, until `stop`; bounded.
async fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let mut client = TcpStream::connect(addr).await?;
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let response = read_response(&mut client, false).await;
            Ok::<_, std::io::Error>(response.status)
        })
        .await;
        match outcome {
            Ok(Ok(200)) => tally.ok.fetch_add(1, Ordering::Relaxed),
            other => {
                eprintln!("request failed: {other:?}");
                tally.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_the_listeners_under_load_without_a_single_failure() {
    let dir = temp_dir("handover");
    let control = dir.path().join("control.sock");
    let old = start_hello(&control).await;
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client_loop(addr, Arc::clone(&stop), Arc::clone(&tally))))
        .collect();
    let served = |t: &Tally| t.ok.load(Ordering::Relaxed);
    within("load on the old process", async {
        while served(&tally) < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter, bounded
        }
    })
    .await;

    // The successor: same arguments; it prints the address it took over.
    let handover_started = Instant::now();
    let before = served(&tally);
    let new = start_hello(&control).await;
    assert_eq!(new.addr, addr, "the successor serves the very same socket");
    let old_report = old.exit().await; // it drains and exits by itself
    let during = served(&tally) - before;
    let handover_took = handover_started.elapsed();

    let after_start = served(&tally);
    within("load on the new process", async {
        while served(&tally) < after_start + 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        within("a client loop", client).await.unwrap();
    }
    let new_report = new.terminate().await;

    let (ok, failed) = (served(&tally), tally.failed.load(Ordering::Relaxed));
    println!(
        "handover: {ok} requests served ({during} while the successor started and the old \
         process drained, in {handover_took:?}), {failed} failed; old: {} new: {}",
        old_report.trim(),
        new_report.trim()
    );
    assert_eq!(failed, 0, "no request was refused or failed");
    assert_eq!(accepted_in(&old_report) + accepted_in(&new_report), ok);
    assert!(old_report.contains("0 aborted"), "{old_report}");
    assert!(
        !control.exists(),
        "the last server's clean stop removes the control socket"
    );
}

#[tokio::test]
async fn in_process_takeover_keeps_unix_socket_files_for_the_successor() {
    use switchboard::Server;

    let dir = temp_dir("handover-unix");
    let (control, socket) = (dir.path().join("control.sock"), dir.path().join("app.sock"));
    let build = |name| {
        Server::builder()
            .bind("127.0.0.1:0")
            .bind_unix(&socket)
            .handover(&control)
            .handler(greeter(name))
            .build()
    };
    let old = run(build("old").await.unwrap());
    assert_eq!(greeting(&socket).await, "old");

    let new = run(build("new").await.unwrap());
    assert_eq!(new.addrs, old.addrs, "same TCP port, same Unix path");
    // It hands over and drains by itself.
    let old_report = old.finish().await;
    assert!(old_report.handed_over);
    assert!(
        socket.exists(),
        "the old server left the socket file to its successor"
    );
    assert_eq!(greeting(&socket).await, "new");

    let new_report = new.stop().await;
    assert!(!new_report.handed_over);
    assert!(!socket.exists(), "a clean stop removes the socket file");
    assert!(!control.exists(), "and the control socket");
}

/// Reads one chunk, then answers `name` and the peer address it sees.
fn namer(name: &'static str) -> impl switchboard::Handler {
    use switchboard::{Connection, handler_fn};
    handler_fn(move |mut conn: Connection| async move {
        conn.read_chunk(256).await?;
        let answer = format!("{name} {}", conn.peer_addr());
        conn.write_all(answer.as_bytes()).await?;
        Ok::<_, std::io::Error>(())
    })
}

/// Connects to `addr`, sends `bytes`, and returns all the server answers.
async fn ask(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut client = within("connect", TcpStream::connect(addr))
        .await
        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    within("send", client.write_all(bytes)).await.unwrap();
    let mut text = String::new();
    within("the answer", client.read_to_string(&mut text))
        .await
        .unwrap_or_else(|err| panic!("the answer from {addr}: {err}"));
    text
}

/// A server on `127.0.0.1:0` with a handover on `control`: the first one
/// binds the port, the next takes it over from the one running.
async fn on_control(control: &Path, handler: impl switchboard::Handler) -> switchboard::Server {
    switchboard::Server::builder()
        .bind("127.0.0.1:0")
        .handover(control)
        .handler(handler)
        .build()
        .await
        .expect("the server builds")
}

#[tokio::test]
async fn a_successor_configured_on_another_address_binds_it_and_leaves_the_old_one() {
    use switchboard::Server;

    let dir = temp_dir("handover-moved");
    let control = dir.path().join("control.sock");
    let old = run(on_control(&control, namer("old")).await);
    // Another loopback address: no socket of the old server is there.
    let new = run(Server::builder()
        .bind("127.0.0.2:0")
        .handover(&control)
        .handler(namer("new"))
        .build()
        .await
        .unwrap());
    let old_addr = old.addr;
    assert_eq!(new.addr.ip().to_string(), "127.0.0.2", "{:?}", new.addrs);
    assert!(ask(new.addr, b"hi").await.starts_with("new "));
    let old_report = old.finish().await;
    assert!(old_report.handed_over, "the new server took over");
    let refused = within("connect", TcpStream::connect(old_addr)).await;
    assert!(
        refused.is_err(),
        "nobody serves the old address once the old server stopped: {refused:?}"
    );
    new.stop().await;
}

// The setting that tells the listeners apart is the PROXY protocol.
#[cfg(feature = "proxy-protocol")]
#[tokio::test]
async fn a_reordered_configuration_keeps_each_listeners_settings_on_its_address() {
    use switchboard::{Listen, ProxyProtocol, Server};

    let dir = temp_dir("handover-reordered");
    let control = dir.path().join("control.sock");
    let old = run(Server::builder()
        .listen(Listen::tcp("127.0.0.1:0").proxy_protocol(ProxyProtocol::required()))
        .bind("127.0.0.1:0")
        .handover(&control)
        .handler(namer("old"))
        .build()
        .await
        .unwrap());
    let (proxied, plain) = (old.tcp_addrs()[0], old.tcp_addrs()[1]);
    // The same two addresses, in the other order.
    let new = run(Server::builder()
        .bind(plain)
        .listen(Listen::tcp(proxied).proxy_protocol(ProxyProtocol::required()))
        .handover(&control)
        .handler(namer("new"))
        .build()
        .await
        .unwrap());
    assert_eq!(new.tcp_addrs(), vec![plain, proxied], "in the new order");
    assert!(old.finish().await.handed_over);
    assert_eq!(
        ask(proxied, b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nhi").await,
        "new 192.0.2.1:1111",
        "the PROXY header is read on the proxied address"
    );
    let direct = ask(plain, b"hi").await;
    assert!(
        direct.starts_with("new 127.0.0.1:"),
        "no PROXY header is expected on the plain address: {direct:?}"
    );
    new.stop().await;
}

#[tokio::test]
async fn a_successor_asking_for_a_socket_option_the_socket_lacks_is_refused_and_the_old_one_serves_on()
 {
    use switchboard::{Error, Server};

    let dir = temp_dir("handover-option");
    let control = dir.path().join("control.sock");
    let old = run(on_control(&control, namer("old")).await);
    // SO_REUSEPORT counts when a socket is bound: the handed-over one was
    // bound without it.
    let refused = Server::builder()
        .bind(old.addr)
        .reuse_port(true)
        .handover(&control)
        .handler(namer("new"))
        .build()
        .await
        .expect_err("the option cannot be honoured on the running server's socket");
    match &refused {
        Error::Bind { addr, source } => {
            assert_eq!(addr.as_tcp(), Some(old.addr));
            assert!(source.to_string().contains("reuse_port"), "{source}");
        }
        other => panic!("expected Error::Bind, got {other:?}"),
    }
    assert!(ask(old.addr, b"hi").await.starts_with("old "));
    assert!(!old.stop().await.handed_over);
}

/// A handler for the rollback tests: a client that sends "hold" is held
/// until `release`, after the handler reported (on `told`) that its
/// connection was told to shut down; any other is answered `name`.
fn holder(
    name: &'static str,
    told: tokio::sync::mpsc::UnboundedSender<()>,
    release: Arc<tokio::sync::Notify>,
) -> impl switchboard::Handler {
    use switchboard::{Connection, handler_fn};
    handler_fn(move |mut conn: Connection| {
        let (told, release) = (told.clone(), Arc::clone(&release));
        async move {
            let chunk = conn.read_chunk(256).await?;
            if &chunk[..] == b"hold" {
                conn.write_all(b"held").await?;
                conn.shutdown_requested().await;
                let _ = told.send(());
                release.notified().await;
            }
            conn.write_all(name.as_bytes()).await?;
            Ok::<_, std::io::Error>(())
        }
    })
}

/// A server with a connection held open: its drain lasts until the test
/// releases it.
async fn held_open(server: &common::Running) -> TcpStream {
    let mut client = server.connect().await;
    within("send", client.write_all(b"hold")).await.unwrap();
    let mut held = [0; 4];
    within("the server to hold", client.read_exact(&mut held))
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn a_successor_gone_while_the_old_server_drains_gives_the_listeners_back() {
    let dir = temp_dir("handover-rollback");
    let control = dir.path().join("control.sock");
    let (told, mut old_told) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let old = run(on_control(&control, holder("old", told, Arc::clone(&release))).await);
    let mut held = held_open(&old).await;

    let new = on_control(&control, namer("new")).await;
    assert_eq!(new.local_addr().as_tcp(), Some(old.addr));
    let new = tokio::spawn(new.run());
    within("the old server to hand over and drain", old_told.recv())
        .await
        .expect("told to shut down");
    // The new server dies: its `run` future is dropped.
    new.abort();
    let _ = within("the new server's end", new).await;

    assert_eq!(
        ask(old.addr, b"hi").await,
        "old",
        "the old server serves the port again"
    );
    // Its drain was abandoned; the held connection is served on.
    release.notify_one();
    let mut rest = String::new();
    within("the held connection's end", held.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, "old");

    let report = old.stop().await;
    assert!(!report.handed_over, "{report:?}");
    assert_eq!(report.accepted, 2, "{report:?}");
    common::assert_adds_up(&report);
    assert!(
        !control.exists(),
        "the old server's clean stop removes the control socket"
    );
}

#[tokio::test]
async fn a_successor_that_shuts_down_does_not_bring_the_old_server_back() {
    let dir = temp_dir("handover-no-rollback");
    let control = dir.path().join("control.sock");
    let (told, mut old_told) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let old = run(on_control(&control, holder("old", told, Arc::clone(&release))).await);
    let old_addr = old.addr;
    let mut held = held_open(&old).await;
    let new = run(on_control(&control, namer("new")).await);
    within("the old server to hand over and drain", old_told.recv())
        .await
        .expect("told to shut down");
    // A deliberate stop of the new server: the old one is released first.
    assert!(!new.stop().await.handed_over);
    release.notify_one();
    let mut rest = String::new();
    within("the held connection's end", held.read_to_string(&mut rest))
        .await
        .unwrap();
    let report = old.finish().await;
    assert!(report.handed_over, "it drained and stopped: {report:?}");
    let refused = within("connect", TcpStream::connect(old_addr)).await;
    assert!(refused.is_err(), "nobody serves the port: {refused:?}");
}
