//! Sub-tasks (`Connection::spawn`, `Spawner`, the halves' `spawn`) belong to
//! their connection: it holds its place under the limits until they end,
//! the drain waits for them, a timeout, the drain deadline or dropping
//! `run` aborts them, and their panics are counted.
//!
//! Each sub-task here holds the sending end of a `oneshot` channel that it
//! never sends on: its receiver resolves when the sub-task's future is
//! dropped, finished or aborted. A test that shows something does *not*
//! happen (a second client not served, `run` not returning) waits for it a
//! while; the wait can only miss the fault on a slow machine, never fail
//! when there is none.

mod common;

use std::future::pending;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Logs, WAIT, assert_adds_up, assert_closed, assert_echoes, build, start, within};
use switchboard::{BoxError, Connection, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

/// How long a test waits for something that must not happen.
const ABSENT: Duration = Duration::from_millis(300);

/// Echoes until the peer closes.
async fn echo(conn: &mut Connection) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// A channel whose receiver hears of the sub-task's end: the sub-task
/// holds the sender.
fn end_watch() -> (oneshot::Sender<()>, oneshot::Receiver<()>) {
    oneshot::channel()
}

/// Takes the one value a single-connection handler needs, once.
fn take<T>(slot: &Mutex<Option<T>>) -> T {
    slot.lock().unwrap().take().expect("one connection only")
}

#[tokio::test]
async fn a_sub_task_keeps_the_connections_place_until_it_ends() {
    // Each handler says, when it starts, whether a sub-task has ended.
    let (served_tx, mut served) = mpsc::unbounded_channel::<(u64, bool)>();
    let sub_task_ended = Arc::new(AtomicBool::new(false));
    let handler = handler_fn(move |conn: Connection| {
        let served = served_tx.clone();
        let sub_task_ended = Arc::clone(&sub_task_ended);
        async move {
            let _ = served.send((conn.id(), sub_task_ended.load(Ordering::SeqCst)));
            // The handler returns at once; the sub-task serves the rest.
            conn.spawner().spawn(async move {
                let mut conn = conn;
                let echoed = echo(&mut conn).await;
                sub_task_ended.store(true, Ordering::SeqCst);
                echoed
            });
            Ok::<_, io::Error>(())
        }
    });
    // Without taking places back for the waiting client: this test is
    // about the limit itself.
    let running = start(handler, |b| b.max_connections(1).reclaim_when_full(false)).await;

    let mut first = running.connect().await;
    assert_eq!(
        within("the first handler", served.recv()).await,
        Some((1, false))
    );
    assert_echoes("the first echo", &mut first, b"served by the sub-task").await;
    let mut second = running.connect().await;
    second.write_all(b"waiting").await.unwrap();
    let early = tokio::time::timeout(ABSENT, served.recv()).await;
    assert!(
        early.is_err(),
        "a second client was served while the first one's sub-task held the only place: {early:?}"
    );
    let snapshot = running.stats.snapshot();
    assert_eq!((snapshot.accepted, snapshot.active), (1, 1), "{snapshot:?}");
    assert_echoes("the first echo again", &mut first, b"still served").await;

    // The first client leaves: its sub-task ends, and frees the place.
    drop(first);
    assert_eq!(
        within("the second handler", served.recv()).await,
        Some((2, true)),
        "the second client is served once the first one's sub-task ended"
    );
    let mut waiting = [0u8; 7];
    within("the second echo", second.read_exact(&mut waiting))
        .await
        .unwrap();
    assert_eq!(&waiting, b"waiting");
    drop(second);
    let report = running.stop().await;
    assert_eq!((report.accepted, report.completed), (2, 2), "{report:?}");
    assert_adds_up(&report);
}

#[tokio::test]
async fn run_waits_for_a_sub_task_still_running_at_shutdown() {
    let (served_tx, mut served) = mpsc::unbounded_channel::<()>();
    let handler = handler_fn(move |conn: Connection| {
        let served = served_tx.clone();
        async move {
            conn.spawner().spawn(async move {
                let mut conn = conn;
                conn.shutdown_requested().await;
                conn.write_all(b"bye\n").await?;
                // Until the client closes.
                let mut rest = Vec::new();
                conn.read_to_end(&mut rest).await.map(drop)
            });
            let _ = served.send(());
            Ok::<_, io::Error>(())
        }
    });
    // A deadline well past every wait below: the sub-task ends first.
    let server = build(handler, |b| b.drain_timeout(WAIT * 6)).await;
    let addr = server.local_addr().as_tcp().unwrap();
    let shutdown = server.shutdown_handle();
    let client_closed = Arc::new(AtomicBool::new(false));
    let closed = Arc::clone(&client_closed);
    // Whether the client had closed (so the sub-task could end) when `run`
    // returned.
    let mut run = tokio::spawn(async move {
        let report = server.run().await;
        (report, closed.load(Ordering::SeqCst))
    });

    let mut client = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within("the handler", served.recv()).await.unwrap();
    shutdown.shutdown();
    let mut bye = [0u8; 4];
    within("the sub-task's goodbye", client.read_exact(&mut bye))
        .await
        .unwrap();
    assert_eq!(&bye, b"bye\n");
    let early = tokio::time::timeout(ABSENT, &mut run).await;
    assert!(early.is_err(), "run returned while a sub-task still ran");

    client_closed.store(true, Ordering::SeqCst);
    drop(client);
    let (report, closed_before) = within("run to return", run).await.unwrap();
    let report = report.unwrap();
    assert!(closed_before, "run returned before its sub-task ended");
    assert_eq!(
        (report.completed, report.aborted, report.drained),
        (1, 0, 1),
        "{report:?}"
    );
    assert_eq!(report.active_at_shutdown, 1, "{report:?}");
    assert_adds_up(&report);
}

#[tokio::test]
async fn the_drain_deadline_aborts_a_sub_task_that_ignores_the_signal() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (alive, ended) = end_watch();
    let alive = Mutex::new(Some(alive));
    let handler = handler_fn(move |conn: Connection| {
        let alive = take(&alive);
        let started = started_tx.clone();
        async move {
            conn.spawner().spawn(async move {
                let (_alive, _conn) = (alive, conn);
                let _ = started.send(());
                pending::<()>().await
            });
            Ok::<_, io::Error>(())
        }
    });
    let running = start(handler, |b| b.drain_timeout(Duration::from_millis(100))).await;
    let mut client = running.connect().await;
    within("the sub-task to start", started.recv())
        .await
        .unwrap();

    let report = running.stop().await;
    assert_eq!(
        (report.completed, report.aborted, report.drained),
        (0, 1, 0),
        "{report:?}"
    );
    assert_adds_up(&report);
    let mut ended = ended;
    assert_eq!(
        ended.try_recv(),
        Err(TryRecvError::Closed),
        "the sub-task was aborted before run returned"
    );
    assert_closed(&mut client).await;
}

async fn explode() -> u32 {
    panic!("sub-task kaboom 7")
}

#[tokio::test]
async fn a_panicking_sub_task_is_logged_and_counts_its_connection_as_panicked() {
    let logs = Logs::install(tracing::Level::INFO);
    let handler = handler_fn(|mut conn: Connection| async move {
        let err = conn.spawn(explode()).await.unwrap_err();
        // The handler learns of it through the handle, and goes on.
        let seen = if err.is_panic() { "panic\n" } else { "other\n" };
        conn.write_all(seen.as_bytes()).await?;
        Ok::<_, io::Error>(())
    });
    let running = start(handler, |b| b).await;
    let mut client = running.connect().await;
    let mut seen = String::new();
    within("the handler's answer", client.read_to_string(&mut seen))
        .await
        .unwrap();
    assert_eq!(seen, "panic\n");
    let report = running.stop().await;
    assert_eq!((report.panicked, report.completed), (1, 0), "{report:?}");
    assert_adds_up(&report);
    let lines = logs.lines_with("sub-task kaboom 7");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" ERROR ")
            && lines[0].contains("conn.id=1")
            && lines[0].contains("peer=127.0.0.1:"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn an_idle_timeout_aborts_the_handlers_sub_tasks_with_it() {
    let (alive, ended) = end_watch();
    let alive = Mutex::new(Some(alive));
    let handler = handler_fn(move |mut conn: Connection| {
        let alive = take(&alive);
        async move {
            conn.spawn(async move {
                let _alive = alive;
                pending::<()>().await
            });
            // The client stays silent: idle.
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.map(drop)
        }
    });
    let running = start(handler, |b| b.idle_timeout(Duration::from_millis(200))).await;
    let mut client = running.connect().await;
    assert_closed(&mut client).await;
    assert!(
        within("the sub-task to be aborted", ended).await.is_err(),
        "the sub-task was dropped, not finished"
    );
    let report = running.stop().await;
    assert_eq!((report.timed_out, report.completed), (1, 0), "{report:?}");
    assert_adds_up(&report);
}

#[tokio::test]
async fn an_idle_timeout_ends_a_connection_left_to_a_sub_task() {
    let handler = handler_fn(|conn: Connection| async move {
        conn.spawner().spawn(async move {
            // The client stays silent: idle.
            let mut conn = conn;
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.map(drop)
        });
        Ok::<_, io::Error>(())
    });
    let running = start(handler, |b| b.idle_timeout(Duration::from_millis(200))).await;
    let mut client = running.connect().await;
    assert_closed(&mut client).await;
    let report = running.stop().await;
    assert_eq!((report.timed_out, report.completed), (1, 0), "{report:?}");
    assert_adds_up(&report);
}

#[tokio::test]
async fn dropping_run_aborts_sub_tasks() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (alive, ended) = end_watch();
    let alive = Mutex::new(Some(alive));
    let handler = handler_fn(move |conn: Connection| {
        let alive = take(&alive);
        let started = started_tx.clone();
        async move {
            conn.spawner().spawn(async move {
                let (_alive, _conn) = (alive, conn);
                let _ = started.send(());
                pending::<()>().await
            });
            Ok::<_, io::Error>(())
        }
    });
    let running = start(handler, |b| b).await;
    let mut client = running.connect().await;
    within("the sub-task to start", started.recv())
        .await
        .unwrap();

    running.task.abort();
    let aborted = within("run to be dropped", running.task).await;
    assert!(aborted.unwrap_err().is_cancelled());
    assert!(
        within("the sub-task to be aborted", ended).await.is_err(),
        "the sub-task was dropped, not finished"
    );
    assert_closed(&mut client).await;
}

#[tokio::test]
async fn a_sub_tasks_output_comes_back_through_its_handle() {
    let handler = handler_fn(|conn: Connection| async move {
        let computed = conn.spawn(async { 6 * 7 }).await?;
        // A writer half that goes to a sub-task and comes back with it.
        let (read, mut write) = conn.into_split();
        let writer = read.spawn(async move {
            write.write_all(format!("{computed}\n").as_bytes()).await?;
            Ok::<_, io::Error>(write)
        });
        let write = writer.await??;
        let mut conn = read.reunite(write).expect("halves of one connection");
        conn.write_all(b"reunited\n").await?;
        Ok::<_, BoxError>(())
    });
    let running = start(handler, |b| b).await;
    let mut client = running.connect().await;
    let mut text = String::new();
    within("the answers", client.read_to_string(&mut text))
        .await
        .unwrap();
    assert_eq!(text, "42\nreunited\n");
    let report = running.stop().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_adds_up(&report);
}

#[test]
fn a_spawner_is_send_sync_and_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<switchboard::Spawner>();
}
