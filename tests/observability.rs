//! What the library logs: handler errors and panics with the connection's id
//! and the message, lifecycle lines, and the per-connection span.
//!
//! A test binary of its own because it installs a global log subscriber.

mod common;

use std::io;
use std::time::Duration;

use common::{Logs, exchange, start};
use switchboard::{Connection, handler_fn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Debug)]
struct PanickingDisplay;

impl std::fmt::Display for PanickingDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("display of a broken error type")
    }
}

impl std::error::Error for PanickingDisplay {}

/// An error whose conversion into `BoxError` panics.
#[derive(Debug)]
struct PanickingConversion;

impl From<PanickingConversion> for switchboard::BoxError {
    fn from(_: PanickingConversion) -> Self {
        panic!("conversion of a broken error type")
    }
}

/// What the test's handler returns: an I/O error, or one whose conversion
/// panics.
#[derive(Debug)]
enum TestError {
    Io(io::Error),
    Conversion(PanickingConversion),
}

impl From<io::Error> for TestError {
    fn from(err: io::Error) -> Self {
        TestError::Io(err)
    }
}

impl From<TestError> for switchboard::BoxError {
    fn from(err: TestError) -> Self {
        match err {
            TestError::Io(err) => err.into(),
            TestError::Conversion(err) => err.into(),
        }
    }
}

#[tokio::test]
async fn errors_panics_and_timeouts_are_logged_with_the_connection() {
    let logs = Logs::install(tracing::Level::DEBUG);

    let running = start(
        handler_fn(|conn: Connection| async move {
            let mut conn = BufReader::new(conn);
            let mut word = String::new();
            conn.read_line(&mut word).await?;
            match word.trim() {
                "err" => Err(io::Error::other("disk on fire").into()),
                // An error whose display panics: outside the handler, in the
                // task's logging, and still counted as a panic.
                "bad-error" => Err(io::Error::other(PanickingDisplay).into()),
                // An error whose conversion panics, in the task: a panic.
                "bad-conversion" => Err(TestError::Conversion(PanickingConversion)),
                "panic" => panic!("kaboom 42"),
                "wait" => {
                    let mut rest = Vec::new();
                    conn.read_to_end(&mut rest).await?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }),
        |b| b.idle_timeout(Duration::from_millis(200)),
    )
    .await;
    for word in ["ok", "err", "panic", "bad-error", "bad-conversion"] {
        exchange(running.addr, format!("{word}\n").as_bytes()).await;
    }
    // The handler waits for more: the idle timeout closes the connection.
    exchange(running.addr, b"wait\n").await;
    let report = running.stop().await;
    assert_eq!(
        (
            report.completed,
            report.failed,
            report.panicked,
            report.timed_out
        ),
        (1, 1, 3, 1),
        "{report:?}"
    );
    common::assert_adds_up(&report);
    assert_eq!(
        logs.lines_with("connection task panicked outside the handler")
            .len(),
        1
    );

    let listening = logs.lines_with("listening");
    assert!(
        listening.len() == 1 && listening[0].contains(" INFO "),
        "{listening:?}"
    );
    let failed = logs.lines_with("disk on fire");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains(" WARN "), "{failed:?}");
    assert!(
        failed[0].contains("conn.id=2") && failed[0].contains("disk on fire"),
        "{failed:?}"
    );
    let panicked = logs.lines_with("handler panicked");
    assert_eq!(panicked.len(), 2, "{panicked:?}");
    assert!(
        panicked.iter().all(|l| l.contains(" ERROR ")),
        "{panicked:?}"
    );
    assert!(
        panicked[0].contains("conn.id=3") && panicked[0].contains("kaboom 42"),
        "{panicked:?}"
    );
    assert!(
        panicked[1].contains("conn.id=5") && panicked[1].contains("conversion of a broken"),
        "{panicked:?}"
    );
    let timed_out = logs.lines_with("connection timed out");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(
        timed_out[0].contains(" INFO ") && timed_out[0].contains("timeout=\"idle\""),
        "{timed_out:?}"
    );
    // Per-connection lines run inside the `conn{id, peer}` span.
    assert!(
        timed_out[0].contains("conn{id=6 peer=127.0.0.1:"),
        "{timed_out:?}"
    );
    assert_eq!(logs.lines_with("connection opened").len(), 6);
    assert_eq!(logs.lines_with("connection closed").len(), 6);
    assert_eq!(logs.lines_with("shutdown complete").len(), 1);
}
