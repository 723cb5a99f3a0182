//! The timeout sweeper: one per server, it wakes every tick, reads the clock
//! once and closes the live connections past a timeout (see `timeout.rs`
//! for the rules).
//!
//! The sweeper is a thread of its own, not a task with a tokio timer: while
//! any timer is pending, every time the runtime parks it reads the clock and
//! walks the timer wheel, a few hundred instructions on every wake-up of the
//! server (callgrind: ~270 per HTTP request). A thread that sleeps a tick at a
//! time costs the runtime nothing. Only if the thread cannot be started does
//! the sweeper run as a task.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::conn::record::Tasks;
use crate::timeout::{Clock, Timeouts};

/// A running sweeper; [`stop`](Sweeper::stop) ends it, and so does
/// dropping it.
#[derive(Debug)]
pub(crate) enum Sweeper {
    Thread {
        /// Dropped to tell the thread to end.
        stop: mpsc::Sender<()>,
        /// Completes when the thread has ended.
        ended: oneshot::Receiver<()>,
    },
    /// Only when no thread could be started.
    Task {
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    },
}

impl Sweeper {
    /// Starts sweeping every `tick` until stopped.
    pub(crate) fn start(
        timeouts: Timeouts,
        tick: Duration,
        clock: Arc<Clock>,
        tasks: Arc<Tasks>,
    ) -> Sweeper {
        let (stop, stopped) = mpsc::channel::<()>();
        let (done, ended) = oneshot::channel();
        let (thread_clock, thread_tasks) = (Arc::clone(&clock), Arc::clone(&tasks));
        let thread = std::thread::Builder::new()
            .name("switchboard-sweeper".to_owned())
            .spawn(move || {
                // Wakes every tick until the sender is dropped.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    sweep_once(timeouts, &thread_clock, &thread_tasks);
                }
                let _ = done.send(());
            });
        match thread {
            Ok(_) => Sweeper::Thread { stop, ended },
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the timeout sweeper's thread, sweeping in a task");
                let (stop, stopped) = oneshot::channel();
                let task = tokio::spawn(sweep_in_task(timeouts, tick, clock, tasks, stopped));
                Sweeper::Task { stop, task }
            }
        }
    }

    /// Stops the sweeper and waits for it to end.
    pub(crate) async fn stop(self) {
        match self {
            Sweeper::Thread { stop, ended } => {
                drop(stop);
                // The thread ends within one sweep; a dropped sender means
                // it panicked, and then it has ended too.
                let _ = ended.await;
            }
            Sweeper::Task { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
        }
    }
}

/// Expires the connections past a timeout.
fn sweep_once(timeouts: Timeouts, clock: &Clock, tasks: &Tasks) {
    let now = clock.read();
    tasks.expire(|state| state.expired(&timeouts, now));
}

/// The sweeper as a task, with a tokio timer, until `stop` completes (or
/// its sender is dropped).
async fn sweep_in_task(
    timeouts: Timeouts,
    tick: Duration,
    clock: Arc<Clock>,
    tasks: Arc<Tasks>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = interval.tick() => sweep_once(timeouts, &clock, &tasks),
        }
    }
}
