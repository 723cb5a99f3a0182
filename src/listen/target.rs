//! What [`Builder::bind`](crate::Builder::bind) accepts as an address, and
//! resolving it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::Error;

/// An address switchboard can bind, given to [`Builder::bind`](crate::Builder::bind).
///
/// Implemented for `&str` and `String` (`"host:port"`), `(&str, u16)`,
/// `(String, u16)`, `(IpAddr, u16)`, [`SocketAddr`] and its V4/V6 forms, and
/// slices, arrays and vectors of `SocketAddr`. Sealed: it cannot be
/// implemented outside this crate.
pub trait ToBindAddr: sealed::Sealed {}

pub(crate) mod sealed {
    use super::BindTarget;

    #[allow(unreachable_pub)] // public only so it can be a supertrait of a public trait
    pub trait Sealed {
        fn into_target(self) -> BindTarget;
    }
}

/// What [`Builder::bind`] was given, resolved in `build`.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // named by the sealed trait's method only
pub enum BindTarget {
    Host(String),
    HostPort(String, u16),
    Addrs(Vec<SocketAddr>),
}

impl BindTarget {
    pub(crate) async fn resolve(self) -> Result<Vec<SocketAddr>, Error> {
        let (described, found) = match self {
            BindTarget::Addrs(addrs) => (format!("{addrs:?}"), Ok(addrs)),
            BindTarget::Host(host) => match host.parse::<SocketAddr>() {
                // A literal address needs no resolver round trip.
                Ok(addr) => (host, Ok(vec![addr])),
                Err(_) => {
                    let found = tokio::net::lookup_host(host.as_str())
                        .await
                        .map(Iterator::collect);
                    (host, found)
                }
            },
            BindTarget::HostPort(host, port) => {
                let found = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(Iterator::collect);
                (format!("{host}:{port}"), found)
            }
        };
        match found {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(Error::Resolve {
                addr: described,
                source: io::Error::new(io::ErrorKind::InvalidInput, "no addresses to bind"),
            }),
            Err(source) => Err(Error::Resolve {
                addr: described,
                source,
            }),
        }
    }
}

macro_rules! to_bind_addr {
    ($($ty:ty => |$v:ident| $e:expr;)*) => {$(
        impl ToBindAddr for $ty {}
        impl sealed::Sealed for $ty {
            fn into_target(self) -> BindTarget {
                let $v = self;
                $e
            }
        }
    )*};
}

to_bind_addr! {
    &str => |s| BindTarget::Host(s.to_owned());
    String => |s| BindTarget::Host(s);
    &String => |s| BindTarget::Host(s.clone());
    (&str, u16) => |hp| BindTarget::HostPort(hp.0.to_owned(), hp.1);
    (String, u16) => |hp| BindTarget::HostPort(hp.0, hp.1);
    (IpAddr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    (Ipv4Addr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    (Ipv6Addr, u16) => |ap| BindTarget::Addrs(vec![SocketAddr::from(ap)]);
    SocketAddr => |a| BindTarget::Addrs(vec![a]);
    SocketAddrV4 => |a| BindTarget::Addrs(vec![SocketAddr::V4(a)]);
    SocketAddrV6 => |a| BindTarget::Addrs(vec![SocketAddr::V6(a)]);
    &[SocketAddr] => |a| BindTarget::Addrs(a.to_vec());
    Vec<SocketAddr> => |a| BindTarget::Addrs(a);
}

impl<const N: usize> ToBindAddr for [SocketAddr; N] {}
impl<const N: usize> sealed::Sealed for [SocketAddr; N] {
    fn into_target(self) -> BindTarget {
        BindTarget::Addrs(self.to_vec())
    }
}
