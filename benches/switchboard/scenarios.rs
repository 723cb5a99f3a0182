//! The scenarios of the benchmark, run in alternating rounds.
//!
//! In each round every server of a scenario runs once, in an order that
//! rotates from round to round, so that drift in the machine's load hits all
//! of them alike; the table gives the median over rounds with min and max,
//! and ratios computed round by round.
//!
//! | scenario      | servers                                  | measured |
//! | ---           | ---                                      | ---      |
//! | churn         | switchboard hello, tokio hello           | connections/s, p99 (1 request per connection, 64 clients) |
//! | keep-alive    | switchboard echo, lean and naive tokio echo, switchboard running the naive echo | round trips/s, p99 (64 connections, 64 B) |
//! | http-keepalive| switchboard hello, tokio hello, hyper    | requests/s, p99 (64 connections; also wrk when installed) |
//! | axum-http1    | switchboard axum example, `axum::serve` (same router) | requests/s, p99 (64 keep-alive connections) |
//! | axum-h2c      | the same two                             | requests/s, p99 (64 streams over 4 h2c connections) |
//! | idle-memory   | switchboard echo, lean, naive, threads   | server RSS per idle connection at 1k/5k/10k |
//! | shutdown      | switchboard echo                         | trigger to `run()` returning, 10k idle connections |
//! | allocations   | all tokio servers                        | per connection / round trip / request: two runs, differenced |
//! | instructions  | all tokio servers, under callgrind       | per connection / round trip / request: two runs, differenced (1 client); the naive echo's code under switchboard and by hand |
//! | scale         | switchboard and the hand-written loop on the same handler code, per W worker threads | churn conn/s, echo round trips/s, server CPU per operation; server pinned to W cores, load generator to the rest (see `scale.rs`) |
//!
//! Idle memory also reports the server's live heap per connection (bytes
//! and blocks, from the counting allocator), which says where the RSS goes;
//! shutdown also reports how long this process takes to close as many
//! sockets, the kernel's share of any shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Runtime;

use crate::client::{self, Budget, Load};
use crate::proc::{self, AllocCount, Launch, ServerProc};
use crate::report::{Compare, Results};
use crate::scale;
use crate::server::Mode;

/// Concurrent clients (connections) of the throughput scenarios.
const CLIENTS: usize = 64;
/// Idle connection counts of the memory scenario.
const IDLE_COUNTS: [u64; 3] = [1_000, 5_000, 10_000];
/// Runtime worker threads of every server (and of the load generator).
const THREADS: usize = 2;
/// Pause before reading RSS, so that the last handlers have parked.
const SETTLE: Duration = Duration::from_millis(300);
/// The pause after each operation of an instruction-counting load.
const PACE: Duration = Duration::from_millis(1);
/// A round whose load saw more errors than this fraction failed.
const MAX_ERROR_RATE: f64 = 0.01;

/// What `cargo bench` was asked for.
struct Config {
    rounds: usize,
    measure: Duration,
    warmup: Duration,
    only: Vec<String>,
    out: PathBuf,
}

impl Config {
    fn from_env() -> Config {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        Config {
            rounds: env("SWITCHBOARD_BENCH_ROUNDS").map_or(3, |r| r.max(1.0) as usize),
            measure: Duration::from_secs_f64(env("SWITCHBOARD_BENCH_SECS").unwrap_or(3.0)),
            warmup: Duration::from_millis(500),
            // `cargo bench` passes `--bench`; other words select scenarios.
            only: std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
            out: target_dir().join("bench").join("results.json"),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| scenario.contains(o.as_str()))
    }
}

/// The kinds of load, each the same for every server it drives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Workload {
    Churn,
    Echo,
    Http,
    /// HTTP/2 with prior knowledge: `clients` streams over a few connections.
    H2c,
}

impl Workload {
    pub(crate) async fn run(self, addr: SocketAddr, clients: usize, budget: Budget) -> Load {
        match self {
            Workload::Churn => client::churn(addr, clients, budget).await,
            Workload::Echo => client::echo(addr, clients, budget).await,
            Workload::Http => client::http(addr, clients, budget).await,
            Workload::H2c => crate::axum::h2c(addr, clients, budget).await,
        }
    }
}

pub(crate) fn main() {
    let started = Instant::now();
    let cfg = Config::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .expect("the load generator's runtime");
    // Client sockets are dropped outside `block_on` too.
    let _guard = rt.enter();
    let mut res = Results::default();
    println!(
        "switchboard bench: {} rounds of {:.1?} per server, {CLIENTS} clients, servers on {THREADS} worker threads",
        cfg.rounds, cfg.measure
    );

    if cfg.wants("churn") {
        throughput(&cfg, &rt, &mut res, Scenario::CHURN);
    }
    if cfg.wants("keep-alive") {
        throughput(&cfg, &rt, &mut res, Scenario::KEEP_ALIVE);
    }
    if cfg.wants("http-keepalive") {
        throughput(&cfg, &rt, &mut res, Scenario::HTTP);
    }
    if cfg.wants("axum-http1") {
        throughput(&cfg, &rt, &mut res, Scenario::AXUM_HTTP1);
    }
    if cfg.wants("axum-h2c") {
        throughput(&cfg, &rt, &mut res, Scenario::AXUM_H2C);
    }
    if cfg.wants("idle-memory") || cfg.wants("shutdown") {
        idle_memory(&cfg, &rt, &mut res);
    }
    if cfg.wants("allocations") {
        allocations(&cfg, &rt, &mut res);
    }
    if cfg.wants("instructions") {
        instructions(&cfg, &rt, &mut res);
    }
    if cfg.wants("scale") {
        scale::run(cfg.rounds, cfg.warmup, cfg.measure, &mut res);
    }

    if res.rows.is_empty() {
        // `cargo bench -- contention` runs this binary too: nothing of its
        // own was asked for, so the last results stay as they are.
        println!("no scenario of this bench was asked for");
        return;
    }
    let table = res.table();
    println!("\n{table}");
    let meta = meta(&cfg, started.elapsed());
    match res.write_json(&cfg.out, &meta) {
        Ok(()) => println!("results: {}", cfg.out.display()),
        Err(e) => println!("results not written: {e}"),
    }
    println!("bench took {:.0?}", started.elapsed());
}

/// A throughput scenario: servers, load, what to call the numbers.
struct Scenario {
    name: &'static str,
    servers: &'static [Mode],
    workload: Workload,
    rate_metric: &'static str,
    rate_unit: &'static str,
    /// `(numerator, denominator)` pairs to print ratios for.
    ratios: &'static [(Mode, Mode)],
}

impl Scenario {
    const CHURN: Scenario = Scenario {
        name: "churn",
        servers: &[Mode::SbHello, Mode::TokioHello],
        workload: Workload::Churn,
        rate_metric: "connections",
        rate_unit: "conn/s",
        ratios: &[(Mode::SbHello, Mode::TokioHello)],
    };
    const KEEP_ALIVE: Scenario = Scenario {
        name: "keep-alive",
        servers: &[
            Mode::SbEcho,
            Mode::LeanEcho,
            Mode::TokioEcho,
            Mode::SbNaiveEcho,
        ],
        workload: Workload::Echo,
        rate_metric: "round trips",
        rate_unit: "rt/s",
        ratios: &[
            (Mode::SbEcho, Mode::LeanEcho),
            (Mode::SbEcho, Mode::TokioEcho),
            (Mode::SbNaiveEcho, Mode::TokioEcho),
        ],
    };
    const HTTP: Scenario = Scenario {
        name: "http-keepalive",
        servers: &[Mode::SbHello, Mode::TokioHello, Mode::HyperHello],
        workload: Workload::Http,
        rate_metric: "requests",
        rate_unit: "req/s",
        ratios: &[
            (Mode::SbHello, Mode::TokioHello),
            (Mode::SbHello, Mode::HyperHello),
        ],
    };
    const AXUM_HTTP1: Scenario = Scenario {
        name: "axum-http1",
        servers: &[Mode::SbAxum, Mode::AxumServe],
        workload: Workload::Http,
        rate_metric: "requests",
        rate_unit: "req/s",
        ratios: &[(Mode::SbAxum, Mode::AxumServe)],
    };
    const AXUM_H2C: Scenario = Scenario {
        name: "axum-h2c",
        servers: &[Mode::SbAxum, Mode::AxumServe],
        workload: Workload::H2c,
        rate_metric: "requests",
        rate_unit: "req/s",
        ratios: &[(Mode::SbAxum, Mode::AxumServe)],
    };
}

fn throughput(cfg: &Config, rt: &Runtime, res: &mut Results, sc: Scenario) {
    let wrk = matches!(sc.workload, Workload::Http) && proc::have("wrk");
    if matches!(sc.workload, Workload::Http) && !wrk {
        res.note(
            "wrk not installed: HTTP keep-alive measured with the bench's own client only"
                .to_owned(),
        );
    }
    for round in 0..cfg.rounds {
        for mode in rotated(sc.servers, round) {
            eprintln!("{} round {}: {}", sc.name, round + 1, mode.name());
            let outcome = (|| -> Result<(f64, f64, Option<f64>), String> {
                let proc = ServerProc::start(&Launch::native(mode))?;
                rt.block_on(
                    sc.workload
                        .run(proc.addr, CLIENTS, Budget::timed(cfg.warmup)),
                );
                let mut load = rt.block_on(sc.workload.run(
                    proc.addr,
                    CLIENTS,
                    Budget::timed(cfg.measure),
                ));
                let wrk_rate = if wrk {
                    Some(run_wrk(proc.addr, cfg.measure)?)
                } else {
                    None
                };
                proc.exit()?;
                checked(&load)?;
                Ok((load.rate(), load.p99_us(), wrk_rate))
            })();
            let (rate, p99, wrk_rate) = match outcome {
                Ok((rate, p99, w)) => (Some(rate), Some(p99), w),
                Err(e) => {
                    res.note(format!(
                        "{} round {} {}: {e}",
                        sc.name,
                        round + 1,
                        mode.name()
                    ));
                    (None, None, None)
                }
            };
            let m = mode.name();
            res.put(sc.name, sc.rate_metric, sc.rate_unit, None, m, round, rate);
            res.put(sc.name, "p99 latency", "us", None, m, round, p99);
            if wrk {
                res.put(sc.name, "wrk -c64", "req/s", None, m, round, wrk_rate);
            }
        }
    }
    for &(num, den) in sc.ratios {
        res.ratio(
            sc.name,
            sc.rate_metric,
            None,
            num.name(),
            den.name(),
            Compare::Ratio,
        );
        res.ratio(
            sc.name,
            "p99 latency",
            None,
            num.name(),
            den.name(),
            Compare::Ratio,
        );
        if wrk {
            res.ratio(
                sc.name,
                "wrk -c64",
                None,
                num.name(),
                den.name(),
                Compare::Ratio,
            );
        }
    }
}

/// Idle memory per connection, and (switchboard) the shutdown with the
/// last count of idle connections open.
fn idle_memory(cfg: &Config, rt: &Runtime, res: &mut Results) {
    let servers = [
        Mode::SbEcho,
        Mode::LeanEcho,
        Mode::TokioEcho,
        Mode::ThreadEcho,
    ];
    let top = IDLE_COUNTS[IDLE_COUNTS.len() - 1];
    for round in 0..cfg.rounds {
        for mode in rotated(&servers, round) {
            eprintln!("idle-memory round {}: {}", round + 1, mode.name());
            let mut per_conn = Vec::new();
            let mut client_close = None;
            let outcome = (|| -> Result<Duration, String> {
                let mut proc = ServerProc::start(&Launch::native(mode))?;
                // Warm up: the runtime's threads and allocator arenas exist
                // before the baseline is taken.
                let mut held = Vec::new();
                rt.block_on(client::hold(
                    proc.addr,
                    CLIENTS,
                    &mut held,
                    Duration::from_secs(30),
                ))?;
                held.clear();
                std::thread::sleep(SETTLE);
                let base = proc.rss()?;
                let base_heap = proc.alloc_stats()?;
                for n in IDLE_COUNTS {
                    let limit = Duration::from_secs(60);
                    rt.block_on(client::hold(proc.addr, n as usize, &mut held, limit))?;
                    std::thread::sleep(SETTLE);
                    let rss = proc.rss()?;
                    let heap = proc.alloc_stats()?;
                    let per = |now: u64, then: u64| (now as f64 - then as f64) / n as f64;
                    per_conn.push(IdleSample {
                        n,
                        rss: per(rss, base),
                        heap_bytes: per(heap.live_bytes, base_heap.live_bytes),
                        heap_blocks: per(heap.live_blocks, base_heap.live_blocks),
                    });
                }
                let exit = proc.exit()?;
                // The kernel's share of a shutdown: closing as many sockets
                // on this side.
                let start = Instant::now();
                drop(held);
                client_close = Some(start.elapsed());
                Ok(exit.shutdown)
            })();
            let m = mode.name();
            for s in &per_conn {
                res.put(
                    "idle-memory",
                    "RSS/conn",
                    "B",
                    Some(s.n),
                    m,
                    round,
                    Some(s.rss),
                );
            }
            // Heap figures say where the RSS goes; threads' stacks are not heap.
            for s in per_conn.iter().filter(|_| mode != Mode::ThreadEcho) {
                let (n, bytes, blocks) = (Some(s.n), Some(s.heap_bytes), Some(s.heap_blocks));
                res.put("idle-memory", "heap live/conn", "B", n, m, round, bytes);
                res.put(
                    "idle-memory",
                    "heap blocks/conn",
                    "blocks",
                    n,
                    m,
                    round,
                    blocks,
                );
            }
            match outcome {
                Ok(shutdown) if mode.is_switchboard() => {
                    let ms = shutdown.as_secs_f64() * 1e3;
                    res.put(
                        "shutdown",
                        "trigger to run() end",
                        "ms",
                        Some(top),
                        m,
                        round,
                        Some(ms),
                    );
                    let close_ms = client_close.map(|d| d.as_secs_f64() * 1e3);
                    let metric = "client close() of all";
                    res.put(
                        "shutdown",
                        metric,
                        "ms",
                        Some(top),
                        "load generator",
                        round,
                        close_ms,
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    res.note(format!(
                        "idle-memory round {} {}: {e}",
                        round + 1,
                        mode.name()
                    ));
                    for n in IDLE_COUNTS.iter().skip(per_conn.len()) {
                        res.put(
                            "idle-memory",
                            "RSS/conn",
                            "B",
                            Some(*n),
                            mode.name(),
                            round,
                            None,
                        );
                    }
                    if mode.is_switchboard() {
                        res.put(
                            "shutdown",
                            "trigger to run() end",
                            "ms",
                            Some(top),
                            mode.name(),
                            round,
                            None,
                        );
                    }
                }
            }
        }
    }
    for n in IDLE_COUNTS {
        for den in [Mode::LeanEcho, Mode::TokioEcho, Mode::ThreadEcho] {
            let sb = Mode::SbEcho.name();
            res.ratio(
                "idle-memory",
                "RSS/conn",
                Some(n),
                sb,
                den.name(),
                Compare::Ratio,
            );
        }
        let sb = Mode::SbEcho.name();
        let lean = Mode::LeanEcho.name();
        res.ratio(
            "idle-memory",
            "heap live/conn",
            Some(n),
            sb,
            lean,
            Compare::Difference,
        );
        res.ratio(
            "idle-memory",
            "heap blocks/conn",
            Some(n),
            sb,
            lean,
            Compare::Difference,
        );
    }
}

/// Idle memory at one connection count, per connection.
struct IdleSample {
    n: u64,
    rss: f64,
    heap_bytes: f64,
    heap_blocks: f64,
}

/// A counted load: `clients` connections, `small` then `large` operations.
struct Counted {
    scenario: &'static str,
    metric: &'static str,
    workload: Workload,
    servers: &'static [Mode],
    /// One client means lock step: a pause after each operation, so that
    /// every operation takes the same path through the server.
    clients: usize,
    small: u64,
    large: u64,
}

impl Counted {
    /// `ops` operations within `limit`, in lock step for one client.
    fn budget(&self, ops: u64, limit: Duration) -> Budget {
        let budget = Budget::counted(ops, limit);
        if self.clients == 1 {
            budget.paced(PACE)
        } else {
            budget
        }
    }
}

const ALLOC_LOADS: [Counted; 4] = [
    Counted {
        scenario: "allocations",
        metric: "per connection",
        workload: Workload::Churn,
        servers: &[Mode::SbHello, Mode::TokioHello],
        clients: CLIENTS,
        small: 1_000,
        large: 3_000,
    },
    // The same in lock step: what the code allocates, without the share of
    // tokio's that varies with timing under load (its I/O driver allocates
    // a fresh list of released registrations after each batch it frees, so
    // the more often it turns, the more it allocates).
    Counted {
        scenario: "allocations",
        metric: "per connection, lock step",
        workload: Workload::Churn,
        servers: &[Mode::SbHello, Mode::TokioHello],
        clients: 1,
        small: 200,
        large: 600,
    },
    Counted {
        scenario: "allocations",
        metric: "per echo round trip",
        workload: Workload::Echo,
        servers: &[Mode::SbEcho, Mode::LeanEcho, Mode::TokioEcho],
        clients: CLIENTS,
        small: 5_000,
        large: 15_000,
    },
    Counted {
        scenario: "allocations",
        metric: "per HTTP request",
        workload: Workload::Http,
        servers: &[Mode::SbHello, Mode::TokioHello, Mode::HyperHello],
        clients: CLIENTS,
        small: 5_000,
        large: 15_000,
    },
];

/// Callgrind runs ~50x slower: small loads. One client in lock step with a
/// pause after each operation, so that every operation takes the same path
/// through the server: with more clients, or none, how many events one
/// wake-up handles, and whether a read after a response finds the next
/// request already there, depend on timing, and the counts vary by tens of
/// percent from run to run.
const INSTR_LOADS: [Counted; 4] = [
    Counted {
        scenario: "instructions",
        metric: "per connection",
        workload: Workload::Churn,
        servers: &[Mode::SbHello, Mode::TokioHello],
        clients: 1,
        small: 80,
        large: 240,
    },
    Counted {
        scenario: "instructions",
        metric: "per echo round trip",
        workload: Workload::Echo,
        servers: &[Mode::SbEcho, Mode::LeanEcho, Mode::TokioEcho],
        clients: 1,
        small: 150,
        large: 450,
    },
    // The library's own cost on identical work: the naive echo's code run
    // by switchboard and by the hand-written loop.
    Counted {
        scenario: "instructions",
        metric: "per naive echo round trip",
        workload: Workload::Echo,
        servers: &[Mode::SbNaiveEcho, Mode::TokioEcho],
        clients: 1,
        small: 150,
        large: 450,
    },
    Counted {
        scenario: "instructions",
        metric: "per HTTP request",
        workload: Workload::Http,
        servers: &[Mode::SbHello, Mode::TokioHello, Mode::HyperHello],
        clients: 1,
        small: 150,
        large: 450,
    },
];

/// Allocations per operation: the difference of two runs of different
/// lengths, so that start-up and the fixed set of connections cancel out.
fn allocations(cfg: &Config, rt: &Runtime, res: &mut Results) {
    for load in &ALLOC_LOADS {
        for (round, mode) in rounds(cfg, load.servers) {
            eprintln!(
                "allocations {} round {}: {}",
                load.metric,
                round + 1,
                mode.name()
            );
            let run = |ops| -> Result<AllocCount, String> {
                let mut proc = ServerProc::start(&Launch::native(mode))?;
                let budget = load.budget(ops, Duration::from_secs(60));
                let done = rt.block_on(load.workload.run(proc.addr, load.clients, budget));
                exact(&done, ops)?;
                std::thread::sleep(SETTLE);
                let allocs = proc.alloc_stats()?;
                proc.exit()?;
                Ok(allocs)
            };
            let ops = (load.large - load.small) as f64;
            let diff = run(load.small).and_then(|a| Ok((a, run(load.large)?)));
            // Reallocations count: each is an allocator call that may move.
            let calls = diff.clone().map(|(a, b)| {
                ((b.allocs + b.reallocs) as f64 - (a.allocs + a.reallocs) as f64) / ops
            });
            let bytes = diff.map(|(a, b)| (b.bytes as f64 - a.bytes as f64) / ops);
            record_counted(res, load, load.metric, mode, round, "allocs", calls);
            record_counted(
                res,
                load,
                bytes_metric(load.metric),
                mode,
                round,
                "B",
                bytes,
            );
        }
        add_counted_ratios(res, load, load.metric);
        add_counted_ratios(res, load, bytes_metric(load.metric));
    }
}

/// Instructions per operation in the server, under callgrind: the
/// difference of two runs of different lengths.
fn instructions(cfg: &Config, rt: &Runtime, res: &mut Results) {
    if !proc::have("valgrind") {
        res.note("valgrind not installed: instruction counts skipped".to_owned());
        return;
    }
    let dir = target_dir().join("bench").join("callgrind");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        res.note(format!(
            "instructions skipped: create {}: {e}",
            dir.display()
        ));
        return;
    }
    for load in &INSTR_LOADS {
        for (round, mode) in rounds(cfg, load.servers) {
            let (r, m) = (round + 1, mode.name());
            eprintln!("instructions {} round {r}: {m} (callgrind)", load.metric);
            let run = |ops: u64| -> Result<f64, String> {
                let kind = load.metric.replace(' ', "-");
                let out = dir.join(format!("{}.{kind}.{ops}.out", mode.name()));
                let launch = Launch {
                    mode,
                    // One thread: counts that repeat run to run.
                    threads: 0,
                    callgrind_out: Some(out.clone()),
                    accept_tasks: None,
                    cpus: Vec::new(),
                };
                let proc = ServerProc::start(&launch)?;
                let budget = load.budget(ops, Duration::from_secs(120));
                let done = rt.block_on(load.workload.run(proc.addr, load.clients, budget));
                exact(&done, ops)?;
                proc.exit()?;
                Ok(proc::callgrind_total(&out)? as f64)
            };
            let per_op = run(load.small).and_then(|a| {
                let b = run(load.large)?;
                Ok((b - a) / (load.large - load.small) as f64)
            });
            record_counted(res, load, load.metric, mode, round, "instr", per_op);
        }
        add_counted_ratios(res, load, load.metric);
    }
}

fn record_counted(
    res: &mut Results,
    load: &Counted,
    metric: &'static str,
    mode: Mode,
    round: usize,
    unit: &'static str,
    v: Result<f64, String>,
) {
    match v {
        Ok(v) => res.put(
            load.scenario,
            metric,
            unit,
            None,
            mode.name(),
            round,
            Some(v),
        ),
        Err(e) => {
            let m = mode.name();
            res.note(format!(
                "{} {metric} round {} {m}: {e}",
                load.scenario,
                round + 1
            ));
            res.put(load.scenario, metric, unit, None, m, round, None);
        }
    }
}

fn add_counted_ratios(res: &mut Results, load: &Counted, metric: &'static str) {
    let (first, rest) = load.servers.split_first().expect("servers listed");
    for other in rest {
        let kind = if load.scenario == "allocations" {
            Compare::Difference
        } else {
            Compare::Ratio
        };
        res.ratio(
            load.scenario,
            metric,
            None,
            first.name(),
            other.name(),
            kind,
        );
    }
}

/// The name of the allocated-bytes row that goes with an allocations row.
fn bytes_metric(metric: &'static str) -> &'static str {
    match metric {
        "per connection" => "bytes per connection",
        "per connection, lock step" => "bytes per connection, lock step",
        "per echo round trip" => "bytes per round trip",
        _ => "bytes per HTTP request",
    }
}

impl Launch {
    fn native(mode: Mode) -> Launch {
        Launch {
            mode,
            threads: THREADS,
            callgrind_out: None,
            accept_tasks: None,
            cpus: Vec::new(),
        }
    }
}

/// A timed load's errors: a few are noted, many fail the round.
pub(crate) fn checked(load: &Load) -> Result<(), String> {
    if load.ops == 0 {
        return Err(load
            .problem()
            .unwrap_or_else(|| "no operation completed".to_owned()));
    }
    if load.errors as f64 > MAX_ERROR_RATE * (load.ops + load.errors) as f64 {
        return Err(load.problem().unwrap_or_default());
    }
    if let Some(p) = load.problem() {
        eprintln!("  warning: {p}");
    }
    Ok(())
}

/// A counted load must have done exactly what was asked.
fn exact(load: &Load, ops: u64) -> Result<(), String> {
    if load.ops != ops || load.errors != 0 {
        return Err(format!(
            "{} of {ops} operations done{}",
            load.ops,
            load.problem().map(|p| format!("; {p}")).unwrap_or_default()
        ));
    }
    Ok(())
}

/// Every (round, server) pair, servers in each round's rotated order.
fn rounds(cfg: &Config, servers: &[Mode]) -> Vec<(usize, Mode)> {
    (0..cfg.rounds)
        .flat_map(|round| rotated(servers, round).into_iter().map(move |m| (round, m)))
        .collect()
}

/// The servers in the order of this round: rotated by one each round.
pub(crate) fn rotated<T: Copy>(servers: &[T], round: usize) -> Vec<T> {
    let mut order = servers.to_vec();
    order.rotate_left(round % servers.len());
    order
}

/// `wrk -t2 -c64` for `secs`, bounded; its requests per second.
fn run_wrk(addr: SocketAddr, measure: Duration) -> Result<f64, String> {
    let secs = measure.as_secs().max(1);
    let mut child = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            &format!("http://{addr}/"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("wrk: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("wrk did not finish in time".to_owned());
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut text);
    }
    if text.contains("Non-2xx") {
        return Err(format!("wrk saw non-2xx responses: {text}"));
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"))
}

/// Where build outputs go: `CARGO_TARGET_DIR`, else the directory this
/// binary was built in (`<target>/release/deps/..`), else `./target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn meta(cfg: &Config, took: Duration) -> Vec<(&'static str, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    vec![
        (
            "unix_time",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
        ),
        ("cpu", cpu),
        (
            "cpus",
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        (
            "kernel",
            read("/proc/sys/kernel/osrelease").trim().to_owned(),
        ),
        ("rounds", cfg.rounds.to_string()),
        ("measure_secs", cfg.measure.as_secs_f64().to_string()),
        ("clients", CLIENTS.to_string()),
        ("server_threads", THREADS.to_string()),
        ("took_secs", format!("{:.0}", took.as_secs_f64())),
    ]
}
