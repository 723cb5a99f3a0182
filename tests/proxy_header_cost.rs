//! What reading a PROXY protocol header costs each connection: no heap
//! buffer for the usual headers (a v1 line, v2 with IP addresses), one of
//! the exact length for a v2 header longer than a v1 line can be, and a
//! small future. The heap is counted by an instrumented global allocator,
//! so this file holds one test: nothing else may allocate meanwhile.

mod common;

use std::alloc::System;
use std::time::Duration;

use common::tcp_pair;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchboard::proxy::{DEFAULT_V2_MAX_LEN, V1_MAX_LEN, read_header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const LIMIT: Duration = Duration::from_secs(5);

/// A v2 header (§2.2 of the specification): signature, version and
/// command, family, length, then `body`.
fn v2(fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    out.push(fam);
    out.extend(u16::try_from(body.len()).expect("test body").to_be_bytes());
    out.extend(body);
    out
}

/// A TCP4 v2 header of exactly `total` bytes: addresses and one TLV.
fn v2_tcp4_of_len(total: usize) -> Vec<u8> {
    let value_len = total - 16 - 12 - 3;
    let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 81, 0xEA];
    body.extend(u16::try_from(value_len).expect("test tlv").to_be_bytes());
    body.resize(body.len() + value_len, b'x');
    v2(0x11, &body)
}

#[tokio::test]
async fn reading_a_header_allocates_only_what_the_header_keeps() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let unix = v2(0x31, &[b'/'; 216]);
    // (what, the header, heap allocations and bytes while reading it).
    let cases = [
        (
            "a v1 line",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n".to_vec(),
            0,
            0,
        ),
        ("v2 without addresses", v2(0x00, &[]), 0, 0),
        ("v2 TCP4 addresses", v2(0x11, &[1; 12]), 0, 0),
        // The header keeps its TLV area (3 + 76 bytes); nothing else.
        (
            "a v2 header of V1_MAX_LEN bytes",
            v2_tcp4_of_len(V1_MAX_LEN),
            1,
            79,
        ),
        // Longer than the stack buffer: one buffer of the exact length,
        // plus the TLV area the header keeps.
        (
            "a v2 header one byte longer",
            v2_tcp4_of_len(V1_MAX_LEN + 1),
            2,
            V1_MAX_LEN + 1 + 80,
        ),
        (
            "a v2 header at the cap",
            v2_tcp4_of_len(DEFAULT_V2_MAX_LEN),
            2,
            DEFAULT_V2_MAX_LEN + DEFAULT_V2_MAX_LEN - 28,
        ),
        // The buffer, and the two boxed 108-byte addresses the header keeps.
        ("v2 Unix addresses", unix, 3, 232 + 2 * 108),
    ];
    for (what, header, allocations, bytes) in cases {
        let (mut client, mut server) = tcp_pair(&listener).await;
        client
            .write_all(&[header.as_slice(), b"payload"].concat())
            .await
            .expect("client write");

        let (parsed, change) = tokio::time::timeout(LIMIT, async {
            let region = Region::new(GLOBAL);
            let parsed = read_header(&mut server, DEFAULT_V2_MAX_LEN).await;
            (parsed, region.change())
        })
        .await
        .unwrap_or_else(|_| panic!("reading {what} timed out"));
        parsed.unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(
            (
                change.allocations,
                change.bytes_allocated,
                change.reallocations
            ),
            (allocations, bytes, 0),
            "{what} ({} bytes): allocations, bytes allocated, reallocations",
            header.len()
        );
    }

    // The future lives in every PROXY connection's task: it holds a v1
    // line's worth of buffer and the header it returns, nothing the size
    // of the v2 cap (it took 528 bytes with a heap buffer; 352 now).
    let (_client, mut server) = tcp_pair(&listener).await;
    let size = std::mem::size_of_val(&read_header(&mut server, DEFAULT_V2_MAX_LEN));
    assert!(size <= 512, "the future takes {size} bytes");
}
