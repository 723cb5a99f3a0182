//! A real HAProxy in front of the server, with `send-proxy` (v1) and
//! `send-proxy-v2`: the handler sees the client's address.
//!
//! `.ci/run` installs HAProxy (Debian package `haproxy`) when it is missing
//! and, once it has it, sets `SWITCHBOARD_REQUIRE_HAPROXY=1`: a HAProxy the
//! test cannot find is then a failure. Without that variable the test says
//! so loudly and skips. HAProxy's frontends listen on sockets this test
//! binds on `127.0.0.1:0` and passes down (`bind fd@N`), so no port is
//! guessed. A test binary of its own, so no other test's child inherits
//! those sockets.
#![cfg(target_os = "linux")]

mod common;

use std::io;
use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::{inheritable_listener, start_on, temp_dir, within};
use switchboard::proxy::ProxyVersion;
use switchboard::{Addr, Connection, Listen, ProxyProtocol, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;

/// Set (to anything but `0`) where HAProxy must be there, as `.ci/run` does
/// once it has it: a missing HAProxy then fails the test instead of
/// skipping it.
const REQUIRE: &str = "SWITCHBOARD_REQUIRE_HAPROXY";

/// HAProxy on the PATH (as `.ci/run` looks for it) or where Debian puts it
/// (`/usr/sbin`, often outside a user's PATH).
fn haproxy_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2_reach_the_handler_with_the_client_address() {
    let Some(haproxy) = haproxy_binary() else {
        let required = std::env::var(REQUIRE).is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{REQUIRE} is set (.ci/run sets it when it has HAProxy) but haproxy is not \
             on the PATH, in /usr/sbin or in /usr/local/sbin"
        );
        eprintln!(
            "\n*** SKIPPED: haproxy is not installed (apt-get install haproxy); .ci/run installs it ***\n"
        );
        return;
    };
    let (tx, mut seen) = mpsc::unbounded_channel();
    let trusted = ProxyProtocol::required().trust("127.0.0.1".parse().unwrap());
    let running = start_on(
        Listen::tcp("127.0.0.1:0").proxy_protocol(trusted),
        handler_fn(move |mut conn: Connection| {
            let tx = tx.clone();
            async move {
                let chunk = conn.read_chunk(64).await?;
                let version = conn.proxy_header().map(|h| h.version());
                let _ = tx.send((conn.peer_addr(), conn.balancer_addr().cloned(), version));
                conn.write_all(&chunk).await?;
                Ok::<_, io::Error>(())
            }
        }),
    )
    .await;
    let app = running.addr;

    let (v1_socket, v1_addr) = inheritable_listener();
    let (v2_socket, v2_addr) = inheritable_listener();
    let dir = temp_dir("haproxy");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             listen v1\n    bind fd@{}\n    server app {app} send-proxy\n\
             listen v2\n    bind fd@{}\n    server app {app} send-proxy-v2\n",
            v1_socket.as_raw_fd(),
            v2_socket.as_raw_fd(),
        ),
    )
    .unwrap();
    let mut proxy = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy starts");
    // HAProxy now holds the frontends; connections queue in their backlog
    // until it accepts, so there is nothing to wait for.
    drop((v1_socket, v2_socket));

    for (frontend, version) in [(v1_addr, ProxyVersion::V1), (v2_addr, ProxyVersion::V2)] {
        let mut client = within("connect to haproxy", TcpStream::connect(frontend))
            .await
            .unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        if let Err(err) = within("the echo through haproxy", client.read_exact(&mut echo)).await {
            let _ = proxy.start_kill();
            let mut log = String::new();
            let _ = proxy.stderr.take().unwrap().read_to_string(&mut log).await;
            panic!("no echo through haproxy ({err}); haproxy said: {log}");
        }
        assert_eq!(&echo, b"ping");
        let (peer, balancer, seen_version) =
            within("the handler's report", seen.recv()).await.unwrap();
        assert_eq!(
            peer,
            Addr::Tcp(client.local_addr().unwrap()),
            "the handler sees the client"
        );
        let balancer = balancer
            .and_then(|b| b.as_tcp())
            .expect("a balancer address");
        assert!(balancer.ip().is_loopback());
        assert_ne!(
            balancer,
            client.local_addr().unwrap(),
            "the balancer is not the client"
        );
        assert_eq!(seen_version, Some(version));
    }
    assert_eq!(running.stats.snapshot().proxy_rejected, 0);

    let _ = proxy.start_kill();
    let _ = within("haproxy to exit", proxy.wait()).await;
    let report = running.stop().await;
    assert_eq!(report.completed, 2);
}
