//! The example binaries, run as a user runs them: started on port 0, talked
//! to over loopback, stopped with SIGTERM, expected to exit 0 with a report.
#![cfg(unix)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{read_response, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `cargo test` builds the examples next to the test binaries:
/// target/<profile>/examples/<name>.
fn example_path(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

struct Example {
    child: Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    addr: std::net::SocketAddr,
}

async fn launch(name: &str) -> Example {
    launch_with(name, "127.0.0.1:0", &[]).await
}

async fn launch_with(name: &str, addr: &str, env: &[(&str, &str)]) -> Example {
    let mut child = Command::new(example_path(name))
        .arg(addr)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the example starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    within("the `listening on` line", stdout.read_line(&mut first))
        .await
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .parse()
        .expect("a socket address");
    Example {
        child,
        stdout,
        addr,
    }
}

impl Example {
    /// Sends SIGTERM, expects exit status 0, returns the rest of stdout.
    async fn terminate(mut self) -> String {
        let pid = self.child.id().expect("still running").to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(kill.success());
        let status = within("the example to exit", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}");
        let mut rest = String::new();
        within("the rest of stdout", self.stdout.read_to_string(&mut rest))
            .await
            .unwrap();
        rest
    }
}

#[tokio::test]
async fn hello_serves_http_and_stops_on_sigterm() {
    let example = launch("hello").await;
    let mut client = TcpStream::connect(example.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client, false).await;
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
    client.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within("the echo", client.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ping");
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

/// `shutdown report: accepted N, ...` → N.
fn accepted_in(report: &str) -> u64 {
    report
        .split("accepted ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accepted count in {report:?}"))
}

#[tokio::test]
async fn several_processes_share_one_port_with_so_reuseport() {
    const CONNECTIONS: u64 = 64;
    let reuse = [("SWITCHBOARD_REUSE_PORT", "1")];
    let first = launch_with("hello", "127.0.0.1:0", &reuse).await;
    let addr = first.addr.to_string();
    let second = launch_with("hello", &addr, &reuse).await;
    assert_eq!(second.addr, first.addr, "both listen on the same port");

    // The kernel spreads new connections over the two listeners by a hash
    // of their addresses: with 64 connections from 64 source ports, both
    // get some (all to one has a chance of 2 in 2^64).
    for _ in 0..CONNECTIONS {
        let mut client = within("connect", TcpStream::connect(first.addr))
            .await
            .unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client, false).await.status, 200);
    }
    let (one, two) = (first.terminate().await, second.terminate().await);
    let (a, b) = (accepted_in(&one), accepted_in(&two));
    assert_eq!(a + b, CONNECTIONS, "{one}\n{two}");
    assert!(a > 0 && b > 0, "both instances served: {a} and {b}");
}
