//! The PROXY protocol header (HAProxy's specification, versions 1 and 2): a
//! pure parser over bytes and an async reader that takes exactly the header
//! off a [`TcpStream`](tokio::net::TcpStream).
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

mod parse;
mod read;
#[cfg(test)]
mod test_support;
mod tlv;

use std::fmt;
use std::io;
use std::net::SocketAddr;

pub use parse::parse_header;
pub use read::read_header;
pub use tlv::{SslTlv, Tlv, Tlvs};

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

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

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
}
