//! CPU time from `/proc`: a process's (`/proc/PID/stat`, the scale
//! scenario's servers) or a thread's (`/proc/thread-self/stat`, the
//! contention bench's threads). Shared by both benches.

use std::time::Duration;

/// The CPU time (user + system) used so far by what the `stat` file at
/// `path` describes.
pub(crate) fn cpu_time(path: &str) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    let ticks = stat_ticks(&stat).ok_or_else(|| format!("no utime/stime in {path}"))?;
    let hz = clock_ticks_per_second()?;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// `utime + stime` from a `/proc/.../stat` line, in clock ticks.
///
/// The second field, the command name in parentheses, may hold spaces and
/// parentheses itself, so the fields are counted from its last `)`: the
/// third field (state) comes right after it, `utime` and `stime` are the
/// 14th and 15th.
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> Result<u64, String> {
    match rustix::param::clock_ticks_per_second() {
        0 => Err("no clock tick rate".to_owned()),
        hz => Ok(hz),
    }
}

/// Elsewhere there is no `/proc` either.
#[cfg(not(target_os = "linux"))]
fn clock_ticks_per_second() -> Result<u64, String> {
    Err("only on Linux".to_owned())
}
