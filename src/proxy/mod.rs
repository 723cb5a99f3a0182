//! The PROXY protocol header (HAProxy's specification, versions 1 and 2): a
//! pure parser over bytes and an async reader that takes exactly the header
//! off a [`TcpStream`].
//!
//! A load balancer in front of the server (HAProxy `send-proxy` or
//! `send-proxy-v2`, nginx `proxy_protocol on`, Envoy, a cloud NLB) opens each
//! connection with one header that tells who the real client is. The server
//! must read that header, and nothing more, before the handler sees a single
//! byte; section numbers in the comments below (§2.1, §2.2, ...) refer to
//! `doc/proxy-protocol.txt` in the HAProxy sources.
//!
//! # Limits
//!
//! - A v1 line is at most [`V1_MAX_LEN`] (107) bytes including its CRLF
//!   (§2.1); a line that cannot end within that bound is an error as soon as
//!   that is certain.
//! - A v2 header is 16 bytes plus up to 65,535 bytes of addresses and TLVs
//!   (§2.2); the caller caps its total length ([`DEFAULT_V2_MAX_LEN`], 1024
//!   bytes, is plenty for addresses and the usual TLVs). A larger announced
//!   length is an error as soon as the 16 fixed bytes are in, before any of
//!   the rest is read.
//! - Nothing here waits by itself: [`read_header`] must run under a timeout
//!   chosen by the caller (the specification suggests at least 3 seconds, to
//!   cover one TCP retransmission).
//!
//! # Trust
//!
//! A header is only as trustworthy as its sender: read one only on a listener
//! configured for it, and only from addresses of known load balancers (§5).
//! This module parses; deciding whom to believe is the caller's job.
//!
//! # Examples
//!
//! A server reads the header for you when a listener asks for it
//! ([`Listen::proxy_protocol`](crate::Listen::proxy_protocol)); the handler
//! then finds the client in [`Connection::peer_addr`](crate::Connection::peer_addr)
//! and the header in [`Connection::proxy_header`](crate::Connection::proxy_header).
//! The reader can also be used on its own:
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard::proxy::{read_header, DEFAULT_V2_MAX_LEN};
//!
//! # async fn demo(mut stream: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let header = tokio::time::timeout(
//!     Duration::from_secs(5),
//!     read_header(&mut stream, DEFAULT_V2_MAX_LEN),
//! )
//! .await??;
//! let client = header.source_addr().unwrap_or(stream.peer_addr()?);
//! # let _ = client;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::SockRef;
use tokio::io::{AsyncReadExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The longest v1 header, CRLF included (§2.1: the worst case
/// `PROXY UNKNOWN <39-char IPv6> <39-char IPv6> 65535 65535\r\n`).
pub const V1_MAX_LEN: usize = 107;

/// The fixed part of a v2 header: the 12-byte signature, the version and
/// command byte, the family and protocol byte, and the 2-byte length (§2.2).
pub const V2_MIN_LEN: usize = 16;

/// The longest v2 header the protocol can express: the fixed part plus a
/// length field of 65,535.
pub const V2_PROTOCOL_MAX_LEN: usize = V2_MIN_LEN + u16::MAX as usize;

/// The default cap on a v2 header's total length, in bytes.
///
/// Addresses take at most 216 bytes (two Unix paths); the rest leaves room
/// for the TLVs load balancers send in practice (ALPN, authority, a unique
/// ID, TLS details, a cloud endpoint ID).
pub const DEFAULT_V2_MAX_LEN: usize = 1024;

/// The v2 signature (§2.2). It contains a NUL byte and is not a C string.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a v1 header starts with, the space included (§2.1).
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The shortest v1 header, `PROXY UNKNOWN\r\n` (§2.1).
const V1_MIN_LEN: usize = 15;

/// The protocol names a v1 line may carry (§2.1).
const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

/// The longest IPv6 text form: eight 4-digit groups, or six and a dotted
/// IPv4 tail (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const V1_IPV6_MAX_LEN: usize = 45;

/// The size of a v2 `AF_UNIX` address (§2.2: "exactly 108 bytes each").
pub const UNIX_ADDR_LEN: usize = 108;

/// The result of [`parse_header`] on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parsed {
    /// The bytes so far are the beginning of a header that may still turn
    /// out valid. The header, if it is one, is longer than the input: every
    /// byte given belongs to it, so a reader may consume them all.
    Incomplete {
        /// A lower bound on the header's total length: the input must grow
        /// to at least this many bytes before parsing can complete. Never
        /// more than the applicable cap ([`V1_MAX_LEN`], or the v2 cap but
        /// at least [`V2_MIN_LEN`]).
        min_len: usize,
    },
    /// A whole, valid header.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// How many bytes of the input it took; whatever follows is payload.
        consumed: usize,
    },
}

/// A parsed PROXY protocol header, v1 or v2.
///
/// [`addresses`](Self::addresses) says what to believe: for
/// [`ProxyAddresses::Unspecified`] (a v2 `LOCAL` health check, a v1
/// `UNKNOWN` line, an unspecified v2 family or protocol) the specification
/// tells the receiver to use the connection's real endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    version: ProxyVersion,
    command: ProxyCommand,
    transport: ProxyTransport,
    addresses: ProxyAddresses,
    // The v2 TLV area exactly as received, validated by the parser so that
    // walking it never fails. Bounded by the v2 cap; empty for v1.
    tlvs: Vec<u8>,
}

impl ProxyHeader {
    /// The protocol version the header was written in.
    pub fn version(&self) -> ProxyVersion {
        self.version
    }

    /// Whether the connection is relayed for a client (`PROXY`) or opened by
    /// the proxy itself (`LOCAL`, v2 only: health checks).
    pub fn command(&self) -> ProxyCommand {
        self.command
    }

    /// The transport and address family of the client's connection.
    pub fn transport(&self) -> ProxyTransport {
        self.transport
    }

    /// The client's and the proxy's addresses as the proxy saw them.
    pub fn addresses(&self) -> &ProxyAddresses {
        &self.addresses
    }

    /// The client's IP address and port, when the header carries one.
    pub fn source_addr(&self) -> Option<SocketAddr> {
        match self.addresses {
            ProxyAddresses::Inet { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The address the client connected to (on the proxy), when the header
    /// carries one.
    pub fn destination_addr(&self) -> Option<SocketAddr> {
        match self.addresses {
            ProxyAddresses::Inet { destination, .. } => Some(destination),
            _ => None,
        }
    }

    /// The v2 TLVs in the order received; none for v1.
    ///
    /// A `LOCAL` header, or one of the unspecified family `AF_UNSPEC`, has
    /// its TLVs read too (a health check may carry a checksum or a unique
    /// ID): they start right after the 16 fixed bytes, or, for a `LOCAL`
    /// header that fills in an address block for its family, after that
    /// block. Where that part of the header is not a whole number of TLVs,
    /// or where they cannot be located (a known family with an unspecified
    /// protocol), it is discarded, as §2.2 tells receivers to do with the
    /// addresses of such headers, and there are no TLVs.
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs { rest: &self.tlvs }
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs()
            .find(|tlv| tlv.kind() == kind)
            .map(|tlv| tlv.value())
    }

    /// The ALPN protocol the client negotiated (`PP2_TYPE_ALPN`, §2.2.1),
    /// such as `b"h2"`.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(Tlv::ALPN)
    }

    /// The host name the client asked for, typically its TLS SNI
    /// (`PP2_TYPE_AUTHORITY`, §2.2.2); `None` when absent or not UTF-8.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(Tlv::AUTHORITY)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The proxy's opaque identifier of the connection
    /// (`PP2_TYPE_UNIQUE_ID`, §2.2.5).
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(Tlv::UNIQUE_ID)
    }

    /// What the proxy knows of the client's TLS session (`PP2_TYPE_SSL`,
    /// §2.2.6).
    pub fn ssl(&self) -> Option<SslTlv<'_>> {
        self.tlv(Tlv::SSL).and_then(SslTlv::new)
    }
}

/// The version of the PROXY protocol a header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyVersion {
    /// The human-readable line (§2.1).
    V1,
    /// The binary header (§2.2).
    V2,
}

/// Why the proxy opened the connection (§2.2, the 13th byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyCommand {
    /// The proxy opened the connection on its own, typically a health
    /// check; the real endpoints are the connection's own. v2 only.
    Local,
    /// The connection is relayed on behalf of a client. Every v1 header.
    Proxy,
}

/// The transport and address family of the relayed connection (§2.1 and the
/// 14th byte of §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyTransport {
    /// TCP over IPv4 (v1 `TCP4`, v2 `\x11`).
    Tcp4,
    /// TCP over IPv6 (v1 `TCP6`, v2 `\x21`).
    Tcp6,
    /// UDP over IPv4 (v2 `\x12`).
    Udp4,
    /// UDP over IPv6 (v2 `\x22`).
    Udp6,
    /// A Unix stream socket (v2 `\x31`).
    UnixStream,
    /// A Unix datagram socket (v2 `\x32`).
    UnixDgram,
    /// Not said: v1 `UNKNOWN`, v2 `AF_UNSPEC` or `UNSPEC`, or a v2 `LOCAL`
    /// header, whose family the specification says to ignore.
    Unspecified,
}

/// The endpoints of the relayed connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyAddresses {
    /// No usable addresses: use the connection's real endpoints (§2.1 for
    /// `UNKNOWN`, §2.2 for `LOCAL` and the unspecified family or protocol).
    Unspecified,
    /// IP endpoints (TCP or UDP).
    Inet {
        /// The client.
        source: SocketAddr,
        /// Where the client connected to.
        destination: SocketAddr,
    },
    /// Unix socket endpoints.
    Unix {
        /// The client's socket.
        source: ProxyUnixAddr,
        /// The socket the client connected to.
        destination: ProxyUnixAddr,
    },
}

/// A Unix socket address from a v2 header: a 108-byte `sun_path` field.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUnixAddr {
    // Boxed so that ProxyAddresses (and every header) stays small.
    raw: Box<[u8; UNIX_ADDR_LEN]>,
}

impl ProxyUnixAddr {
    /// The whole 108-byte field as received.
    pub fn raw(&self) -> &[u8; UNIX_ADDR_LEN] {
        &self.raw
    }

    /// The path: up to the first NUL for a filesystem path; for an abstract
    /// address (a leading NUL, Linux), the field with its NUL padding at the
    /// end trimmed.
    pub fn path(&self) -> &[u8] {
        let raw = &self.raw[..];
        if raw.first() == Some(&0) {
            let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            &raw[..end]
        } else {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            &raw[..end]
        }
    }
}

impl fmt::Debug for ProxyUnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUnixAddr(\"{}\")", self.path().escape_ascii())
    }
}

/// One v2 TLV (type, length, value; §2.2): a type byte and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// `PP2_TYPE_ALPN` (§2.2.1).
    pub const ALPN: u8 = 0x01;
    /// `PP2_TYPE_AUTHORITY` (§2.2.2).
    pub const AUTHORITY: u8 = 0x02;
    /// `PP2_TYPE_CRC32C` (§2.2.3); the parser verifies it, in every header
    /// whose TLVs it reads (see [`ProxyHeader::tlvs`]).
    pub const CRC32C: u8 = 0x03;
    /// `PP2_TYPE_NOOP` (§2.2.4): padding, to be ignored.
    pub const NOOP: u8 = 0x04;
    /// `PP2_TYPE_UNIQUE_ID` (§2.2.5).
    pub const UNIQUE_ID: u8 = 0x05;
    /// `PP2_TYPE_SSL` (§2.2.6).
    pub const SSL: u8 = 0x20;
    /// `PP2_SUBTYPE_SSL_VERSION` (§2.2.6), inside an SSL TLV.
    pub const SSL_VERSION: u8 = 0x21;
    /// `PP2_SUBTYPE_SSL_CN` (§2.2.6), inside an SSL TLV.
    pub const SSL_CN: u8 = 0x22;
    /// `PP2_SUBTYPE_SSL_CIPHER` (§2.2.6), inside an SSL TLV.
    pub const SSL_CIPHER: u8 = 0x23;
    /// `PP2_SUBTYPE_SSL_SIG_ALG` (§2.2.6), inside an SSL TLV.
    pub const SSL_SIG_ALG: u8 = 0x24;
    /// `PP2_SUBTYPE_SSL_KEY_ALG` (§2.2.6), inside an SSL TLV.
    pub const SSL_KEY_ALG: u8 = 0x25;
    /// `PP2_TYPE_NETNS` (§2.2.7).
    pub const NETNS: u8 = 0x30;

    /// The type byte.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The value bytes.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

/// The TLVs of a header (or of an SSL TLV), in the order received.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    // Validated by the parser: a whole number of well-formed TLVs.
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // The area was validated at parse time, so the checks below only
        // stop the walk; they never skip a malformed TLV silently.
        let (&kind, rest) = self.rest.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let value = rest.get(..usize::from(u16::from_be_bytes(*len)))?;
        self.rest = &rest[value.len()..];
        Some(Tlv { kind, value })
    }
}

/// The value of a `PP2_TYPE_SSL` TLV (§2.2.6): what the proxy knows of the
/// client's TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslTlv<'a> {
    client: u8,
    verify: u32,
    sub: &'a [u8],
}

impl<'a> SslTlv<'a> {
    /// `PP2_CLIENT_SSL`: the client connected over TLS.
    pub const CLIENT_SSL: u8 = 0x01;
    /// `PP2_CLIENT_CERT_CONN`: the client sent a certificate on this
    /// connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// `PP2_CLIENT_CERT_SESS`: the client sent a certificate at least once
    /// in this TLS session.
    pub const CLIENT_CERT_SESS: u8 = 0x04;

    fn new(value: &'a [u8]) -> Option<Self> {
        let (&client, rest) = value.split_first()?;
        let (verify, sub) = rest.split_first_chunk::<4>()?;
        Some(SslTlv {
            client,
            verify: u32::from_be_bytes(*verify),
            sub,
        })
    }

    /// The `client` bit field (`CLIENT_*` constants).
    pub fn client(&self) -> u8 {
        self.client
    }

    /// Whether the client connected over TLS (`PP2_CLIENT_SSL`).
    pub fn is_tls(&self) -> bool {
        self.client & Self::CLIENT_SSL != 0
    }

    /// The `verify` field: zero when the client presented a certificate and
    /// it was verified, non-zero otherwise.
    pub fn verify(&self) -> u32 {
        self.verify
    }

    /// The sub-TLVs (`Tlv::SSL_*` types).
    pub fn sub_tlvs(&self) -> Tlvs<'a> {
        Tlvs { rest: self.sub }
    }

    /// The TLS version, such as `"TLSv1.3"` (`PP2_SUBTYPE_SSL_VERSION`).
    pub fn version(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_VERSION)
    }

    /// The common name of the client certificate's subject
    /// (`PP2_SUBTYPE_SSL_CN`).
    pub fn common_name(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_CN)
    }

    /// The cipher, such as `"ECDHE-RSA-AES128-GCM-SHA256"`
    /// (`PP2_SUBTYPE_SSL_CIPHER`).
    pub fn cipher(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_CIPHER)
    }

    /// The algorithm that signed the proxy's certificate
    /// (`PP2_SUBTYPE_SSL_SIG_ALG`).
    pub fn signature_algorithm(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_SIG_ALG)
    }

    /// The algorithm of the proxy certificate's key
    /// (`PP2_SUBTYPE_SSL_KEY_ALG`).
    pub fn key_algorithm(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_KEY_ALG)
    }

    fn sub_str(&self, kind: u8) -> Option<&'a str> {
        let tlv = self.sub_tlvs().find(|tlv| tlv.kind() == kind)?;
        std::str::from_utf8(tlv.value()).ok()
    }
}

/// Why a PROXY protocol header was refused.
///
/// Every variant means the connection must be closed without reaching the
/// handler (§2.1: "Any sequence which does not exactly match the protocol
/// must be discarded and cause the receiver to abort the connection").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The input starts with neither the v1 nor the v2 signature.
    #[error("not a proxy protocol header")]
    NotProxyProtocol,
    /// A v1 line that cannot end with CRLF within [`V1_MAX_LEN`] bytes.
    #[error("v1 header does not end within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 line with a CR not followed by LF, or an LF not preceded by CR
    /// (§2.1: a single CR or LF must not end the line).
    #[error("v1 header has a bare cr or lf")]
    V1LineEnding,
    /// A v1 field that is not what §2.1 allows there.
    #[error("v1 header has an invalid {field}")]
    V1Invalid {
        /// Which field: `protocol`, `source address`, `destination
        /// address`, `source port`, `destination port` or `field count`.
        field: &'static str,
    },
    /// A v2 version other than 2 (§2.2: "the receiver must only accept this
    /// value").
    #[error("unsupported v2 protocol version {0}")]
    V2Version(u8),
    /// A v2 command other than `LOCAL` (0) or `PROXY` (1).
    #[error("unassigned v2 command {0:#x}")]
    V2Command(u8),
    /// A v2 address family other than `AF_UNSPEC`, `AF_INET`, `AF_INET6`
    /// and `AF_UNIX` (0 to 3).
    #[error("unassigned v2 address family {0:#x}")]
    V2Family(u8),
    /// A v2 transport protocol other than `UNSPEC`, `STREAM` and `DGRAM`
    /// (0 to 2).
    #[error("unassigned v2 transport protocol {0:#x}")]
    V2Protocol(u8),
    /// A v2 header announcing a total length over the caller's cap.
    #[error("v2 header of {len} bytes exceeds the cap of {max} bytes")]
    V2TooLong {
        /// The total length the header announces.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A v2 address block too short for the announced family.
    #[error("v2 address block of {len} bytes is shorter than the {needed} its family needs")]
    V2AddressTruncated {
        /// The announced length of addresses and TLVs.
        len: usize,
        /// What the family's addresses take.
        needed: usize,
    },
    /// A v2 TLV (or SSL sub-TLV) that runs past the end of the header.
    #[error("v2 tlv at byte {offset} of the header runs past its end")]
    V2TlvTruncated {
        /// Where the TLV starts, counted from the header's first byte.
        offset: usize,
    },
    /// A v2 `PP2_TYPE_CRC32C` TLV whose value is not 4 bytes long.
    #[error("v2 crc32c tlv has {len} bytes instead of 4")]
    V2ChecksumLength {
        /// The TLV's value length.
        len: usize,
    },
    /// A v2 header whose CRC32c does not match its `PP2_TYPE_CRC32C` TLV
    /// (§2.2.3: the receiver "MUST treat the TCP connection providing the
    /// header as invalid").
    #[error("v2 header fails its crc32c check")]
    V2ChecksumMismatch,
    /// The peer closed the connection before a whole header arrived.
    #[error("connection closed after {received} bytes of the proxy header")]
    UnexpectedEof {
        /// How many header bytes had arrived.
        received: usize,
    },
    /// Reading from the socket failed.
    #[error("cannot read the proxy header")]
    Io(#[from] io::Error),
}

/// Parses a PROXY protocol header, v1 or v2, at the start of `input`.
///
/// `v2_max_len` caps a v2 header's total length (fixed part, addresses and
/// TLVs); [`DEFAULT_V2_MAX_LEN`] suits most deployments. A v1 line is always
/// capped at [`V1_MAX_LEN`]. The function is pure, allocates only the
/// returned header's TLV area (at most `v2_max_len` bytes), and never
/// panics. Input that may still become a valid header is
/// [`Parsed::Incomplete`]; input that can no longer become one is an error
/// at the first byte that proves it, so that a bad peer is dropped early.
///
/// # Errors
///
/// Any [`ProxyError`] but [`ProxyError::UnexpectedEof`] and
/// [`ProxyError::Io`]: the input is not a header, or a malformed, over-long
/// or unsupported one.
pub fn parse_header(input: &[u8], v2_max_len: usize) -> Result<Parsed, ProxyError> {
    // §2.2, "Identifying the protocol version": the first byte tells the
    // two signatures apart ('\r' against 'P').
    match input.first() {
        None => Ok(Parsed::Incomplete {
            min_len: V1_MIN_LEN,
        }),
        Some(&b'\r') => parse_v2(input, v2_max_len),
        Some(&b'P') => parse_v1(input),
        Some(_) => Err(ProxyError::NotProxyProtocol),
    }
}

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

/// Parses a v1 line (§2.1). `input[0]` is `b'P'`.
fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    // The signature, "PROXY ", byte by byte so that a short prefix waits.
    let sig_len = window.len().min(V1_PREFIX.len());
    if window[..sig_len] != V1_PREFIX[..sig_len] {
        return Err(ProxyError::NotProxyProtocol);
    }
    // Line endings: the first CR must be followed by LF, and no LF may come
    // alone (§2.1: "must not tolerate a single CR or LF character").
    let line_end = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => return Err(ProxyError::V1LineEnding),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Some(i),
            Some(_) => return Err(ProxyError::V1LineEnding),
            None => None,
        },
        None => None,
    };
    match line_end {
        Some(end) => {
            let (transport, addresses) = parse_v1_fields(&window[V1_PREFIX.len()..end], true)?;
            Ok(Parsed::Complete {
                header: ProxyHeader {
                    version: ProxyVersion::V1,
                    command: ProxyCommand::Proxy,
                    transport,
                    addresses,
                    tlvs: Vec::new(),
                },
                consumed: end + 2,
            })
        }
        None => {
            // Without a CR at the end, two more bytes are the least that can
            // finish the line; with one, one more.
            let more = if window.last() == Some(&b'\r') { 1 } else { 2 };
            let min_len = (window.len() + more).max(V1_MIN_LEN);
            if min_len > V1_MAX_LEN {
                return Err(ProxyError::V1TooLong);
            }
            if let Some(fields) = window.get(V1_PREFIX.len()..) {
                let fields = fields.strip_suffix(b"\r").unwrap_or(fields);
                parse_v1_fields(fields, false)?;
            }
            Ok(Parsed::Incomplete { min_len })
        }
    }
}

/// Checks the fields after `"PROXY "`: all of them when `complete` (the line
/// ended), or as a prefix of a valid line when not, so that garbage is
/// refused before its CRLF arrives.
fn parse_v1_fields(
    fields: &[u8],
    complete: bool,
) -> Result<(ProxyTransport, ProxyAddresses), ProxyError> {
    const FIELD_NAMES: [&str; 4] = [
        "source address",
        "destination address",
        "source port",
        "destination port",
    ];
    let invalid = |field| ProxyError::V1Invalid { field };

    let mut tokens = fields.split(|&b| b == b' ');
    // `split` yields at least one (maybe empty) token.
    let protocol = tokens.next().unwrap_or_default();
    let protocol_done = complete || fields.len() > protocol.len();
    let transport = match protocol {
        b"TCP4" => ProxyTransport::Tcp4,
        b"TCP6" => ProxyTransport::Tcp6,
        // §2.1: for UNKNOWN "the receiver must ignore anything presented
        // before the CRLF"; the line-ending checks have been made already.
        b"UNKNOWN" => return Ok((ProxyTransport::Unspecified, ProxyAddresses::Unspecified)),
        partial if !protocol_done && V1_PROTOCOLS.iter().any(|name| name.starts_with(partial)) => {
            return Ok((ProxyTransport::Unspecified, ProxyAddresses::Unspecified));
        }
        _ => return Err(invalid("protocol")),
    };

    let v4 = transport == ProxyTransport::Tcp4;
    let mut ips = [None; 2];
    let mut ports = [0u16; 2];
    let mut count = 0;
    // Fields are checked in order, so the error names the first bad one.
    let mut tokens = tokens.peekable();
    while let Some(token) = tokens.next() {
        let Some(&name) = FIELD_NAMES.get(count) else {
            return Err(invalid("field count"));
        };
        // Every token is whole but the trailing one of an unfinished line.
        let whole = complete || tokens.peek().is_some();
        let ok = match (whole, count) {
            (false, _) => v1_partial_ok(token, count, v4),
            (true, 0 | 1) => {
                ips[count] = parse_v1_ip(token, v4);
                ips[count].is_some()
            }
            (true, _) => match parse_v1_port(token) {
                Some(port) => {
                    ports[count - 2] = port;
                    true
                }
                None => false,
            },
        };
        if !ok {
            return Err(invalid(name));
        }
        count += 1;
    }
    if !complete {
        return Ok((transport, ProxyAddresses::Unspecified));
    }
    if count != FIELD_NAMES.len() {
        return Err(invalid("field count"));
    }
    match ips {
        [Some(source), Some(destination)] => Ok((
            transport,
            ProxyAddresses::Inet {
                source: SocketAddr::new(source, ports[0]),
                destination: SocketAddr::new(destination, ports[1]),
            },
        )),
        // Unreachable: a complete line with four valid fields set both.
        _ => Err(invalid("field count")),
    }
}

/// Whether `token`, the unfinished last field number `index` of a v1 line,
/// may still grow into a valid field.
fn v1_partial_ok(token: &[u8], index: usize, v4: bool) -> bool {
    let (max, allowed): (usize, fn(&u8) -> bool) = match (index, v4) {
        (0 | 1, true) => (15, |b| b.is_ascii_digit() || *b == b'.'),
        (0 | 1, false) => (V1_IPV6_MAX_LEN, |b| {
            b.is_ascii_hexdigit() || *b == b':' || *b == b'.'
        }),
        _ => (5, u8::is_ascii_digit),
    };
    token.len() <= max && token.iter().all(allowed)
}

/// A v1 address: for TCP4 exactly four decimal numbers 0-255 without
/// leading zeros; for TCP6 hex groups and colons, one `::` at most, 128 bits
/// (§2.1), with the dotted IPv4 tail of RFC 4291's text form allowed: it is
/// what `inet_ntop` (so HAProxy) writes for IPv4-mapped addresses.
fn parse_v1_ip(token: &[u8], v4: bool) -> Option<std::net::IpAddr> {
    if v4 {
        let mut octets = [0u8; 4];
        let mut parts = token.split(|&b| b == b'.');
        for octet in &mut octets {
            *octet = u8::try_from(parse_v1_decimal(parts.next()?, 3)?).ok()?;
        }
        parts
            .next()
            .is_none()
            .then(|| Ipv4Addr::from(octets).into())
    } else {
        // The standard parser follows RFC 4291's text form (no zone
        // index, at most four digits a group); the length check bounds it.
        if token.len() > V1_IPV6_MAX_LEN {
            return None;
        }
        let text = std::str::from_utf8(token).ok()?;
        text.parse::<Ipv6Addr>().ok().map(Into::into)
    }
}

/// A v1 port: a decimal number 0-65535 without leading zeros (§2.1).
fn parse_v1_port(token: &[u8]) -> Option<u16> {
    u16::try_from(parse_v1_decimal(token, 5)?).ok()
}

/// A decimal number of 1 to `max_digits` digits, with no leading zero
/// unless it is `0` itself (§2.1: "Heading zeroes are not permitted").
fn parse_v1_decimal(token: &[u8], max_digits: usize) -> Option<u32> {
    if token.is_empty()
        || token.len() > max_digits
        || (token.len() > 1 && token[0] == b'0')
        || !token.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    Some(token.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0')))
}

/// Parses a v2 header (§2.2). `input[0]` is `b'\r'`.
fn parse_v2(input: &[u8], max_len: usize) -> Result<Parsed, ProxyError> {
    let sig_len = input.len().min(V2_SIGNATURE.len());
    if input[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ProxyError::NotProxyProtocol);
    }
    // Check each fixed byte as soon as it is in, to drop a bad peer early.
    let command = match input.get(12) {
        Some(&ver_cmd) => {
            if ver_cmd >> 4 != 2 {
                return Err(ProxyError::V2Version(ver_cmd >> 4));
            }
            match ver_cmd & 0x0f {
                0 => Some(ProxyCommand::Local),
                1 => Some(ProxyCommand::Proxy),
                other => return Err(ProxyError::V2Command(other)),
            }
        }
        None => None,
    };
    // §2.2: a LOCAL header's family "is ignored", so it is only checked for
    // PROXY.
    let family = match (command, input.get(13)) {
        (Some(ProxyCommand::Proxy), Some(&fam)) => {
            if fam >> 4 > 3 {
                return Err(ProxyError::V2Family(fam >> 4));
            }
            if fam & 0x0f > 2 {
                return Err(ProxyError::V2Protocol(fam & 0x0f));
            }
            fam
        }
        _ => 0,
    };
    let Some(&[hi, lo]) = input.get(14..16) else {
        return Ok(Parsed::Incomplete {
            min_len: V2_MIN_LEN,
        });
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_MIN_LEN + len;
    if total > max_len {
        return Err(ProxyError::V2TooLong {
            len: total,
            max: max_len,
        });
    }
    let Some(header) = input.get(..total) else {
        return Ok(Parsed::Incomplete { min_len: total });
    };
    let block = &header[V2_MIN_LEN..];

    let (transport, addresses, tlv_area) = match command {
        Some(ProxyCommand::Proxy) => parse_v2_addresses(family, block)?,
        // LOCAL: "discard the protocol block including the family" (§2.2);
        // the length was still honoured above. Only its TLVs, if any, are
        // looked for: after the address block the family byte announces
        // (none for AF_UNSPEC, what senders use here).
        _ => (
            ProxyTransport::Unspecified,
            ProxyAddresses::Unspecified,
            TlvArea::Ignorable(v2_address_len(input[13]).filter(|&len| len <= block.len())),
        ),
    };
    let tlv_start = match tlv_area {
        TlvArea::At(len) => Some(V2_MIN_LEN + len),
        TlvArea::Ignorable(len) => len
            .map(|len| V2_MIN_LEN + len)
            .filter(|&start| is_tlv_area(header, start)),
    };
    let tlvs = match tlv_start {
        // Checked alike whatever the command: §2.2.3 makes a header whose
        // CRC32C does not match invalid, and a LOCAL one is no exception.
        Some(start) => {
            validate_tlvs(header, start)?;
            &header[start..]
        }
        None => &[],
    };
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: ProxyVersion::V2,
            command: command.unwrap_or(ProxyCommand::Local),
            transport,
            addresses,
            tlvs: tlvs.to_vec(),
        },
        consumed: total,
    })
}

/// Where a v2 header's TLVs are, as an offset into its address block.
enum TlvArea {
    /// After this many bytes of addresses, which the header must have: a
    /// PROXY header of a known family.
    At(usize),
    /// A block whose addresses §2.2 tells the receiver to ignore (LOCAL, an
    /// unspecified family): its TLVs start after this many bytes when they
    /// can be located (`None`: they cannot), and only if what is there is
    /// a whole number of TLVs; otherwise the block is discarded unread.
    ///
    /// Why read them at all: HAProxy, as a sender, writes its health
    /// checks as LOCAL with AF_UNSPEC and puts its TLVs (a CRC32C with
    /// `proxy-v2-options crc32c`) right after the 16 fixed bytes, and
    /// go-proxyproto reads an AF_UNSPEC block as TLVs; a checksum that is
    /// there must be checked (§2.2.3). Why leniently: §2.2 says a LOCAL
    /// block is to be discarded and the connection accepted, so a block
    /// that holds something else than TLVs must not get it refused.
    Ignorable(Option<usize>),
}

/// The length of the address block a v2 family and protocol byte announces
/// (§2.2): none for `AF_UNSPEC`; `None` for a known family with an
/// unspecified protocol (whether ports follow is not said) or an unassigned
/// value.
fn v2_address_len(family: u8) -> Option<usize> {
    match family {
        0x00..=0x02 => Some(0),
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(2 * UNIX_ADDR_LEN),
        _ => None,
    }
}

/// Reads the address block of a v2 PROXY header; returns where the TLVs
/// are.
fn parse_v2_addresses(
    family: u8,
    block: &[u8],
) -> Result<(ProxyTransport, ProxyAddresses, TlvArea), ProxyError> {
    let transport = match family {
        0x11 => ProxyTransport::Tcp4,
        0x12 => ProxyTransport::Udp4,
        0x21 => ProxyTransport::Tcp6,
        0x22 => ProxyTransport::Udp6,
        0x31 => ProxyTransport::UnixStream,
        0x32 => ProxyTransport::UnixDgram,
        // An unspecified family or protocol: "the receiver should ignore
        // address information" (§2.2). AF_UNSPEC has no addresses, so its
        // TLVs start the block; for a known family with an unspecified
        // protocol, where they start is unknown.
        _ => {
            return Ok((
                ProxyTransport::Unspecified,
                ProxyAddresses::Unspecified,
                TlvArea::Ignorable(v2_address_len(family)),
            ));
        }
    };
    let needed = v2_address_len(family).expect("a family with a transport has an address length");
    let Some(addr) = block.get(..needed) else {
        return Err(ProxyError::V2AddressTruncated {
            len: block.len(),
            needed,
        });
    };
    let addresses = match family >> 4 {
        1 => inet_addresses::<4>(addr),
        2 => inet_addresses::<16>(addr),
        _ => ProxyAddresses::Unix {
            source: ProxyUnixAddr {
                raw: Box::new(be_array::<UNIX_ADDR_LEN>(addr, 0)),
            },
            destination: ProxyUnixAddr {
                raw: Box::new(be_array::<UNIX_ADDR_LEN>(addr, UNIX_ADDR_LEN)),
            },
        },
    };
    Ok((transport, addresses, TlvArea::At(needed)))
}

/// The IP endpoints of a v2 address block (§2.2): the source and the
/// destination address, `N` bytes each, then the source and the
/// destination port. `addr` has been length-checked.
fn inet_addresses<const N: usize>(addr: &[u8]) -> ProxyAddresses
where
    IpAddr: From<[u8; N]>,
{
    let ip = |at| IpAddr::from(be_array::<N>(addr, at));
    let port = |at| u16::from_be_bytes(be_array::<2>(addr, at));
    ProxyAddresses::Inet {
        source: SocketAddr::new(ip(0), port(2 * N)),
        destination: SocketAddr::new(ip(N), port(2 * N + 2)),
    }
}

/// `N` bytes of `bytes` at `at`, which the caller has length-checked.
fn be_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Checks that `header[start..]` is a whole number of TLVs, that an SSL
/// TLV's sub-TLVs are whole too, and that a CRC32c TLV matches (§2.2,
/// §2.2.3, §2.2.6).
fn validate_tlvs(header: &[u8], start: usize) -> Result<(), ProxyError> {
    walk_tlvs(header, start, header.len(), &mut |kind, at, value| {
        match kind {
            Tlv::SSL => {
                // client (1 byte) and verify (4 bytes) precede the sub-TLVs.
                if value.len() < 5 {
                    return Err(ProxyError::V2TlvTruncated { offset: at });
                }
                walk_tlvs(header, at + 3 + 5, at + 3 + value.len(), &mut |_, _, _| {
                    Ok(())
                })
            }
            Tlv::CRC32C => {
                let Ok(expected) = <[u8; 4]>::try_from(value) else {
                    return Err(ProxyError::V2ChecksumLength { len: value.len() });
                };
                // The checksum covers the whole header with its own value
                // zeroed.
                let value_at = at + 3;
                let mut crc = crc32c_update(!0, &header[..value_at]);
                crc = crc32c_update(crc, &[0; 4]);
                crc = crc32c_update(crc, &header[value_at + 4..]);
                if !crc != u32::from_be_bytes(expected) {
                    return Err(ProxyError::V2ChecksumMismatch);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    })
}

/// Whether `header[start..]` is a whole number of TLVs.
fn is_tlv_area(header: &[u8], start: usize) -> bool {
    walk_tlvs(header, start, header.len(), &mut |_, _, _| Ok(())).is_ok()
}

/// What [`walk_tlvs`] calls for each TLV: type, offset, value.
type TlvVisitor<'v> = dyn FnMut(u8, usize, &[u8]) -> Result<(), ProxyError> + 'v;

/// Walks the TLVs in `bytes[start..end]`, calling `visit(type, offset,
/// value)` for each; an area that does not end on a TLV boundary is an
/// error naming the offset of the TLV that overruns it.
fn walk_tlvs(
    bytes: &[u8],
    start: usize,
    end: usize,
    visit: &mut TlvVisitor<'_>,
) -> Result<(), ProxyError> {
    let area = bytes.get(..end).unwrap_or(bytes);
    let mut at = start;
    while at < area.len() {
        let truncated = ProxyError::V2TlvTruncated { offset: at };
        let Some(&[kind, hi, lo]) = area.get(at..at + 3) else {
            return Err(truncated);
        };
        let value_end = at + 3 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(value) = area.get(at + 3..value_end) else {
            return Err(truncated);
        };
        visit(kind, at, value)?;
        at = value_end;
    }
    Ok(())
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as RFC 4960
/// appendix B defines it; bitwise, since headers are small. Start with
/// `!0` and complement the result.
fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    // ---- helpers -------------------------------------------------------

    fn complete(input: &[u8]) -> (ProxyHeader, usize) {
        match parse_header(input, DEFAULT_V2_MAX_LEN) {
            Ok(Parsed::Complete { header, consumed }) => (header, consumed),
            other => panic!(
                "expected a complete header from \"{}\", got {other:?}",
                input.escape_ascii()
            ),
        }
    }

    fn error(input: &[u8]) -> ProxyError {
        match parse_header(input, DEFAULT_V2_MAX_LEN) {
            Err(err) => err,
            Ok(parsed) => panic!(
                "expected an error from \"{}\", got {parsed:?}",
                input.escape_ascii()
            ),
        }
    }

    fn incomplete(input: &[u8]) -> usize {
        match parse_header(input, DEFAULT_V2_MAX_LEN) {
            Ok(Parsed::Incomplete { min_len }) => min_len,
            other => panic!(
                "expected incomplete from \"{}\", got {other:?}",
                input.escape_ascii()
            ),
        }
    }

    fn sock(addr: &str) -> SocketAddr {
        addr.parse().expect("test address")
    }

    /// Checks `header` is the connection of the specification's examples
    /// (§2.1 and §2.2): TCP4 from 192.168.0.1:56324 to 192.168.0.11:443.
    fn assert_spec_example(header: &ProxyHeader, version: ProxyVersion) {
        assert_eq!(header.version(), version);
        assert_eq!(header.command(), ProxyCommand::Proxy);
        assert_eq!(header.transport(), ProxyTransport::Tcp4);
        assert_eq!(header.source_addr(), Some(sock("192.168.0.1:56324")));
        assert_eq!(header.destination_addr(), Some(sock("192.168.0.11:443")));
        assert_eq!(header.tlvs().count(), 0);
    }

    /// A v2 header built byte by byte as §2.2 lays it out.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend(u16::try_from(body.len()).expect("test body").to_be_bytes());
        out.extend(body);
        out
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend(u16::try_from(value.len()).expect("test tlv").to_be_bytes());
        out.extend(value);
        out
    }

    fn unix_field(path: &[u8]) -> [u8; UNIX_ADDR_LEN] {
        let mut raw = [0; UNIX_ADDR_LEN];
        raw[..path.len()].copy_from_slice(path);
        raw
    }

    /// Appends a `PP2_TYPE_CRC32C` TLV to a v2 header and fills it in as
    /// §2.2.3 tells a sender to.
    fn with_crc(mut header: Vec<u8>) -> Vec<u8> {
        header.extend(tlv(Tlv::CRC32C, &[0; 4]));
        let len = u16::try_from(header.len() - V2_MIN_LEN).expect("test header");
        header[14..16].copy_from_slice(&len.to_be_bytes());
        let crc = !crc32c_update(!0, &header);
        let at = header.len() - 4;
        header[at..].copy_from_slice(&crc.to_be_bytes());
        header
    }

    /// The test-only encoder: writes `header` the way a sender would.
    fn encode(header: &ProxyHeader) -> Vec<u8> {
        match header.version {
            ProxyVersion::V1 => {
                let line = match (&header.transport, &header.addresses) {
                    (
                        ProxyTransport::Tcp4 | ProxyTransport::Tcp6,
                        ProxyAddresses::Inet {
                            source,
                            destination,
                        },
                    ) => {
                        let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
                        format!(
                            "PROXY {proto} {} {} {} {}\r\n",
                            source.ip(),
                            destination.ip(),
                            source.port(),
                            destination.port()
                        )
                    }
                    _ => "PROXY UNKNOWN\r\n".to_owned(),
                };
                line.into_bytes()
            }
            ProxyVersion::V2 => {
                let ver_cmd = match header.command {
                    ProxyCommand::Local => 0x20,
                    ProxyCommand::Proxy => 0x21,
                };
                let fam = match header.transport {
                    ProxyTransport::Tcp4 => 0x11,
                    ProxyTransport::Udp4 => 0x12,
                    ProxyTransport::Tcp6 => 0x21,
                    ProxyTransport::Udp6 => 0x22,
                    ProxyTransport::UnixStream => 0x31,
                    ProxyTransport::UnixDgram => 0x32,
                    ProxyTransport::Unspecified => 0x00,
                };
                let mut body = Vec::new();
                match &header.addresses {
                    ProxyAddresses::Inet {
                        source,
                        destination,
                    } => {
                        match (source.ip(), destination.ip()) {
                            (IpAddr::V4(s), IpAddr::V4(d)) => {
                                body.extend(s.octets());
                                body.extend(d.octets());
                            }
                            (IpAddr::V6(s), IpAddr::V6(d)) => {
                                body.extend(s.octets());
                                body.extend(d.octets());
                            }
                            _ => panic!("mixed families in a test header"),
                        }
                        body.extend(source.port().to_be_bytes());
                        body.extend(destination.port().to_be_bytes());
                    }
                    ProxyAddresses::Unix {
                        source,
                        destination,
                    } => {
                        body.extend(source.raw());
                        body.extend(destination.raw());
                    }
                    ProxyAddresses::Unspecified => {}
                }
                body.extend(&header.tlvs);
                v2(ver_cmd, fam, &body)
            }
        }
    }

    // ---- v1 vectors (§2.1) -----------------------------------------------

    #[test]
    fn v1_spec_example_leaves_the_http_request() {
        let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n\
                      GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
        let (header, consumed) = complete(input);
        assert_eq!(
            &input[consumed..],
            b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
        );
        assert_spec_example(&header, ProxyVersion::V1);
    }

    #[test]
    fn v1_spec_maximum_lines() {
        let tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(tcp4.len(), 56);
        assert_eq!(complete(tcp4).1, 56);

        let ffff = ["ffff"; 8].join(":");
        let tcp6 = format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        let (header, consumed) = complete(tcp6.as_bytes());
        assert_eq!(consumed, 104);
        assert_eq!(header.transport(), ProxyTransport::Tcp6);
        assert_eq!(
            header.source_addr(),
            Some(SocketAddr::new(Ipv6Addr::from([0xff; 16]).into(), 65535))
        );

        let (header, consumed) = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!(consumed, 15);
        assert_eq!(header.transport(), ProxyTransport::Unspecified);
        assert_eq!(header.addresses(), &ProxyAddresses::Unspecified);

        let worst = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX_LEN);
        let (header, consumed) = complete(worst.as_bytes());
        assert_eq!(consumed, V1_MAX_LEN);
        assert_eq!(header.source_addr(), None, "UNKNOWN addresses are ignored");
    }

    #[test]
    fn v1_short_ipv6_forms_and_mapped_ipv4() {
        let (header, _) = complete(b"PROXY TCP6 ::1 2001:db8::5 1 0\r\n");
        assert_eq!(header.source_addr(), Some(sock("[::1]:1")));
        assert_eq!(header.destination_addr(), Some(sock("[2001:db8::5]:0")));
        // inet_ntop writes IPv4-mapped addresses with a dotted tail.
        let (header, _) = complete(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 80 81\r\n");
        assert_eq!(header.source_addr(), Some(sock("[::ffff:192.0.2.1]:80")));
        // Upper-case hex is allowed (§2.1).
        let (header, _) = complete(b"PROXY TCP6 2001:DB8::A ::1 80 81\r\n");
        assert_eq!(header.source_addr(), Some(sock("[2001:db8::a]:80")));
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        let (header, consumed) = complete(b"PROXY UNKNOWN whatever \x01 is here\r\npayload");
        assert_eq!(consumed, 34);
        assert_eq!(header.addresses(), &ProxyAddresses::Unspecified);
    }

    #[test]
    fn v1_errors() {
        let invalid = |input: &[u8], want: &str| match error(input) {
            ProxyError::V1Invalid { field } => assert_eq!(field, want, "for {input:?}"),
            other => panic!("expected invalid {want} for {input:?}, got {other:?}"),
        };
        invalid(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol");
        invalid(b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol");
        invalid(b"PROXY \r\n", "protocol");
        invalid(b"PROXY UNKNOWNX\r\n", "protocol");
        invalid(b"PROXY TCP4\r\n", "field count");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "field count");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "field count");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "field count");
        invalid(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "source address");
        invalid(
            b"PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n",
            "destination address",
        );
        invalid(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address");
        invalid(b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "destination address");
        invalid(b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n", "source address");
        invalid(b"PROXY TCP6 12345:: ::1 1 2\r\n", "source address");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "source port");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "destination port");
        invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "destination port");

        let bad_ends: [&[u8]; 5] = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY UNKNOWN\n",
            b"PROXY UNKNOWN \n\r\n",
            b"PROXY UNKNOWN \r\r\n",
        ];
        let not_proxy: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n",
            b"proxy TCP4",
            b"PROXZ",
            b"PROXYTCP4",
            b"\x16\x03\x01",
        ];
        for (inputs, want) in [(bad_ends, "V1LineEnding"), (not_proxy, "NotProxyProtocol")] {
            for input in inputs {
                assert_eq!(format!("{:?}", error(input)), want, "{input:?}");
            }
        }
    }

    #[test]
    fn v1_over_long_lines_are_refused_at_the_bound() {
        let ffff = ["ffff"; 8].join(":");
        // One byte over the worst case.
        let long = format!("PROXY UNKNOWN {ffff} {ffff} 65535 655350\r\n");
        assert_eq!(long.len(), V1_MAX_LEN + 1);
        assert!(matches!(error(long.as_bytes()), ProxyError::V1TooLong));
        // Refused as soon as a CRLF can no longer fit, without waiting.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 2, b'x');
        assert_eq!(incomplete(&line), V1_MAX_LEN);
        line.push(b'x');
        assert!(matches!(error(&line), ProxyError::V1TooLong));
        // A megabyte without CRLF costs no more than 107 bytes of scanning.
        let flood = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 1 << 20]].concat();
        assert!(matches!(error(&flood), ProxyError::V1TooLong));
    }

    #[test]
    fn v1_prefixes_wait_and_garbage_is_refused_early() {
        assert_eq!(incomplete(b""), V1_MIN_LEN);
        assert_eq!(incomplete(b"P"), V1_MIN_LEN);
        assert_eq!(incomplete(b"PROXY TC"), V1_MIN_LEN);
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for end in 0..line.len() {
            let min_len = incomplete(&line[..end]);
            assert!(
                min_len > end && min_len <= line.len(),
                "prefix {end}: {min_len}"
            );
        }
        assert_eq!(incomplete(&line[..line.len() - 1]), line.len());
        // No need to wait for the CRLF to see these are wrong.
        for garbage in [
            &b"PROXY TCP4 1.2.3.x"[..],
            b"PROXY TCP7",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            b"PROXY TCP4 01.2.3.4 ",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 123456",
            b"PROXY TCP6 ::g",
        ] {
            assert!(
                matches!(error(garbage), ProxyError::V1Invalid { .. }),
                "{garbage:?}"
            );
        }
    }

    // ---- v2 vectors (§2.2) -----------------------------------------------

    #[test]
    fn v2_tcp4_proxy() {
        let mut input = v2(
            0x21,
            0x11,
            &[192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb],
        );
        assert_eq!(input.len(), 28);
        input.extend(b"payload");
        let (header, consumed) = complete(&input);
        assert_eq!(consumed, 28);
        assert_eq!(&input[consumed..], b"payload");
        assert_spec_example(&header, ProxyVersion::V2);
    }

    #[test]
    fn v2_udp4_and_udp6() {
        let (header, _) = complete(&v2(0x21, 0x12, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 53, 0, 54]));
        assert_eq!(header.transport(), ProxyTransport::Udp4);
        assert_eq!(header.source_addr(), Some(sock("10.0.0.1:53")));
        let mut body = [0u8; 36];
        body[15] = 1;
        body[31] = 2;
        body[32..].copy_from_slice(&[0, 7, 0, 8]);
        let (header, _) = complete(&v2(0x21, 0x22, &body));
        assert_eq!(header.transport(), ProxyTransport::Udp6);
        assert_eq!(header.source_addr(), Some(sock("[::1]:7")));
        assert_eq!(header.destination_addr(), Some(sock("[::2]:8")));
    }

    #[test]
    fn v2_tcp6_with_tlvs() {
        let src: Ipv6Addr = "2001:db8::1".parse().expect("test address");
        let dst: Ipv6Addr = "2001:db8::2".parse().expect("test address");
        let mut body = Vec::new();
        body.extend(src.octets());
        body.extend(dst.octets());
        body.extend(50000u16.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        body.extend(tlv(Tlv::ALPN, b"h2"));
        body.extend(tlv(Tlv::AUTHORITY, b"example.com"));
        body.extend(tlv(Tlv::NOOP, &[0; 3]));
        body.extend(tlv(Tlv::UNIQUE_ID, b"\x00\x01opaque"));
        let mut ssl = vec![SslTlv::CLIENT_SSL | SslTlv::CLIENT_CERT_CONN];
        ssl.extend(0u32.to_be_bytes());
        ssl.extend(tlv(Tlv::SSL_VERSION, b"TLSv1.3"));
        ssl.extend(tlv(Tlv::SSL_CN, b"client.example.com"));
        ssl.extend(tlv(Tlv::SSL_CIPHER, b"TLS_AES_128_GCM_SHA256"));
        ssl.extend(tlv(Tlv::SSL_SIG_ALG, b"RSA-SHA256"));
        ssl.extend(tlv(Tlv::SSL_KEY_ALG, b"RSA2048"));
        body.extend(tlv(Tlv::SSL, &ssl));
        body.extend(tlv(0xEA, b"vpce-0123")); // a custom-range TLV (§2.2.8)
        let input = v2(0x21, 0x21, &body);

        let (header, consumed) = complete(&input);
        assert_eq!(consumed, input.len());
        assert_eq!(header.transport(), ProxyTransport::Tcp6);
        assert_eq!(
            header.source_addr(),
            Some(SocketAddr::new(src.into(), 50000))
        );
        assert_eq!(
            header.destination_addr(),
            Some(SocketAddr::new(dst.into(), 443))
        );
        let kinds: Vec<u8> = header.tlvs().map(|t| t.kind()).collect();
        assert_eq!(
            kinds,
            [
                Tlv::ALPN,
                Tlv::AUTHORITY,
                Tlv::NOOP,
                Tlv::UNIQUE_ID,
                Tlv::SSL,
                0xEA
            ]
        );
        assert_eq!(header.alpn(), Some(&b"h2"[..]));
        assert_eq!(header.authority(), Some("example.com"));
        assert_eq!(header.unique_id(), Some(&b"\x00\x01opaque"[..]));
        assert_eq!(header.tlv(0xEA), Some(&b"vpce-0123"[..]));
        assert_eq!(header.tlv(0xEB), None);
        let ssl = header.ssl().expect("the SSL TLV was sent");
        assert!(ssl.is_tls());
        assert_eq!(
            ssl.client() & SslTlv::CLIENT_CERT_CONN,
            SslTlv::CLIENT_CERT_CONN
        );
        assert_eq!(ssl.client() & SslTlv::CLIENT_CERT_SESS, 0);
        assert_eq!(ssl.verify(), 0);
        assert_eq!(ssl.version(), Some("TLSv1.3"));
        assert_eq!(ssl.common_name(), Some("client.example.com"));
        assert_eq!(ssl.cipher(), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(ssl.signature_algorithm(), Some("RSA-SHA256"));
        assert_eq!(ssl.key_algorithm(), Some("RSA2048"));
        assert_eq!(ssl.sub_tlvs().count(), 5);
    }

    #[test]
    fn v2_local_ignores_family_and_block() {
        // What a health check sends: LOCAL, AF_UNSPEC, no addresses.
        let (header, consumed) = complete(&v2(0x20, 0x00, &[]));
        assert_eq!(consumed, V2_MIN_LEN);
        assert_eq!(header.command(), ProxyCommand::Local);
        assert_eq!(header.transport(), ProxyTransport::Unspecified);
        assert_eq!(header.addresses(), &ProxyAddresses::Unspecified);
        // §2.2: "must not assume zero is presented for LOCAL connections",
        // and the family "is ignored", even an unassigned one.
        let mut input = v2(0x20, 0xff, &[1, 2, 3, 4, 5, 6, 7]);
        input.extend(b"payload");
        let (header, consumed) = complete(&input);
        assert_eq!(consumed, V2_MIN_LEN + 7);
        assert_eq!(header.command(), ProxyCommand::Local);
        assert_eq!(header.tlvs().count(), 0);
    }

    #[test]
    fn v2_unspecified_family_or_protocol_ignores_addresses() {
        for fam in [0x00, 0x01, 0x02, 0x10, 0x20, 0x30] {
            let (header, consumed) = complete(&v2(0x21, fam, &[9; 12]));
            assert_eq!(consumed, V2_MIN_LEN + 12, "{fam:#x}");
            assert_eq!(header.command(), ProxyCommand::Proxy);
            assert_eq!(header.transport(), ProxyTransport::Unspecified);
            assert_eq!(header.addresses(), &ProxyAddresses::Unspecified);
            assert_eq!(header.tlvs().count(), 0);
        }
    }

    #[test]
    fn v2_unix_stream_and_dgram() {
        let mut body = Vec::new();
        body.extend(unix_field(b"/run/client.sock"));
        body.extend(unix_field(b"\0abstract-name"));
        body.extend(tlv(Tlv::AUTHORITY, b"unix"));
        let (header, consumed) = complete(&v2(0x21, 0x31, &body));
        assert_eq!(consumed, V2_MIN_LEN + 2 * UNIX_ADDR_LEN + 7);
        assert_eq!(header.transport(), ProxyTransport::UnixStream);
        assert_eq!(header.source_addr(), None);
        let ProxyAddresses::Unix {
            source,
            destination,
        } = header.addresses()
        else {
            panic!("expected unix addresses, got {:?}", header.addresses());
        };
        assert_eq!(source.path(), b"/run/client.sock");
        assert_eq!(destination.path(), b"\0abstract-name");
        assert_eq!(source.raw()[..16], *b"/run/client.sock");
        assert_eq!(format!("{source:?}"), "ProxyUnixAddr(\"/run/client.sock\")");
        assert_eq!(header.authority(), Some("unix"));

        let (header, _) = complete(&v2(0x21, 0x32, &body));
        assert_eq!(header.transport(), ProxyTransport::UnixDgram);
    }

    #[test]
    fn v2_crc32c() {
        // RFC 3720 B.4 / the usual check value of CRC-32C.
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);

        let header = with_crc(v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]));
        let (parsed, consumed) = complete(&header);
        assert_eq!(consumed, header.len());
        assert_eq!(parsed.tlv(Tlv::CRC32C).map(<[u8]>::len), Some(4));
        // Addresses, the TLV's value, and the command: as LOCAL, the header
        // still has its checksum checked. (A flipped family bit can make
        // the block one whose TLVs cannot be found, or are no TLVs; §2.2
        // says to discard it, checksum included.)
        for at in [12, 16, 20, 27, header.len() - 1] {
            let mut corrupt = header.clone();
            corrupt[at] ^= 0x01;
            assert!(
                parse_header(&corrupt, DEFAULT_V2_MAX_LEN).is_err(),
                "a flipped bit at {at} must not pass"
            );
        }
        let mut corrupt = header.clone();
        corrupt[20] ^= 0x80;
        assert!(matches!(error(&corrupt), ProxyError::V2ChecksumMismatch));

        let bad_len = v2(
            0x21,
            0x11,
            &[[0; 12].as_slice(), &tlv(Tlv::CRC32C, &[0; 3])].concat(),
        );
        assert!(matches!(
            error(&bad_len),
            ProxyError::V2ChecksumLength { len: 3 }
        ));
    }

    #[test]
    fn v2_local_and_unspecified_headers_have_their_tlvs_read_and_checked() {
        let ipv4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let authority = tlv(Tlv::AUTHORITY, b"check.example");
        let cases = [
            // What HAProxy sends for a health check with `proxy-v2-options
            // crc32c`: LOCAL, AF_UNSPEC, the TLVs right after the fixed part.
            ("LOCAL, AF_UNSPEC", v2(0x20, 0x00, &authority)),
            ("PROXY, AF_UNSPEC", v2(0x21, 0x00, &authority)),
            ("PROXY, AF_UNSPEC/STREAM", v2(0x21, 0x01, &authority)),
            // A LOCAL header that still fills in its family's address
            // block: the TLVs follow the block.
            (
                "LOCAL, TCP4",
                v2(0x20, 0x11, &[&ipv4[..], &authority].concat()),
            ),
        ];
        for (what, unchecked) in cases {
            let good = with_crc(unchecked);
            let (header, consumed) = complete(&good);
            assert_eq!(consumed, good.len(), "{what}");
            assert_eq!(header.addresses(), &ProxyAddresses::Unspecified, "{what}");
            assert_eq!(header.authority(), Some("check.example"), "{what}");
            assert_eq!(header.tlv(Tlv::CRC32C).map(<[u8]>::len), Some(4), "{what}");
            // A flipped bit in the TLVs, or in the checksum itself.
            for at in [good.len() - 9, good.len() - 1] {
                let mut bad = good.clone();
                bad[at] ^= 0x01;
                assert!(
                    matches!(error(&bad), ProxyError::V2ChecksumMismatch),
                    "{what}: flipped bit at {at}"
                );
            }
        }
        let short_crc = v2(0x20, 0x00, &tlv(Tlv::CRC32C, &[0; 3]));
        assert!(matches!(
            error(&short_crc),
            ProxyError::V2ChecksumLength { len: 3 }
        ));
        // Where the block is no TLV area, it is discarded as §2.2 says,
        // with no TLVs to show.
        for (ver_cmd, fam) in [(0x20, 0x00), (0x21, 0x00), (0x20, 0x11), (0x20, 0xff)] {
            let (header, _) = complete(&v2(ver_cmd, fam, &[9; 12]));
            assert_eq!(header.tlvs().count(), 0, "{ver_cmd:#x} {fam:#x}");
        }
    }

    #[test]
    fn v2_errors() {
        let ipv4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        // TCP4 addresses, then `tlvs`.
        let with_tlvs = |tlvs: &[u8]| v2(0x21, 0x11, &[ipv4.as_slice(), tlvs].concat());
        // (input, the error's Debug form).
        let cases = [
            (v2(0x11, 0x11, &ipv4), "V2Version(1)"),
            (v2(0x31, 0x11, &ipv4), "V2Version(3)"),
            (v2(0x22, 0x11, &ipv4), "V2Command(2)"),
            (v2(0x2f, 0x11, &ipv4), "V2Command(15)"),
            (v2(0x21, 0x41, &ipv4), "V2Family(4)"),
            (v2(0x21, 0x13, &ipv4), "V2Protocol(3)"),
            // The bad byte is refused before the rest arrives.
            (v2(0x11, 0x11, &ipv4)[..13].to_vec(), "V2Version(1)"),
            (v2(0x21, 0xf1, &ipv4)[..14].to_vec(), "V2Family(15)"),
            (
                v2(0x21, 0x11, &ipv4[..8]),
                "V2AddressTruncated { len: 8, needed: 12 }",
            ),
            (
                v2(0x21, 0x21, &[0; 35]),
                "V2AddressTruncated { len: 35, needed: 36 }",
            ),
            (
                v2(0x21, 0x31, &[0; 215]),
                "V2AddressTruncated { len: 215, needed: 216 }",
            ),
            // Leftover bytes that are not a whole TLV.
            (with_tlvs(&[Tlv::NOOP, 0]), "V2TlvTruncated { offset: 28 }"),
            // A TLV whose length runs past the header.
            (
                with_tlvs(
                    &[
                        tlv(Tlv::ALPN, b"h2").as_slice(),
                        &[Tlv::AUTHORITY, 0, 10, b'x'],
                    ]
                    .concat(),
                ),
                "V2TlvTruncated { offset: 33 }",
            ),
            // An SSL TLV too short for client and verify, and one whose
            // sub-TLV overruns it.
            (
                with_tlvs(&tlv(Tlv::SSL, &[1, 0, 0, 0])),
                "V2TlvTruncated { offset: 28 }",
            ),
            (
                with_tlvs(&tlv(
                    Tlv::SSL,
                    &[1, 0, 0, 0, 0, Tlv::SSL_VERSION, 0, 9, b'T'],
                )),
                "V2TlvTruncated { offset: 36 }",
            ),
        ];
        for (input, expected) in cases {
            let err = error(&input);
            assert_eq!(
                format!("{err:?}"),
                expected,
                "for {:?}",
                input.escape_ascii().to_string()
            );
        }

        // Signature mismatches, including at the NUL byte.
        for at in 0..V2_SIGNATURE.len() {
            let mut input = v2(0x21, 0x11, &ipv4);
            input[at] ^= 0x40;
            assert!(
                matches!(error(&input), ProxyError::NotProxyProtocol),
                "signature byte {at}"
            );
        }
    }

    #[test]
    fn v2_cap_is_enforced_from_the_fixed_part() {
        let big = v2(0x21, 0x11, &[0; 2000]);
        // Sixteen bytes are enough to refuse it.
        match parse_header(&big[..V2_MIN_LEN], DEFAULT_V2_MAX_LEN) {
            Err(ProxyError::V2TooLong { len, max }) => {
                assert_eq!((len, max), (2016, DEFAULT_V2_MAX_LEN));
            }
            other => panic!("expected too long, got {other:?}"),
        }
        // Exactly at the cap is fine; one over is not.
        let at_cap = v2(0x21, 0x11, &[0; 84]);
        assert!(matches!(
            parse_header(&at_cap, 100),
            Ok(Parsed::Complete { consumed: 100, .. })
        ));
        assert!(matches!(
            parse_header(&at_cap, 99),
            Err(ProxyError::V2TooLong { len: 100, max: 99 })
        ));
        // The protocol's own maximum fits a cap that large.
        let max = v2(0x21, 0x00, &vec![0; usize::from(u16::MAX)]);
        assert!(matches!(
            parse_header(&max, V2_PROTOCOL_MAX_LEN),
            Ok(Parsed::Complete {
                consumed: V2_PROTOCOL_MAX_LEN,
                ..
            })
        ));
    }

    #[test]
    fn v2_prefixes_wait() {
        let input = v2(
            0x21,
            0x11,
            &[[1; 12].as_slice(), &tlv(Tlv::ALPN, b"h2")].concat(),
        );
        for end in 0..input.len() {
            let min_len = incomplete(&input[..end]);
            assert!(
                min_len > end && min_len <= input.len(),
                "prefix {end}: {min_len}"
            );
        }
        assert_eq!(incomplete(&input[..V2_MIN_LEN]), input.len());
    }

    #[test]
    fn errors_read_lowercase() {
        let errors = [
            ProxyError::NotProxyProtocol,
            ProxyError::V1TooLong,
            ProxyError::V1LineEnding,
            ProxyError::V1Invalid {
                field: "source port",
            },
            ProxyError::V2Version(1),
            ProxyError::V2Command(2),
            ProxyError::V2Family(4),
            ProxyError::V2Protocol(3),
            ProxyError::V2TooLong {
                len: 2016,
                max: 1024,
            },
            ProxyError::V2AddressTruncated { len: 8, needed: 12 },
            ProxyError::V2TlvTruncated { offset: 28 },
            ProxyError::V2ChecksumLength { len: 3 },
            ProxyError::V2ChecksumMismatch,
            ProxyError::UnexpectedEof { received: 5 },
            ProxyError::Io(io::ErrorKind::ConnectionReset.into()),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(
                text.starts_with(|c: char| c.is_lowercase()) && !text.ends_with('.'),
                "{text:?}"
            );
        }
        assert_eq!(
            ProxyError::V2TooLong {
                len: 2016,
                max: 1024
            }
            .to_string(),
            "v2 header of 2016 bytes exceeds the cap of 1024 bytes"
        );
    }

    #[test]
    fn public_types_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ProxyHeader>();
        assert_send_sync::<ProxyError>();
        assert_send_sync::<Parsed>();
        fn assert_send<T: Send>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            assert_send(&read_header(&mut client, DEFAULT_V2_MAX_LEN));
        });
    }

    // ---- properties --------------------------------------------------------

    /// An IPv4 (`N` = 4) or IPv6 (`N` = 16) endpoint.
    fn arb_inet<const N: usize>() -> impl Strategy<Value = SocketAddr>
    where
        IpAddr: From<[u8; N]>,
        [u8; N]: Arbitrary,
    {
        (any::<[u8; N]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port))
    }

    fn arb_unix() -> impl Strategy<Value = ProxyUnixAddr> {
        proptest::collection::vec(any::<u8>(), UNIX_ADDR_LEN).prop_map(|raw| ProxyUnixAddr {
            raw: Box::new(raw.try_into().expect("108 bytes")),
        })
    }

    /// A TLV area: random TLVs of any type but those the parser checks
    /// (CRC32C, SSL), plus maybe a well-formed SSL TLV.
    fn arb_tlvs() -> impl Strategy<Value = Vec<u8>> {
        let plain = (
            any::<u8>().prop_filter("checked types", |k| *k != Tlv::CRC32C && *k != Tlv::SSL),
            proptest::collection::vec(any::<u8>(), 0..40),
        );
        let subs = proptest::collection::vec(
            (0x21u8..=0x25, proptest::collection::vec(any::<u8>(), 0..20)),
            0..4,
        );
        (
            proptest::collection::vec(plain, 0..5),
            proptest::option::of((any::<u8>(), any::<u32>(), subs)),
        )
            .prop_map(|(plain, ssl)| {
                let mut out = Vec::new();
                for (kind, value) in plain {
                    out.extend(tlv(kind, &value));
                }
                if let Some((client, verify, subs)) = ssl {
                    let mut value = vec![client];
                    value.extend(verify.to_be_bytes());
                    for (kind, sub) in subs {
                        value.extend(tlv(kind, &sub));
                    }
                    out.extend(tlv(Tlv::SSL, &value));
                }
                out
            })
    }

    fn header(
        version: ProxyVersion,
        command: ProxyCommand,
        transport: ProxyTransport,
        addresses: ProxyAddresses,
        tlvs: Vec<u8>,
    ) -> ProxyHeader {
        ProxyHeader {
            version,
            command,
            transport,
            addresses,
            tlvs,
        }
    }

    /// Headers as the parser returns them, so that a round trip through the
    /// encoder must give them back unchanged.
    fn arb_header() -> impl Strategy<Value = ProxyHeader> {
        use ProxyCommand::{Local, Proxy};
        use ProxyVersion::{V1, V2};
        let inet = |(source, destination)| ProxyAddresses::Inet {
            source,
            destination,
        };
        prop_oneof![
            (arb_inet::<4>(), arb_inet::<4>()).prop_map(move |a| header(
                V1,
                Proxy,
                ProxyTransport::Tcp4,
                inet(a),
                vec![]
            )),
            (arb_inet::<16>(), arb_inet::<16>()).prop_map(move |a| header(
                V1,
                Proxy,
                ProxyTransport::Tcp6,
                inet(a),
                vec![]
            )),
            Just(header(
                V1,
                Proxy,
                ProxyTransport::Unspecified,
                ProxyAddresses::Unspecified,
                vec![]
            )),
            (any::<bool>(), arb_tlvs()).prop_map(|(local, tlvs)| header(
                V2,
                if local { Local } else { Proxy },
                ProxyTransport::Unspecified,
                ProxyAddresses::Unspecified,
                tlvs
            )),
            (arb_inet::<4>(), arb_inet::<4>(), any::<bool>(), arb_tlvs()).prop_map(
                move |(s, d, udp, tlvs)| {
                    let t = if udp {
                        ProxyTransport::Udp4
                    } else {
                        ProxyTransport::Tcp4
                    };
                    header(V2, Proxy, t, inet((s, d)), tlvs)
                }
            ),
            (
                arb_inet::<16>(),
                arb_inet::<16>(),
                any::<bool>(),
                arb_tlvs()
            )
                .prop_map(move |(s, d, udp, tlvs)| {
                    let t = if udp {
                        ProxyTransport::Udp6
                    } else {
                        ProxyTransport::Tcp6
                    };
                    header(V2, Proxy, t, inet((s, d)), tlvs)
                }),
            (arb_unix(), arb_unix(), any::<bool>(), arb_tlvs()).prop_map(
                |(source, destination, dgram, tlvs)| {
                    let t = if dgram {
                        ProxyTransport::UnixDgram
                    } else {
                        ProxyTransport::UnixStream
                    };
                    header(
                        V2,
                        Proxy,
                        t,
                        ProxyAddresses::Unix {
                            source,
                            destination,
                        },
                        tlvs,
                    )
                }
            ),
        ]
    }

    /// Input that often gets past the signatures, so the parser's depths
    /// get explored, not only its first byte.
    fn arb_input() -> impl Strategy<Value = Vec<u8>> {
        let prefixes: Vec<Vec<u8>> = vec![
            vec![],
            b"PROXY ".to_vec(),
            b"PROXY TCP4 ".to_vec(),
            b"PROXY TCP6 ".to_vec(),
            b"PROXY UNKNOWN".to_vec(),
            V2_SIGNATURE.to_vec(),
            [V2_SIGNATURE.as_slice(), &[0x21]].concat(),
            [V2_SIGNATURE.as_slice(), &[0x21, 0x11, 0, 12]].concat(),
        ];
        let tails = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdef:. \r\n".to_vec()),
                0..120
            ),
        ];
        (proptest::sample::select(prefixes), tails).prop_map(|(p, t)| [p, t].concat())
    }

    fn is_signature_prefix(input: &[u8]) -> bool {
        let v1 = input.len().min(V1_PREFIX.len());
        let v2 = input.len().min(V2_SIGNATURE.len());
        input[..v1] == V1_PREFIX[..v1] || input[..v2] == V2_SIGNATURE[..v2]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn parse_never_panics_and_stays_in_bounds(
            input in arb_input(),
            cap in prop_oneof![Just(0usize), 16usize..400, Just(DEFAULT_V2_MAX_LEN)],
        ) {
            let bound = cap.max(V2_MIN_LEN).max(V1_MAX_LEN);
            match parse_header(&input, cap) {
                Ok(Parsed::Complete { header, consumed }) => {
                    prop_assert!(consumed <= input.len());
                    prop_assert!(consumed <= bound);
                    // The header depends on the bytes it consumed only:
                    // parsed alone, they give the same header.
                    let again = parse_header(&input[..consumed], cap);
                    prop_assert_eq!(
                        again.ok(),
                        Some(Parsed::Complete { header, consumed })
                    );
                }
                Ok(Parsed::Incomplete { min_len }) => {
                    prop_assert!(min_len > input.len(), "{min_len} <= {}", input.len());
                    prop_assert!(min_len <= bound);
                    prop_assert!(is_signature_prefix(&input));
                }
                Err(err) => {
                    let reader_only = matches!(err, ProxyError::Io(_) | ProxyError::UnexpectedEof { .. });
                    prop_assert!(!reader_only, "the parser returned {}", err);
                }
            }
        }

        #[test]
        fn generated_headers_round_trip(
            header in arb_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let encoded = encode(&header);
            let input = [encoded.as_slice(), &payload].concat();
            let parsed = parse_header(&input, DEFAULT_V2_MAX_LEN)
                .map_err(|err| TestCaseError::fail(format!("{err}")))?;
            prop_assert_eq!(
                parsed,
                Parsed::Complete { header: header.clone(), consumed: encoded.len() }
            );
            // Every strict prefix waits for more, never errs.
            for end in 0..encoded.len() {
                match parse_header(&encoded[..end], DEFAULT_V2_MAX_LEN) {
                    Ok(Parsed::Incomplete { min_len }) => {
                        prop_assert!(min_len > end && min_len <= encoded.len());
                    }
                    other => prop_assert!(false, "prefix {} gave {:?}", end, other),
                }
            }
            // A v2 header with a CRC32c still parses, and any corruption of
            // its checksummed bytes is caught: in the addresses, or in the
            // checksum (LOCAL and AF_UNSPEC headers included).
            if header.version == ProxyVersion::V2 {
                let crc = with_crc(encoded);
                let (parsed, consumed) = complete(&crc);
                prop_assert_eq!(consumed, crc.len());
                prop_assert_eq!(parsed.addresses(), header.addresses());
                let mut corrupted = vec![crc.len() - 1];
                if header.addresses != ProxyAddresses::Unspecified {
                    corrupted.push(V2_MIN_LEN + 1);
                }
                for at in corrupted {
                    let mut corrupt = crc.clone();
                    corrupt[at] = corrupt[at].wrapping_add(1);
                    prop_assert!(matches!(
                        parse_header(&corrupt, DEFAULT_V2_MAX_LEN),
                        Err(ProxyError::V2ChecksumMismatch)
                    ));
                }
            }
        }
    }

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
