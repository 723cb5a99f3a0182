//! The PROXY protocol on a listener: the handler sees the real client, and
//! every bad header is refused before the handler runs.

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Running, assert_adds_up, assert_closed, noop, start_on, within};
use switchboard::proxy::ProxyVersion;
use switchboard::{Addr, Connection, Error, Handler, Listen, ProxyProtocol, Server, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the handler saw of its connection.
#[derive(Debug)]
struct Seen {
    peer: Addr,
    balancer: Option<Addr>,
    version: Option<ProxyVersion>,
    authority: Option<String>,
    first_bytes: Vec<u8>,
}

/// Reports what it sees, then echoes the first chunk back.
fn observer(tx: mpsc::UnboundedSender<Seen>) -> impl Handler {
    handler_fn(move |mut conn: Connection| {
        let tx = tx.clone();
        async move {
            let chunk = conn.read_chunk(256).await?;
            let header = conn.proxy_header();
            let _ = tx.send(Seen {
                peer: conn.peer_addr(),
                balancer: conn.balancer_addr().cloned(),
                version: header.map(|h| h.version()),
                authority: header.and_then(|h| h.authority()).map(str::to_owned),
                first_bytes: chunk.to_vec(),
            });
            conn.write_all(&chunk).await?;
            Ok::<_, io::Error>(())
        }
    })
}

/// Starts an [`observer`] behind `proxy`; returns the server and what the
/// handler sees.
async fn start(proxy: ProxyProtocol) -> (Running, mpsc::UnboundedReceiver<Seen>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let listen = Listen::tcp("127.0.0.1:0").proxy_protocol(proxy);
    (start_on(listen, observer(tx)).await, seen)
}

/// Connects to `addr`, sends `bytes` and expects the server to close the
/// connection without an answer.
async fn assert_refused(addr: SocketAddr, bytes: &[u8]) {
    let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("send", client.write_all(bytes)).await.unwrap();
    assert_closed(&mut client).await;
}

/// A v2 PROXY header for TCP over IPv4 with an AUTHORITY TLV.
fn v2_header(src: SocketAddr, dst: SocketAddr, authority: &str) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only in this helper")
    };
    let mut body = Vec::new();
    body.extend_from_slice(&src.ip().octets());
    body.extend_from_slice(&dst.ip().octets());
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    body.push(0x02); // PP2_TYPE_AUTHORITY
    body.extend_from_slice(&(authority.len() as u16).to_be_bytes());
    body.extend_from_slice(authority.as_bytes());
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(0x11); // AF_INET, STREAM
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// CRC-32C (Castagnoli), bitwise, as a sender fills in `PP2_TYPE_CRC32C`.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A v2 LOCAL header (a balancer's health check), family AF_UNSPEC, with an
/// AUTHORITY TLV and a CRC32C TLV; `corrupt` flips a bit of the checksum.
fn v2_local_with_crc(authority: &str, corrupt: bool) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x20); // version 2, LOCAL
    header.push(0x00); // AF_UNSPEC, UNSPEC
    let len = 3 + authority.len() + 3 + 4;
    header.extend_from_slice(&(len as u16).to_be_bytes());
    header.push(0x02); // PP2_TYPE_AUTHORITY
    header.extend_from_slice(&(authority.len() as u16).to_be_bytes());
    header.extend_from_slice(authority.as_bytes());
    header.extend_from_slice(&[0x03, 0, 4]); // PP2_TYPE_CRC32C
    let crc_at = header.len();
    header.extend_from_slice(&[0; 4]);
    let crc = crc32c(&header) ^ u32::from(corrupt);
    header[crc_at..].copy_from_slice(&crc.to_be_bytes());
    header
}

#[tokio::test]
async fn a_v1_header_names_the_real_client() {
    let (server, mut reports) = start(ProxyProtocol::required()).await;
    let mut client = server.connect().await;
    client
        .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nhello")
        .await
        .unwrap();
    let mut echo = [0u8; 5];
    within("the echo", client.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(
        &echo, b"hello",
        "the payload after the header reaches the handler intact"
    );
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    assert_eq!(seen.peer, Addr::Tcp("203.0.113.7:51000".parse().unwrap()));
    assert_eq!(seen.balancer, Some(Addr::Tcp(client.local_addr().unwrap())));
    assert_eq!(seen.version, Some(ProxyVersion::V1));
    assert_eq!(seen.first_bytes, b"hello");
    let report = server.stop().await;
    assert_eq!(
        (report.completed, report.by_listener[0].1.proxy_rejected),
        (1, 0)
    );
}

#[tokio::test]
async fn a_v2_header_with_tlvs() {
    let (server, mut reports) = start(ProxyProtocol::required()).await;
    let mut client = server.connect().await;
    let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let mut bytes = v2_header(src, server.addr, "example.com");
    bytes.extend_from_slice(b"payload");
    // Sent in two pieces: the header may arrive split.
    client.write_all(&bytes[..10]).await.unwrap();
    client.flush().await.unwrap();
    client.write_all(&bytes[10..]).await.unwrap();
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    assert_eq!(seen.peer, Addr::Tcp(src));
    assert_eq!(seen.version, Some(ProxyVersion::V2));
    assert_eq!(seen.authority.as_deref(), Some("example.com"));
    assert_eq!(seen.first_bytes, b"payload");
    server.stop().await;
}

#[tokio::test]
async fn bad_headers_never_reach_the_handler() {
    let (server, mut reports) =
        start(ProxyProtocol::required().header_timeout(Duration::from_millis(300))).await;
    let bad: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",    // no header at all
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",     // bare LF
        b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n", // bad address
        &[b'P'; 200],                            // over-long v1 line
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", // v2 announcing 65,535 bytes
    ];
    for bytes in bad {
        let mut client = server.connect().await;
        let _ = client.write_all(bytes).await;
        assert_closed(&mut client).await;
    }
    // A header that never completes is cut off at the header timeout.
    // Taken before the connect: no later than the header timeout's start.
    let since = Instant::now();
    let mut slow = server.connect().await;
    slow.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    assert_closed(&mut slow).await;
    assert!(
        since.elapsed() >= Duration::from_millis(250),
        "{:?}",
        since.elapsed()
    );

    assert!(reports.try_recv().is_err(), "the handler never ran");
    let snapshot = server.stats.snapshot();
    assert_eq!(snapshot.proxy_rejected, 6, "{snapshot:?}");
    assert_eq!(snapshot.completed + snapshot.failed, 0);
    let report = server.stop().await;
    assert_eq!(report.accepted, 6);
    assert_adds_up(&report);
}

#[tokio::test]
async fn headers_from_untrusted_peers_are_refused() {
    let balancer: IpAddr = "10.0.0.5".parse().unwrap();
    let (server, mut reports) = start(ProxyProtocol::required().trust(balancer)).await;
    assert_refused(server.addr, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi").await;
    assert!(reports.try_recv().is_err());
    assert_eq!(server.stats.snapshot().proxy_rejected, 1);
    server.stop().await;

    // Optional: an untrusted peer without a header is served as it is; with
    // one it is refused, so it cannot spoof its address.
    let (server, mut reports) = start(ProxyProtocol::optional().trust(balancer)).await;
    let mut direct = server.connect().await;
    direct.write_all(b"plain").await.unwrap();
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    assert_eq!(seen.peer, Addr::Tcp(direct.local_addr().unwrap()));
    assert_eq!(seen.balancer, None);
    assert_refused(server.addr, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi").await;
    assert_eq!(server.stats.snapshot().proxy_rejected, 1);
    server.stop().await;
}

#[tokio::test]
async fn optional_mode_serves_trusted_peers_with_or_without_a_header() {
    let loopback: IpAddr = "127.0.0.0".parse().unwrap();
    let (server, mut reports) = start(ProxyProtocol::optional().trust_network(loopback, 8)).await;
    let mut with = server.connect().await;
    with.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nx")
        .await
        .unwrap();
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    assert_eq!(seen.peer, Addr::Tcp("203.0.113.7:51000".parse().unwrap()));
    let mut without = server.connect().await;
    without
        .write_all(b"PRIVMSG #x :PROXY is a word")
        .await
        .unwrap();
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    assert_eq!(seen.peer, Addr::Tcp(without.local_addr().unwrap()));
    assert_eq!(seen.first_bytes, b"PRIVMSG #x :PROXY is a word");
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_proxy_protocol_is_refused_on_unix_listeners_at_build() {
    let dir = common::temp_dir("proxy-unix");
    let result = Server::builder()
        .listen(Listen::unix(dir.path().join("p.sock")).proxy_protocol(ProxyProtocol::required()))
        .handler(noop())
        .build()
        .await;
    assert!(
        matches!(
            result,
            Err(Error::InvalidConfig {
                option: "proxy_protocol",
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_local_header_has_its_checksum_checked_and_its_tlvs_shown() {
    let (server, mut reports) = start(ProxyProtocol::required()).await;
    let mut check = server.connect().await;
    let bytes = [v2_local_with_crc("health.example", false), b"ping".to_vec()].concat();
    check.write_all(&bytes).await.unwrap();
    let seen = within("the handler's report", reports.recv())
        .await
        .unwrap();
    // LOCAL: the connection's own endpoints, and the header's TLVs.
    assert_eq!(seen.peer, Addr::Tcp(check.local_addr().unwrap()));
    assert_eq!(seen.version, Some(ProxyVersion::V2));
    assert_eq!(seen.authority.as_deref(), Some("health.example"));
    assert_eq!(seen.first_bytes, b"ping");

    assert_refused(server.addr, &v2_local_with_crc("health.example", true)).await;
    assert!(reports.try_recv().is_err(), "the handler never ran");
    assert_eq!(server.stats.snapshot().proxy_rejected, 1);
    server.stop().await;
}
