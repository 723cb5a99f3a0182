//! The chat example's room, with several real clients over loopback: names,
//! join and leave notices, fan-out, over-long lines, lag and the goodbye.

mod common;
#[allow(dead_code)] // the example's module has more than these tests use
#[path = "../examples/chat/room.rs"]
mod room;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Running, assert_adds_up, assert_closed, start, within};
use room::{GOODBYE, HELP, MAX_LINE, MAX_NICK, Room};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

async fn chat(room: Room) -> Running {
    start(room, |b| b.drain_timeout(Duration::from_secs(10))).await
}

/// One chat client as a test drives it.
struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    /// The name the server gave it in the welcome line.
    nick: String,
}

impl Client {
    /// Connects and reads the welcome line.
    async fn join(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connects");
        Client::welcomed(stream).await
    }

    /// Wraps a connected stream and reads the welcome line.
    async fn welcomed(stream: TcpStream) -> Client {
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            lines: BufReader::new(reader).lines(),
            writer,
            nick: String::new(),
        };
        let welcome = client.line().await;
        client.nick = welcome
            .strip_prefix("*** welcome, you are ")
            .and_then(|rest| rest.strip_suffix("; /help lists the commands"))
            .unwrap_or_else(|| panic!("not a welcome line: {welcome:?}"))
            .to_owned();
        assert!(client.nick.starts_with("guest-"), "{welcome:?}");
        client
    }

    /// Sends `line` and its newline.
    async fn say(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes()).await;
    }

    /// Sends raw bytes.
    async fn send(&mut self, bytes: &[u8]) {
        within("a write to the server", self.writer.write_all(bytes))
            .await
            .expect("the server takes the bytes");
    }

    /// The next line from the server; panics at EOF.
    async fn line(&mut self) -> String {
        within("a line from the server", self.lines.next_line())
            .await
            .expect("reading a line")
            .expect("a line, not the connection's end")
    }

    /// Asserts that the next line is `expected`.
    async fn expect(&mut self, expected: &str) {
        let line = self.line().await;
        assert_eq!(line, expected, "{} got an unexpected line", self.nick);
    }

    /// Asserts that the server closes the connection next.
    async fn expect_closed(self) {
        assert_closed(self.lines.into_inner().get_mut()).await;
    }
}

/// Connects `N` clients one at a time, each after the previous ones have
/// seen it join, so that every one of them is in the room when this returns.
async fn clients<const N: usize>(addr: SocketAddr) -> [Client; N] {
    let mut clients: Vec<Client> = Vec::with_capacity(N);
    for _ in 0..N {
        let new = Client::join(addr).await;
        for old in &mut clients {
            old.expect(&format!("*** {} joined", new.nick)).await;
        }
        clients.push(new);
    }
    clients
        .try_into()
        .unwrap_or_else(|_| unreachable!("N clients were pushed"))
}

#[tokio::test]
async fn newcomers_are_guests_and_the_others_see_them_join_and_leave() {
    let running = chat(Room::new()).await;
    let [mut a, b] = clients(running.addr).await;
    assert_ne!(a.nick, b.nick);

    let b_nick = b.nick.clone();
    drop(b);
    a.expect(&format!("*** {b_nick} left")).await;

    a.say("/help").await;
    a.expect(HELP).await;
    a.say("/who").await;
    a.expect(&format!("*** here: {}", a.nick)).await;
    a.say("/frobnicate now").await;
    a.expect("*** error: unknown command \"/frobnicate now\"; /help lists the commands")
        .await;

    a.say("/quit").await;
    a.expect("*** bye").await;
    a.expect_closed().await;

    let report = running.stop().await;
    assert_adds_up(&report);
    assert_eq!((report.accepted, report.completed), (2, 2), "{report:?}");
}

#[tokio::test]
async fn lines_go_to_everyone_but_the_sender() {
    let running = chat(Room::new()).await;
    let mut all = clients::<3>(running.addr).await;
    let speaker = all[0].nick.clone();

    all[0].say("hello, room").await;
    // Control characters are removed; blank lines are ignored.
    all[0].say("   ").await;
    all[0].say("bell\x07 \x1b[31mred").await;
    for listener in &mut all[1..] {
        listener.expect(&format!("<{speaker}> hello, room")).await;
        listener.expect(&format!("<{speaker}> bell [31mred")).await;
    }
    // The speaker's own lines do not come back: its next line is the answer
    // to the next command (its handler delivers queued messages first, so an
    // echo would have come before it).
    all[0].say("/who").await;
    let who = all[0].line().await;
    assert!(who.starts_with("*** here: "), "{who:?}");

    // The others talk back, and a client still on its guest name is named so.
    all[2].say("hi").await;
    let third = all[2].nick.clone();
    all[0].expect(&format!("<{third}> hi")).await;
    all[1].expect(&format!("<{third}> hi")).await;

    running.stop().await;
}

#[tokio::test]
async fn nicknames_are_validated_and_unique() {
    let running = chat(Room::new()).await;
    let [mut a, mut b] = clients(running.addr).await;
    let a_guest = a.nick.clone();

    a.say("/nick alice").await;
    a.expect("*** you are now alice").await;
    b.expect(&format!("*** {a_guest} is now alice")).await;

    let rules = format!(
        "is not allowed: use 1 to {MAX_NICK} letters, digits, '-' or '_', starting with a letter"
    );
    let too_long = "b".repeat(MAX_NICK + 1);
    for (attempt, answer) in [
        (
            "/nick ALICE",
            "*** error: nick \"ALICE\" is taken".to_owned(),
        ),
        (
            "/nick 9lives",
            format!("*** error: nick \"9lives\" {rules}"),
        ),
        ("/nick bo b", format!("*** error: nick \"bo b\" {rules}")),
        ("/nick bób", format!("*** error: nick \"bób\" {rules}")),
        (
            &format!("/nick {too_long}"),
            format!("*** error: nick \"{too_long}\" {rules}"),
        ),
        (
            "/nick guest-999",
            "*** error: nick \"guest-999\" is not allowed: guest- names are given by the server"
                .to_owned(),
        ),
        ("/nick", "*** error: usage: /nick NAME".to_owned()),
    ] {
        b.say(attempt).await;
        b.expect(&answer).await;
    }
    // A refused name changes nothing: b still speaks as its guest name.
    b.say("still me").await;
    a.expect(&format!("<{}> still me", b.nick)).await;

    // A client may change its own name's case; the longest name is allowed.
    a.say("/nick Alice").await;
    a.expect("*** you are now Alice").await;
    b.expect("*** alice is now Alice").await;
    let longest = format!("b{}", "-_9".repeat(5));
    assert_eq!(longest.len(), MAX_NICK);
    b.say(&format!("/nick {longest}")).await;
    b.expect(&format!("*** you are now {longest}")).await;
    a.expect(&format!("*** {} is now {longest}", b.nick)).await;
    a.say("/who").await;
    a.expect(&format!("*** here: Alice, {longest}")).await;

    // A name is free again once its owner leaves.
    a.say("/quit").await;
    a.expect("*** bye").await;
    a.expect_closed().await;
    b.expect("*** Alice left").await;
    b.say("/nick alice").await;
    b.expect("*** you are now alice").await;

    running.stop().await;
}

#[tokio::test]
async fn an_over_long_line_is_refused_and_the_connection_goes_on() {
    let running = chat(Room::new()).await;
    let [mut a, mut b] = clients(running.addr).await;
    let too_long = format!("*** error: line too long (over {MAX_LINE} bytes), discarded");

    // Exactly MAX_LINE bytes is fine.
    let longest = "x".repeat(MAX_LINE);
    a.say(&longest).await;
    b.expect(&format!("<{}> {longest}", a.nick)).await;

    // One byte more is refused, and the line after it, sent in the same
    // write, still gets through without waiting for more input.
    let mut bytes = "y".repeat(MAX_LINE + 1).into_bytes();
    bytes.extend_from_slice(b"\nafter\n");
    a.send(&bytes).await;
    a.expect(&too_long).await;
    b.expect(&format!("<{}> after", a.nick)).await;

    // A line of 1 MiB is discarded as it arrives (the server never buffers
    // it) with a single error line.
    let mut huge = vec![b'z'; 1 << 20];
    huge.extend_from_slice(b"\nstill here\n/who\n");
    a.send(&huge).await;
    a.expect(&too_long).await;
    b.expect(&format!("<{}> still here", a.nick)).await;
    let who = a.line().await;
    assert!(
        who.starts_with("*** here: "),
        "one error line only, then {who:?}"
    );

    // Invalid UTF-8 is discarded the same way.
    a.send(b"\xff\xfe\nok\n").await;
    a.expect("*** error: line is not UTF-8, discarded").await;
    b.expect(&format!("<{}> ok", a.nick)).await;

    running.stop().await;
}

/// The most bytes the kernel may buffer on the server's side of a
/// connection: the TCP send buffer's autotuning limit (Linux), with a
/// generous fallback elsewhere.
fn max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(8 << 20)
}

#[tokio::test]
async fn a_slow_client_is_told_what_it_missed_and_slows_nobody() {
    const CAPACITY: usize = 16;
    // The talker sends this many lines at a time and waits for the fast
    // client to get them all: fewer than CAPACITY, so no handler that keeps
    // up can lag, however the tasks are scheduled.
    const BATCH: usize = 8;
    const LINE: usize = 1000;
    let running = chat(Room::with_capacity(CAPACITY)).await;

    // The slow client reads the notices below and then nothing until the
    // flood is over. A small receive buffer keeps its side of the
    // connection small; the server's send buffer is what the flood overruns.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect", socket.connect(running.addr))
        .await
        .unwrap();
    let mut slow = Client::welcomed(stream).await;
    let mut talker = Client::join(running.addr).await;
    let mut fast = Client::join(running.addr).await;
    talker.expect(&format!("*** {} joined", fast.nick)).await;
    // Read now, so that from here on the talker's lines are the only
    // messages the slow client's handler has to deliver.
    slow.expect(&format!("*** {} joined", talker.nick)).await;
    slow.expect(&format!("*** {} joined", fast.nick)).await;

    // Enough lines to fill every buffer between the server and the slow
    // client (so its handler blocks writing to it), then 1 MiB more: far
    // more than CAPACITY messages go by while it is blocked.
    let batches = (max_send_buffer() + (1 << 20)).div_ceil(LINE * BATCH);
    let count = batches * BATCH;
    let prefix = format!("<{}> ", talker.nick);
    for batch in 0..batches {
        let lines = batch * BATCH..(batch + 1) * BATCH;
        let mut bytes = Vec::with_capacity(BATCH * (LINE + 1));
        for i in lines.clone() {
            let line = format!("{i:08} ");
            bytes.extend_from_slice(line.as_bytes());
            bytes.resize(bytes.len() + LINE - line.len(), b'.');
            bytes.push(b'\n');
        }
        talker.send(&bytes).await;
        // The fast client gets every line, in order, while the slow one
        // reads nothing: the slow one holds nobody up.
        for i in lines {
            let line = fast.line().await;
            assert_eq!(
                index(&line, &prefix),
                Some(i),
                "the fast client got {line:?}"
            );
        }
    }
    talker.say("done").await;
    let done = format!("{prefix}done");
    fast.expect(&done).await;

    // Now the slow client reads: what the buffers held, a `missed` line
    // where its handler fell behind, the messages the room still held, the
    // last line. Nothing is out of order, and what it got plus what it was
    // told it missed is everything that was said.
    let (mut received, mut missed, mut next) = (0, 0, 0);
    loop {
        let line = slow.line().await;
        if line == done {
            break;
        }
        if let Some(rest) = line.strip_prefix("*** you missed ") {
            let n = match rest.split_once(' ') {
                Some((n, "messages")) => n.parse::<usize>().expect("a count"),
                Some(("1", "message")) => 1,
                _ => panic!("unexpected line {line:?}"),
            };
            missed += n;
            next += n;
            continue;
        }
        let i = index(&line, &prefix).unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(
            i, next,
            "lines arrive in order, skipping only what was missed"
        );
        next += 1;
        received += 1;
        assert!(received <= count, "more lines than were sent");
    }
    assert!(missed > CAPACITY, "the slow client lagged: missed {missed}");
    assert_eq!(received + missed, count, "received + missed == sent");

    // And it is still in the room.
    fast.say("welcome back").await;
    slow.expect(&format!("<{}> welcome back", fast.nick)).await;
    talker
        .expect(&format!("<{}> welcome back", fast.nick))
        .await;

    let report = running.stop().await;
    assert_eq!(report.aborted, 0, "{report:?}");
}

/// The number a flood line starts with, if `line` is one from `prefix`.
fn index(line: &str, prefix: &str) -> Option<usize> {
    line.strip_prefix(prefix)?.get(..8)?.parse().ok()
}

#[tokio::test]
async fn shutdown_says_goodbye_to_every_client_and_drains() {
    let running = chat(Room::new()).await;
    let mut all = clients::<3>(running.addr).await;
    all[0].say("/nick alice").await;
    all[0].expect("*** you are now alice").await;
    for other in &mut all[1..] {
        let line = other.line().await;
        assert!(line.ends_with(" is now alice"), "{line:?}");
    }

    let report = running.stop().await;
    for mut client in all {
        // The goodbye is the next line (no leave notices at shutdown), and
        // then the connection closes.
        client.expect(GOODBYE).await;
        client.expect_closed().await;
    }

    assert_adds_up(&report);
    assert_eq!(report.accepted, 3, "{report:?}");
    assert_eq!(report.active_at_shutdown, 3, "{report:?}");
    assert_eq!(report.drained, 3, "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(report.completed, 3, "{report:?}");
}
