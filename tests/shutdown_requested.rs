//! `ShutdownHandle::requested`: the application's own tasks learn that the
//! server is shutting down, whatever asked for it: a handle, the builder's
//! `shutdown_on` future, a signal.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use common::{build, noop, run, start, within};
use switchboard::{Builder, ShutdownHandle};
use tokio::sync::{mpsc, oneshot};

/// Polls `fut` once, without waiting.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// An application task that ends when shutdown is requested, and tells.
fn background_task(handle: &ShutdownHandle) -> oneshot::Receiver<()> {
    let (done_tx, done) = oneshot::channel();
    let requested = handle.requested();
    tokio::spawn(async move {
        requested.await;
        let _ = done_tx.send(());
    });
    done
}

#[tokio::test]
async fn any_clone_of_the_handle_completes_it() {
    let server = build(noop(), |b| b).await;
    let handle = server.shutdown_handle();
    let mut requested = handle.requested();
    assert!(poll_once(&mut requested).await.is_pending(), "not yet");

    server.shutdown_handle().clone().shutdown();
    within("requested() after shutdown()", requested).await;
    // Made afterwards: ready on its first poll.
    assert!(poll_once(&mut handle.requested()).await.is_ready());
    assert!(handle.is_shutting_down());
    // `run` after the request shuts down at once.
    within("run", server.run()).await.unwrap();
}

/// A server that shuts down when `trigger` is sent, with the trigger given
/// through `configure`; checks that an application task learns of it before
/// `run` returns, and not before the trigger.
async fn the_builders_future_completes_it(
    configure: impl FnOnce(Builder, oneshot::Receiver<()>) -> Builder,
) {
    let (trigger, triggered) = oneshot::channel::<()>();
    let running = start(noop(), |b| configure(b, triggered)).await;
    let mut done = background_task(&running.shutdown);
    // The server serves meanwhile, and the task waits.
    drop(running.connect().await);
    assert!(
        done.try_recv().is_err(),
        "the task ended before shutdown was requested"
    );
    assert!(!running.shutdown.is_shutting_down());

    trigger.send(()).unwrap();
    within("the task to see the request", done).await.unwrap();
    assert!(running.shutdown.is_shutting_down());
    let report = running.finish().await;
    assert_eq!(report.accepted, 1, "{report}");
}

#[tokio::test]
async fn the_shutdown_on_future_completes_it() {
    the_builders_future_completes_it(|b, triggered| {
        b.shutdown_on(async {
            let _ = triggered.await;
        })
    })
    .await;
}

#[tokio::test]
#[allow(deprecated)]
async fn the_deprecated_shutdown_signal_still_triggers() {
    the_builders_future_completes_it(|b, triggered| {
        b.shutdown_signal(async {
            let _ = triggered.await;
        })
    })
    .await;
}

/// SIGTERM to this very process, through `termination()`.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_completes_it() {
    // Hooked here, before the signal is sent: from now on SIGTERM reaches
    // tokio instead of ending the process.
    let terminated = switchboard::termination();
    let server = build(noop(), |b| b.shutdown_on(terminated)).await;
    let handle = server.shutdown_handle();
    let done = background_task(&handle);
    let running = run(server);
    let status = within(
        "kill -TERM",
        tokio::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status(),
    )
    .await
    .expect("runs kill");
    assert!(status.success(), "kill: {status}");
    within("the task to see SIGTERM", done).await.unwrap();
    running.finish().await;
}

/// Dropped before it completes (a `select!` whose other branch won), the
/// future misses nothing: the next one still completes, in a loop that makes
/// a new one on every turn.
#[tokio::test]
async fn cancel_safe_in_a_select_loop() {
    let server = build(noop(), |b| b).await;
    let handle = server.shutdown_handle();
    let (ticks, mut tick) = mpsc::channel::<()>(1);
    let (turns_tx, mut turns) = mpsc::unbounded_channel::<()>();
    let task = {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = handle.requested() => return,
                    Some(()) = tick.recv() => {
                        let _ = turns_tx.send(());
                    }
                }
            }
        })
    };
    for turn in 0..5 {
        ticks.send(()).await.unwrap();
        within(&format!("turn {turn}"), turns.recv()).await.unwrap();
    }
    // A future polled (so registered) and then dropped.
    let mut abandoned = handle.requested();
    assert!(poll_once(&mut abandoned).await.is_pending());
    drop(abandoned);

    handle.shutdown();
    within("the loop to see the request", task).await.unwrap();
    drop(server);
}
