//! systemd socket activation: a process started with `LISTEN_FDS` and
//! `LISTEN_PID` serves on the descriptor it was passed.
//!
//! The test plays systemd: it binds a listening socket, makes it inheritable,
//! and starts the hello example through `sh`, which moves the socket to
//! descriptor 3 and sets the variables for its own PID before `exec`.
//! A test binary with a single test, so no other test's child inherits the
//! socket.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::{example_path, read_response, within};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

#[tokio::test]
async fn the_hello_example_serves_a_socket_passed_by_systemd() {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.set_cloexec(false).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let fd = socket.as_raw_fd();

    let script = format!("exec 3<&{fd}; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" systemd");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .arg(example_path("hello"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sh starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    within("the `listening on` line", stdout.read_line(&mut first))
        .await
        .unwrap();
    if first.is_empty() {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
        panic!("the example printed nothing; stderr: {err}");
    }
    assert_eq!(
        first.trim(),
        format!("listening on {addr}"),
        "it listens on the passed socket"
    );
    // The test's own copy is no longer needed: only the server holds it now.
    drop(socket);

    let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client, false).await;
    assert_eq!(response.status, 200);

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = within("the example to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("accepted 1, completed 1"), "{rest}");

    without_passed_sockets_the_build_fails_clearly().await;
}

/// Runs after the activation test, in the same test, so that no child of
/// another test inherits the socket meant for the example.
async fn without_passed_sockets_the_build_fails_clearly() {
    let output = within(
        "the example to fail",
        Command::new(example_path("hello"))
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
