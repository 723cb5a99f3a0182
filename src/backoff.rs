//! Accept-error classification and backoff.
//!
//! `accept(2)` fails for three very different reasons, and a server must treat
//! them differently to neither die nor spin:
//!
//! * the connection died in the backlog (aborted, reset, ...): skip it and
//!   accept the next one at once;
//! * the process or the system ran out of something (descriptors, buffers,
//!   memory): accepting again at once fails again at once, so wait, doubling
//!   the wait from a few milliseconds up to a second, until an accept works;
//! * anything else means the listener itself is broken: stop.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

/// What an accept loop does next, after [`Backoff::on_error`] handled an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Accept again: the error cost one connection only, or the backoff's
    /// wait is over.
    Accept,
    /// The loop's stop signal completed during the backoff's wait.
    Stop,
}

/// What to do about an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// Only that one connection is lost: accept again at once.
    Connection,
    /// Out of a resource: back off before accepting again.
    Resources,
    /// The listener cannot go on.
    Fatal,
}

fn classify(err: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        | TimedOut | BrokenPipe | NotConnected => return AcceptError::Connection,
        OutOfMemory => return AcceptError::Resources,
        _ => {}
    }
    match err.raw_os_error() {
        Some(code) if is_resource_exhaustion(code) => AcceptError::Resources,
        // Linux reports network errors of the half-made connection through
        // accept (see accept(2), "Error handling"): treat them like a reset.
        Some(code) if is_pending_network_error(code) => AcceptError::Connection,
        _ => AcceptError::Fatal,
    }
}

#[cfg(unix)]
fn is_resource_exhaustion(code: i32) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux; the values come
    // from the io::Error mapping so that no libc dependency is needed.
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOMEM: i32 = 12;
    #[cfg(target_os = "linux")]
    const ENOBUFS: i32 = 105;
    #[cfg(not(target_os = "linux"))]
    const ENOBUFS: i32 = 55;
    matches!(code, EMFILE | ENFILE | ENOBUFS | ENOMEM)
}

#[cfg(not(unix))]
fn is_resource_exhaustion(code: i32) -> bool {
    // WSAEMFILE, WSAENOBUFS
    matches!(code, 10024 | 10055)
}

#[cfg(target_os = "linux")]
fn is_pending_network_error(code: i32) -> bool {
    // ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH,
    // EOPNOTSUPP, ENETUNREACH; and what accept(2) lists for one connection:
    // EPERM (firewall rules forbid it), ENOSR, ESOCKTNOSUPPORT,
    // EPROTONOSUPPORT.
    matches!(
        code,
        100 | 71 | 92 | 112 | 64 | 113 | 95 | 101 | 1 | 63 | 94 | 93
    )
}

#[cfg(not(target_os = "linux"))]
fn is_pending_network_error(_code: i32) -> bool {
    false
}

/// An accept loop's handling of accept errors: classification, and
/// exponential backoff for resource exhaustion. The server's listeners and
/// the handover control socket use the same one.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    /// Whether the current run of failures has been reported: one `warn` per
    /// episode, not per attempt.
    episode_reported: bool,
}

impl Backoff {
    pub(crate) const MIN: Duration = Duration::from_millis(5);
    pub(crate) const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Backoff {
            next: Self::MIN,
            episode_reported: false,
        }
    }

    /// The step after an accept failed with `err`: a connection lost in the
    /// backlog is skipped (logged at `debug`); out of resources, it waits
    /// the next delay or until `stop` completes, whichever is first (one
    /// `warn` per episode); any other error is handed back, for the caller
    /// to log and end its loop with. `addr` names the socket in the
    /// logs.
    ///
    /// An accepted connection ends the episode: call [`Backoff::reset`].
    ///
    /// # Errors
    ///
    /// `err` itself, when it means the listener cannot go on.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped during the wait, nothing is lost; the episode
    /// goes on, and the next wait is the longer one.
    pub(crate) async fn on_error(
        &mut self,
        err: io::Error,
        addr: &(dyn fmt::Display + Sync),
        stop: impl Future<Output = ()>,
    ) -> io::Result<Resume> {
        match classify(&err) {
            AcceptError::Connection => {
                tracing::debug!(%addr, error = %err, "accept: connection lost before accept, skipped");
                Ok(Resume::Accept)
            }
            AcceptError::Resources => {
                let delay = self.next_delay();
                if self.begin_episode() {
                    tracing::warn!(
                        %addr,
                        error = %err,
                        "accept: out of resources, backing off (up to {:?} between attempts) until it works",
                        Self::MAX,
                    );
                }
                tokio::select! {
                    biased;
                    () = stop => Ok(Resume::Stop),
                    () = tokio::time::sleep(delay) => Ok(Resume::Accept),
                }
            }
            AcceptError::Fatal => Err(err),
        }
    }

    /// The delay before the next attempt; doubles up to [`Backoff::MAX`].
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Returns `true` the first time it is called in an episode.
    fn begin_episode(&mut self) -> bool {
        !std::mem::replace(&mut self.episode_reported, true)
    }

    /// Whether an episode of failures is under way.
    pub(crate) fn in_episode(&self) -> bool {
        self.episode_reported
    }

    /// An accept worked: the episode is over.
    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
        self.episode_reported = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        let kind = |k| classify(&io::Error::from(k));
        assert_eq!(
            kind(io::ErrorKind::ConnectionAborted),
            AcceptError::Connection
        );
        assert_eq!(
            kind(io::ErrorKind::ConnectionReset),
            AcceptError::Connection
        );
        assert_eq!(kind(io::ErrorKind::Interrupted), AcceptError::Connection);
        let os = |c| classify(&io::Error::from_raw_os_error(c));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(os(24), AcceptError::Resources, "EMFILE");
            assert_eq!(os(23), AcceptError::Resources, "ENFILE");
            assert_eq!(os(105), AcceptError::Resources, "ENOBUFS");
            assert_eq!(os(12), AcceptError::Resources, "ENOMEM");
            assert_eq!(os(71), AcceptError::Connection, "EPROTO");
            assert_eq!(
                os(1),
                AcceptError::Connection,
                "EPERM: a firewall refused one connection"
            );
            assert_eq!(os(9), AcceptError::Fatal, "EBADF");
            assert_eq!(os(22), AcceptError::Fatal, "EINVAL");
        }
        let _ = os;
    }

    #[tokio::test(start_paused = true)]
    async fn on_error_skips_waits_or_gives_the_error_back() {
        let mut b = Backoff::new();
        let never = std::future::pending::<()>;
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        let started = tokio::time::Instant::now();
        let resumed = b.on_error(aborted, &"test", never()).await;
        assert_eq!(resumed.ok(), Some(Resume::Accept));
        assert_eq!(started.elapsed(), Duration::ZERO, "a lost connection waits");
        assert!(!b.in_episode(), "a lost connection began an episode");

        let out_of_memory = || io::Error::from(io::ErrorKind::OutOfMemory);
        let resumed = b.on_error(out_of_memory(), &"test", never()).await;
        assert_eq!(resumed.ok(), Some(Resume::Accept));
        assert_eq!(started.elapsed(), Backoff::MIN);
        assert!(b.in_episode());
        let resumed = b.on_error(out_of_memory(), &"test", async {}).await;
        assert_eq!(resumed.ok(), Some(Resume::Stop));
        assert_eq!(started.elapsed(), Backoff::MIN, "stopped, yet it waited");

        let fatal = io::Error::from(io::ErrorKind::InvalidInput);
        let given_back = b.on_error(fatal, &"test", never()).await;
        assert_eq!(
            given_back.map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        assert!(b.begin_episode());
        assert!(!b.begin_episode());
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Backoff::MIN);
        assert_eq!(delays[1], Backoff::MIN * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap_or(&Duration::ZERO), Backoff::MAX);
        b.reset();
        assert!(!b.in_episode());
        assert_eq!(b.next_delay(), Backoff::MIN);
    }
}
