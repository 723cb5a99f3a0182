//! The `metrics` feature: a server's counters, gauge and duration histogram
//! as a Prometheus recorder renders them, checked against the server's own
//! report, with the labels of each listener.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use common::{WAIT, within};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use switchboard::{Addr, Connection, Server, StatsSnapshot, handler_fn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The idle timeout. Every client writes its command in the poll that
/// connects it, so only the connection told to go idle waits on its peer.
const IDLE: Duration = Duration::from_millis(500);

/// The duration histogram's bucket bounds, in seconds.
const BUCKETS: [f64; 2] = [0.25, 60.0];

/// The recorder of this test binary (a global recorder can be installed
/// once per process).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("bucket bounds")
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// One line of the Prometheus text: name, sorted labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of the rendered text whose names start with `switchboard_`.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("switchboard_") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value on every line");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("closed labels")),
            None => (series, ""),
        };
        // Label values here (addresses, kinds, bounds) hold no comma or quote.
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("key=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.push((name.to_owned(), labels, value));
    }
    out
}

/// The samples of the listener at `addr`, as `name{other labels}` → value.
fn of_listener(samples: &[Sample], addr: &Addr) -> BTreeMap<String, f64> {
    let addr = addr.to_string();
    samples
        .iter()
        .filter(|(_, labels, _)| labels.get("listener") == Some(&addr))
        .map(|(name, labels, value)| {
            let others: Vec<String> = labels
                .iter()
                .filter(|(k, _)| *k != "listener")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (format!("{name}{{{}}}", others.join(",")), *value)
        })
        .collect()
}

/// What the counters and the gauge of a listener must read, from its
/// snapshot.
fn expected(s: &StatsSnapshot) -> BTreeMap<String, f64> {
    let mut e = BTreeMap::new();
    let mut put = |name: &str, value: u64| {
        e.insert(name.to_owned(), value as f64);
    };
    put("switchboard_connections_accepted_total{}", s.accepted);
    put("switchboard_connections_completed_total{}", s.completed);
    put("switchboard_connections_failed_total{}", s.failed);
    put("switchboard_connections_panicked_total{}", s.panicked);
    put(
        "switchboard_connections_timed_out_total{kind=idle}",
        s.timed_out_idle,
    );
    put(
        "switchboard_connections_timed_out_total{kind=first_read}",
        s.timed_out_first_read,
    );
    put(
        "switchboard_connections_timed_out_total{kind=max_age}",
        s.timed_out_max_age,
    );
    put(
        "switchboard_connections_timed_out_total{kind=overload}",
        s.timed_out_overload,
    );
    put("switchboard_connections_aborted_total{}", s.aborted);
    #[cfg(feature = "proxy-protocol")]
    put(
        "switchboard_connections_proxy_rejected_total{}",
        s.proxy_rejected,
    );
    #[cfg(feature = "tls")]
    put("switchboard_connections_tls_failed_total{}", s.tls_failed);
    put("switchboard_connections_rejected_total{}", s.rejected);
    put(
        "switchboard_connections_backlog_closed_total{}",
        s.backlog_closed,
    );
    put("switchboard_accept_errors_total{}", s.accept_errors);
    put("switchboard_connections_active{}", s.active);
    e
}

/// The histogram's own samples, taken out of `samples`.
fn take_histogram(samples: &mut BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let names: Vec<String> = samples
        .keys()
        .filter(|k| k.starts_with("switchboard_connection_duration_seconds"))
        .cloned()
        .collect();
    names
        .into_iter()
        .map(|k| {
            let v = samples.remove(&k).expect("listed");
            (k, v)
        })
        .collect()
}

/// Serves one command line: `ok`, `fail`, `panic`, `idle` (wait for more,
/// until the idle timeout), `hold` (answer, then wait for the shutdown).
async fn serve(conn: Connection) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    match line.trim_end() {
        "ok" => Ok(()),
        "fail" => Err(std::io::Error::other("told to fail")),
        "panic" => panic!("told to panic"),
        "idle" => {
            conn.read_line(&mut line).await?;
            Ok(())
        }
        "hold" => {
            conn.write_all(b"held\n").await?;
            conn.get_ref().shutdown_requested().await;
            Ok(())
        }
        other => Err(std::io::Error::other(format!("unknown command {other:?}"))),
    }
}

/// Connects to `addr` and sends `command` at once.
async fn send(addr: std::net::SocketAddr, command: &str) -> TcpStream {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connects");
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .expect("sends the command");
    stream
}

/// Waits (bounded) for the server to close `stream`; a reset counts too.
async fn closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = within("the server to close", stream.read_to_end(&mut rest)).await;
}

/// How many threads of this process are named like the publisher's (the
/// kernel keeps the first 15 bytes of a thread's name).
#[cfg(target_os = "linux")]
fn publishers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "switchboard-met")
        .count()
}

/// Waits (bounded) until `publishers()` is `n`: a thread's exit is not
/// announced to the process, so this looks every millisecond for up to 5 s.
#[cfg(target_os = "linux")]
async fn publishers_become(n: usize) {
    for _ in 0..5_000 {
        if publishers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(publishers(), n, "metrics publisher threads");
}

/// Every listener's counters, gauge and duration histogram are published
/// under its address, and after `run` they equal its final counters.
/// The server is built before the recorder is installed: what counts is
/// the recorder installed when `run` starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_metrics_equal_the_report() {
    let handler = handler_fn(serve);
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .handler(handler)
        .idle_timeout(IDLE)
        .max_connections_per_ip(2)
        .build()
        .await
        .expect("server builds");
    let prometheus = recorder();
    let addrs = server.local_addrs();
    let tcp: Vec<_> = addrs.iter().map(|a| a.as_tcp().expect("TCP")).collect();
    let running = common::run(server);
    let (first, second) = (tcp[0], tcp[1]);

    for command in ["ok", "ok", "fail", "fail", "panic"] {
        closed(&mut send(first, command).await).await;
    }
    closed(&mut send(second, "ok").await).await;
    closed(&mut send(first, "idle").await).await;
    // Two held connections take the address's two places: a third is
    // rejected, closed at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = BufReader::new(send(first, "hold").await);
        let mut answer = String::new();
        within("a held connection's answer", stream.read_line(&mut answer))
            .await
            .expect("reads the answer");
        assert_eq!(answer, "held\n", "a held connection is served");
        held.push(stream);
    }
    let mut rejected = within("connect", TcpStream::connect(first))
        .await
        .expect("connects");
    closed(&mut rejected).await;

    // While the server runs: the publisher's next tick shows the two held
    // connections as active, and the rejected one.
    let started = tokio::time::Instant::now();
    loop {
        let now = samples(&prometheus.render());
        let now = of_listener(&now, &addrs[0]);
        let active = now.get("switchboard_connections_active{}").copied();
        let rejected = now.get("switchboard_connections_rejected_total{}").copied();
        if (active, rejected) == (Some(2.0), Some(1.0)) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "after {WAIT:?}, active {active:?} and rejected {rejected:?}, not 2 and 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[cfg(target_os = "linux")]
    assert_eq!(publishers(), 1, "one publisher thread while `run` runs");
    let report = running.stop().await;
    let text = prometheus.render();
    let all = samples(&text);
    for (addr, stats) in &report.by_listener {
        let mut published = of_listener(&all, addr);
        let histogram = take_histogram(&mut published);
        assert_eq!(
            published,
            expected(stats),
            "{addr}'s counters and gauge, in\n{text}"
        );
        let ended = stats.accepted as f64;
        assert_eq!(
            histogram.get("switchboard_connection_duration_seconds_count{}"),
            Some(&ended),
            "{addr}: one duration per connection, in\n{text}"
        );
        assert_eq!(
            histogram.get("switchboard_connection_duration_seconds_bucket{le=+Inf}"),
            Some(&ended),
            "{addr}: every duration under +Inf, in\n{text}"
        );
    }

    // The traffic is what the test made it.
    let (one, two) = (&report.by_listener[0].1, &report.by_listener[1].1);
    assert_eq!(
        (one.completed, one.failed, one.panicked, one.timed_out_idle),
        (4, 2, 1, 1),
        "first listener: ok ×2 and hold ×2, fail ×2, panic, idle"
    );
    assert_eq!((one.rejected, one.active), (1, 0));
    assert_eq!((two.accepted, two.completed), (1, 1));
    // The idle connection lasted the idle timeout at least; the others on
    // the second listener less than a minute.
    let first = of_listener(&all, &addrs[0]);
    let sum = first["switchboard_connection_duration_seconds_sum{}"];
    assert!(
        sum >= IDLE.as_secs_f64(),
        "the durations add up to {sum} s, less than the idle connection's {IDLE:?}"
    );
    let under_a_minute = first["switchboard_connection_duration_seconds_bucket{le=60}"];
    assert_eq!(
        under_a_minute, one.accepted as f64,
        "every duration under 60 s"
    );

    // The exposition's descriptions, with the units.
    for needle in [
        "# TYPE switchboard_connections_accepted_total counter",
        "# TYPE switchboard_connections_active gauge",
        "# TYPE switchboard_connection_duration_seconds histogram",
        "# HELP switchboard_connections_timed_out_total Connections closed by a timeout",
        "# HELP switchboard_connection_duration_seconds How long connections lasted",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    drop(held);

    // The publisher's thread ends with `run`, and with its dropped future.
    #[cfg(target_os = "linux")]
    {
        publishers_become(0).await;
        let dropped = common::start(common::noop(), |b| b).await;
        publishers_become(1).await;
        dropped.task.abort();
        let _ = within("the aborted run", dropped.task).await;
        publishers_become(0).await;
    }
}
