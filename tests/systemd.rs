//! systemd socket activation: a process started with `LISTEN_FDS` and
//! `LISTEN_PID` serves on the descriptor it was passed.
//!
//! The test plays systemd: it binds a listening socket, makes it inheritable,
//! and starts the ops example through `sh`, which moves the socket to
//! descriptor 3 and sets the variables for its own PID before `exec`.
//! A test binary with a single test, so no other test's child inherits the
//! socket.
#![cfg(target_os = "linux")]

mod common;

use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::{Example, example_path, inheritable_listener, request, within};
use tokio::net::TcpStream;
use tokio::process::Command;

#[tokio::test]
async fn the_ops_example_serves_a_socket_passed_by_systemd() {
    let (socket, addr) = inheritable_listener();
    let fd = socket.as_raw_fd();

    let script = format!("exec 3<&{fd}; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" systemd");
    let mut command = Command::new("sh");
    command
        .args(["-c", &script])
        .arg(example_path("ops"))
        .stderr(Stdio::piped());
    let example = Example::start(command).await;
    assert_eq!(example.addr, addr, "it listens on the passed socket");
    // The test's own copy is no longer needed: only the server holds it now.
    drop(socket);

    let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
    let response = request(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);

    let rest = example.terminate().await;
    assert!(rest.contains("accepted 1, completed 1"), "{rest}");

    without_passed_sockets_the_build_fails_clearly().await;
}
/// Runs after the activation test, in the same test, so that no child of
/// another test inherits the socket meant for the example.
async fn without_passed_sockets_the_build_fails_clearly() {
    let output = within(
        "the example to fail",
        Command::new(example_path("ops"))
            .arg("systemd")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .output(),
    )
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("systemd sockets"), "{stderr}");
}
