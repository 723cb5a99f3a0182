//! Running out of file descriptors neither kills nor spins the accept loop.
//!
//! A test binary of its own: it lowers this process's descriptor limit
//! (RLIMIT_NOFILE, through util-linux's `prlimit`) and installs a global log
//! subscriber, both of which would disturb other tests.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use common::{
    Logs, assert_echoes, fill_descriptor_table, nofile_limits, open_descriptors, set_nofile, start,
    within,
};
use switchboard::{Connection, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// This process's CPU time (user + system) so far, read through a handle
/// opened before the descriptor table was filled.
fn cpu_time(stat_file: &mut File) -> Duration {
    use std::io::{Read, Seek};
    let mut stat = String::new();
    stat_file.rewind().unwrap();
    stat_file
        .read_to_string(&mut stat)
        .expect("/proc/self/stat");
    // The command name in field 2 may hold spaces: count fields after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm field")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux for every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_and_recovers_by_itself() {
    let logs = Logs::install(tracing::Level::INFO);

    let running = start(
        handler_fn(|mut conn: Connection| async move {
            let mut buf = [0u8; 16];
            let n = conn.read(&mut buf).await?;
            conn.write_all(&buf[..n]).await?;
            Ok::<_, io::Error>(())
        }),
        |b| b,
    )
    .await;
    let mut stat_file = File::open("/proc/self/stat").unwrap();
    let (soft, hard) = nofile_limits();
    set_nofile(open_descriptors() as u64 + 40, hard);

    // Fill the descriptor table, then free exactly one for the client's
    // socket: the server's accept then finds none for its side.
    let mut filler = fill_descriptor_table();
    filler.pop();
    let mut client = within(
        "connect (the kernel completes it)",
        TcpStream::connect(running.addr),
    )
    .await
    .unwrap();
    within("the server's first failed accept", async {
        while running.stats.snapshot().accept_errors == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // The exhaustion window: the server must neither stop nor spin.
    const WINDOW: Duration = Duration::from_secs(2);
    let (cpu_before, errors_before) = (
        cpu_time(&mut stat_file),
        running.stats.snapshot().accept_errors,
    );
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await; // the window being measured, not a synchronisation
    let (cpu_used, attempts) = (
        cpu_time(&mut stat_file) - cpu_before,
        running.stats.snapshot().accept_errors - errors_before,
    );
    println!(
        "descriptor exhaustion: {attempts} accept attempts and {cpu_used:?} of process CPU time in {:?}",
        started.elapsed()
    );
    // Backing off 5 ms, 10 ms, ... up to 1 s between attempts: about ten
    // attempts in two seconds. A spinning loop would make millions and burn
    // a whole core.
    assert!(
        attempts <= 15,
        "{attempts} accept attempts in {WINDOW:?}: spinning"
    );
    assert!(
        cpu_used < Duration::from_millis(300),
        "{cpu_used:?} of CPU in {WINDOW:?}"
    );
    assert!(!running.task.is_finished(), "the server kept running");

    // Free the descriptors: the server accepts again by itself (its next
    // attempt is at most a second away) and serves the waiting client.
    drop(filler);
    set_nofile(soft, hard);
    assert_echoes("the waiting client to be served", &mut client, b"back").await;
    // A new client is served too: a round trip, not just a connect, which
    // the kernel's backlog would answer even with accepting stuck.
    let mut fresh = within("a new client", TcpStream::connect(running.addr))
        .await
        .unwrap();
    assert_echoes("the new client to be served", &mut fresh, b"anew").await;
    drop(fresh);

    let report = running.stop().await;
    assert_eq!(report.accepted, 2);
    assert_eq!(
        logs.lines_with("out of resources").len(),
        1,
        "one warning per episode"
    );
    assert_eq!(
        logs.lines_with("accepting again after resource exhaustion")
            .len(),
        1
    );
}
