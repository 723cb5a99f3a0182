//! The control socket: binding it, taking over the sockets of the server
//! that listens on it, and offering this server's sockets on it to a
//! successor, with the checks of who is at the other end.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{UnixListener, UnixStream};

use crate::backoff::Backoff;
use crate::shutdown::Fired;
use crate::socket_file::{self, FileId};

use super::Handover;
use super::inherited::Inherited;
use super::protocol::{
    KIND_CONTROL, MAX_LISTENERS, Message, VERSION, expect, parse_offer, read_frame, send_frame,
};

/// The listening control socket at which a server offers its sockets to a
/// successor: bound by [`Control::bind`], or received from a predecessor
/// with [`take_over`].
#[derive(Debug)]
pub(crate) struct Control {
    pub(super) listener: std::os::unix::net::UnixListener,
    pub(super) path: PathBuf,
    /// The file at `path` when it was bound or connected to: a clean stop
    /// removes the file only if it is still that one, never a file another
    /// server has put there since.
    pub(super) file: FileId,
}

impl Control {
    /// Creates the control socket at `path`, owner-only (`0o600`): whoever
    /// may connect to it may take the server's sockets.
    ///
    /// A file already at `path` is handled like [`Builder::bind_unix`]
    /// handles one: a socket nobody listens on (left by a server that died)
    /// is replaced; a socket a live server listens on is an `AddrInUse`
    /// error (that server's successor calls [`take_over`] instead);
    /// anything that is not a socket is never touched and is an error too.
    ///
    /// [`Builder::bind_unix`]: crate::Builder::bind_unix
    ///
    /// # Errors
    ///
    /// As above, and any error of creating, binding or listening.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the only await is the look at what is already at
    /// `path`; nothing is created or removed before it ends.
    pub(crate) async fn bind(path: &Path, timeout: Duration) -> io::Result<Control> {
        match connect(path, timeout).await? {
            Found::Nothing => {}
            Found::Stale(stale) => {
                // Only the file probed: one another server has put there
                // since is left to `create` to report.
                stale.remove_if_at(path)?;
                tracing::info!(path = %path.display(), "removed a stale handover control socket file");
            }
            Found::Live(..) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a running server already offers its sockets at this control path \
                     (its successor takes them over instead of binding)",
                ));
            }
        }
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        // Owner-only, set where no other user can reach the file, and
        // published at `path` only once it listens: see `socket_file`.
        let file = socket_file::create(&socket, path, Some(0o600), CONTROL_BACKLOG)?;
        Ok(Control {
            listener: socket.into(),
            path: path.to_path_buf(),
            file,
        })
    }

    /// The path of the control socket.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// What a successor received from the running server, from [`take_over`].
#[derive(Debug)]
pub(crate) struct TakeOver {
    /// The listening sockets, in the predecessor's order. They accept at
    /// once: the kernel queues connections for them meanwhile.
    pub(crate) listeners: Vec<Inherited>,
    /// The control socket to [`offer`] these sockets to our own successor.
    pub(crate) control: Control,
    /// The connection to the predecessor, to tell it when we are ready.
    pub(crate) predecessor: Predecessor,
}

/// The connection to the server we take over from; see [`Predecessor::ready`].
///
/// Dropping it without calling `ready` cancels the handover: the
/// predecessor keeps serving.
#[derive(Debug)]
pub(crate) struct Predecessor {
    /// Shared with the [`Offering`], which says "release" on it when this
    /// server's shutdown begins; while it stays open without that, the
    /// predecessor stands by to take its sockets back.
    ///
    /// [`Offering`]: super::Offering
    pub(super) stream: Arc<UnixStream>,
    timeout: Duration,
}

impl Predecessor {
    /// Tells the predecessor that this process is accepting on the sockets
    /// now, and waits for it to confirm that it has stopped accepting and
    /// begun its drain.
    ///
    /// Call it once this server accepts on every inherited listener. Until
    /// then the predecessor goes on serving, so calling it late costs
    /// nothing but must happen within the timeout given to [`take_over`].
    ///
    /// # Errors
    ///
    /// The predecessor vanished, timed out or answered something else. The
    /// sockets are ours either way, and keep working; the predecessor
    /// either drains or (if it never saw "ready") keeps serving beside us.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped midway, the predecessor may or may not have
    /// received "ready".
    pub(crate) async fn ready(self) -> io::Result<()> {
        let timeout = self.timeout;
        within(
            timeout,
            "telling the running server that we are ready",
            async {
                send_frame(&self.stream, Message::Ready, &[], &[]).await?;
                // Sent at once, before the confirmation is awaited: a
                // predecessor reads it right after "ready".
                send_frame(&self.stream, Message::Watch, &[], &[]).await
            },
        )
        .await?;
        let done = within(
            timeout,
            "waiting for the running server to confirm the handover",
            read_frame(&self.stream),
        )
        .await?;
        expect(done, Message::Done).map(drop)
    }
}

/// Why [`offer`] returned.
#[derive(Debug)]
pub(crate) enum Offered {
    /// A successor took the sockets over and is ready; `handed_over` ran.
    /// With a [`Standby`] if the successor asked this server to stand by
    /// (an older successor does not).
    HandedOver(Option<Standby>),
    /// `stop` fired first.
    Stopped,
}

/// A predecessor's sockets, kept after a handover while its successor
/// might still fail: the successor keeps the control connection open and
/// says "release" once this server is no longer needed (its own shutdown
/// began, or it handed over in turn). If the connection closes without
/// that, the successor is gone and the sockets can serve again.
#[derive(Debug)]
pub(crate) struct Standby {
    successor: UnixStream,
    /// The duplicates that were offered, in their order.
    sockets: Vec<Inherited>,
    control: Control,
}

impl Standby {
    /// Completes when the successor goes away without releasing this
    /// server; never, once it released it.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a message half read is lost. Keep the future.
    pub(crate) async fn successor_lost(&self) {
        match read_frame(&self.successor).await {
            Ok(frame) if frame.code == Message::Release.code() => {
                tracing::debug!("the successor released this server");
            }
            Ok(frame) => {
                // Not a successor that fails: one that speaks of something
                // else. Taking the sockets back would serve beside it.
                tracing::warn!(
                    code = frame.code,
                    "unexpected message from the successor; no longer standing by"
                );
            }
            Err(err) => {
                tracing::debug!(error = %err, "the control connection to the successor closed");
                return;
            }
        }
        std::future::pending().await
    }

    /// The sockets, in the order they were offered, and the control socket
    /// to offer them on again.
    pub(crate) fn take_back(self) -> (Vec<Inherited>, Handover) {
        let handover = Handover {
            control: self.control,
            predecessor: None,
        };
        (self.sockets, handover)
    }
}

/// Successor side: if a server offers its sockets at `control`, takes them.
///
/// Returns `Ok(None)` when nobody offers there (no file, or a stale file
/// nobody listens on): the caller binds its listeners as usual. Otherwise
/// the running server goes on serving until [`Predecessor::ready`].
///
/// # Errors
///
/// A file at `control` that is not a socket; a running server that does not
/// answer within `timeout` (each step is bounded by it), speaks another
/// protocol version, runs as another user, or sends a malformed offer (the
/// descriptors received are closed); out of descriptors.
///
/// # Cancel safety
///
/// Cancel safe: the predecessor sees the connection close and keeps
/// serving; descriptors already received are closed.
pub(crate) async fn take_over(control: &Path, timeout: Duration) -> io::Result<Option<TakeOver>> {
    let (stream, file) = match connect(control, timeout).await? {
        Found::Live(stream, file) => (stream, file),
        Found::Nothing | Found::Stale(_) => return Ok(None),
    };
    check_peer(&stream)?;
    within(
        timeout,
        "asking the running server for its sockets",
        send_frame(&stream, Message::Request, &[], &[]),
    )
    .await?;
    let offer = within(
        timeout,
        "waiting for the running server's sockets",
        read_frame(&stream),
    )
    .await?;
    let (listeners, control_listener) = parse_offer(expect(offer, Message::Offer)?)?;
    Ok(Some(TakeOver {
        listeners,
        control: Control {
            listener: control_listener,
            path: control.to_path_buf(),
            file,
        },
        predecessor: Predecessor {
            stream: Arc::new(stream),
            timeout,
        },
    }))
}

/// Predecessor side: serves handover requests on `control` until `stop` is
/// fired or one handover succeeds.
///
/// To each successor it sends duplicates of `sockets` and of the control
/// listener, then waits for its "ready" (each step bounded by `timeout`).
/// On "ready" it calls `handed_over` (which should begin the graceful
/// shutdown: stop accepting, drain), confirms to the successor, and returns
/// [`Offered::HandedOver`]. A successor that vanishes, times out or
/// misbehaves before "ready" changes nothing: logged at `warn`, and the
/// next one is served. Requests are served one at a time; others wait in
/// the control socket's backlog.
///
/// `sockets` are held until this returns: fire `stop` when the server's
/// shutdown begins, or these copies keep the listening sockets open (and
/// clients queued) after the server has closed its own.
///
/// `stop` wins over a successor connecting at the same moment: once it is
/// fired, no handover begins and none in progress goes on.
///
/// However this ends (stopped, failed, or the future dropped), the control
/// file is removed if it is still ours: unless the sockets were sent to a
/// successor, which serves on the same socket and so owns the file from
/// then on, even if its handover failed here.
///
/// # Errors
///
/// More than [`MAX_LISTENERS`] sockets; the control listener cannot be
/// registered with the runtime or fails with an error that is neither a
/// per-connection error nor resource exhaustion.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future closes this process's copies and drops
/// any handover in progress (the successor sees it fail).
pub(crate) async fn offer(
    control: Control,
    sockets: Vec<Inherited>,
    timeout: Duration,
    stop: Arc<Fired>,
    offered: impl Fn() + Send + Sync,
    handed_over: impl FnOnce() + Send,
) -> io::Result<Offered> {
    let Control {
        listener,
        path,
        file,
    } = control;
    let registered = listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener));
    let listener = match registered {
        Ok(listener) => listener,
        Err(err) => {
            file.clean_up(&path);
            return Err(err);
        }
    };
    // Once the sockets (the control socket among them) went to a successor,
    // that successor may serve on them whatever came after: from then on
    // their files belong to it, even if its handover failed here.
    let sent = AtomicBool::new(false);
    // Declared after `listener`, so dropped before it: the file goes before
    // the socket closes, or a successor could find it stale and replace it
    // just while this removes it.
    let _file = ControlFile {
        path: &path,
        file,
        sent: &sent,
    };
    if sockets.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} listening sockets exceed the handover limit of {MAX_LISTENERS}",
                sockets.len()
            ),
        ));
    }
    let mark_sent = || {
        sent.store(true, Ordering::Relaxed);
        offered();
    };
    let mut backoff = Backoff::new();
    let listener_name = format!("handover control socket {}", path.display());
    loop {
        let accepted = tokio::select! {
            // A stop that has come wins over a successor waiting in the
            // backlog: the handover would be cut short at once anyway.
            biased;
            () = Fired::wait(&stop) => return Ok(Offered::Stopped),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(err) => {
                // Stopped during the wait or not, the loop's own look at
                // `stop` comes next.
                backoff
                    .on_error(err, &listener_name, Fired::wait(&stop))
                    .await?;
                continue;
            }
        };
        tracing::info!(path = %path.display(), "a successor asks for the listening sockets");
        let session = tokio::select! {
            // A stop cuts the handover short; `_file` leaves the file to the
            // successor if the sockets were sent already.
            biased;
            () = Fired::wait(&stop) => return Ok(Offered::Stopped),
            session = hand_over(&stream, &sockets, &listener, timeout, &mark_sent) => session,
        };
        match session {
            Ok(()) => {
                handed_over();
                // The successor serves either way; the confirmation only
                // tells it that we stopped accepting.
                let confirmed = within(
                    timeout,
                    "confirming the handover",
                    send_frame(&stream, Message::Done, &[], &[]),
                )
                .await;
                if let Err(err) = confirmed {
                    tracing::debug!(error = %err, "could not confirm the handover to the successor");
                }
                tracing::info!(
                    sockets = sockets.len(),
                    "listening sockets handed over to the successor"
                );
                let standby = stand_by(stream, sockets, listener, &path, file, timeout).await;
                return Ok(Offered::HandedOver(standby));
            }
            Err(err) => {
                tracing::warn!(error = %err, "handover to a successor failed; still serving");
            }
        }
    }
}

/// After a handover: a [`Standby`] if the successor asks this server to
/// stand by ("watch", sent right after "ready").
async fn stand_by(
    stream: UnixStream,
    sockets: Vec<Inherited>,
    listener: UnixListener,
    path: &Path,
    file: FileId,
    timeout: Duration,
) -> Option<Standby> {
    let asked = within(
        timeout,
        "reading whether the successor asks us to stand by",
        read_frame(&stream),
    )
    .await;
    match asked {
        Ok(frame) if frame.code == Message::Watch.code() => {}
        Ok(frame) => {
            tracing::debug!(
                code = frame.code,
                "the successor does not ask us to stand by"
            );
            return None;
        }
        Err(err) => {
            // An older successor closes the connection after "done".
            tracing::debug!(error = %err, "the successor does not ask us to stand by");
            return None;
        }
    }
    match listener.into_std() {
        Ok(listener) => Some(Standby {
            successor: stream,
            sockets,
            control: Control {
                listener,
                path: path.to_path_buf(),
                file,
            },
        }),
        Err(err) => {
            tracing::warn!(error = %err, "cannot keep the control socket; not standing by");
            None
        }
    }
}

/// Connections waiting on the control socket: successors come one at a
/// time, so a few are plenty.
const CONTROL_BACKLOG: i32 = 8;

/// The predecessor's half of one handover, up to the successor's "ready".
async fn hand_over(
    stream: &UnixStream,
    sockets: &[Inherited],
    control: &UnixListener,
    timeout: Duration,
    offered: &(impl Fn() + Sync),
) -> io::Result<()> {
    check_peer(stream)?;
    let request = within(
        timeout,
        "waiting for the successor's request",
        read_frame(stream),
    )
    .await?;
    if request.version != VERSION && request.code == Message::Request.code() {
        // Best effort: the successor learns which version we speak.
        let _ = within(
            timeout,
            "rejecting the request",
            send_frame(stream, Message::Reject, &[], &[]),
        )
        .await;
    }
    expect(request, Message::Request)?;
    let mut kinds: Vec<u8> = sockets.iter().map(Inherited::kind).collect();
    kinds.push(KIND_CONTROL);
    let mut fds: Vec<BorrowedFd<'_>> = sockets.iter().map(Inherited::fd).collect();
    fds.push(control.as_fd());
    within(
        timeout,
        "sending the sockets",
        send_frame(stream, Message::Offer, &kinds, &fds),
    )
    .await?;
    // From here the successor may serve on the sockets even if we stop
    // before its "ready", or its "ready" never comes: their files must
    // outlive this server.
    offered();
    let ready = within(
        timeout,
        "waiting for the successor to be ready",
        read_frame(stream),
    )
    .await?;
    expect(ready, Message::Ready).map(drop)
}

/// Only a process of our own user (or root) may hand over or take over
/// sockets. The control file's mode already says so; this holds even if
/// the file's permissions or directory were loosened by mistake.
fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let us = rustix::process::geteuid().as_raw();
    if peer == us || peer == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the other end of the handover control socket runs as user {peer}, this server as {us}"
            ),
        ))
    }
}

/// What is at a control path.
#[derive(Debug)]
enum Found {
    Nothing,
    /// A socket file nobody listens on.
    Stale(FileId),
    Live(UnixStream, FileId),
}

async fn connect(path: &Path, timeout: Duration) -> io::Result<Found> {
    let file = match socket_file::look(path)? {
        socket_file::Found::Nothing => return Ok(Found::Nothing),
        socket_file::Found::Socket(file) => file,
        socket_file::Found::Other => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the handover control path exists and is not a socket; refusing to use it",
            ));
        }
    };
    let connected = within(
        timeout,
        "connecting to the handover control socket",
        UnixStream::connect(path),
    )
    .await;
    match connected {
        Ok(stream) => Ok(Found::Live(stream, file)),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(Found::Stale(file)),
        // Removed between the look and the connect.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(err) => Err(err),
    }
}

/// The control file while [`offer`] runs: removed when the offer ends,
/// however it ends, if it is still the file this server bound or took over;
/// kept once `sent`, for the successor that received the sockets.
#[derive(Debug)]
struct ControlFile<'a> {
    path: &'a Path,
    file: FileId,
    sent: &'a AtomicBool,
}

impl Drop for ControlFile<'_> {
    fn drop(&mut self) {
        if !self.sent.load(Ordering::Relaxed) {
            self.file.clean_up(self.path);
        }
    }
}

/// `fut`, or a `TimedOut` error saying what took too long.
async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?} {what}"),
        )),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use std::io::ErrorKind;

    use std::os::unix::fs::PermissionsExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::handover::protocol::KIND_TCP;
    use crate::handover::test_support::{STEP, bounded, copy_tcp, tcp_listener, temp_dir};

    /// A running predecessor: `offer` in a task, and a flag set by
    /// `handed_over`.
    struct Offering {
        task: JoinHandle<io::Result<Offered>>,
        handed_over: Arc<AtomicBool>,
        stop: Arc<Fired>,
    }

    impl Offering {
        fn start(control: Control, sockets: Vec<Inherited>, timeout: Duration) -> Offering {
            let handed_over = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&handed_over);
            let stop = Arc::new(Fired::default());
            let task = tokio::spawn(offer(
                control,
                sockets,
                timeout,
                Arc::clone(&stop),
                || {},
                move || flag.store(true, Ordering::SeqCst),
            ));
            Offering {
                task,
                handed_over,
                stop,
            }
        }

        fn handed_over(&self) -> bool {
            self.handed_over.load(Ordering::SeqCst)
        }

        async fn ended(self) -> Ended {
            let offered = bounded("offer to end", self.task)
                .await
                .expect("offer task panicked")
                .expect("offer failed");
            match offered {
                Offered::HandedOver(_) => Ended::HandedOver,
                Offered::Stopped => Ended::Stopped,
            }
        }
    }

    /// How an [`Offering`] ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Ended {
        HandedOver,
        Stopped,
    }

    async fn take(path: &Path) -> TakeOver {
        bounded("take_over", take_over(path, STEP))
            .await
            .expect("take_over failed")
            .expect("take_over found nobody offering")
    }

    async fn bind_control(path: &Path) -> Control {
        bounded("bind", Control::bind(path, STEP))
            .await
            .expect("bind control")
    }

    /// Asserts that `take_over` at `path` fails with an error of `kind`;
    /// `why` says what should make it fail.
    async fn take_over_fails(path: &Path, kind: ErrorKind, why: &str) {
        let err = bounded("take_over", take_over(path, STEP))
            .await
            .expect_err(why);
        assert_eq!(err.kind(), kind, "{why}: {err}");
    }

    fn into_tokio_tcp(listener: std::net::TcpListener) -> tokio::net::TcpListener {
        listener.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(listener).expect("register listener")
    }

    /// Accepts one connection and checks it is the client's by a byte
    /// the client sent.
    async fn accept_byte(listener: &tokio::net::TcpListener) -> u8 {
        let (mut conn, _) = bounded("accept", listener.accept()).await.expect("accept");
        let mut byte = [0];
        bounded("read the client's byte", conn.read_exact(&mut byte))
            .await
            .expect("read");
        byte[0]
    }

    async fn client(addr: std::net::SocketAddr, byte: u8) -> tokio::net::TcpStream {
        let mut conn = bounded("connect", tokio::net::TcpStream::connect(addr))
            .await
            .expect("a client was refused");
        conn.write_all(&[byte]).await.expect("client write");
        conn
    }

    #[tokio::test]
    async fn hands_over_tcp_and_unix_listeners_without_refusing_a_client() {
        let dir = temp_dir("basic");
        let control_path = dir.path().join("control.sock");
        let app_path = dir.path().join("app.sock");
        let tcp = tcp_listener();
        let addr = tcp.local_addr().expect("local_addr");
        let unix = std::os::unix::net::UnixListener::bind(&app_path).expect("bind unix");
        let control = bind_control(&control_path).await;
        let sockets = vec![
            copy_tcp(&tcp),
            Inherited::Unix(unix.try_clone().expect("dup")),
        ];
        let old = Offering::start(control, sockets, STEP);

        let TakeOver {
            listeners,
            control,
            predecessor,
        } = take(&control_path).await;
        assert!(
            !old.handed_over(),
            "handed_over ran before the successor said ready"
        );
        let [Inherited::Tcp(new_tcp), Inherited::Unix(new_unix)] =
            <[Inherited; 2]>::try_from(listeners).expect("two listeners")
        else {
            panic!("the listeners arrived in another order or kind");
        };
        assert_eq!(new_tcp.local_addr().expect("local_addr"), addr);
        let new_unix_addr = new_unix.local_addr().expect("local_addr");
        assert_eq!(new_unix_addr.as_pathname(), Some(app_path.as_path()));
        assert_eq!(control.path(), control_path);

        // A client queued before the old process closes its listener is
        // accepted by the new one: the queue belongs to the socket.
        let _early = client(addr, 1).await;
        drop(tcp);
        drop(unix);
        bounded("ready", predecessor.ready())
            .await
            .expect("ready failed");
        assert!(
            old.handed_over(),
            "handed_over did not run before the confirmation"
        );
        assert_eq!(old.ended().await, Ended::HandedOver);
        // Every copy of the old process is closed now.
        let _late = client(addr, 2).await;
        let new_tcp = into_tokio_tcp(new_tcp);
        let mut bytes = [accept_byte(&new_tcp).await, accept_byte(&new_tcp).await];
        bytes.sort_unstable();
        assert_eq!(bytes, [1, 2]);

        new_unix.set_nonblocking(true).expect("nonblocking");
        let new_unix = UnixListener::from_std(new_unix).expect("register");
        let _unix_client = bounded("unix connect", UnixStream::connect(&app_path))
            .await
            .expect("unix client refused");
        bounded("unix accept", new_unix.accept())
            .await
            .expect("unix accept");
        assert!(
            control_path.exists(),
            "the control file was removed although the successor serves on it"
        );
    }

    #[tokio::test]
    async fn a_third_generation_takes_over_from_the_second() {
        let dir = temp_dir("generations");
        let control_path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        let addr = tcp.local_addr().expect("local_addr");
        let control = bind_control(&control_path).await;
        let first = Offering::start(control, vec![copy_tcp(&tcp)], STEP);
        drop(tcp);

        let second = take(&control_path).await;
        bounded("ready 1->2", second.predecessor.ready())
            .await
            .expect("ready 1->2");
        assert_eq!(first.ended().await, Ended::HandedOver);
        let [Inherited::Tcp(second_tcp)] =
            <[Inherited; 1]>::try_from(second.listeners).expect("one listener")
        else {
            panic!("not a TCP listener");
        };
        let second_offers = Offering::start(second.control, vec![copy_tcp(&second_tcp)], STEP);

        let third = take(&control_path).await;
        assert!(!second_offers.handed_over());
        bounded("ready 2->3", third.predecessor.ready())
            .await
            .expect("ready 2->3");
        assert!(second_offers.handed_over());
        assert_eq!(second_offers.ended().await, Ended::HandedOver);
        drop(second_tcp);
        let [Inherited::Tcp(third_tcp)] =
            <[Inherited; 1]>::try_from(third.listeners).expect("one listener")
        else {
            panic!("not a TCP listener");
        };
        assert_eq!(third_tcp.local_addr().expect("local_addr"), addr);
        let _c = client(addr, 3).await;
        assert_eq!(accept_byte(&into_tokio_tcp(third_tcp)).await, 3);

        // The last generation stops without a successor: the file goes.
        let third_offers = Offering::start(third.control, Vec::new(), STEP);
        third_offers.stop.fire();
        assert_eq!(third_offers.ended().await, Ended::Stopped);
        assert!(
            !control_path.exists(),
            "a clean stop left the control file behind"
        );
    }

    #[tokio::test]
    async fn a_successor_that_vanishes_before_ready_leaves_the_old_server_serving() {
        let dir = temp_dir("vanish");
        let control_path = dir.path().join("control.sock");
        let tcp = into_tokio_tcp(tcp_listener());
        let addr = tcp.local_addr().expect("local_addr");
        let control = bind_control(&control_path).await;
        let dup = Inherited::duplicate(&tcp, Inherited::Tcp).expect("duplicate");
        let old = Offering::start(control, vec![dup], STEP);

        let vanishing = take(&control_path).await;
        drop(vanishing);
        // The old listener still accepts, and nothing was handed over.
        let _c = client(addr, 7).await;
        assert_eq!(accept_byte(&tcp).await, 7);
        assert!(!old.handed_over());
        assert!(!old.task.is_finished());

        // And it still offers: the next successor succeeds.
        let next = take(&control_path).await;
        bounded("ready", next.predecessor.ready())
            .await
            .expect("ready");
        assert_eq!(old.ended().await, Ended::HandedOver);
    }

    /// A successor that got the sockets but whose handover failed here (it
    /// answered something else than "ready", or too late) may serve on them
    /// all the same: the control socket's file is its from then on, and a
    /// later stop of this server must leave it.
    #[tokio::test]
    async fn a_failed_handover_after_the_offer_leaves_the_files_to_the_successor() {
        let dir = temp_dir("late");
        let control_path = dir.path().join("control.sock");
        let control = bind_control(&control_path).await;
        let tcp = tcp_listener();
        let old = Offering::start(control, vec![copy_tcp(&tcp)], STEP);

        let taken = take(&control_path).await;
        let stream = &taken.predecessor.stream;
        bounded(
            "a wrong answer",
            send_frame(stream, Message::Request, &[], &[]),
        )
        .await
        .expect("send");
        // The old server ends the session: the stream closes.
        let ended = bounded("the session's end", read_frame(stream)).await;
        assert!(ended.is_err() || ended.is_ok_and(|f| f.code != Message::Done.code()));
        assert!(!old.handed_over());
        old.stop.fire();
        assert_eq!(old.ended().await, Ended::Stopped);
        assert!(
            control_path.exists(),
            "the successor's control socket file was removed"
        );
        drop(taken);
    }

    #[tokio::test]
    async fn garbage_and_silence_on_the_control_socket_are_rejected_and_serving_goes_on() {
        let dir = temp_dir("garbage");
        let control_path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        let control = bind_control(&control_path).await;
        // A short timeout so that the silent client below costs little.
        let old = Offering::start(control, vec![copy_tcp(&tcp)], Duration::from_millis(300));

        let garbage: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\n\r\n",
            // Right magic, an over-long body.
            b"SBHO\x01\x01\xff\xff",
            // A READY where a REQUEST belongs.
            b"SBHO\x01\x03\x00\x00",
            // A REQUEST with a body.
            b"SBHO\x01\x01\x00\x02ab",
        ];
        for bytes in garbage {
            let mut conn = bounded("connect", UnixStream::connect(&control_path))
                .await
                .expect("connect");
            conn.write_all(bytes).await.expect("write garbage");
            let mut rest = Vec::new();
            // Closed with garbage left unread, the connection may be reset.
            match bounded("the server to close", conn.read_to_end(&mut rest)).await {
                Ok(_) => assert!(rest.is_empty(), "answered garbage with {rest:?}"),
                Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}"),
            }
        }

        // Another version is told which one the server speaks.
        let mut conn = bounded("connect", UnixStream::connect(&control_path))
            .await
            .expect("connect");
        conn.write_all(b"SBHO\x09\x01\x00\x00")
            .await
            .expect("write");
        let mut reply = Vec::new();
        bounded("the reject", conn.read_to_end(&mut reply))
            .await
            .expect("read");
        assert_eq!(reply, b"SBHO\x01\x05\x00\x00");

        // A client that says nothing is dropped at the timeout.
        let mut silent = bounded("connect", UnixStream::connect(&control_path))
            .await
            .expect("connect");
        let mut rest = Vec::new();
        bounded(
            "the silent client to be dropped",
            silent.read_to_end(&mut rest),
        )
        .await
        .expect("read");

        assert!(!old.handed_over());
        let next = take(&control_path).await;
        bounded("ready", next.predecessor.ready())
            .await
            .expect("ready");
        assert_eq!(old.ended().await, Ended::HandedOver);
    }

    /// A fake predecessor: accepts one connection on `path` and runs `act`
    /// on it.
    fn fake_predecessor<F, Fut>(path: &Path, act: F) -> JoinHandle<()>
    where
        F: FnOnce(UnixStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = UnixListener::bind(path).expect("bind fake");
        tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("fake accept");
            act(conn).await;
        })
    }

    #[tokio::test]
    async fn a_malformed_offer_is_an_error_and_its_descriptors_are_closed() {
        let dir = temp_dir("malformed");
        let path = dir.path().join("control.sock");
        // Declares a TCP listener and sends one end of a socket pair.
        let (pair_ours, mut pair_theirs) = UnixStream::pair().expect("pair");
        let fake_control =
            std::os::unix::net::UnixListener::bind(dir.path().join("c2.sock")).expect("bind");
        let fake = fake_predecessor(&path, move |conn| async move {
            read_frame(&conn).await.expect("request");
            let fds = [pair_ours.as_fd(), fake_control.as_fd()];
            send_frame(&conn, Message::Offer, &[KIND_TCP, KIND_CONTROL], &fds)
                .await
                .expect("send");
            // Our copy goes; only the successor's copy could keep it open.
            drop(pair_ours);
        });
        take_over_fails(
            &path,
            ErrorKind::InvalidData,
            "a socket pair passed for a TCP listener",
        )
        .await;
        bounded("fake", fake).await.expect("fake panicked");
        let mut rest = Vec::new();
        bounded(
            "the received descriptor to be closed",
            pair_theirs.read_to_end(&mut rest),
        )
        .await
        .expect("read");
    }

    #[tokio::test]
    async fn garbage_or_silence_from_a_predecessor_is_an_error_not_a_hang() {
        let dir = temp_dir("bad-predecessor");

        let path = dir.path().join("garbage.sock");
        let fake = fake_predecessor(&path, |mut conn| async move {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        });
        take_over_fails(&path, ErrorKind::InvalidData, "garbage offer").await;
        bounded("fake", fake).await.expect("fake panicked");

        let path = dir.path().join("count.sock");
        let fake = fake_predecessor(&path, |conn| async move {
            read_frame(&conn).await.expect("request");
            // Names two sockets, sends no descriptor.
            let _ = send_frame(&conn, Message::Offer, &[KIND_TCP, KIND_CONTROL], &[]).await;
        });
        take_over_fails(
            &path,
            ErrorKind::InvalidData,
            "an offer without descriptors",
        )
        .await;
        bounded("fake", fake).await.expect("fake panicked");

        let path = dir.path().join("reject.sock");
        let fake = fake_predecessor(&path, |conn| async move {
            read_frame(&conn).await.expect("request");
            let _ = send_frame(&conn, Message::Reject, &[], &[]).await;
        });
        take_over_fails(&path, ErrorKind::Unsupported, "a reject").await;
        bounded("fake", fake).await.expect("fake panicked");

        let path = dir.path().join("silent.sock");
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let fake = fake_predecessor(&path, |conn| async move {
            let _ = held.await;
            drop(conn);
        });
        let started = std::time::Instant::now();
        let err = bounded("take_over", take_over(&path, Duration::from_millis(200)))
            .await
            .expect_err("a silent predecessor");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(hold);
        bounded("fake", fake).await.expect("fake panicked");
    }

    #[tokio::test]
    async fn ready_fails_when_the_predecessor_vanishes_before_confirming() {
        let dir = temp_dir("no-done");
        let path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        let fake_control =
            std::os::unix::net::UnixListener::bind(dir.path().join("c2.sock")).expect("bind");
        let fake = fake_predecessor(&path, move |conn| async move {
            read_frame(&conn).await.expect("request");
            let fds = [tcp.as_fd(), fake_control.as_fd()];
            send_frame(&conn, Message::Offer, &[KIND_TCP, KIND_CONTROL], &fds)
                .await
                .expect("send");
            read_frame(&conn).await.expect("ready");
            read_frame(&conn).await.expect("watch");
            // Gone without DONE.
        });
        let taken = take(&path).await;
        let err = bounded("ready", taken.predecessor.ready())
            .await
            .expect_err("no confirmation");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        bounded("fake", fake).await.expect("fake panicked");
    }

    #[tokio::test]
    async fn a_predecessor_of_before_standing_by_confirms_and_closes_and_ready_succeeds() {
        let dir = temp_dir("old-done");
        let path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        let fake_control =
            std::os::unix::net::UnixListener::bind(dir.path().join("c2.sock")).expect("bind");
        let fake = fake_predecessor(&path, move |conn| async move {
            read_frame(&conn).await.expect("request");
            let fds = [tcp.as_fd(), fake_control.as_fd()];
            send_frame(&conn, Message::Offer, &[KIND_TCP, KIND_CONTROL], &fds)
                .await
                .expect("send");
            let ready = read_frame(&conn).await.expect("ready");
            assert_eq!(ready.code, Message::Ready.code());
            send_frame(&conn, Message::Done, &[], &[])
                .await
                .expect("done");
            // Closed with "watch" unread, as a server that knows no
            // standing by does.
        });
        let taken = take(&path).await;
        let ready = bounded("ready", taken.predecessor.ready()).await;
        bounded("fake", fake).await.expect("fake panicked");
        ready.expect("the confirmation was sent before the close");
    }

    #[tokio::test]
    async fn a_successor_of_before_asks_no_standing_by() {
        let dir = temp_dir("old-successor");
        let path = dir.path().join("control.sock");
        let old = Offering::start(
            bind_control(&path).await,
            vec![copy_tcp(&tcp_listener())],
            STEP,
        );
        let successor = bounded("connect", UnixStream::connect(&path))
            .await
            .expect("connect");
        send_frame(&successor, Message::Request, &[], &[])
            .await
            .expect("request");
        let offer = bounded("offer", read_frame(&successor))
            .await
            .expect("offer");
        assert_eq!(offer.code, Message::Offer.code());
        send_frame(&successor, Message::Ready, &[], &[])
            .await
            .expect("ready");
        let done = bounded("done", read_frame(&successor)).await.expect("done");
        assert_eq!(done.code, Message::Done.code());
        drop(successor);
        let offered = bounded("offer to end", old.task)
            .await
            .expect("offer task panicked")
            .expect("offer failed");
        assert!(
            matches!(offered, Offered::HandedOver(None)),
            "closing after the confirmation is no failure to stand by for: {offered:?}"
        );
    }

    #[tokio::test]
    async fn nobody_offering_is_none_and_the_control_file_is_owner_only() {
        let dir = temp_dir("paths");
        let path = dir.path().join("control.sock");
        let none = bounded("take_over", take_over(&path, STEP)).await;
        assert!(matches!(none, Ok(None)), "missing file: {none:?}");

        // A stale file: a socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let none = bounded("take_over", take_over(&path, STEP)).await;
        assert!(matches!(none, Ok(None)), "stale file: {none:?}");

        // Binding replaces the stale file, owner-only.
        let control = bounded("bind", Control::bind(&path, STEP))
            .await
            .expect("bind over a stale file");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

        // A live one is not replaced.
        let err = bounded("bind", Control::bind(&path, STEP))
            .await
            .expect_err("bound over a live control socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");

        // A stop with no handover removes the file.
        let offering = Offering::start(control, vec![copy_tcp(&tcp_listener())], STEP);
        offering.stop.fire();
        assert_eq!(offering.ended().await, Ended::Stopped);
        assert!(!path.exists(), "a clean stop left the control file");

        // Anything else at the path is left alone and is an error.
        std::fs::write(&path, b"not a socket").expect("write");
        take_over_fails(&path, ErrorKind::AlreadyExists, "a regular file").await;
        let err = bounded("bind", Control::bind(&path, STEP))
            .await
            .expect_err("a regular file");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"not a socket");
    }

    /// Wakes a test waiting on it when a future polled by hand with it as
    /// the waker is woken.
    #[derive(Default)]
    struct Woken(tokio::sync::Notify);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.notify_one();
        }
    }

    /// Polls `fut` once by hand: the test decides what has happened before
    /// each poll.
    fn poll_once<F: Future>(
        fut: std::pin::Pin<&mut F>,
        woken: &Arc<Woken>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::from(Arc::clone(woken));
        fut.poll(&mut std::task::Context::from_waker(&waker))
    }

    /// A raw successor's connection to `path`; its reads are bounded.
    fn connect_raw(path: &Path) -> std::os::unix::net::UnixStream {
        let conn = std::os::unix::net::UnixStream::connect(path).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        conn
    }

    /// A stop and a successor's connection, both there when the offer
    /// looks: the stop wins, the successor is never accepted (only a
    /// connection closed in the backlog is reset), and the file goes.
    #[tokio::test]
    async fn a_stop_wins_over_a_successor_waiting_at_the_same_moment() {
        use std::io::Read;
        let dir = temp_dir("stop-first");
        let path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        // An unbiased wait would pick either at random: try it many times.
        for round in 0..32 {
            let control = bind_control(&path).await;
            let stop = Arc::new(Fired::default());
            let sockets = vec![copy_tcp(&tcp)];
            let mut offering = std::pin::pin!(offer(
                control,
                sockets,
                STEP,
                Arc::clone(&stop),
                || {},
                || {}
            ));
            let woken = Arc::new(Woken::default());
            assert!(poll_once(offering.as_mut(), &woken).is_pending());
            let mut successor = connect_raw(&path);
            // The runtime saw the connection waiting: accept would succeed.
            bounded("the control socket to be readable", woken.0.notified()).await;
            stop.fire();
            let std::task::Poll::Ready(offered) = poll_once(offering.as_mut(), &woken) else {
                panic!("round {round}: the offer went on after the stop");
            };
            assert!(matches!(offered.expect("offer"), Offered::Stopped));
            assert!(
                !path.exists(),
                "round {round}: the stop left the control file behind"
            );
            let read = successor.read(&mut [0]);
            assert!(
                read.as_ref()
                    .is_err_and(|err| err.kind() == ErrorKind::ConnectionReset),
                "round {round}: the successor was accepted after the stop: {read:?}"
            );
        }
    }

    /// How a handover in progress is ended in
    /// `a_handover_ended_before_the_offer_was_sent_removes_the_control_file`.
    #[derive(Debug, Clone, Copy)]
    enum End {
        Stop,
        Drop,
    }

    #[tokio::test]
    async fn a_handover_ended_before_the_offer_was_sent_removes_the_control_file() {
        use std::io::Read;
        let dir = temp_dir("stop-during");
        let path = dir.path().join("control.sock");
        let tcp = tcp_listener();
        for end in [End::Stop, End::Drop] {
            let control = bind_control(&path).await;
            let stop = Arc::new(Fired::default());
            let sockets = vec![copy_tcp(&tcp)];
            let mut offering = Box::pin(offer(
                control,
                sockets,
                STEP,
                Arc::clone(&stop),
                || {},
                || {},
            ));
            let woken = Arc::new(Woken::default());
            assert!(poll_once(offering.as_mut(), &woken).is_pending());
            // A successor that has not asked yet.
            let mut successor = connect_raw(&path);
            bounded("the control socket to be readable", woken.0.notified()).await;
            // The offer accepts it and waits for its request.
            assert!(poll_once(offering.as_mut(), &woken).is_pending());
            match end {
                End::Stop => {
                    stop.fire();
                    let offered = poll_once(offering.as_mut(), &woken);
                    assert!(
                        matches!(offered, std::task::Poll::Ready(Ok(Offered::Stopped))),
                        "{offered:?}"
                    );
                }
                End::Drop => drop(offering),
            }
            assert!(
                !path.exists(),
                "{end:?} during a handover that had sent nothing left the control file"
            );
            // It was accepted (then closed, not reset in the backlog).
            let read = successor.read(&mut [0]);
            assert!(read.as_ref().is_ok_and(|&n| n == 0), "{end:?}: {read:?}");
        }

        // Once the sockets are sent, the file is the successor's.
        let control = bind_control(&path).await;
        let old = Offering::start(control, vec![copy_tcp(&tcp)], STEP);
        let taken = take(&path).await;
        old.stop.fire();
        assert_eq!(old.ended().await, Ended::Stopped);
        assert!(
            path.exists(),
            "a stop after the offer was sent removed the successor's control file"
        );
        drop(taken);
    }

    /// The control file's owner-only mode is set without a step a symlink
    /// swapped onto the path could redirect: another thread swaps one to a
    /// `0o644` file onto the control path while control sockets are bound
    /// and removed in a loop; the file's mode never changes.
    #[tokio::test]
    async fn the_control_files_mode_never_follows_a_symlink() {
        let dir = temp_dir("symlink-race");
        let (victim, path) = (dir.path().join("victim"), dir.path().join("control.sock"));
        std::fs::write(&victim, b"secret").expect("write the victim");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644))
            .expect("chmod the victim");
        let mode = || {
            std::fs::symlink_metadata(&victim)
                .expect("stat the victim")
                .permissions()
                .mode()
                & 0o7777
        };
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (victim, path, stop) = (victim.clone(), path.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let staged = path.with_extension("attack");
                let mut swaps = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::os::unix::fs::symlink(&victim, &staged);
                    swaps += u32::from(std::fs::rename(&staged, &path).is_ok());
                    let _ = std::fs::remove_file(&path);
                }
                swaps
            })
        };
        // At least 20,000 binds, and on until 200 succeeded (most meet the
        // attacker's symlink), or 200,000. On the code before the fix the
        // mode changed within a few hundred successful binds. A minute at
        // most, on a machine too slow for that many.
        let started = std::time::Instant::now();
        let (mut tried, mut bound, mut changed) = (0_u32, 0_u32, false);
        while ((tried < 20_000 || bound < 200) && tried < 200_000)
            && started.elapsed() < Duration::from_secs(60)
        {
            tried += 1;
            if let Ok(control) = bounded("bind", Control::bind(&path, STEP)).await {
                bound += 1;
                control.file.clean_up(&control.path);
            }
            if mode() != 0o644 {
                changed = true;
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = attacker.join().expect("the attacker thread panicked");
        assert!(
            !changed,
            "after {bound} binds the victim's mode became {:o}: a chmod followed the symlink",
            mode()
        );
        assert!(swaps > 0, "the attacker never got its symlink in place");
        assert!(bound >= 200, "only {bound} of {tried} binds succeeded");
    }

    #[tokio::test]
    async fn too_many_sockets_are_refused_up_front() {
        let dir = temp_dir("too-many");
        let control = bind_control(&dir.path().join("control.sock")).await;
        let tcp = tcp_listener();
        let sockets = (0..=MAX_LISTENERS).map(|_| copy_tcp(&tcp)).collect();
        let err = bounded(
            "offer",
            offer(
                control,
                sockets,
                STEP,
                Arc::new(Fired::default()),
                || {},
                || {},
            ),
        )
        .await
        .expect_err("more than MAX_LISTENERS");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
