//! Zero-downtime restart: a running server hands its listening sockets to
//! the process that replaces it, over a Unix control socket with
//! `SCM_RIGHTS`.
//!
//! # The model
//!
//! A listening socket is a kernel object, not a number in one process: its
//! queue of connections waiting to be accepted belongs to the socket, and
//! every process holding a descriptor of it may accept from that queue. So a
//! restart needs no second bind and no moment without a listener: the
//! running server (the predecessor) passes duplicates of its descriptors to
//! the new process (the successor); for a while both accept from the same
//! queues; then the predecessor closes its copies and drains. The socket
//! stays open as long as one copy does, so no client is ever refused.
//!
//! ```text
//! predecessor: offer(control, sockets)        successor: take_over(control)
//!   accept a control connection  <────────── connect
//!   read REQUEST                 <────────── REQUEST
//!   send OFFER + descriptors     ──────────> check every descriptor, own them
//!                                            start accepting on them
//!   read READY, WATCH            <────────── Predecessor::ready: READY, WATCH
//!   handed_over(): stop accepting, drain
//!   send DONE                    ──────────> ready() returns
//!   stand by: keep the sockets
//!   read RELEASE                 <────────── Offering::finish (shutdown began)
//!   (or EOF: the successor is gone;
//!    serve on the sockets again)
//! ```
//!
//! Standing by: a successor may die right after it took over (a new
//! binary that crashes at start). So the predecessor keeps its copies of
//! the sockets and the control connection while it drains; the successor
//! keeps the connection open and says RELEASE when the predecessor is no
//! longer needed (its own shutdown began, or it handed over in turn). If
//! the connection closes without RELEASE before the predecessor's drain
//! ends, the predecessor serves on the sockets again.
//!
//! The control socket itself travels with the listeners, so the successor
//! offers them to *its* successor on the very same socket, without a rebind
//! and without a moment when the control path answers nobody.
//!
//! # The wire protocol, version 1
//!
//! Every message is an 8-byte header and a body of at most
//! [`MAX_DESCRIPTORS`](protocol::MAX_DESCRIPTORS) bytes:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `SBHO` |
//! | 4 | protocol version, `1` |
//! | 5 | message type: 1 REQUEST, 2 OFFER, 3 READY, 4 DONE, 5 REJECT, 6 WATCH, 7 RELEASE |
//! | 6..8 | body length, big-endian `u16` |
//!
//! Only OFFER has a body: one byte per descriptor sent with it as
//! `SCM_RIGHTS` ancillary data, in the same order (1 a TCP listener, 2 a
//! Unix listener, 3 the control listener, which comes last and only there).
//! REJECT answers a REQUEST of another version; its version field names the
//! version the running server speaks. WATCH (right after READY) and RELEASE
//! were added within version 1 so that either side may be older: an older
//! predecessor never reads them, and one that reads no WATCH after READY
//! (an older successor, which closes after DONE) does not stand by. The header layout is frozen across
//! versions so that such a mismatch can always be reported.
//!
//! # Failure policy
//!
//! Every read and write of a handover is bounded by the caller's timeout;
//! a malformed, unexpected or over-long message is an `InvalidData` error,
//! never a panic or a hang. Descriptors become owned values the moment they
//! are received, so every error path closes them; each one is checked (a
//! stream socket, listening, of the family its kind says) before it is
//! trusted. Only a process of the same user (or root) may take over: the
//! control file is made owner-only (`0o600`) before it listens and before
//! it appears at its path (in a private directory, so that no symlink can
//! redirect the `chmod`; see `socket_file`), and on each connection the
//! peer's credentials are checked as well.
//!
//! On the predecessor's side a failed handover (the successor vanished,
//! timed out, sent garbage, speaks another version) changes nothing: it is
//! logged at `warn` and the server keeps serving and offering. On the
//! successor's side every failure is an error of [`take_over`] or
//! [`Predecessor::ready`]; "nobody offers sockets at this path" is not one
//! ([`take_over`] returns `Ok(None)` and the caller binds as usual).

mod control;
mod inherited;
mod pair;
mod protocol;
#[cfg(all(test, target_os = "linux"))]
mod test_support;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UnixStream;

use crate::shutdown::Fired;
use crate::socket_file::FileId;

use control::{Control, Offered, Predecessor, TakeOver, offer, take_over};
use protocol::{Message, send_frame};

pub(crate) use control::Standby;
pub(crate) use inherited::Inherited;
pub(crate) use pair::{Wanted, pair};
pub(crate) use protocol::MAX_LISTENERS;

/// How long each step of a handover may take (connecting, the offer,
/// "ready", the confirmation).
pub(crate) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's part in restarts: the control socket it offers its listeners
/// on, and the predecessor it took them from, if any.
#[derive(Debug)]
pub(crate) struct Handover {
    control: Control,
    predecessor: Option<Predecessor>,
}

impl Handover {
    /// Takes the listeners of the server running with this control socket,
    /// if there is one; otherwise creates the control socket. The listeners
    /// come back in the predecessor's order.
    pub(crate) async fn acquire(path: &Path) -> io::Result<(Handover, Option<Vec<Inherited>>)> {
        match take_over(path, HANDOVER_TIMEOUT).await? {
            Some(TakeOver {
                listeners,
                control,
                predecessor,
            }) => {
                tracing::info!(
                    control = %path.display(),
                    listeners = listeners.len(),
                    "took over the listeners of the running server"
                );
                let handover = Handover {
                    control,
                    predecessor: Some(predecessor),
                };
                Ok((handover, Some(listeners)))
            }
            None => {
                let control = Control::bind(path, HANDOVER_TIMEOUT).await?;
                let handover = Handover {
                    control,
                    predecessor: None,
                };
                Ok((handover, None))
            }
        }
    }

    /// Once the server accepts on its listeners: tells the predecessor (if
    /// any) to drain, and offers `sockets` (duplicates of the listeners) to
    /// a successor until `stop` fires. A successor that takes them fires
    /// `stop` itself, after setting the keep flag of every socket file in
    /// `files` (its path and flag) so that this server leaves them in place
    /// for the successor.
    ///
    /// While a predecessor stands by, the flags are set too: if this server
    /// goes away without [`Offering::finish`], the predecessor serves on
    /// these sockets again and needs their files; `finish` removes them
    /// then instead, if they are still the files they were.
    ///
    /// If the control socket fails, the offer ends and the server serves on
    /// without seamless restarts; that is logged at `error` when it happens.
    pub(crate) fn start(
        self,
        sockets: Vec<Inherited>,
        files: Vec<(PathBuf, Arc<AtomicBool>)>,
        stop: &Arc<Fired>,
    ) -> Offering {
        let control = self.control.path().to_path_buf();
        tracing::debug!(control = %control.display(), "offering the listeners to a successor");
        let fire = Arc::clone(stop);
        let sent = Arc::new(AtomicBool::new(false));
        let keep = |keepers: &[Arc<AtomicBool>], keep: bool| {
            for keeper in keepers {
                keeper.store(keep, Ordering::Relaxed);
            }
        };
        let keepers: Vec<Arc<AtomicBool>> = files.iter().map(|(_, k)| Arc::clone(k)).collect();
        // The files as they are now, to be removed at `finish` only if they
        // still are.
        let standing_files = match &self.predecessor {
            Some(_) => {
                keep(&keepers, true);
                files
                    .iter()
                    .filter_map(|(path, _)| Some((path.clone(), FileId::of(path).ok()?)))
                    .collect()
            }
            None => Vec::new(),
        };
        // Once the sockets are sent, the successor may serve on them: keep
        // the Unix socket files even if this server stops first.
        let offered = {
            let (keepers, sent) = (keepers.clone(), Arc::clone(&sent));
            move || {
                sent.store(true, Ordering::Relaxed);
                keep(&keepers, true);
            }
        };
        let handed_over = move || {
            tracing::info!("listeners handed over to a successor; draining");
            fire.fire();
        };
        let offering = offer(
            self.control,
            sockets,
            HANDOVER_TIMEOUT,
            // The offer stops when shutdown begins, whoever triggered it; a
            // handover that triggered it runs on to its confirmation.
            Arc::clone(stop),
            offered,
            handed_over,
        );
        let offer = tokio::spawn(async move {
            let offered = offering.await;
            // Reported when it happens, not at shutdown: the server serves
            // on, and an operator must learn now that a restart would fail.
            if let Err(err) = &offered {
                tracing::error!(
                    control = %control.display(),
                    error = %err,
                    "handover control socket failed; restarts will not be seamless"
                );
            }
            offered
        });
        let link = self
            .predecessor
            .as_ref()
            .map(|predecessor| Arc::clone(&predecessor.stream));
        let ready = self.predecessor.map(|predecessor| {
            tokio::spawn(async move {
                match predecessor.ready().await {
                    Ok(()) => tracing::info!("the previous server stopped accepting and is draining"),
                    Err(err) => tracing::warn!(error = %err, "the previous server did not confirm the handover"),
                }
            })
        });
        Offering {
            offer: Some(offer),
            ready,
            predecessor: link.map(|stream| Standing {
                stream,
                files: standing_files,
                sent,
            }),
        }
    }
}

/// The tasks [`Handover::start`] spawned; dropping it (with the `run`
/// future, say) aborts them, so no copy of a listener outlives the server,
/// and closes the control connection to a predecessor standing by without
/// releasing it, so that it serves again.
#[derive(Debug)]
pub(crate) struct Offering {
    offer: Option<tokio::task::JoinHandle<io::Result<Offered>>>,
    ready: Option<tokio::task::JoinHandle<()>>,
    predecessor: Option<Standing>,
}

/// A predecessor that may be standing by for this server.
#[derive(Debug)]
struct Standing {
    stream: Arc<UnixStream>,
    /// This server's socket files, kept for the predecessor until it is
    /// released.
    files: Vec<(PathBuf, FileId)>,
    /// Whether the sockets went to a successor, which needs the files then.
    sent: Arc<AtomicBool>,
}

/// How [`Offering::finish`] found the offer.
#[derive(Debug)]
pub(crate) enum Finished {
    /// The server's own shutdown ended it.
    Stopped,
    /// A successor took the listeners over; with a [`Standby`] if the
    /// successor asked this server to stand by.
    HandedOver(Option<Standby>),
}

impl Offering {
    /// Once shutdown has begun (the offer ends with it): whether the
    /// listeners were handed over. A confirmation still awaited from a
    /// predecessor is given up rather than waited for, and a predecessor
    /// standing by is released: this server's shutdown is deliberate.
    pub(crate) async fn finish(mut self) -> Finished {
        if let Some(ready) = self.ready.take() {
            ready.abort();
            // It logs its own result if it had one.
            let _ = ready.await;
        }
        if let Some(standing) = self.predecessor.take() {
            standing.release().await;
        }
        let Some(offer) = self.offer.take() else {
            return Finished::Stopped;
        };
        match offer.await {
            Ok(Ok(Offered::HandedOver(standby))) => Finished::HandedOver(standby),
            Ok(Ok(Offered::Stopped)) => Finished::Stopped,
            // The task logged it when it happened.
            Ok(Err(_)) => Finished::Stopped,
            Err(join) => {
                tracing::error!(error = %join, "the handover task ended abnormally");
                Finished::Stopped
            }
        }
    }
}

impl Standing {
    /// Tells the predecessor that it need not stand by any longer (best
    /// effort: it may be gone already), and removes this server's socket
    /// files (kept for the predecessor while its listeners closed) unless a
    /// successor has the sockets.
    async fn release(self) {
        let said = tokio::time::timeout(
            HANDOVER_TIMEOUT,
            send_frame(&self.stream, Message::Release, &[], &[]),
        )
        .await;
        if let Ok(Err(err)) = said {
            tracing::debug!(error = %err, "could not release the previous server (it may be gone)");
        }
        if !self.sent.load(Ordering::Relaxed) {
            for (path, file) in &self.files {
                file.clean_up(path);
            }
        }
    }
}

impl Drop for Offering {
    fn drop(&mut self) {
        if let Some(offer) = &self.offer {
            offer.abort();
        }
        if let Some(ready) = &self.ready {
            ready.abort();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::Arc;

    use socket2::{Domain, SockAddr, Socket, Type};

    use super::*;
    use crate::handover::test_support::{bounded, copy_tcp, tcp_listener, temp_dir};

    /// What a `tracing_subscriber::fmt` subscriber writes, and a wake-up at
    /// each write.
    #[derive(Clone, Default)]
    struct Logs {
        text: Arc<std::sync::Mutex<Vec<u8>>>,
        written: Arc<tokio::sync::Notify>,
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.text.lock().unwrap().extend_from_slice(buf);
            self.written.notify_one();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        /// Collects what this thread logs (tasks of a current-thread
        /// runtime included) until the guard is dropped.
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn lines_with(&self, needle: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.text.lock().unwrap())
                .lines()
                .filter(|line| line.contains(needle))
                .map(str::to_owned)
                .collect()
        }

        /// Waits (unbounded: wrap it in `bounded`) for a line with `needle`.
        async fn logged(&self, needle: &str) -> String {
            loop {
                if let Some(line) = self.lines_with(needle).pop() {
                    return line;
                }
                // A write since the look left a permit: no wake-up is lost.
                self.written.notified().await;
            }
        }
    }

    /// An operator must learn that restarts stopped working when the
    /// control socket fails, not when the server stops; and only once.
    #[tokio::test]
    async fn a_failing_control_socket_is_reported_at_once_and_only_once() {
        let logs = Logs::default();
        let _capture = logs.capture();
        let dir = temp_dir("failing");
        let path = dir.path().join("control.sock");
        // A socket that does not listen: its accept fails with EINVAL, an
        // error that no retry cures, like that of a broken control socket.
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        socket
            .bind(&SockAddr::unix(&path).expect("address"))
            .expect("bind");
        let control = Control {
            listener: socket.into(),
            file: FileId::of(&path).expect("the socket file"),
            path: path.clone(),
        };
        let trigger = Arc::new(Fired::default());
        let handover = Handover {
            control,
            predecessor: None,
        };
        let offering = handover.start(vec![copy_tcp(&tcp_listener())], Vec::new(), &trigger);

        let failed = "handover control socket failed";
        let line = bounded(
            "the failure to be logged while the server runs",
            logs.logged(failed),
        )
        .await;
        assert!(line.contains("ERROR"), "not logged as an error: {line}");
        assert!(
            line.contains(&path.display().to_string()),
            "the path is missing: {line}"
        );
        assert!(line.contains("os error 22"), "the error is missing: {line}");

        trigger.fire();
        assert!(matches!(
            bounded("finish", offering.finish()).await,
            Finished::Stopped
        ));
        let reports = logs.lines_with(failed);
        assert_eq!(reports.len(), 1, "reported again at shutdown: {reports:#?}");
    }
}
