//! Several accept tasks on one listener (`Builder::accept_tasks`): the
//! connection limit stays exact, and the clients queued at shutdown are
//! served, as with one.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{assert_adds_up, build, clients_sent, keep_alive, read_until_closed, start, within};
use switchboard::{Connection, Error, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_accept_tasks_keep_the_connection_limit_exact() {
    const MAX: usize = 3;
    const CLIENTS: usize = 30;
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (open_tx, open) = watch::channel(false);
    let handler = {
        let (now, most) = (Arc::clone(&now), Arc::clone(&most));
        handler_fn(move |mut conn: Connection| {
            let (now, most, entered, mut open) = (
                Arc::clone(&now),
                Arc::clone(&most),
                entered_tx.clone(),
                open.clone(),
            );
            async move {
                let mut request = [0u8; 1];
                conn.read_exact(&mut request).await?;
                let live = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(live, Ordering::SeqCst);
                let _ = entered.send(());
                // Held until the test opens the gate.
                let _ = open.wait_for(|open| *open).await;
                now.fetch_sub(1, Ordering::SeqCst);
                conn.write_all(b"ok").await?;
                Ok::<_, io::Error>(())
            }
        })
    };
    let running = start(handler, |b| {
        b.accept_tasks(4)
            .max_connections(MAX)
            .reclaim_when_full(false)
    })
    .await;
    let mut clients = clients_sent(&running, CLIENTS, b"r").await;
    for _ in 0..MAX {
        within("the first clients to be served", entered.recv())
            .await
            .unwrap();
    }
    open_tx.send_replace(true);
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_until_closed(client).await, b"ok", "client {i}");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        MAX,
        "never more than the limit at once, and the limit reached"
    );
    let report = running.stop().await;
    assert_adds_up(&report);
    assert_eq!((report.accepted, report.completed), (30, 30), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_queued_at_shutdown_are_served_by_several_accept_tasks() {
    const MAX: usize = 10;
    const CLIENTS: usize = 40;
    let (answered_tx, mut answered) = mpsc::unbounded_channel();
    let running = start(keep_alive(answered_tx), |b| {
        b.accept_tasks(3)
            .max_connections(MAX)
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
    running.shutdown.shutdown();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_until_closed(client).await, b"ok", "client {i}");
    }
    let report = running.finish().await;
    assert_adds_up(&report);
    assert_eq!(report.accepted, CLIENTS as u64, "{report:?}");
    assert_eq!(
        report.active_at_shutdown + report.backlog_accepted,
        CLIENTS as u64,
        "{report:?}"
    );
    assert_eq!(report.backlog_closed, 0, "{report:?}");
    assert_eq!(report.completed, CLIENTS as u64);
}

#[tokio::test]
async fn the_accept_task_count_is_checked() {
    for tasks in [0, 1025] {
        let built = switchboard::Server::builder()
            .bind("127.0.0.1:0")
            .handler(common::noop())
            .accept_tasks(tasks)
            .build()
            .await;
        assert!(
            matches!(
                built,
                Err(Error::InvalidConfig {
                    option: "accept_tasks",
                    ..
                })
            ),
            "{tasks}"
        );
    }
    let server = build(common::noop(), |b| b.accept_tasks(1024)).await;
    let running = common::run(server);
    drop(running.connect().await);
    let report = running.stop().await;
    assert_eq!(report.accepted, 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_stay_unique_with_several_accept_tasks() {
    const CLIENTS: usize = 200;
    let handler = handler_fn(|mut conn: Connection| async move {
        let id = conn.id();
        conn.write_all(&id.to_be_bytes()).await
    });
    let running = start(handler, |b| b.accept_tasks(4)).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..CLIENTS {
        let mut client = running.connect().await;
        let mut id = [0u8; 8];
        within("the id", client.read_exact(&mut id)).await.unwrap();
        let id = u64::from_be_bytes(id);
        assert!(id >= 1, "ids start at 1");
        assert!(ids.insert(id), "id {id} given twice");
    }
    let report = running.stop().await;
    assert_eq!(report.accepted, CLIENTS as u64, "{report:?}");
}
