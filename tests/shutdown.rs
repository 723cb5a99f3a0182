//! Graceful shutdown: the two phases, the drain deadline, and the report.

mod common;

use std::future::pending;
use std::io;
use std::time::Duration;

use common::{assert_adds_up, assert_closed, build, noop, start, within};
use switchboard::{Connection, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

const RESPONSE_LEN: usize = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_mid_work_finishes_and_its_client_gets_the_whole_response() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |mut conn: Connection| {
            let started = started_tx.clone();
            async move {
                let mut request = [0u8; 1];
                conn.read_exact(&mut request).await?;
                let _ = started.send(());
                // Work that outlasts the trigger: it waits for the signal,
                // then sends a response far larger than the socket buffers.
                conn.shutdown_requested().await;
                let body = vec![b'x'; RESPONSE_LEN];
                conn.write_all(&body).await?;
                Ok::<_, io::Error>(())
            }
        }),
        |b| b.drain_timeout(Duration::from_secs(30)),
    )
    .await;
    let mut client = running.connect().await;
    client.write_all(b"g").await.unwrap();
    within("the handler to start", started_rx.recv())
        .await
        .unwrap();

    running.shutdown.shutdown();
    let mut received = Vec::new();
    within("the whole response", client.read_to_end(&mut received))
        .await
        .unwrap();
    assert_eq!(received.len(), RESPONSE_LEN);
    assert!(received.iter().all(|&b| b == b'x'));

    let report = running.finish().await;
    assert_eq!(report.active_at_shutdown, 1);
    assert_eq!(report.drained, 1);
    assert_eq!(report.completed, 1);
    assert_eq!(report.aborted, 0);
    assert_adds_up(&report);
}

#[tokio::test]
async fn a_handler_that_ignores_the_signal_is_aborted_at_the_drain_timeout() {
    const DRAIN: Duration = Duration::from_millis(300);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |_conn: Connection| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                pending::<()>().await;
                Ok::<_, io::Error>(())
            }
        }),
        |b| b.drain_timeout(DRAIN),
    )
    .await;
    let mut stubborn = running.connect().await;
    within("the handler to start", started_rx.recv())
        .await
        .unwrap();

    let report = running.stop().await;
    assert_eq!(report.active_at_shutdown, 1);
    assert_eq!(report.aborted, 1, "{report:?}");
    assert_eq!(report.drained, 0);
    assert!(
        report.drain_duration >= DRAIN,
        "aborted only at the deadline: {report:?}"
    );
    assert!(
        report.drain_duration < DRAIN * 10,
        "aborted soon after it: {report:?}"
    );
    assert_adds_up(&report);
    // Aborting the task dropped the connection.
    assert_closed(&mut stubborn).await;
}

#[tokio::test]
async fn after_the_trigger_new_connects_are_refused() {
    let (signalled_tx, mut signalled_rx) = mpsc::unbounded_channel();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    let running = start(
        handler_fn(move |conn: Connection| {
            let signalled = signalled_tx.clone();
            let entered = entered_tx.clone();
            let release = release_rx.lock().unwrap().take();
            async move {
                let _ = entered.send(());
                conn.shutdown_requested().await;
                let _ = signalled.send(());
                // Keep the server draining while the test connects.
                if let Some(release) = release {
                    let _ = release.await;
                }
                Ok::<_, io::Error>(())
            }
        }),
        |b| b,
    )
    .await;
    let _held = running.connect().await;
    // Make sure the connection is accepted before the trigger.
    within("the connection to be accepted", entered_rx.recv())
        .await
        .unwrap();
    running.shutdown.shutdown();
    // The signal fires only after the listener is closed.
    within("the connection's signal", signalled_rx.recv())
        .await
        .unwrap();
    let refused = within(
        "a connect after the trigger",
        TcpStream::connect(running.addr),
    )
    .await;
    assert_eq!(
        refused.expect_err("the listener is closed").kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(
        !running.task.is_finished(),
        "still draining the held connection"
    );
    release_tx.send(()).unwrap();
    let report = running.finish().await;
    assert_eq!(
        (report.active_at_shutdown, report.drained, report.aborted),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_trigger_before_run_and_a_second_trigger_are_harmless() {
    let server = build(noop(), |b| b).await;
    let addr = server.local_addr().as_tcp().unwrap();
    let handle = server.shutdown_handle();
    assert!(!handle.is_shutting_down());
    handle.shutdown();
    handle.shutdown();
    assert!(handle.is_shutting_down());
    let report = within("run after an early trigger", server.run())
        .await
        .unwrap();
    assert_eq!(report.accepted, 0);
    assert_eq!(report.active_at_shutdown, 0);
    handle.shutdown(); // after run, still harmless
    let refused = within("a connect after run", TcpStream::connect(addr)).await;
    assert_eq!(
        refused.expect_err("closed").kind(),
        io::ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn the_builders_shutdown_future_triggers_the_shutdown() {
    let (trigger_tx, trigger_rx) = oneshot::channel::<()>();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |mut conn: Connection| {
            let entered = entered_tx.clone();
            async move {
                let _ = entered.send(());
                conn.shutdown_requested().await;
                conn.write_all(b"bye\n").await
            }
        }),
        |b| {
            b.shutdown_on(async {
                let _ = trigger_rx.await;
            })
        },
    )
    .await;
    let mut client = running.connect().await;
    within("the connection to be accepted", entered_rx.recv())
        .await
        .unwrap();
    trigger_tx.send(()).unwrap();
    let mut goodbye = String::new();
    within("the goodbye", client.read_to_string(&mut goodbye))
        .await
        .unwrap();
    assert_eq!(goodbye, "bye\n", "the connection's signal fired");
    let report = running.finish().await;
    assert_eq!(
        (report.accepted, report.drained, report.completed),
        (1, 1, 1)
    );
    assert_adds_up(&report);
}

#[tokio::test]
async fn a_connection_signal_made_after_the_trigger_has_fired() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |conn: Connection| {
            let tx = tx.clone();
            let entered = entered_tx.clone();
            async move {
                let _ = entered.send(());
                let signal = conn.shutdown_signal().clone();
                signal.shutdown_requested().await;
                // A signal cloned or a future made after shutdown began
                // completes at once.
                let late = conn.shutdown_signal().clone();
                assert!(late.is_shutting_down());
                late.shutdown_requested().await;
                let _ = tx.send(conn.is_shutting_down());
                Ok::<_, io::Error>(())
            }
        }),
        |b| b,
    )
    .await;
    let _client = running.connect().await;
    within("the connection to be accepted", entered_rx.recv())
        .await
        .unwrap();
    running.shutdown.shutdown();
    assert!(within("the handler", rx.recv()).await.unwrap());
    let report = running.finish().await;
    assert_eq!(report.completed, 1);
}
