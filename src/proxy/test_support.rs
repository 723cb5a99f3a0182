//! Helpers shared by the PROXY protocol tests: v2 headers and their parts
//! built byte by byte, and addresses.

use std::net::SocketAddr;

use super::UNIX_ADDR_LEN;
use super::parse::V2_SIGNATURE;

pub(super) fn sock(addr: &str) -> SocketAddr {
    addr.parse().expect("test address")
}

/// A v2 header built byte by byte as §2.2 lays it out.
pub(super) fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend(u16::try_from(body.len()).expect("test body").to_be_bytes());
    out.extend(body);
    out
}

pub(super) fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(u16::try_from(value.len()).expect("test tlv").to_be_bytes());
    out.extend(value);
    out
}

pub(super) fn unix_field(path: &[u8]) -> [u8; UNIX_ADDR_LEN] {
    let mut raw = [0; UNIX_ADDR_LEN];
    raw[..path.len()].copy_from_slice(path);
    raw
}
