//! The `scale` scenario: switchboard against the hand-written
//! `TcpListener::accept` + `tokio::spawn` loop as the server's runtime gets
//! more worker threads, both servers running byte for byte the same handler
//! code.
//!
//! For each W in 1, 2, 4, 8 where this process may use at least 2W cores
//! (the others are skipped, with a note):
//! - the server runs W runtime worker threads, pinned to the first W of the
//!   cores this process may use (cores 0..W-1 on a machine that does not
//!   restrict it); the server pins itself before it starts any thread;
//! - this process, the load generator, pins itself to the remaining cores
//!   and drives the server from a runtime with one worker thread per core,
//!   with 64·W clients;
//! - two workloads, each in alternating rounds (the order of the servers
//!   rotates from round to round, as in the other scenarios):
//!   - churn: one connection per request; the client sends a small HTTP
//!     request head, the server reads it, writes a fixed response and closes
//!     ([`churn_reply`], under switchboard through [`ChurnReply`]);
//!   - echo: 64·W kept-alive connections doing 64-byte round trips through
//!     an echo whose future holds an 8 KiB buffer (`naive_echo` in
//!     `server.rs`, under switchboard through `NaiveEcho`);
//! - measured, per W: throughput (connections/s, round trips/s) and the
//!   server's CPU time per operation in microseconds: `utime + stime` of the
//!   server process from `/proc/PID/stat`, read just before and just after
//!   the measured window (clock-tick resolution, 10 ms at the usual 100 Hz:
//!   a few hundred ticks per round), divided by the operations completed in
//!   it. Each also as the switchboard / hand-written ratio computed round by
//!   round: median with min and max.
//!
//! Both servers accept in a task on the W workers: the hand-written churn
//! server spawns its `accept` loop (`tokio-churn`), as switchboard runs its
//! own, so that neither has a thread the other lacks. (The echo servers'
//! accept placement does not matter: their connections open once.)
//!
//! Pinning is `sched_setaffinity` (through rustix). Where it fails (a
//! sandbox that forbids it, or not Linux) a note says so and the scenario
//! runs unpinned; the server's mask is read back after its start, so a
//! server that could not pin itself is noted too.
//!
//! At W > 1 the churn workload runs a third server beside the two:
//! switchboard with W accept tasks per listener (`Builder::accept_tasks`,
//! see `with_accept_tasks` in `server.rs`), in rows named
//! `switchboard-…, N accept tasks`, with their own ratios to the
//! hand-written loop. `SWITCHBOARD_BENCH_ACCEPT_TASKS=N` sets N instead, for
//! every W and both workloads. The other servers never see the variable.
//!
//! Running only this scenario, here or on a bigger machine that has only the
//! bench binary (it starts its own server processes from its own file):
//!
//! ```text
//! cargo bench -- scale
//! cargo bench --no-run        # prints the binary's path: target/release/deps/switchboard-HASH
//! target/release/deps/switchboard-HASH scale
//! SWITCHBOARD_BENCH_ROUNDS=5 SWITCHBOARD_BENCH_SECS=2 SWITCHBOARD_BENCH_ACCEPT_TASKS=4 \
//!     CARGO_TARGET_DIR=/tmp/sb target/release/deps/switchboard-HASH scale
//! ```
//!
//! The results go with the other scenarios' into
//! `$CARGO_TARGET_DIR/bench/results.json` (the binary's own `target/` when
//! the variable is unset), scenario `scale W=N`.

use std::convert::Infallible;
use std::time::Duration;

use switchboard::{Connection, Handler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::client::Budget;
use crate::proc::{Launch, ServerProc};
use crate::report::{Compare, Results};
use crate::scenarios::{Workload, checked, rotated};
use crate::server::{ACCEPT_TASKS_APPLIED, ACCEPT_TASKS_VAR, Mode};

/// The server's runtime worker threads tried, each only where the machine
/// has twice as many cores.
const WORKERS: [usize; 4] = [1, 2, 4, 8];
/// The scenario's name for each entry of [`WORKERS`], in the table and JSON.
const SCENARIOS: [&str; 4] = ["scale W=1", "scale W=2", "scale W=4", "scale W=8"];
/// Clients (concurrent connections) per server worker thread: 64 at W = 1,
/// as in the other throughput scenarios, and as many more per worker, so
/// that more workers have as much to do each.
const CLIENTS_PER_WORKER: usize = 64;
/// The largest request head [`churn_reply`] reads.
const MAX_HEAD: usize = 1024;
/// [`churn_reply`]'s answer to every request.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\nConnection: close\r\n\r\nHello from async Rust!";

/// The churn workload's server side, the very same code under both servers:
/// reads one request head up to its blank line (at most [`MAX_HEAD`]
/// bytes), writes a fixed response and returns, which closes the
/// connection. A head cut short or too long gets no answer.
pub(crate) async fn churn_reply<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut head = [0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if len == head.len() {
            return;
        }
    }
    let _ = stream.write_all(RESPONSE).await;
}

/// [`churn_reply`] as a switchboard handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChurnReply;

impl Handler for ChurnReply {
    type Error = Infallible;

    async fn handle(&self, conn: Connection) -> Result<(), Infallible> {
        churn_reply(conn).await;
        Ok(())
    }
}

/// Pins the calling thread (and the threads it starts afterwards) to
/// `cpus`.
pub(crate) fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
    os::pin_current_thread(cpus)
}

/// `cpus` as `taskset -c` and [`crate::server::CPUS_VAR`] write them: `0,1,2`.
pub(crate) fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the scenario: every W the machine allows, both workloads, `rounds`
/// alternating rounds each.
pub(crate) fn run(rounds: usize, warmup: Duration, measure: Duration, res: &mut Results) {
    // The mask this thread had, to give it back at the end.
    let original = os::cores_of(None);
    let cores = match &original {
        Ok(cores) => cores.clone(),
        Err(e) => {
            res.note(format!(
                "scale: cannot read this process's cores ({e}): runs unpinned"
            ));
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        }
    };
    let accept_tasks = std::env::var(ACCEPT_TASKS_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    if let (Some(n), false) = (accept_tasks, ACCEPT_TASKS_APPLIED) {
        res.note(format!(
            "scale: {ACCEPT_TASKS_VAR}={n} reaches the server but this build does not pass it \
             to switchboard (see with_accept_tasks in server.rs): that row runs the default"
        ));
    }
    for (w, scenario) in WORKERS.into_iter().zip(SCENARIOS) {
        if cores.len() < 2 * w {
            res.note(format!(
                "{scenario} skipped: {} usable cores, it needs {}",
                cores.len(),
                2 * w
            ));
            continue;
        }
        let (server_cores, load_cores) = cores.split_at(w);
        let clients = CLIENTS_PER_WORKER * w;
        // Before the runtime is built, so that its threads inherit the mask.
        let load_pinned = match original.as_ref().map(|_| pin_current_thread(load_cores)) {
            Ok(Ok(())) => "pinned to",
            Ok(Err(e)) => {
                res.note(format!("{scenario}: load generator not pinned: {e}"));
                "unpinned, would be on"
            }
            Err(_) => "unpinned, would be on",
        };
        res.note(format!(
            "{scenario}: server on cores {} (runtime workers: {w}); load generator {load_pinned} \
             cores {} (runtime workers: {}, clients: {clients})",
            cpu_list(server_cores),
            cpu_list(load_cores),
            load_cores.len()
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(load_cores.len())
            .enable_all()
            .build()
            .expect("the scale load generator's runtime");
        let mut run = WRun {
            w,
            scenario,
            server_cores,
            clients,
            rt: &rt,
            warmup,
            measure,
            server_pin_noted: false,
            cpu_noted: false,
        };
        for load in &LOADS {
            // Unless told otherwise, churn at W > 1 also runs switchboard
            // with an accept task per worker: where the scaling accept mode
            // would go past the one loop.
            let tasks = accept_tasks
                .or_else(|| (w > 1 && matches!(load.workload, Workload::Churn)).then_some(w));
            run.load(load, &load.contenders(tasks), rounds, res);
        }
        drop(rt);
    }
    if let Ok(cores) = &original {
        if let Err(e) = pin_current_thread(cores) {
            res.note(format!(
                "scale: could not give the bench its cores back: {e}"
            ));
        }
    }
}

/// One workload of the scenario and the servers that run it.
struct ScaleLoad {
    workload: Workload,
    /// switchboard running [`Self::hand`]'s handler code.
    switchboard: Mode,
    /// The hand-written loop.
    hand: Mode,
    rate_metric: &'static str,
    rate_unit: &'static str,
    cpu_metric: &'static str,
    cpu_unit: &'static str,
}

const LOADS: [ScaleLoad; 2] = [
    ScaleLoad {
        workload: Workload::Churn,
        switchboard: Mode::SbChurn,
        hand: Mode::TokioChurn,
        rate_metric: "churn",
        rate_unit: "conn/s",
        cpu_metric: "churn CPU",
        cpu_unit: "us/conn",
    },
    ScaleLoad {
        workload: Workload::Echo,
        switchboard: Mode::SbNaiveEcho,
        hand: Mode::TokioEcho,
        rate_metric: "echo",
        rate_unit: "rt/s",
        cpu_metric: "echo CPU",
        cpu_unit: "us/rt",
    },
];

impl ScaleLoad {
    /// switchboard, the hand-written loop, and switchboard with
    /// `accept_tasks` accept tasks when asked for.
    fn contenders(&self, accept_tasks: Option<usize>) -> Vec<Contender> {
        let mut all = vec![
            Contender {
                mode: self.switchboard,
                name: self.switchboard.name(),
                accept_tasks: None,
            },
            Contender {
                mode: self.hand,
                name: self.hand.name(),
                accept_tasks: None,
            },
        ];
        if let Some(n) = accept_tasks {
            all.push(Contender {
                mode: self.switchboard,
                // Rows are named by `&'static str`; one name per workload
                // for the life of the bench.
                name: String::leak(format!("{}, {n} accept tasks", self.switchboard.name())),
                accept_tasks: Some(n),
            });
        }
        all
    }
}

/// A server as launched for the scenario, and its row name.
#[derive(Debug, Clone, Copy)]
struct Contender {
    mode: Mode,
    name: &'static str,
    accept_tasks: Option<usize>,
}

/// What one measured run of a server gave.
struct Measured {
    rate: f64,
    /// Server CPU microseconds per operation.
    cpu: Result<f64, String>,
}

/// The runs at one W.
struct WRun<'a> {
    w: usize,
    scenario: &'static str,
    server_cores: &'a [usize],
    clients: usize,
    rt: &'a Runtime,
    warmup: Duration,
    measure: Duration,
    /// Each problem is noted once per W, not once per server start.
    server_pin_noted: bool,
    cpu_noted: bool,
}

impl WRun<'_> {
    /// Every round of one workload, then its ratios.
    fn load(
        &mut self,
        load: &ScaleLoad,
        contenders: &[Contender],
        rounds: usize,
        res: &mut Results,
    ) {
        let sc = self.scenario;
        for round in 0..rounds {
            for c in rotated(contenders, round) {
                eprintln!("{sc} {} round {}: {}", load.rate_metric, round + 1, c.name);
                let (rate, cpu) = match self.once(load, c, res) {
                    Ok(m) => {
                        let cpu = m.cpu.map_err(|e| {
                            if !std::mem::replace(&mut self.cpu_noted, true) {
                                res.note(format!("{sc}: no server CPU time: {e}"));
                            }
                        });
                        (Some(m.rate), cpu.ok())
                    }
                    Err(e) => {
                        let r = round + 1;
                        res.note(format!(
                            "{sc} {} round {r} {}: {e}",
                            load.rate_metric, c.name
                        ));
                        (None, None)
                    }
                };
                let (rm, ru) = (load.rate_metric, load.rate_unit);
                res.put(sc, rm, ru, None, c.name, round, rate);
                res.put(sc, load.cpu_metric, load.cpu_unit, None, c.name, round, cpu);
            }
        }
        for c in contenders.iter().filter(|c| c.mode != load.hand) {
            for metric in [load.rate_metric, load.cpu_metric] {
                res.ratio(sc, metric, None, c.name, load.hand.name(), Compare::Ratio);
            }
        }
    }

    /// Starts the server, warms it up, measures one window, stops it.
    fn once(
        &mut self,
        load: &ScaleLoad,
        c: Contender,
        res: &mut Results,
    ) -> Result<Measured, String> {
        let launch = Launch {
            mode: c.mode,
            threads: self.w,
            callgrind_out: None,
            accept_tasks: c.accept_tasks,
            cpus: self.server_cores.to_vec(),
        };
        let proc = ServerProc::start(&launch)?;
        let pid = proc.pid();
        if !self.server_pin_noted {
            let effect = os::cores_of(Some(pid));
            if effect.as_deref() != Ok(self.server_cores) {
                self.server_pin_noted = true;
                res.note(format!(
                    "{}: server not pinned to cores {} (in effect: {effect:?})",
                    self.scenario,
                    cpu_list(self.server_cores)
                ));
            }
        }
        self.rt.block_on(
            load.workload
                .run(proc.addr, self.clients, Budget::timed(self.warmup)),
        );
        let before = cpu_time(pid);
        let done = self.rt.block_on(load.workload.run(
            proc.addr,
            self.clients,
            Budget::timed(self.measure),
        ));
        let after = cpu_time(pid);
        proc.exit()?;
        checked(&done)?;
        let cpu = before.and_then(|b| {
            let spent = after?.saturating_sub(b);
            Ok(spent.as_secs_f64() * 1e6 / done.ops as f64)
        });
        Ok(Measured {
            rate: done.rate(),
            cpu,
        })
    }
}

/// The CPU time (user + system) a process has used so far, all its threads
/// together.
fn cpu_time(pid: u32) -> Result<Duration, String> {
    crate::cputime::cpu_time(&format!("/proc/{pid}/stat"))
}

/// Affinity where Linux has it.
#[cfg(target_os = "linux")]
mod os {
    use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};

    pub(super) fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
        let mut set = CpuSet::new();
        for &cpu in cpus {
            if cpu >= CpuSet::MAX_CPU {
                return Err(format!("core {cpu} is beyond {}", CpuSet::MAX_CPU));
            }
            set.set(cpu);
        }
        sched_setaffinity(None, &set).map_err(|e| format!("sched_setaffinity: {e}"))
    }

    /// The cores a thread may run on: the calling thread's for `None`, else
    /// the process's main thread's.
    pub(super) fn cores_of(pid: Option<u32>) -> Result<Vec<usize>, String> {
        let pid = match pid {
            None => None,
            Some(pid) => Some(
                i32::try_from(pid)
                    .ok()
                    .and_then(Pid::from_raw)
                    .ok_or_else(|| format!("pid {pid} out of range"))?,
            ),
        };
        let set = sched_getaffinity(pid).map_err(|e| format!("sched_getaffinity: {e}"))?;
        Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
    }
}

/// Elsewhere: no pinning and no `/proc`; the scenario says so and runs.
#[cfg(not(target_os = "linux"))]
mod os {
    const NO: &str = "only on Linux";

    pub(super) fn pin_current_thread(_cpus: &[usize]) -> Result<(), String> {
        Err(NO.to_owned())
    }

    pub(super) fn cores_of(_pid: Option<u32>) -> Result<Vec<usize>, String> {
        Err(NO.to_owned())
    }
}
