//! Starting a server process (natively or under callgrind), talking to it,
//! and reading its memory.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::server::{ACCEPT_TASKS_VAR, CPUS_VAR, MODE_VAR, Mode, THREADS_VAR};

/// A server running in a child process; killed when dropped.
pub(crate) struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub(crate) addr: SocketAddr,
    /// How long to wait for an answer: longer under valgrind.
    patience: Duration,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) mode: Mode,
    /// Runtime worker threads; 0 for a current-thread runtime.
    pub(crate) threads: usize,
    /// Run under `valgrind --tool=callgrind`, writing the profile here.
    pub(crate) callgrind_out: Option<PathBuf>,
    /// switchboard's accept tasks per listener; `None`: the default.
    pub(crate) accept_tasks: Option<usize>,
    /// The cores the server pins itself to; empty: not pinned.
    pub(crate) cpus: Vec<usize>,
}

/// Allocation counters a server reported.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AllocCount {
    pub(crate) allocs: u64,
    pub(crate) reallocs: u64,
    pub(crate) bytes: u64,
    /// Blocks allocated and not yet freed.
    pub(crate) live_blocks: u64,
    /// Bytes allocated and not yet freed.
    pub(crate) live_bytes: u64,
}

/// What a server said when it exited.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExitInfo {
    /// From the trigger to `run()` returning (switchboard servers only).
    pub(crate) shutdown: Duration,
}

impl ServerProc {
    /// Starts the server and waits (bounded) for its address.
    pub(crate) fn start(launch: &Launch) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = match &launch.callgrind_out {
            Some(out) => {
                let mut cmd = Command::new("valgrind");
                cmd.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(format!(
                        "--log-file={}",
                        out.with_extension("log").display()
                    ))
                    .arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.env(MODE_VAR, launch.mode.name())
            .env(THREADS_VAR, launch.threads.to_string());
        // Set or removed, never inherited: the bench's own environment may
        // name an accept-task count for the scale scenario's extra row only.
        for (var, value) in [
            (ACCEPT_TASKS_VAR, launch.accept_tasks.map(|n| n.to_string())),
            (
                CPUS_VAR,
                (!launch.cpus.is_empty()).then(|| crate::scale::cpu_list(&launch.cpus)),
            ),
        ] {
            match value {
                Some(value) => cmd.env(var, value),
                None => cmd.env_remove(var),
            };
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", launch.mode.name()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        // A reader thread turns the blocking pipe into a channel that can be
        // waited on with a timeout.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let patience = if launch.callgrind_out.is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(20)
        };
        let mut proc = ServerProc {
            child,
            stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            patience,
        };
        let line = proc.expect_line("listening on ")?;
        proc.addr = line
            .parse()
            .map_err(|e| format!("bad address {line:?}: {e}"))?;
        Ok(proc)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's allocation counters now.
    pub(crate) fn alloc_stats(&mut self) -> Result<AllocCount, String> {
        self.send("stats")?;
        let line = self.expect_line("stats ")?;
        Ok(parse_allocs(&line))
    }

    /// Tells the server to exit (switchboard: graceful shutdown) and waits
    /// (bounded) for it to report and end.
    pub(crate) fn exit(mut self) -> Result<ExitInfo, String> {
        self.send("exit")?;
        let line = self.expect_line("exit ")?;
        let shutdown_ns: u64 = field(&line, "shutdown_ns").unwrap_or(0);
        let info = ExitInfo {
            shutdown: Duration::from_nanos(shutdown_ns),
        };
        self.stdin = None;
        let deadline = Instant::now() + self.patience;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(info),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return Err("server did not exit in time".to_owned()),
                Err(e) => return Err(format!("wait for server: {e}")),
            }
        }
    }

    /// The server's resident set size in bytes (`VmRSS`).
    pub(crate) fn rss(&self) -> Result<u64, String> {
        rss_of(self.pid())
    }

    fn send(&mut self, command: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("send {command:?} to server: {e}"))
    }

    /// Waits for the next line starting with `prefix`, returns the rest.
    fn expect_line(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + self.patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no {prefix:?} line from the server in time"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("server exited before saying {prefix:?}"));
                }
            }
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in bytes.
pub(crate) fn rss_of(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS in /proc status".to_owned())
}

/// The instruction total of a callgrind profile.
pub(crate) fn callgrind_total(path: &Path) -> Result<u64, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", path.display()))
}

/// Whether `program` is an executable file on `PATH`.
pub(crate) fn have(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn parse_allocs(line: &str) -> AllocCount {
    AllocCount {
        allocs: field(line, "allocs").unwrap_or(0),
        reallocs: field(line, "reallocs").unwrap_or(0),
        bytes: field(line, "bytes").unwrap_or(0),
        live_blocks: field(line, "live_blocks").unwrap_or(0),
        live_bytes: field(line, "live_bytes").unwrap_or(0),
    }
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}
