//! The example binaries, run as a user runs them: started on port 0, talked
//! to over loopback, stopped with SIGTERM, expected to exit 0 with a report;
//! and their sources, which must keep showing the builder.
#![cfg(unix)]

mod common;

use common::{Example, accepted_in, assert_echoes, example_path, request, within};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn launch(name: &str) -> Example {
    Example::start(Example::command(name)).await
}

async fn launch_with(name: &str, addr: &str, env: &[(&str, &str)]) -> Example {
    let mut command = tokio::process::Command::new(example_path(name));
    command
        .arg(addr)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::null());
    Example::start(command).await
}

#[tokio::test]
async fn hello_serves_http_and_stops_on_sigterm() {
    let example = launch("hello").await;
    let mut client = TcpStream::connect(example.addr).await.unwrap();
    let response = request(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"Hello from async Rust!");
    // The client stays connected (keep-alive): it must not hold up the exit.
    let out = example.terminate().await;
    assert!(
        out.contains("shutdown report: accepted 1, completed 1, failed 0, panicked 0, timed out 0; at shutdown 1 active: 1 drained, 0 aborted"),
        "{out}"
    );
}

#[tokio::test]
async fn echo_echoes_and_stops_on_sigterm() {
    let example = launch("echo").await;
    let mut client = TcpStream::connect(example.addr).await.unwrap();
    assert_echoes("the echo", &mut client, b"ping").await;
    let out = example.terminate().await;
    assert!(
        out.contains("shutdown report: accepted 1, completed 1"),
        "{out}"
    );
    let mut rest = Vec::new();
    within("the close", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn several_processes_share_one_port_with_so_reuseport() {
    const CONNECTIONS: u64 = 64;
    let reuse = [("SWITCHBOARD_REUSE_PORT", "1")];
    let first = launch_with("ops", "127.0.0.1:0", &reuse).await;
    let addr = first.addr.to_string();
    let second = launch_with("ops", &addr, &reuse).await;
    assert_eq!(second.addr, first.addr, "both listen on the same port");

    // The kernel spreads new connections over the two listeners by a hash
    // of their addresses: with 64 connections from 64 source ports, both
    // get some (all to one has a chance of 2 in 2^64).
    for _ in 0..CONNECTIONS {
        let mut client = within("connect", TcpStream::connect(first.addr))
            .await
            .unwrap();
        let response = request(
            &mut client,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(response.status, 200);
    }
    let (one, two) = (first.terminate().await, second.terminate().await);
    let (a, b) = (accepted_in(&one), accepted_in(&two));
    assert_eq!(a + b, CONNECTIONS, "{one}\n{two}");
    assert!(a > 0 && b > 0, "both instances served: {a} and {b}");
}

#[tokio::test]
async fn ops_serves_tcp_and_a_unix_socket_at_once() {
    let dir = common::temp_dir("ops-example");
    let socket = dir.path().join("ops.sock");
    let example = launch_with(
        "ops",
        &format!("127.0.0.1:0,unix:{}", socket.display()),
        &[],
    )
    .await;
    assert_eq!(
        example.listening,
        format!("{}, unix:{}", example.addr, socket.display())
    );
    const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut tcp = within("connect", TcpStream::connect(example.addr))
        .await
        .unwrap();
    assert_eq!(request(&mut tcp, GET_CLOSE).await.status, 200);
    let mut unix = within("connect", tokio::net::UnixStream::connect(&socket))
        .await
        .unwrap();
    assert_eq!(request(&mut unix, GET_CLOSE).await.status, 200);
    let out = example.terminate().await;
    assert!(
        out.contains("shutdown report: accepted 2, completed 2"),
        "{out}"
    );
}

/// What a reader of each example's `main.rs` must see: the builder, the
/// address printed, the run and the report, with nothing hidden in a helper.
#[test]
fn every_example_main_shows_the_builder() {
    const SHOWN: [&str; 6] = [
        "Server::builder()",
        ".shutdown_on(switchboard::termination())",
        ".build()",
        "println!(\"listening on {",
        "server.run().await?",
        "println!(\"shutdown report: {report}\")",
    ];
    for name in ["hello", "echo", "chat", "ops"] {
        let path = format!("{}/examples/{name}/main.rs", env!("CARGO_MANIFEST_DIR"));
        let main = std::fs::read_to_string(&path).expect("the example's main.rs");
        for shown in SHOWN {
            assert!(main.contains(shown), "{path} does not show `{shown}`");
        }
        // The operational switches (TLS, handover, ...) live in `ops` only.
        if name != "ops" {
            assert!(!main.contains("env::var"), "{path} reads the environment");
        }
    }
}
