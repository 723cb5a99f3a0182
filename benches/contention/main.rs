//! `cargo bench -- contention`: a connection's bookkeeping on a server's
//! shared state (admission, id, counters, record, registry; see
//! `switchboard::__bench`), without sockets or tasks, driven from one thread
//! and from two threads at once.
//!
//! A bench of its own, apart from `benches/switchboard`: that one counts
//! every allocation in a global counter, which threads racing here would
//! contend on, whatever the library does.
//!
//! Two threads on two servers of their own do the same work as two threads
//! on one server, with the same parallelism: the difference is the cost of
//! what the connections share (a contended lock, a cache line bouncing
//! between the cores). So `shared / own` is the everyday guide to how the
//! per-connection cost grows with cores, on a machine of two; 1.00 means
//! nothing on a connection's path is shared. `handoff` opens on one thread
//! and closes on the other, as an accept loop and the worker that ends a
//! task do, against the same handoff of a plain allocation.
//!
//! Each thread keeps a window of open connections (the oldest closed as a
//! new one opens), so that the registry holds live entries as a server's
//! does.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use switchboard::__bench::{Bookkeeping, Open};

#[path = "../switchboard/cputime.rs"]
mod cputime;
#[allow(dead_code)] // the other bench's report has more than this one uses
#[path = "../switchboard/report.rs"]
mod report;

use report::{Compare, Results};

/// `cargo bench` passes `--bench`; other words select scenarios, and this
/// bench has only the one.
fn main() {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !words.is_empty() && !words.iter().any(|w| "contention".contains(w.as_str())) {
        return;
    }
    let rounds = std::env::var("SWITCHBOARD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(5);
    println!("contention: {CONNECTIONS} connections a thread per run, {WINDOW} kept open");
    let mut res = Results::default();
    run(rounds, &mut res);
    println!("\n{}", res.table());
    let out = target_dir().join("bench").join("contention.json");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    match res.write_json(&out, &[("cores", cores.to_string())]) {
        Ok(()) => println!("results: {}", out.display()),
        Err(e) => println!("results not written: {e}"),
    }
}

/// Where `cargo bench` puts its output (the other bench's rule).
fn target_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Into::into))
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Connections each thread opens and closes per run.
const CONNECTIONS: usize = 1_000_000;
/// Connections each thread keeps open.
const WINDOW: usize = 64;
/// Connections passed from the opening thread to the closing one at a time.
const BATCH: usize = 64;

const SCENARIO: &str = "contention";
const METRIC: &str = "time per connection";
const ONE: &str = "1 thread";
const OWN: &str = "2 threads, a server each";
const SHARED: &str = "2 threads, one server";
const HANDOFF: &str = "handoff, switchboard";
const HANDOFF_BOX: &str = "handoff, a box";
/// How many cores the run kept busy: its threads' CPU time over its wall
/// time. Below 2 for a two-thread run, the machine was busy with something
/// else and the threads took turns rather than racing: such rounds show no
/// contention, whatever the code.
const CORES: &str = "cores busy";

/// A way to run the bookkeeping, and its name.
type Mode = (&'static str, fn() -> Run);

/// What one run measured.
struct Run {
    /// Wall time per connection, per thread.
    ns: f64,
    parallel: f64,
}

impl Run {
    fn new(wall: Duration, cpu: Duration, connections: usize) -> Run {
        Run {
            ns: wall.as_secs_f64() * 1e9 / connections as f64,
            parallel: cpu.as_secs_f64() / wall.as_secs_f64(),
        }
    }
}

/// This thread's CPU time (user and system), from `/proc/thread-self/stat`
/// (in clock ticks, usually 10 ms: runs last long enough for that); zero
/// where it cannot be read, which shows as 0 cores busy.
fn thread_cpu() -> Duration {
    cputime::cpu_time("/proc/thread-self/stat").unwrap_or_default()
}

/// Runs the scenario's rounds.
fn run(rounds: usize, res: &mut Results) {
    let modes: [Mode; 5] = [
        (ONE, one_thread),
        (OWN, own_servers),
        (SHARED, one_server),
        (HANDOFF, handoff_bookkeeping),
        (HANDOFF_BOX, handoff_box),
    ];
    // At least 5 rounds: they are short, and two threads on a busy machine
    // are noisy.
    for round in 0..rounds.max(5) {
        for i in 0..modes.len() {
            let (name, run) = modes[(i + round) % modes.len()];
            let Run { ns, parallel } = run();
            println!(
                "  {SCENARIO} round {round}: {name:<26} {ns:7.1} ns/connection, {parallel:.2} cores busy"
            );
            res.put(SCENARIO, METRIC, "ns", None, name, round, Some(ns));
            res.put(SCENARIO, CORES, "cores", None, name, round, Some(parallel));
        }
    }
    res.ratio(SCENARIO, METRIC, None, SHARED, OWN, Compare::Ratio);
    res.ratio(SCENARIO, METRIC, None, SHARED, ONE, Compare::Ratio);
    res.ratio(SCENARIO, METRIC, None, HANDOFF, HANDOFF_BOX, Compare::Ratio);
}

/// `CONNECTIONS` opened and closed on `server`, `WINDOW` kept open.
fn churn(server: &Bookkeeping) {
    // Each thread opens as one of several accept tasks does.
    let mut opener = server.opener(true);
    let mut open = VecDeque::with_capacity(WINDOW + 1);
    for _ in 0..CONNECTIONS {
        open.push_back(opener.open().expect("room under the limit"));
        if open.len() > WINDOW {
            server.close(open.pop_front().expect("a connection"));
        }
    }
    for conn in open {
        server.close(conn);
    }
}

fn server() -> Bookkeeping {
    Bookkeeping::new(switchboard::DEFAULT_MAX_CONNECTIONS)
}

/// Checks that every connection was counted once and ended.
fn check(server: &Bookkeeping, connections: usize) {
    let s = server.snapshot();
    assert_eq!(s.accepted, connections as u64, "every open counted");
    assert_eq!(s.completed, connections as u64, "every close counted");
    assert_eq!(s.active, 0);
}

fn one_thread() -> Run {
    let server = server();
    let (started, cpu) = (Instant::now(), thread_cpu());
    churn(&server);
    churn(&server);
    let run = Run::new(
        started.elapsed(),
        thread_cpu().saturating_sub(cpu),
        2 * CONNECTIONS,
    );
    check(&server, 2 * CONNECTIONS);
    run
}

/// Runs `work` on two threads started together; the time per connection
/// of each (the wall time over `CONNECTIONS`).
fn two_threads(work: impl Fn(usize) + Send + Sync + 'static) -> Run {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (work, start) = (Arc::clone(&work), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let cpu = thread_cpu();
                work(i);
                thread_cpu().saturating_sub(cpu)
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    let cpu = threads
        .into_iter()
        .map(|thread| thread.join().expect("bench thread"))
        .sum();
    Run::new(started.elapsed(), cpu, CONNECTIONS)
}

fn own_servers() -> Run {
    let servers = Arc::new([server(), server()]);
    let each = Arc::clone(&servers);
    let per = two_threads(move |i| churn(&each[i]));
    check(&servers[0], CONNECTIONS);
    check(&servers[1], CONNECTIONS);
    per
}

fn one_server() -> Run {
    let server = Arc::new(server());
    let each = Arc::clone(&server);
    let per = two_threads(move |_| churn(&each));
    check(&server, 2 * CONNECTIONS);
    per
}

/// Opens `CONNECTIONS` with `open` on this thread and ends them with
/// `close` on another, passed over in batches; the time per connection.
fn handoff<T: Send + 'static>(
    mut open: impl FnMut() -> T,
    close: impl Fn(T) + Send + 'static,
) -> Run {
    let (tx, rx) = mpsc::sync_channel::<Vec<T>>(4);
    let closer = std::thread::spawn(move || {
        let cpu = thread_cpu();
        for batch in rx {
            for item in batch {
                close(item);
            }
        }
        thread_cpu().saturating_sub(cpu)
    });
    let (started, cpu) = (Instant::now(), thread_cpu());
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..CONNECTIONS {
        batch.push(open());
        if batch.len() == BATCH {
            tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .expect("closer alive");
        }
    }
    tx.send(batch).expect("closer alive");
    drop(tx);
    let cpu = thread_cpu().saturating_sub(cpu);
    let closing = closer.join().expect("closer");
    Run::new(started.elapsed(), cpu + closing, CONNECTIONS)
}

fn handoff_bookkeeping() -> Run {
    let server = Arc::new(server());
    let closer = Arc::clone(&server);
    // The one accept loop of a listener.
    let mut opener = server.opener(false);
    let per = handoff(
        move || opener.open().expect("room under the limit"),
        move |conn: Open| closer.close(conn),
    );
    check(&server, CONNECTIONS);
    per
}

/// The handoff alone: what passing a task's allocation from the accept
/// loop's core to another costs any server.
fn handoff_box() -> Run {
    handoff(|| Box::new([0_u64; 8]), |b| drop(std::hint::black_box(b)))
}
