//! Socket options: keepalive on accepted sockets, SO_REUSEADDR,
//! SO_REUSEPORT and IPV6_V6ONLY on listeners.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use common::{build, noop, reporter, start, within};
use socket2::SockRef;
use switchboard::{Builder, Error, Handler, Server};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reports the accepted socket's keepalive setting and idle time.
fn keepalive_reporter() -> (
    impl Handler,
    tokio::sync::mpsc::UnboundedReceiver<(bool, Duration)>,
) {
    reporter(|conn| {
        let sock = SockRef::from(conn.as_tcp().expect("tcp"));
        Ok((sock.keepalive()?, sock.tcp_keepalive_time()?))
    })
}

/// A builder for a server that does nothing, listening on `addr`.
fn noop_at(addr: impl switchboard::ToBindAddr) -> Builder {
    Server::builder().bind(addr).handler(noop())
}

#[tokio::test]
async fn tcp_keepalive_is_off_by_default_and_set_with_its_idle_time() {
    let (handler, mut rx) = keepalive_reporter();
    let plain = start(handler, |b| b).await;
    let _c = plain.connect().await;
    let (on, _) = within("the report", rx.recv()).await.unwrap();
    assert!(!on, "keepalive is off by default");
    plain.stop().await;

    let (handler, mut rx) = keepalive_reporter();
    let probing = start(handler, |b| b.tcp_keepalive(Duration::from_secs(42))).await;
    let _c = probing.connect().await;
    let (on, idle) = within("the report", rx.recv()).await.unwrap();
    assert!(on);
    assert_eq!(idle, Duration::from_secs(42));
    probing.stop().await;
}

#[tokio::test]
async fn reuse_port_lets_two_listeners_share_a_port() {
    let first = build(noop(), |b| b.reuse_port(true)).await;
    let addr = first.local_addr().as_tcp().unwrap();
    let second = noop_at(addr).reuse_port(true).build().await;
    assert!(second.is_ok(), "{second:?}");
    let without = noop_at(addr).build().await;
    assert!(
        matches!(&without, Err(Error::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse),
        "{without:?}"
    );
}

#[tokio::test]
async fn reuse_address_lets_a_restarted_server_bind_past_time_wait() {
    // The server closes first, so its side of the connection lingers in
    // TIME_WAIT on the port after the server is gone.
    let running = start(noop(), |b| b).await;
    let addr = running.addr;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    within("the server's close", client.read_to_end(&mut rest))
        .await
        .unwrap();
    drop(client);
    running.stop().await;

    let strict = noop_at(addr).reuse_address(false).build().await;
    if in_time_wait(addr.port()) {
        assert!(
            matches!(&strict, Err(Error::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse),
            "without SO_REUSEADDR the TIME_WAIT connection blocks the port: {strict:?}"
        );
    } else {
        // The kernel keeps at most net.ipv4.tcp_max_tw_buckets of them and
        // silently skips TIME_WAIT beyond that (a load test running on the
        // same machine can fill the table): then nothing blocks the port.
        eprintln!(
            "SKIPPED the SO_REUSEADDR=off check: the kernel kept no TIME_WAIT socket on the port"
        );
        drop(strict);
    }
    let restarted = noop_at(addr).build().await;
    assert!(
        restarted.is_ok(),
        "the default (SO_REUSEADDR) binds: {restarted:?}"
    );
}

#[tokio::test]
async fn ipv6_only_decides_whether_ipv4_clients_reach_a_wildcard_ipv6_listener() {
    for only in [true, false] {
        // Up to 10 servers: an IPv6-only socket leaves its port free for
        // IPv4, where another test's listener may sit, which a connect to
        // 127.0.0.1 would reach. A server whose IPv4 side can be bound here
        // first (and let go) has it free.
        let mut tries = 0;
        let (_server, port) = loop {
            let built = noop_at("[::]:0").ipv6_only(only).build().await;
            let server = match built {
                Ok(server) => server,
                Err(err) => {
                    eprintln!("SKIPPED: this machine has no IPv6 ({err:?})");
                    return;
                }
            };
            let port = server.local_addr().as_tcp().unwrap().port();
            if !only {
                break (server, port);
            }
            match std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
                Ok(probe) => {
                    drop(probe);
                    break (server, port);
                }
                Err(err) if err.kind() == io::ErrorKind::AddrInUse && tries < 10 => tries += 1,
                Err(err) => panic!("IPv6 only, yet 127.0.0.1:{port} is taken: {err}"),
            }
        };
        let v4 = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await;
        if only {
            assert_eq!(
                v4.expect_err("IPv6 only").kind(),
                io::ErrorKind::ConnectionRefused
            );
        } else {
            assert!(v4.is_ok(), "dual-stack accepts IPv4: {v4:?}");
        }
        let v6 = TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).await;
        assert!(v6.is_ok(), "{v6:?}");
    }
}

/// Whether a TCP socket in TIME_WAIT holds local `port` (from /proc/net/tcp).
fn in_time_wait(port: u16) -> bool {
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
        local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
            && fields.get(3) == Some(&TIME_WAIT)
    })
}
