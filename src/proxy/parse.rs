//! The pure parser of PROXY protocol headers: v1 lines (§2.1), v2 headers
//! (§2.2) with their addresses and TLVs, and the CRC32c check (§2.2.3).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Parsed, ProxyAddresses, ProxyCommand, ProxyError, ProxyHeader, ProxyTransport, ProxyUnixAddr,
    ProxyVersion, Tlv, UNIX_ADDR_LEN, V1_MAX_LEN, V2_MIN_LEN,
};

/// The v2 signature (§2.2). It contains a NUL byte and is not a C string.
pub(super) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a v1 header starts with, the space included (§2.1).
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The shortest v1 header, `PROXY UNKNOWN\r\n` (§2.1).
const V1_MIN_LEN: usize = 15;

/// The protocol names a v1 line may carry (§2.1).
const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

/// The longest IPv6 text form: eight 4-digit groups, or six and a dotted
/// IPv4 tail (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const V1_IPV6_MAX_LEN: usize = 45;

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
///
/// [`DEFAULT_V2_MAX_LEN`]: super::DEFAULT_V2_MAX_LEN
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
    use proptest::prelude::*;

    use super::*;
    use crate::proxy::test_support::{sock, tlv, unix_field, v2};
    use crate::proxy::{DEFAULT_V2_MAX_LEN, SslTlv, V2_PROTOCOL_MAX_LEN};

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
}
