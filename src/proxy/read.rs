//! The async reader: takes exactly one PROXY protocol header off a
//! [`TcpStream`], waiting for its bytes as they arrive.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::{Parsed, ProxyError, ProxyHeader, V1_MAX_LEN, V2_MIN_LEN, parse_header};

/// Reads one PROXY protocol header from `stream`, consuming exactly its
/// bytes: whatever the peer sent after it stays unread in the socket, for
/// the handler.
///
/// The reader peeks at what has arrived and parses it, and takes from the
/// socket only bytes the parser has placed inside the header, so it never
/// reads payload. Until [`V2_MIN_LEN`] (16) bytes have arrived, more than
/// either version's signature, it takes nothing: a stream that turns out to
/// carry no header is left exactly as it arrived, even when its first bytes
/// came in a segment of their own and looked like the start of a signature
/// (a `"P"`, or `"\r\n"`). That is what lets a listener serve clients
/// without a header when the header is optional. From then on it takes
/// what it has parsed as it goes, so that a header sent a byte at a time
/// costs no more than one sent whole.
///
/// Memory is a [`V1_MAX_LEN`]-byte buffer inside the future, which holds
/// any v1 line and the v2 headers of IP addresses with a few TLVs; a longer
/// v2 header (Unix addresses, large TLVs) gets one allocation of its exact
/// length, once the 16 fixed bytes have announced that length and it has
/// passed the cap. A header whose first 16 bytes arrive in pieces also
/// costs two small allocations for each piece it waits for there.
///
/// This function does not time out: a peer that sends nothing keeps it
/// waiting, asleep until more bytes arrive (where the platform's selector
/// keeps reporting bytes already seen, it looks again every 10 ms). Run it
/// under
/// `tokio::time::timeout` (the specification suggests "at least 3 seconds
/// to cover a TCP retransmit") and close the connection when the timeout
/// fires.
///
/// # Errors
///
/// [`ProxyError::UnexpectedEof`] when the peer closes first (`received`:
/// the bytes of the header that had arrived), [`ProxyError::Io`] when the
/// socket fails, and the errors of [`parse_header`] for a bad header. An
/// error within the first 16 bytes, such as
/// [`ProxyError::NotProxyProtocol`], leaves the stream untouched; after
/// them, part of the header may have been consumed, and the connection
/// should be closed.
///
/// # Cancel safety
///
/// Cancel safe until 16 bytes have arrived (nothing is taken before). After
/// that, part of the header may have been consumed when the future is
/// dropped (by a timeout), and the stream is no longer usable for the
/// protocol: close it.
pub async fn read_header(
    stream: &mut TcpStream,
    v2_max_len: usize,
) -> Result<ProxyHeader, ProxyError> {
    // Most headers fit here: every v1 line, and v2 with IP addresses and
    // short TLVs. Not a heap buffer of the v2 cap: this runs for every
    // connection, and most headers are a tenth of that.
    let mut head = [0; V1_MAX_LEN];
    // The buffer of a v2 header too long for `head`, of exactly its
    // length; empty (unallocated) until one announces itself.
    let mut long = Vec::new();
    // buf[..taken] has been read off the socket, and every byte of it
    // belongs to the header; buf[taken..seen] has been peeked and parsed
    // (an incomplete header) but is still in the socket.
    let (mut taken, mut seen) = (0, 0);
    loop {
        let buf: &mut [u8] = if long.is_empty() {
            &mut head
        } else {
            &mut long
        };
        // `buf` is longer than `seen`: the parser asked for more than it was
        // given (an `Incomplete` lower bound exceeds its input), and `buf`
        // holds what it asked for.
        let peeked = peek_more(stream, &mut buf[taken..], seen - taken).await?;
        if peeked == seen - taken {
            // An end of stream: nothing more will come.
            return Err(ProxyError::UnexpectedEof { received: seen });
        }
        let arrived = taken + peeked;
        let (header, end, need) = match parse_header(&buf[..arrived], v2_max_len)? {
            Parsed::Complete { header, consumed } => (Some(header), consumed, consumed),
            // Past both signatures: a header, surely; take what is parsed.
            Parsed::Incomplete { min_len } if arrived >= V2_MIN_LEN => (None, arrived, min_len),
            Parsed::Incomplete { .. } => {
                seen = arrived;
                continue;
            }
        };
        // taken <= end <= arrived: the parser never claims bytes it was not
        // given, and those are in the socket's buffer, so this read does not
        // wait. Outside the match, so that nothing of the parser's but the
        // header is kept over the await.
        stream.read_exact(&mut buf[taken..end]).await?;
        if let Some(header) = header {
            return Ok(header);
        }
        (taken, seen) = (end, end);
        // Only a v2 header outgrows `head` (a v1 line cannot end past
        // V1_MAX_LEN), and only once its length field is in and within the
        // cap: `need` is then its exact total.
        if need > buf.len() {
            long = vec![0; need];
            long[..taken].copy_from_slice(&head[..taken]);
        }
    }
}

/// Peeks at the start of `stream` into `buf` once it holds more than the
/// `seen` bytes already parsed, or once the peer has closed: returns how many
/// bytes it holds, `seen` (or 0) meaning an end of stream.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> io::Result<usize> {
    loop {
        // Through `poll_peek` rather than `peek`, whose future would add
        // some 200 bytes to this one, in every connection's task. With
        // nothing in the socket, it waits for bytes.
        let peeked = poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(buf))).await?;
        if peeked != seen || peeked == 0 {
            return Ok(peeked);
        }
        // Nothing new since the last parse (only within the first 16
        // bytes). Boxed: the wait serves only headers whose start arrives
        // in pieces, and its future would enlarge every PROXY connection's
        // task.
        if !Box::pin(more_arrived(stream, seen)).await? {
            return Ok(seen);
        }
    }
}

/// The pause between probes where the selector keeps reporting a socket
/// whose unread bytes are not new.
const IDLE_PROBE_PACE: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until the socket holds more than the `seen` bytes already parsed
/// (`true`) or the peer has closed without sending more (`false`).
///
/// A peek does not consume, so the socket stays readable while it holds the
/// bytes already seen: waiting for more means clearing that readiness, with
/// a probe inside [`TcpStream::try_io`], so that bytes arriving between the
/// probe and the clearing are a new readiness event and are never missed.
/// The probe only counts bytes (a peek into uninitialised memory, which it
/// never reads), so that it needs neither `unsafe` nor a descriptor more.
/// Where the selector reports the socket again although nothing new came,
/// the probes are paced ([`IDLE_PROBE_PACE`]).
async fn more_arrived(stream: &TcpStream, seen: usize) -> io::Result<bool> {
    let mut probe = vec![MaybeUninit::<u8>::uninit(); seen + 1];
    // Readiness that brought nothing new, so far.
    let mut idle_wakes = 0u32;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let probed = stream.try_io(Interest::READABLE, || {
            let holds = SockRef::from(stream).peek(&mut probe)?;
            if holds > seen {
                Ok(true)
            } else if ready.is_read_closed() {
                Ok(false)
            } else {
                // Clears the readiness behind which the probe found
                // nothing new.
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match probed {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                // Edge-triggered selectors (epoll, kqueue) report the socket
                // again only when something arrives. Level-triggered ones
                // (mio's poll(2) backend, Windows) report it again at once
                // while unread bytes remain: from the second idle wake on,
                // pace the probes instead of spinning.
                if idle_wakes > 0 {
                    tokio::time::sleep(IDLE_PROBE_PACE).await;
                }
                idle_wakes = idle_wakes.saturating_add(1);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::parse::V2_SIGNATURE;
    use crate::proxy::test_support::{sock, tlv, unix_field, v2};
    use crate::proxy::{DEFAULT_V2_MAX_LEN, Tlv};

    // ---- read_header over loopback ------------------------------------------

    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// A connected pair over 127.0.0.1: (the client, the server's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("listener address");
        let (client, accepted) = tokio::time::timeout(TEST_TIMEOUT, async {
            tokio::join!(TcpStream::connect(addr), listener.accept())
        })
        .await
        .expect("connecting over loopback timed out");
        (client.expect("connect"), accepted.expect("accept").0)
    }

    /// A pair whose client has sent `sent`, and closed its side when `close`.
    async fn pair_after(sent: &[u8], close: bool) -> (TcpStream, TcpStream) {
        let (mut client, server) = pair().await;
        client.write_all(sent).await.expect("client write");
        if close {
            client.shutdown().await.expect("client shutdown");
        }
        (client, server)
    }

    /// `read_header` with the cap `max`, failing the test with `hang` when
    /// it does not end within the test timeout.
    async fn read(
        server: &mut TcpStream,
        max: usize,
        hang: &str,
    ) -> Result<ProxyHeader, ProxyError> {
        tokio::time::timeout(TEST_TIMEOUT, read_header(server, max))
            .await
            .unwrap_or_else(|_| panic!("{hang}"))
    }

    async fn read_rest(server: &mut TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(TEST_TIMEOUT, server.read_to_end(&mut rest))
            .await
            .expect("reading the payload timed out")
            .expect("reading the payload");
        rest
    }

    /// A v2 TCP4 header of exactly `total` bytes (at least 31), padded with
    /// a NOOP TLV.
    fn v2_of_len(total: usize) -> Vec<u8> {
        let padding = vec![0; total - V2_MIN_LEN - 12 - 3];
        let body = [[1; 12].as_slice(), &tlv(Tlv::NOOP, &padding)].concat();
        v2(0x21, 0x11, &body)
    }

    #[tokio::test]
    async fn read_header_leaves_the_payload_unread() {
        let (_client, mut server) = pair_after(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n\r\n",
            true,
        )
        .await;
        let header = read(&mut server, DEFAULT_V2_MAX_LEN, "read_header timed out")
            .await
            .expect("a valid header");
        assert_eq!(header.source_addr(), Some(sock("192.168.0.1:56324")));
        assert_eq!(read_rest(&mut server).await, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn read_header_assembles_a_v2_header_sent_in_pieces() {
        let (mut client, mut server) = pair().await;
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50];
        body.extend(tlv(Tlv::AUTHORITY, b"example.com"));
        let header = v2(0x21, 0x11, &body);
        let payload = b"\r\n\r\n\0\r\nQUIT\n payload that looks like a signature";
        let writer = tokio::spawn(async move {
            // Byte by byte through the fixed part, then in two chunks with
            // the payload glued to the header's end.
            for byte in &header[..V2_MIN_LEN] {
                client.write_all(&[*byte]).await.expect("client write");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let split = header.len() - 3;
            client
                .write_all(&header[V2_MIN_LEN..split])
                .await
                .expect("client write");
            tokio::time::sleep(Duration::from_millis(10)).await;
            client
                .write_all(&[&header[split..], payload.as_slice()].concat())
                .await
                .expect("client write");
            client.shutdown().await.expect("client shutdown");
        });
        let parsed = read(&mut server, DEFAULT_V2_MAX_LEN, "read_header timed out")
            .await
            .expect("a valid header");
        assert_eq!(parsed.source_addr(), Some(sock("10.0.0.1:8080")));
        assert_eq!(parsed.authority(), Some("example.com"));
        assert_eq!(read_rest(&mut server).await, payload);
        writer.await.expect("writer task");
    }

    /// Headers at the edges of the reader's buffer (a v1 line and a v2
    /// header of `V1_MAX_LEN` bytes, a v2 one byte longer) and of the cap,
    /// each sent in two pieces and followed by payload that looks like a
    /// header: the reader gives what the parser gives, and leaves the
    /// payload, to the byte, for the handler.
    #[tokio::test]
    async fn read_header_takes_exactly_the_header_at_every_size() {
        let ffff = ["ffff"; 8].join(":");
        let v1_max = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n").into_bytes();
        let unix = [unix_field(b"/a"), unix_field(b"/b")].concat();
        let payload = b"PROXY \r\n\r\n\0\r\nQUIT\n, then the application's bytes";
        let cases = [
            (v1_max, DEFAULT_V2_MAX_LEN),
            (b"PROXY UNKNOWN\r\n".to_vec(), DEFAULT_V2_MAX_LEN),
            (v2(0x20, 0x00, &[]), DEFAULT_V2_MAX_LEN),
            (v2(0x21, 0x11, &[1; 12]), DEFAULT_V2_MAX_LEN),
            (v2_of_len(V1_MAX_LEN), DEFAULT_V2_MAX_LEN),
            (v2_of_len(V1_MAX_LEN), V1_MAX_LEN),
            (v2_of_len(V1_MAX_LEN + 1), DEFAULT_V2_MAX_LEN),
            (v2_of_len(V1_MAX_LEN + 1), V1_MAX_LEN + 1),
            (v2(0x21, 0x31, &unix), DEFAULT_V2_MAX_LEN),
            (v2_of_len(DEFAULT_V2_MAX_LEN), DEFAULT_V2_MAX_LEN),
            (v2_of_len(5000), 5000),
        ];
        for (header, max) in cases {
            let len = header.len();
            let (mut client, mut server) = pair().await;
            let sent = [header.as_slice(), payload].concat();
            let writer = tokio::spawn(async move {
                let (first, second) = sent.split_at(len / 2);
                client.write_all(first).await.expect("client write");
                tokio::time::sleep(Duration::from_millis(10)).await;
                client.write_all(second).await.expect("client write");
                client.shutdown().await.expect("client shutdown");
            });
            let parsed = read(&mut server, max, "read_header timed out")
                .await
                .unwrap_or_else(|err| panic!("a header of {len} bytes, cap {max}: {err}"));
            let expected = parse_header(&header, max).expect("a valid test header");
            assert_eq!(
                Parsed::Complete {
                    header: parsed,
                    consumed: len
                },
                expected,
                "a header of {len} bytes, cap {max}"
            );
            assert_eq!(
                read_rest(&mut server).await,
                payload,
                "after a header of {len} bytes, cap {max}"
            );
            writer.await.expect("writer task");
        }
    }

    #[tokio::test]
    async fn read_header_refuses_garbage_at_once() {
        // The client keeps the connection open: the error must come from
        // the bytes, not from an end of stream.
        let (client, mut server) = pair_after(b"GET / HTTP/1.1\r\n", false).await;
        let result = read(
            &mut server,
            DEFAULT_V2_MAX_LEN,
            "garbage must be refused without waiting",
        )
        .await;
        assert!(
            matches!(result, Err(ProxyError::NotProxyProtocol)),
            "{result:?}"
        );
        drop(client);
    }

    /// Sends `first` and returns once all of it is in the server's socket.
    async fn send_and_arrive(client: &mut TcpStream, server: &TcpStream, first: &[u8]) {
        if first.is_empty() {
            return;
        }
        client.write_all(first).await.expect("client write");
        tokio::time::timeout(TEST_TIMEOUT, async {
            let mut probe = vec![0; first.len()];
            while server.peek(&mut probe).await.expect("peek") < first.len() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first segment did not arrive");
    }

    /// Polls `fut` once.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
    }

    /// A stream whose first segment looks like the start of a header but is
    /// none, or a bad one, keeps every byte: nothing is taken off the socket
    /// within the first 16 bytes, so that a listener where the header is
    /// optional serves such a client its own bytes.
    #[tokio::test]
    async fn read_header_takes_nothing_from_a_stream_that_is_no_header() {
        let cases: [(&[u8], &[u8]); 4] = [
            // WebDAV's PROPFIND shares "PRO" with "PROXY ".
            (b"PRO", b"PFIND / HTTP/1.1\r\n\r\n"),
            (b"P", b"OST / HTTP/1.1\r\n\r\n"),
            // Blank lines share "\r\n\r\n" with the v2 signature.
            (b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"),
            // A v1 line that goes wrong after its signature.
            (b"PROXY TCP4 ", b"not-an-address 1.2.3.4 1 2\r\n"),
        ];
        for (first, rest) in cases {
            let (mut client, mut server) = pair().await;
            send_and_arrive(&mut client, &server, first).await;
            {
                let mut reading = std::pin::pin!(read_header(&mut server, DEFAULT_V2_MAX_LEN));
                let once = poll_once(&mut reading).await;
                assert!(once.is_pending(), "{first:?} alone is not yet an answer");
                client.write_all(rest).await.expect("client write");
                let result = tokio::time::timeout(TEST_TIMEOUT, reading)
                    .await
                    .expect("read_header did not end once the rest arrived");
                if first.starts_with(b"PROXY ") {
                    assert!(
                        matches!(result, Err(ProxyError::V1Invalid { .. })),
                        "{first:?} + {rest:?}: {result:?}"
                    );
                } else {
                    // What lets an optional header serve the client.
                    assert!(
                        matches!(result, Err(ProxyError::NotProxyProtocol)),
                        "{first:?} + {rest:?}: {result:?}"
                    );
                }
            }
            client.shutdown().await.expect("client shutdown");
            assert_eq!(
                read_rest(&mut server).await,
                [first, rest].concat(),
                "the bytes after {first:?} was peeked alone"
            );
        }
    }

    /// Valid headers whose start the reader has seen, and found incomplete,
    /// before the rest arrives: within the first 16 bytes (where it waits
    /// for new bytes behind the ones it saw) and past them (where it has
    /// taken what it parsed). Then the payload, to the byte.
    #[tokio::test]
    async fn read_header_completes_a_header_it_waited_for() {
        let ffff = ["ffff"; 8].join(":");
        let v1_max = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n").into_bytes();
        let payload = b"\r\n\r\n\0\r\nQUIT\n and the application's bytes";
        let headers = [
            v1_max,
            v2(0x21, 0x11, &[1; 12]),
            v2_of_len(V1_MAX_LEN),
            v2_of_len(V1_MAX_LEN + 1),
            v2_of_len(DEFAULT_V2_MAX_LEN),
        ];
        for header in headers {
            for split in [1, 5, 15, 16, 17, header.len() - 1] {
                let (mut client, mut server) = pair().await;
                send_and_arrive(&mut client, &server, &header[..split]).await;
                let len = header.len();
                let parsed = {
                    let mut reading = std::pin::pin!(read_header(&mut server, DEFAULT_V2_MAX_LEN));
                    let once = poll_once(&mut reading).await;
                    assert!(once.is_pending(), "{split} of {len} bytes: {once:?}");
                    client
                        .write_all(&[&header[split..], payload.as_slice()].concat())
                        .await
                        .expect("client write");
                    tokio::time::timeout(TEST_TIMEOUT, reading)
                        .await
                        .unwrap_or_else(|_| panic!("{split} of {len} bytes, then the rest: hung"))
                        .unwrap_or_else(|err| panic!("{split} of {len} bytes: {err}"))
                };
                assert_eq!(
                    Parsed::Complete {
                        header: parsed,
                        consumed: len
                    },
                    parse_header(&header, DEFAULT_V2_MAX_LEN).expect("a valid test header"),
                    "{split} of {len} bytes"
                );
                client.shutdown().await.expect("client shutdown");
                assert_eq!(
                    read_rest(&mut server).await,
                    payload,
                    "{split} of {len} bytes"
                );
            }
        }
    }

    /// A peer that closes while the reader waits for the rest of a header,
    /// before and after the first 16 bytes: the wait ends at once.
    #[tokio::test]
    async fn read_header_wakes_for_a_close_while_it_waits() {
        for sent in [&b"PROXY TCP4 1.2."[..], b"PROXY TCP4 1.2.3.4 "] {
            let (mut client, mut server) = pair().await;
            send_and_arrive(&mut client, &server, sent).await;
            let mut reading = std::pin::pin!(read_header(&mut server, DEFAULT_V2_MAX_LEN));
            assert!(poll_once(&mut reading).await.is_pending(), "{sent:?}");
            client.shutdown().await.expect("client shutdown");
            let result = tokio::time::timeout(TEST_TIMEOUT, reading)
                .await
                .expect("a close must end the wait");
            assert!(
                matches!(result, Err(ProxyError::UnexpectedEof { received }) if received == sent.len()),
                "{sent:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_header_refuses_too_much() {
        let ffff = ["ffff"; 8].join(":");
        let flood = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 4096]].concat();
        let v1_over = format!("PROXY UNKNOWN {ffff} {ffff} 65535 655350\r\n").into_bytes();
        assert_eq!(v1_over.len(), V1_MAX_LEN + 1);
        for sent in [flood, v1_over] {
            // Open, so that the error comes from the bytes.
            let (_client, mut server) = pair_after(&sent, false).await;
            let result = read(
                &mut server,
                DEFAULT_V2_MAX_LEN,
                "an over-long v1 line must be refused without waiting",
            )
            .await;
            assert!(matches!(result, Err(ProxyError::V1TooLong)), "{result:?}");
        }

        // Refused from the fixed part, before the rest is sent; one byte
        // over the cap is too much, on either side of the reader's buffer.
        let cases = [
            (v2(0x21, 0x11, &[0; 60_000]), DEFAULT_V2_MAX_LEN),
            (v2_of_len(DEFAULT_V2_MAX_LEN + 1), DEFAULT_V2_MAX_LEN),
            (v2_of_len(V1_MAX_LEN + 1), V1_MAX_LEN),
            (v2_of_len(V1_MAX_LEN), V1_MAX_LEN - 1),
        ];
        for (header, max) in cases {
            let (_client, mut server) = pair_after(&header[..V2_MIN_LEN], false).await;
            let result = read(
                &mut server,
                max,
                "an over-long v2 header must be refused from its fixed part",
            )
            .await;
            let len = header.len();
            assert!(
                matches!(result, Err(ProxyError::V2TooLong { len: l, max: m }) if (l, m) == (len, max)),
                "{len} bytes, cap {max}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_header_reports_a_close_midway() {
        // Closed after part of a v1 line, of a long v2 header (read into
        // its own buffer), and before any byte.
        let long = v2_of_len(DEFAULT_V2_MAX_LEN);
        for (sent, received) in [
            (&b"PROXY TCP4 1.2.3.4 "[..], 19),
            (&long[..500], 500),
            (&b""[..], 0),
        ] {
            let (_client, mut server) = pair_after(sent, true).await;
            let result = read(
                &mut server,
                DEFAULT_V2_MAX_LEN,
                "a close midway must end the read",
            )
            .await;
            assert!(
                matches!(result, Err(ProxyError::UnexpectedEof { received: r }) if r == received),
                "after {received} bytes: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_header_waits_for_a_silent_or_slow_peer_until_the_callers_timeout() {
        // Edge-triggered selectors (epoll, kqueue) wake the reader only when
        // something happens on the socket: a handful of polls (four here on
        // Linux within 16 bytes, two past them). Level-triggered ones (mio's
        // poll(2) backend, Windows) keep reporting unread bytes and the
        // reader paces its probes: about twenty. A spin would be thousands.
        const MOST_POLLS: u32 = 40;
        for sent in [
            &b""[..],
            // Within the first 16 bytes, where nothing is taken: the
            // reader waits for bytes behind the ones it has seen.
            b"P",
            b"PROXY TCP4 1.2.",
            &V2_SIGNATURE,
            // Past them.
            b"PROXY TCP4 1.2.3.4",
            &v2(0x21, 0x11, &[0; 12])[..20],
            &v2_of_len(DEFAULT_V2_MAX_LEN)[..V1_MAX_LEN + 20],
        ] {
            let (mut client, mut server) = pair().await;
            send_and_arrive(&mut client, &server, sent).await;
            // Polls of the reader: it sleeps while nothing new arrives, so
            // a few, not a spin.
            let mut polls = 0;
            let mut reading = std::pin::pin!(read_header(&mut server, DEFAULT_V2_MAX_LEN));
            let counted = std::future::poll_fn(|cx| {
                polls += 1;
                reading.as_mut().poll(cx)
            });
            let result = tokio::time::timeout(Duration::from_millis(200), counted).await;
            assert!(
                result.is_err(),
                "expected the caller's timeout after {sent:?}, got {result:?}"
            );
            assert!(
                polls <= MOST_POLLS,
                "{polls} polls in 200 ms after {sent:?}"
            );
            drop(client);
        }
    }
}
