//! The chat room: one `tokio::sync::broadcast` channel that every connection
//! publishes to and subscribes to, and the set of nicknames in use.
//!
//! # The protocol
//!
//! Lines end with `\n` (a `\r` before it is dropped). A client's lines are
//! said to the room, except commands, which start with `/`:
//!
//! | command      | effect                                                   |
//! | ------------ | -------------------------------------------------------- |
//! | `/nick NAME` | take a nickname; the others see `*** OLD is now NAME`    |
//! | `/who`       | `*** here: NAME, NAME, ...`                              |
//! | `/help`      | one line listing the commands                            |
//! | `/quit`      | `*** bye`, then the server closes the connection         |
//!
//! Every line the server writes is either a chat line `<NAME> text` or a
//! notice starting with `***`.
//!
//! - **Names.** A client starts as `guest-<connection id>`. A chosen name is
//!   1 to [`MAX_NICK`] ASCII letters, digits, `-` or `_`, starting with a
//!   letter; it is unique ignoring ASCII case (`Alice` and `alice` are one
//!   name, a client may change its own name's case), and `guest-` names are
//!   the server's to give. A refused name gets a `*** error: ...` line that
//!   says why, and the client keeps its name.
//! - **Who sees what.** Nothing a client causes comes back to it as a
//!   broadcast: its own chat lines are not echoed (its terminal shows them),
//!   and for its join and name change it gets a direct reply (`*** welcome,
//!   you are guest-3; ...`, `*** you are now alice`) while everyone else gets
//!   the notice (`*** guest-3 joined`, `*** guest-3 is now alice`,
//!   `*** alice left`). Control characters are removed from chat lines;
//!   blank lines are ignored.
//! - **Over-long lines.** A line longer than [`MAX_LINE`] bytes is discarded
//!   up to its newline, the client gets `*** error: line too long (over 1024
//!   bytes), discarded`, and the connection goes on. The read buffer never
//!   holds more than about `MAX_LINE` bytes plus one read, however long the
//!   line. A line that is not UTF-8 is discarded the same way.
//! - **Slow clients.** The channel keeps the last `capacity` messages
//!   ([`DEFAULT_CAPACITY`], or [`Room::with_capacity`]). Publishing never
//!   waits, so a client that does not read cannot slow the others: once it
//!   falls more than `capacity` messages behind, the oldest are dropped for
//!   it, and when its connection takes bytes again it reads
//!   `*** you missed N messages` in their place and carries on. Memory stays
//!   bounded by the channel's capacity whoever stops reading.
//! - **Shutdown.** When the server shuts down, every client gets
//!   `*** server shutting down, goodbye` ([`GOODBYE`]) and is closed; no
//!   leave notices are sent then. A client whose connection is not taking
//!   bytes at that moment gets [`GOODBYE_GRACE`] to take the line in
//!   progress and the goodbye, then is closed without it, so one stalled
//!   client cannot hold the drain until its timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use switchboard::{Connection, Handler, ShutdownSignal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// The longest line a client may send, in bytes, without its newline.
pub(crate) const MAX_LINE: usize = 1024;

/// The longest nickname, in characters (all ASCII, so also in bytes).
pub(crate) const MAX_NICK: usize = 16;

/// How many messages the room keeps for a client that has not read them yet.
pub(crate) const DEFAULT_CAPACITY: usize = 256;

/// The last line every client gets when the server shuts down.
pub(crate) const GOODBYE: &str = "*** server shutting down, goodbye";

/// How long a client that is not taking bytes when shutdown begins has to
/// take the line in progress and the goodbye.
pub(crate) const GOODBYE_GRACE: Duration = Duration::from_secs(5);

/// The line `/help` answers with.
pub(crate) const HELP: &str =
    "*** commands: /nick NAME, /who, /quit, /help; any other line is said to the room";

/// The room every connection of a server joins; the server's handler.
#[derive(Debug)]
pub(crate) struct Room {
    /// Every chat line and notice, published once and read by every member.
    messages: broadcast::Sender<Message>,
    /// The nicknames in use, keyed by their ASCII-lowercase form (uniqueness
    /// ignores case) and valued by the name as chosen. A std mutex is right
    /// here: every critical section is one map operation inside a sync
    /// method of `Room`, so the lock is never held across an `.await` and is
    /// only ever held for a moment.
    names: Mutex<BTreeMap<String, String>>,
}

impl Room {
    /// A room keeping up to [`DEFAULT_CAPACITY`] unread messages per client.
    pub(crate) fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A room keeping up to `capacity` unread messages per client; a client
    /// further behind is told how many it missed.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 (as `broadcast::channel` does).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        // The receiver is dropped at once: members subscribe when they join.
        let (messages, _) = broadcast::channel(capacity);
        Room {
            messages,
            names: Mutex::new(BTreeMap::new()),
        }
    }

    /// Serves one client from its welcome to its close.
    async fn serve(&self, mut conn: Connection) -> io::Result<()> {
        let shutdown = conn.shutdown_requested();
        tokio::pin!(shutdown);
        // Subscribe before announcing the join, so that nothing said after
        // the others see the notice is missed.
        let mut inbox = self.messages.subscribe();
        let mut me = Member::join(self, conn.id(), conn.shutdown_signal().clone());
        let mut lines = LineReader::new();

        let welcome = format!("*** welcome, you are {}; /help lists the commands", me.nick);
        let mut end = send(&mut conn, shutdown.as_mut(), &welcome).await?;
        while end.is_none() {
            let reply = tokio::select! {
                biased;
                () = &mut shutdown => {
                    end = Some(End::Shutdown(Instant::now() + GOODBYE_GRACE));
                    break;
                }
                // What is queued for this client is delivered before more of
                // its input is read. So a talker's handler takes its own
                // messages off the channel between its lines (and skips them)
                // rather than lagging behind itself; only a client that stops
                // reading falls behind.
                message = inbox.recv() => match message {
                    Ok(message) if message.from == me.id => continue,
                    Ok(message) => Reply::Line(message.text.to_string()),
                    Err(RecvError::Lagged(missed)) => {
                        let plural = if missed == 1 { "" } else { "s" };
                        Reply::Line(format!("*** you missed {missed} message{plural}"))
                    }
                    // The room owns the sender and outlives every handler.
                    Err(RecvError::Closed) => unreachable!("the room's channel closed"),
                },
                input = lines.next(&mut conn) => match input? {
                    Some(Input::Line(line)) => me.act(&line),
                    Some(Input::TooLong) => Reply::Line(format!(
                        "*** error: line too long (over {MAX_LINE} bytes), discarded"
                    )),
                    Some(Input::NotUtf8) => {
                        Reply::Line("*** error: line is not UTF-8, discarded".to_owned())
                    }
                    None => break, // the client closed its side
                },
            };
            end = match reply {
                Reply::Nothing => None,
                Reply::Line(line) => send(&mut conn, shutdown.as_mut(), &line).await?,
                Reply::Quit => {
                    send(&mut conn, shutdown.as_mut(), "*** bye").await?;
                    break;
                }
            };
        }

        if let Some(End::Shutdown(deadline)) = end {
            // A goodbye that cannot be written by the deadline is given up:
            // the client is not reading, and the drain should not wait for it.
            if let Ok(written) = timeout_at(deadline, write_line(&mut conn, GOODBYE)).await {
                written?;
            }
        }
        // `me` drops here (or wherever the handler ends, even aborted): the
        // name is released and, unless the server is shutting down, the
        // others are told this client left.
        Ok(())
    }

    /// Locks the names. A panic cannot leave the map half-changed (each
    /// critical section is a single map operation), so a poisoned lock is
    /// taken over rather than propagated.
    fn names(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `text` to every member but `from`.
    fn announce(&self, from: u64, text: String) {
        // An error only means that nobody is subscribed: nobody to tell.
        let _ = self.messages.send(Message {
            from,
            text: text.into(),
        });
    }

    /// Moves a member from name `old` to name `new`, if `new` is valid and
    /// free (or is `old` in another case).
    fn rename(&self, old: &str, new: &str) -> Result<(), NickError> {
        validate_nick(new)?;
        let old_key = old.to_ascii_lowercase();
        let new_key = new.to_ascii_lowercase();
        let mut names = self.names();
        if new_key != old_key && names.contains_key(&new_key) {
            return Err(NickError::Taken);
        }
        names.remove(&old_key);
        names.insert(new_key, new.to_owned());
        Ok(())
    }

    /// The names in use, in order, as one line.
    fn who(&self) -> String {
        let names = self.names();
        let list: Vec<&str> = names.values().map(String::as_str).collect();
        format!("*** here: {}", list.join(", "))
    }
}

impl Default for Room {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for Room {
    type Error = io::Error;

    async fn handle(&self, conn: Connection) -> io::Result<()> {
        match self.serve(conn).await {
            // A client that resets or vanishes has left; not a server failure.
            Err(err) if client_gone(&err) => Ok(()),
            result => result,
        }
    }
}

/// One published line.
#[derive(Debug, Clone)]
struct Message {
    /// The connection that caused it; that member skips it.
    from: u64,
    /// Shared, so that each member's copy is a reference count.
    text: Arc<str>,
}

/// A client's place in the room. Its name is reserved while this lives and
/// released when it drops, however the handler ends: returned, failed,
/// panicked, or aborted at the drain deadline.
#[derive(Debug)]
struct Member<'a> {
    room: &'a Room,
    id: u64,
    nick: String,
    shutdown: ShutdownSignal,
}

impl<'a> Member<'a> {
    /// Takes the name `guest-<id>` and tells the others.
    fn join(room: &'a Room, id: u64, shutdown: ShutdownSignal) -> Self {
        // Connection ids are unique and clients cannot choose `guest-`
        // names, so this name is free.
        let nick = format!("guest-{id}");
        room.names().insert(nick.clone(), nick.clone());
        room.announce(id, format!("*** {nick} joined"));
        Member {
            room,
            id,
            nick,
            shutdown,
        }
    }

    /// What one line from the client does.
    fn act(&mut self, line: &str) -> Reply {
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else {
            let text: String = line.chars().filter(|c| !c.is_control()).collect();
            if !text.is_empty() {
                self.room
                    .announce(self.id, format!("<{}> {text}", self.nick));
            }
            return Reply::Nothing;
        };
        let (name, argument) = command.split_once(' ').unwrap_or((command, ""));
        let argument = argument.trim();
        let reply = match (name, argument) {
            ("nick", "") => "*** error: usage: /nick NAME".to_owned(),
            ("nick", new) => match self.room.rename(&self.nick, new) {
                Ok(()) => {
                    let old = std::mem::replace(&mut self.nick, new.to_owned());
                    self.room
                        .announce(self.id, format!("*** {old} is now {new}"));
                    format!("*** you are now {new}")
                }
                Err(err) => format!("*** error: nick {new:?} {err}"),
            },
            ("who", "") => self.room.who(),
            ("help", "") => HELP.to_owned(),
            ("quit", "") => return Reply::Quit,
            _ => format!("*** error: unknown command {line:?}; /help lists the commands"),
        };
        Reply::Line(reply)
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.room.names().remove(&self.nick.to_ascii_lowercase());
        // At shutdown everyone is leaving at once and gets the goodbye:
        // a flood of leave notices would only delay it.
        if !self.shutdown.is_shutting_down() {
            self.room
                .announce(self.id, format!("*** {} left", self.nick));
        }
    }
}

/// What the handler writes after an event.
#[derive(Debug)]
enum Reply {
    Nothing,
    Line(String),
    Quit,
}

/// Why a connection's loop ended early.
#[derive(Debug)]
enum End {
    /// Shutdown began: say goodbye if it can be written before this instant.
    Shutdown(Instant),
    /// Shutdown began while the client was not taking bytes, and it took
    /// none for [`GOODBYE_GRACE`]: close without a goodbye.
    Stalled,
}

/// Why a nickname was refused; displayed after `nick "NAME" `.
#[derive(Debug, PartialEq, Eq)]
enum NickError {
    Invalid,
    Reserved,
    Taken,
}

impl fmt::Display for NickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NickError::Invalid => write!(
                f,
                "is not allowed: use 1 to {MAX_NICK} letters, digits, '-' or '_', starting with a letter"
            ),
            NickError::Reserved => {
                f.write_str("is not allowed: guest- names are given by the server")
            }
            NickError::Taken => f.write_str("is taken"),
        }
    }
}

/// Checks a requested nickname against the rules in the module docs.
fn validate_nick(nick: &str) -> Result<(), NickError> {
    let valid = (1..=MAX_NICK).contains(&nick.len())
        && nick.starts_with(|c: char| c.is_ascii_alphabetic())
        && nick
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        Err(NickError::Invalid)
    } else if nick.to_ascii_lowercase().starts_with("guest-") {
        Err(NickError::Reserved)
    } else {
        Ok(())
    }
}

/// One thing read from a client.
#[derive(Debug)]
enum Input {
    Line(String),
    /// A line over [`MAX_LINE`]; the codec discards it up to its newline.
    TooLong,
    /// A line that is not UTF-8; already discarded.
    NotUtf8,
}

/// Splits a client's bytes into lines with `LinesCodec`, calling the decoder
/// directly rather than through `FramedRead`.
///
/// `FramedRead` ends the stream once after a decoder error (it yields `None`,
/// tokio-rs/tokio#3976) and then reads the socket before decoding what it
/// already holds, so a good line that arrived in the same read as an
/// over-long one would wait for the client's next bytes. Here the buffer is
/// decoded until it yields nothing before the socket is read again.
#[derive(Debug)]
struct LineReader {
    codec: LinesCodec,
    /// At most `MAX_LINE` bytes without a newline (the codec errors beyond
    /// that and then discards) plus one read.
    buf: BytesMut,
}

impl LineReader {
    /// The most bytes read from the socket at a time.
    const READ: usize = 4096;

    fn new() -> Self {
        LineReader {
            codec: LinesCodec::new_with_max_length(MAX_LINE),
            buf: BytesMut::new(),
        }
    }

    /// The next line, or `None` at end of input.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read stay in the buffer, and `read_buf` reads
    /// nothing if it is dropped before completing.
    async fn next(&mut self, conn: &mut Connection) -> io::Result<Option<Input>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(line)) => return Ok(Some(Input::Line(line))),
                Ok(None) => {}
                Err(err) => return Ok(Some(input_error(err))),
            }
            self.buf.reserve(Self::READ);
            if conn.read_buf(&mut self.buf).await? == 0 {
                // A last line without a newline still counts.
                return match self.codec.decode_eof(&mut self.buf) {
                    Ok(line) => Ok(line.map(Input::Line)),
                    Err(err) => Ok(Some(input_error(err))),
                };
            }
        }
    }
}

/// The decoder's errors, which are about one line and not the connection.
fn input_error(err: LinesCodecError) -> Input {
    match err {
        LinesCodecError::MaxLineLengthExceeded => Input::TooLong,
        // The decoder's only I/O error is its UTF-8 check (it never reads).
        LinesCodecError::Io(_) => Input::NotUtf8,
    }
}

/// Writes `line` and its newline; returns `Some` if the connection should
/// end because shutdown began while the client was not taking the bytes.
///
/// The write is raced against shutdown. If shutdown wins, the write is not
/// dropped half-done (the goodbye would land mid-line): it gets until
/// [`GOODBYE_GRACE`] from now to finish, and the goodbye the same deadline.
async fn send<S>(
    conn: &mut Connection,
    shutdown: Pin<&mut S>,
    line: &str,
) -> io::Result<Option<End>>
where
    S: Future<Output = ()>,
{
    let write = write_line(conn, line);
    tokio::pin!(write);
    tokio::select! {
        biased;
        written = &mut write => written.map(|()| None),
        () = shutdown => {
            let deadline = Instant::now() + GOODBYE_GRACE;
            match timeout_at(deadline, write).await {
                Ok(written) => written.map(|()| Some(End::Shutdown(deadline))),
                Err(_elapsed) => Ok(Some(End::Stalled)),
            }
        }
    }
}

/// Writes `line` and a newline in one write (with `TCP_NODELAY` on, two
/// writes could be two packets).
async fn write_line(conn: &mut Connection, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    conn.write_all(&bytes).await
}

/// Whether `err` means the client went away rather than something failing.
fn client_gone(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_rules() {
        assert_eq!(validate_nick("alice"), Ok(()));
        assert_eq!(validate_nick("A-b_9"), Ok(()));
        assert_eq!(validate_nick(&"a".repeat(MAX_NICK)), Ok(()));
        assert_eq!(validate_nick("guest"), Ok(()));
        for bad in [
            "",
            "9lives",
            "-x",
            "al ice",
            "ali.ce",
            "é",
            &"a".repeat(MAX_NICK + 1),
        ] {
            assert_eq!(validate_nick(bad), Err(NickError::Invalid), "{bad:?}");
        }
        assert_eq!(validate_nick("guest-7"), Err(NickError::Reserved));
        assert_eq!(validate_nick("Guest-x"), Err(NickError::Reserved));
    }
}
