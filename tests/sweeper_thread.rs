//! The timeout sweeper's thread lives exactly as long as `run`: started when
//! a timeout is set, ended when `run` returns or its future is dropped.
//!
//! A test binary of its own, as it counts the process's threads by name.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{noop, start, within};
use tokio::io::AsyncReadExt;

/// How many threads of this process are named like the sweeper (the
/// kernel keeps the first 15 bytes of a thread's name).
fn sweepers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "switchboard-swe")
        .count()
}

/// Waits (bounded) until `sweepers()` is `n`: a thread's exit is not
/// announced to the process, so this looks every millisecond for up to 5 s.
async fn sweepers_become(n: usize) {
    for _ in 0..5_000 {
        if sweepers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(sweepers(), n, "sweeper threads");
}

#[tokio::test]
async fn the_sweeper_thread_ends_with_run_or_its_dropped_future() {
    assert_eq!(sweepers(), 0);

    // Without any timeout there is nothing to sweep: no thread.
    let untimed = start(noop(), |b| b.idle_timeout(None)).await;
    // A connection served shows `run` got past the point where it would
    // start the sweeper (before its accept loops).
    let mut client = untimed.connect().await;
    let mut rest = Vec::new();
    within("the handler to close", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(sweepers(), 0, "no timeout, no sweeper");
    untimed.stop().await;

    let running = start(noop(), |b| b.idle_timeout(Duration::from_secs(5))).await;
    sweepers_become(1).await;
    running.stop().await;
    sweepers_become(0).await;

    // A `run` future dropped midway stops its sweeper too.
    let dropped = start(noop(), |b| b.idle_timeout(Duration::from_secs(5))).await;
    sweepers_become(1).await;
    dropped.task.abort();
    let _ = within("the aborted run", dropped.task).await;
    sweepers_become(0).await;
}
