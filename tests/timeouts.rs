//! Timeouts below the protocol: idle (Slowloris), first read, maximum age.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{assert_adds_up, assert_echoes, start, within};
use switchboard::{Connection, Handler, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Echoes until EOF. It deliberately ignores the shutdown signal, so only a
/// timeout (or the drain deadline) ends a silent connection.
fn stubborn_echo() -> impl Handler {
    announcing_stubborn_echo(None)
}

/// [`stubborn_echo`] that first says on `entered` that it runs.
fn announcing_stubborn_echo(entered: Option<mpsc::UnboundedSender<()>>) -> impl Handler {
    handler_fn(move |mut conn: Connection| {
        let entered = entered.clone();
        async move {
            if let Some(entered) = entered {
                let _ = entered.send(());
            }
            let mut buf = [0u8; 256];
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(());
                }
                conn.write_all(&buf[..n]).await?;
            }
        }
    })
}

/// Reads until the server closes; returns how long after `since` that was.
async fn closed_after(mut stream: TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_silent_connections_are_closed_at_the_idle_timeout() {
    const SILENT: usize = 1000;
    const IDLE: Duration = Duration::from_millis(500);
    let running = start(stubborn_echo(), |b| {
        b.idle_timeout(IDLE).drain_timeout(Duration::from_secs(30))
    })
    .await;

    // A normal client, served throughout: it pings from before the silent
    // connections open until they are all closed, so that it is never idle
    // however slowly the machine runs the test.
    let normal = running.connect().await;
    let pinging = Arc::new(AtomicBool::new(true));
    let pinger = tokio::spawn({
        let pinging = Arc::clone(&pinging);
        async move {
            let mut normal = normal;
            let mut round_trips = Vec::new();
            while pinging.load(Ordering::Relaxed) && round_trips.len() < 1_000_000 {
                let start = Instant::now();
                normal.write_all(b"ping").await.unwrap();
                let mut back = [0u8; 4];
                within("an echo", normal.read_exact(&mut back))
                    .await
                    .expect("the normal client is never closed");
                round_trips.push(start.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not synchronisation
            }
            (normal, round_trips)
        }
    });

    let opened = Instant::now();
    let mut watchers = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        // Taken before the connect, so that it is no later than the
        // server's acceptance, whenever this task runs again.
        let since = Instant::now();
        let silent = running.connect().await;
        watchers.push(tokio::spawn(closed_after(silent, since)));
    }
    let connected_in = opened.elapsed();
    let mut closed = Vec::with_capacity(SILENT);
    for watcher in watchers {
        closed.push(
            within("a silent connection to be closed", watcher)
                .await
                .unwrap(),
        );
    }
    pinging.store(false, Ordering::Relaxed);
    let (normal, mut round_trips) = within("the normal client's pings", pinger).await.unwrap();
    closed.sort_unstable();
    round_trips.sort_unstable();
    let (first, median, last) = (closed[0], percentile(&closed, 50), closed[SILENT - 1]);
    println!(
        "slowloris: {SILENT} silent connections opened in {connected_in:?}; closed after \
         min {first:?}, median {median:?}, max {last:?} (idle timeout {IDLE:?}); \
         normal client p50/p99 round trip {:?}/{:?} ({} round trips)",
        percentile(&round_trips, 50),
        percentile(&round_trips, 99),
        round_trips.len(),
    );
    // Never before the deadline: the sweeper ticks every IDLE/10 and stamps
    // the time of the tick that saw the last activity. How late after it
    // depends on the machine's load, so that is printed, not asserted.
    assert!(first >= IDLE - IDLE / 10, "closed too early: {first:?}");
    let snapshot = running.stats.snapshot();
    assert_eq!(snapshot.timed_out_idle, SILENT as u64);
    assert_eq!(snapshot.active, 1, "only the normal client is left");

    // Nothing silent is left to hold up the shutdown; the normal client
    // leaves at the drain deadline only if it stays, so close it.
    drop(normal);
    let report = running.stop().await;
    assert_eq!(report.timed_out, SILENT as u64);
    assert_eq!(report.aborted, 0);
    assert_adds_up(&report);
}

#[tokio::test]
async fn silent_connections_do_not_hold_up_shutdown() {
    const IDLE: Duration = Duration::from_millis(300);
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let running = start(announcing_stubborn_echo(Some(entered_tx)), |b| {
        b.idle_timeout(IDLE).drain_timeout(Duration::from_secs(30))
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(running.connect().await);
    }
    within("the connections to be accepted", async {
        for _ in 0..100 {
            entered_rx.recv().await.unwrap();
        }
    })
    .await;
    // The handler ignores the shutdown signal; the idle timeout, not the
    // 30 s drain deadline, ends the drain.
    let report = running.stop().await;
    assert_eq!(report.active_at_shutdown, 100);
    assert_eq!(report.timed_out, 100);
    assert_eq!((report.drained, report.aborted), (100, 0));
    // Ended by their timeout, not the drain deadline: none aborted.
    assert_adds_up(&report);
}

#[tokio::test]
async fn a_client_that_never_speaks_is_closed_at_the_first_read_timeout() {
    const FIRST_READ: Duration = Duration::from_millis(300);
    let running = start(stubborn_echo(), |b| {
        b.idle_timeout(None).first_read_timeout(FIRST_READ)
    })
    .await;
    // Taken before the connect: no later than the server's acceptance,
    // however long this task waits to run again.
    let since = Instant::now();
    let mute = running.connect().await;
    let mut talker = running.connect().await;
    assert_echoes("the first echo", &mut talker, b"x").await;

    let waited = within("the mute client to be closed", closed_after(mute, since)).await;
    assert!(waited >= FIRST_READ - FIRST_READ / 10, "{waited:?}");
    // The client that spoke is not subject to it (and idle is off): still served.
    assert_echoes("an echo after the first-read deadline", &mut talker, b"y").await;
    let snapshot = running.stats.snapshot();
    assert_eq!(
        (snapshot.timed_out_first_read, snapshot.timed_out_idle),
        (1, 0)
    );
    drop(talker);
    running.stop().await;
}

#[tokio::test]
async fn a_busy_connection_is_closed_at_the_maximum_age() {
    const AGE: Duration = Duration::from_millis(400);
    let running = start(stubborn_echo(), |b| b.max_connection_age(AGE)).await;
    // Before the connect, as above.
    let since = Instant::now();
    let mut client = running.connect().await;
    let mut back = [0u8; 1];
    // Busy all along: one round trip after another until the server closes.
    let lived = within("the maximum age", async {
        for _ in 0..100_000 {
            if client.write_all(b"z").await.is_err() {
                break;
            }
            match client.read(&mut back).await {
                Ok(1) => tokio::time::sleep(Duration::from_millis(2)).await, // pacing
                _ => break,
            }
        }
        since.elapsed()
    })
    .await;
    assert!(lived >= AGE - AGE / 10, "{lived:?}");
    assert_eq!(running.stats.snapshot().timed_out_max_age, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_spares_a_handler_busy_elsewhere_and_cuts_a_silent_peer() {
    const IDLE: Duration = Duration::from_millis(300);
    const BUSY: Duration = Duration::from_millis(1500);
    let running = start(
        handler_fn(|mut conn: Connection| async move {
            let mut request = [0u8; 1];
            conn.read_exact(&mut request).await?;
            if request[0] == b'b' {
                // A slow backend: five idle timeouts without touching the
                // connection.
                tokio::time::sleep(BUSY).await;
                conn.write_all(b"done").await?;
                return Ok::<_, io::Error>(());
            }
            // Then reads from a peer that stays silent.
            conn.read_exact(&mut request).await?;
            Ok(())
        }),
        |b| b.idle_timeout(IDLE),
    )
    .await;
    let mut busy = running.connect().await;
    busy.write_all(b"b").await.unwrap();
    let mut silent = running.connect().await;
    silent.write_all(b"s").await.unwrap();

    let mut answer = Vec::new();
    within("the busy handler's answer", busy.read_to_end(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, b"done", "the busy handler was not cut off");
    within(
        "the silent peer to be closed",
        closed_after(silent, Instant::now()),
    )
    .await;
    let report = running.stop().await;
    assert_eq!((report.completed, report.timed_out), (1, 1), "{report:?}");
    assert_eq!(running_idle(&report), 1);
    assert_adds_up(&report);
}

/// The idle timeouts of a report, from its listeners' counters.
fn running_idle(report: &switchboard::ShutdownReport) -> u64 {
    report
        .by_listener
        .iter()
        .map(|(_, s)| s.timed_out_idle)
        .sum()
}
