//! Shutdown at its edges: clients waiting in the listen queue when it
//! begins, and a `run` future dropped before it ends.

mod common;

use std::future::pending;
use std::io;
use std::time::Duration;

use common::{assert_adds_up, clients_sent, keep_alive, read_until_closed, start, within};
use switchboard::{Connection, handler_fn};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_in_the_queue_at_shutdown_are_served_not_reset() {
    const MAX: usize = 50;
    const CLIENTS: usize = 150;
    let (answered_tx, mut answered) = mpsc::unbounded_channel();
    let running = start(keep_alive(answered_tx), |b| {
        b.max_connections(MAX)
            // The places are not reclaimed for the waiting clients: this
            // test is about the queue at shutdown.
            .reclaim_when_full(false)
            .drain_timeout(Duration::from_secs(60))
    })
    .await;
    let mut clients = clients_sent(&running, CLIENTS, b"r").await;
    for _ in 0..MAX {
        within("the first clients' answers", answered.recv())
            .await
            .unwrap();
    }
    assert_eq!(running.stats.snapshot().active, MAX as u64, "full");

    running.shutdown.shutdown();
    for (i, client) in clients.iter_mut().enumerate() {
        let received = read_until_closed(client).await;
        assert_eq!(received, b"ok", "client {i} was answered before the close");
    }
    let report = running.finish().await;
    assert_adds_up(&report);
    assert_eq!(report.accepted, CLIENTS as u64, "{report:?}");
    assert_eq!(
        (
            report.active_at_shutdown,
            report.backlog_accepted,
            report.backlog_closed
        ),
        (MAX as u64, (CLIENTS - MAX) as u64, 0),
        "{report:?}"
    );
    assert_eq!(report.completed, CLIENTS as u64);
    assert!(report.to_string().contains("and 100 waiting"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_still_waiting_at_the_drain_deadline_are_closed_and_counted() {
    const QUEUED: usize = 3;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |_conn: Connection| {
            let _ = entered_tx.send(());
            // Ignores the signal: holds the only place until aborted.
            pending::<Result<(), io::Error>>()
        }),
        |b| {
            b.max_connections(1)
                .reclaim_when_full(false)
                .drain_timeout(Duration::from_millis(300))
        },
    )
    .await;
    let mut held = running.connect().await;
    within("the first client's handler", entered.recv())
        .await
        .unwrap();
    let mut queued = Vec::new();
    for _ in 0..QUEUED {
        queued.push(running.connect().await);
    }

    running.shutdown.shutdown();
    let report = running.finish().await;
    assert_adds_up(&report);
    assert_eq!(
        (report.accepted, report.aborted, report.backlog_closed),
        (1, 1, QUEUED as u64),
        "{report:?}"
    );
    assert!(
        report
            .to_string()
            .contains("3 still waiting closed unserved"),
        "{report}"
    );
    assert!(read_until_closed(&mut held).await.is_empty());
    for client in &mut queued {
        assert!(read_until_closed(client).await.is_empty(), "never served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_run_ends_every_connection_task() {
    /// Says on its channel when the handler's future is dropped.
    struct Dropped(mpsc::UnboundedSender<()>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let running = start(
        handler_fn(move |_conn: Connection| {
            let guard = Dropped(dropped_tx.clone());
            let _ = entered_tx.send(());
            async move {
                let _guard = guard;
                pending::<Result<(), io::Error>>().await
            }
        }),
        |b| b,
    )
    .await;
    let _client = running.connect().await;
    within("the handler to run", entered.recv()).await.unwrap();

    // Dropping the `run` future (aborting the task that polls it).
    running.task.abort();
    within(
        "the connection's task to end with the run future",
        dropped.recv(),
    )
    .await
    .unwrap();
}
