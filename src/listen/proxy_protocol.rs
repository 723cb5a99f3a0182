//! How a listener reads the PROXY protocol header (feature
//! `proxy-protocol`): whom it believes, how long it waits, how long a
//! header may be.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::{self, ProxyError, ProxyHeader};

/// Default for [`ProxyProtocol::header_timeout`].
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a listener reads the PROXY protocol header that load balancers
/// (HAProxy `send-proxy`/`send-proxy-v2`, nginx `proxy_protocol`, Envoy, cloud
/// network load balancers) put in front of each connection.
///
/// A header claims who the client is, so it is believed only from trusted
/// peers: the [`trust`](ProxyProtocol::trust)ed addresses and networks, or
/// any peer when none is given (only safe when nothing but the balancer can
/// reach the listener). A header that is malformed, truncated, longer than
/// allowed, late, or sent by an untrusted peer closes the connection before
/// the handler sees it; that is counted in
/// [`StatsSnapshot::proxy_rejected`](crate::StatsSnapshot::proxy_rejected)
/// and logged at `warn`, at most once every 5 seconds per listener, since a
/// peer can cause refusals at will: that line says how many more were
/// refused since the previous one, and those go to `debug`, as does a peer
/// that closes before sending anything (health checks do).
#[derive(Clone, PartialEq, Eq)]
#[must_use]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub struct ProxyProtocol {
    required: bool,
    trusted: Vec<(IpAddr, u8)>,
    timeout: Duration,
    max_header_len: usize,
}

impl ProxyProtocol {
    /// Every connection must start with a header, from a trusted peer.
    pub fn required() -> Self {
        ProxyProtocol::new(true)
    }

    /// A trusted peer may start with a header; a connection without one is
    /// served with the socket's own peer address. A header from an untrusted
    /// peer is still refused.
    ///
    /// To tell, the listener waits for the first bytes (up to the
    /// [header timeout](ProxyProtocol::header_timeout)), so use it only for
    /// protocols where the client speaks first. A client without a header
    /// gets all of its bytes to the handler, even when its first segment
    /// looked like the start of one (`"P"`, `"\r\n"`): nothing is taken off
    /// the socket until a whole header has arrived.
    pub fn optional() -> Self {
        ProxyProtocol::new(false)
    }

    fn new(required: bool) -> Self {
        ProxyProtocol {
            required,
            trusted: Vec::new(),
            timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
            max_header_len: proxy::DEFAULT_V2_MAX_LEN,
        }
    }

    /// Trusts headers from this address. Call it again to trust more.
    ///
    /// Default: every peer is trusted while no address or network is given.
    pub fn trust(self, addr: IpAddr) -> Self {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        self.trust_network(addr, bits)
    }

    /// Trusts headers from a network, such as `(10.0.0.0, 8)`. An IPv4
    /// network also matches the same addresses mapped into IPv6
    /// (`::ffff:10.1.2.3`), as a dual-stack listener reports them.
    pub fn trust_network(mut self, addr: IpAddr, prefix_len: u8) -> Self {
        self.trusted.push((addr, prefix_len));
        self
    }

    /// How long a connection may take to send its whole header.
    ///
    /// Default: 5 s (the specification asks for at least 3 s, to allow one
    /// TCP retransmission).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest v2 header accepted (v1 headers are at most 107 bytes by
    /// definition). At least 16.
    ///
    /// Default: 1024 bytes, room for both addresses and the usual TLVs.
    pub fn max_header_len(mut self, len: usize) -> Self {
        self.max_header_len = len;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.timeout.is_zero() {
            return Err("the header timeout must be longer than zero");
        }
        if self.max_header_len < proxy::V2_MIN_LEN {
            return Err("the maximum header length must be at least 16 bytes");
        }
        for &(addr, prefix) in &self.trusted {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > bits {
                return Err("a trusted network's prefix is longer than its address");
            }
        }
        Ok(())
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.is_empty()
            || self
                .trusted
                .iter()
                .any(|&(net, prefix)| in_network(peer, net, prefix))
    }

    /// Reads the header of a new connection from `peer`, applying the
    /// policy above. `Ok(None)`: no header, serve the connection as it is.
    /// `Err(refusal)`: close the connection; the caller logs and counts it.
    pub(crate) async fn read(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<Option<ProxyHeader>, Refusal> {
        let trusted = self.is_trusted(peer.ip());
        if !trusted && self.required {
            return Err(Refusal::UntrustedPeer);
        }
        let read = tokio::time::timeout(
            self.timeout,
            proxy::read_header(stream, self.max_header_len),
        )
        .await;
        // In this order: what the peer did not send comes before whether it
        // may send a header at all.
        match read {
            Err(_elapsed) => Err(Refusal::Timeout(self.timeout)),
            Ok(Err(ProxyError::UnexpectedEof { received: 0 })) => Err(Refusal::ClosedEarly),
            Ok(Err(ProxyError::NotProxyProtocol)) if !self.required => Ok(None),
            _ if !trusted => Err(Refusal::Untrusted),
            Ok(Ok(header)) => Ok(Some(header)),
            Ok(Err(err)) => Err(Refusal::Invalid(err)),
        }
    }
}

impl fmt::Debug for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trusted: Vec<String> = self
            .trusted
            .iter()
            .map(|(a, p)| format!("{a}/{p}"))
            .collect();
        f.debug_struct("ProxyProtocol")
            .field("required", &self.required)
            .field("trusted", &trusted)
            .field("timeout", &self.timeout)
            .field("max_header_len", &self.max_header_len)
            .finish()
    }
}

/// Why a connection was refused before its handler ran.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A required header, from a peer that may not send one: refused
    /// before reading anything.
    UntrustedPeer,
    /// A header from a peer that may not send one.
    Untrusted,
    /// The peer closed before sending anything (health checks do).
    ClosedEarly,
    /// No whole header within the header timeout.
    Timeout(Duration),
    /// A malformed, over-long or unsupported header.
    Invalid(ProxyError),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UntrustedPeer => f.write_str("connection from an untrusted address refused"),
            Refusal::Untrusted => f.write_str("header from an untrusted address refused"),
            Refusal::ClosedEarly => f.write_str("peer closed before sending a header"),
            Refusal::Timeout(limit) => write!(f, "no complete header within {limit:?}"),
            Refusal::Invalid(err) => write!(f, "invalid header refused: {err}"),
        }
    }
}

/// Whether `addr` is in `net/prefix`. IPv4-mapped IPv6 addresses
/// (`::ffff:10.1.2.3`) count as the IPv4 address they map, on either side.
fn in_network(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (addr, _) = unmap(addr, 128);
    let (net, prefix) = unmap(net, prefix);
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => prefix_eq(
            u128::from(u32::from(a)),
            u128::from(u32::from(n)),
            32,
            prefix,
        ),
        (IpAddr::V6(a), IpAddr::V6(n)) => prefix_eq(u128::from(a), u128::from(n), 128, prefix),
        _ => false,
    }
}

/// An IPv4-mapped IPv6 address (with a prefix that covers the mapping) as
/// the IPv4 address and prefix it stands for; anything else as it is.
fn unmap(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    }
}

fn prefix_eq(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("10.1.2.3"), ip("10.0.0.0"), 8));
        assert!(!in_network(ip("11.1.2.3"), ip("10.0.0.0"), 8));
        assert!(in_network(ip("10.1.2.3"), ip("10.1.2.3"), 32));
        assert!(!in_network(ip("10.1.2.4"), ip("10.1.2.3"), 32));
        assert!(
            in_network(ip("::ffff:10.1.2.3"), ip("10.0.0.0"), 8),
            "mapped IPv4"
        );
        assert!(in_network(ip("2001:db8::1"), ip("2001:db8::"), 32));
        assert!(!in_network(ip("2001:db9::1"), ip("2001:db8::"), 32));
        assert!(
            !in_network(ip("10.1.2.3"), ip("2001:db8::"), 0),
            "families differ"
        );
        assert!(in_network(ip("192.0.2.1"), ip("0.0.0.0"), 0));
        // A trusted address written in its mapped form, as a dual-stack
        // listener reports it, matches either form of the peer.
        assert!(in_network(ip("10.0.0.5"), ip("::ffff:10.0.0.5"), 128));
        assert!(in_network(
            ip("::ffff:10.0.0.5"),
            ip("::ffff:10.0.0.5"),
            128
        ));
        assert!(in_network(ip("10.1.2.3"), ip("::ffff:10.0.0.0"), 104));
        assert!(!in_network(ip("10.0.0.6"), ip("::ffff:10.0.0.5"), 128));
    }

    #[test]
    fn an_empty_allow_list_trusts_everyone() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ProxyProtocol::required().is_trusted(ip("192.0.2.1")));
        let listed = ProxyProtocol::required().trust(ip("10.0.0.5"));
        assert!(listed.is_trusted(ip("10.0.0.5")));
        assert!(!listed.is_trusted(ip("10.0.0.6")));
    }

    #[test]
    fn validation() {
        assert!(ProxyProtocol::required().validate().is_ok());
        assert!(
            ProxyProtocol::required()
                .max_header_len(15)
                .validate()
                .is_err()
        );
        assert!(
            ProxyProtocol::required()
                .header_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        let bad_prefix = ProxyProtocol::optional().trust_network("10.0.0.0".parse().unwrap(), 33);
        assert!(bad_prefix.validate().is_err());
    }
}
