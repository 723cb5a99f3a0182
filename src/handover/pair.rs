//! Pairing the configured listeners with the sockets a predecessor handed
//! over, by their addresses.

use std::net::SocketAddr;
use std::path::Path;

use crate::Addr;

/// What a configured listener asks a handed-over socket to be, for [`pair`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wanted<'a> {
    /// A TCP listener on the first of these addresses that can be had.
    Tcp(&'a [SocketAddr]),
    /// A Unix listener at this path.
    Unix(&'a Path),
    /// A listener given ready-made: it takes no handed-over socket.
    Nothing,
}

/// Pairs the configured listeners (`wanted`, in the successor's order) with
/// the sockets a predecessor handed over (`held`, by their addresses): the
/// index into `held` each configured listener takes, or `None` where it
/// binds a socket of its own.
///
/// - A TCP address with a port, or a Unix path, takes the socket bound to
///   exactly that address (IP and port; the path as written).
/// - A TCP address with port 0 ("any free port") takes the one socket
///   left on the same IP, if exactly one is left there and no other port-0
///   listener asks for that IP; otherwise it binds a new port.
///
/// Each socket goes to one listener at most; the ones nobody takes are left
/// to the predecessor, which closes them when it stops.
pub(crate) fn pair(wanted: &[Wanted<'_>], held: &[Addr]) -> Vec<Option<usize>> {
    let mut taken = vec![false; held.len()];
    let mut paired = vec![None; wanted.len()];
    for (slot, want) in paired.iter_mut().zip(wanted) {
        let found = match *want {
            Wanted::Tcp(addrs) => addrs.iter().filter(|a| a.port() != 0).find_map(|want| {
                (0..held.len()).find(|&i| {
                    !taken[i]
                        && held[i]
                            .as_tcp()
                            .is_some_and(|h| h.ip() == want.ip() && h.port() == want.port())
                })
            }),
            // Bound at the path, or at the staging name a socket file is
            // created under (see `socket_file::create`).
            Wanted::Unix(path) => (0..held.len()).find(|&i| {
                !taken[i]
                    && matches!(&held[i], Addr::Unix(Some(p)) if crate::socket_file::bound_for(p, path))
            }),
            Wanted::Nothing => None,
        };
        if let Some(i) = found {
            taken[i] = true;
            *slot = Some(i);
        }
    }
    // Port 0: decided for all at once, so that the order does not matter.
    let candidates: Vec<Vec<usize>> = wanted
        .iter()
        .zip(&paired)
        .map(|(want, slot)| match (want, slot) {
            (Wanted::Tcp(addrs), None) => (0..held.len())
                .filter(|&i| {
                    !taken[i]
                        && held[i].as_tcp().is_some_and(|h| {
                            addrs.iter().any(|a| a.port() == 0 && a.ip() == h.ip())
                        })
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    for (index, mine) in candidates.iter().enumerate() {
        if let [only] = mine[..] {
            let contested = candidates
                .iter()
                .enumerate()
                .any(|(other, theirs)| other != index && theirs.contains(&only));
            if !contested {
                paired[index] = Some(only);
            }
        }
    }
    paired
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tcp(addr: &str) -> SocketAddr {
        addr.parse().expect("a literal socket address")
    }

    fn held_tcp(addrs: &[&str]) -> Vec<Addr> {
        addrs.iter().map(|a| Addr::Tcp(tcp(a))).collect()
    }

    #[test]
    fn listeners_are_paired_by_address_whatever_their_order() {
        let held = vec![
            Addr::Tcp(tcp("127.0.0.1:8080")),
            Addr::Unix(Some(PathBuf::from("/run/a.sock"))),
            Addr::Tcp(tcp("127.0.0.1:8443")),
        ];
        let (tls, web) = ([tcp("127.0.0.1:8443")], [tcp("127.0.0.1:8080")]);
        let moved = [tcp("127.0.0.2:8080")];
        let wanted = [
            Wanted::Tcp(&tls),
            Wanted::Unix(Path::new("/run/b.sock")),
            Wanted::Tcp(&moved),
            Wanted::Nothing,
            Wanted::Tcp(&web),
        ];
        assert_eq!(
            pair(&wanted, &held),
            vec![Some(2), None, None, None, Some(0)],
            "same address: taken; another IP or path: bound anew; /run/a.sock: left"
        );
        assert_eq!(
            pair(&[Wanted::Unix(Path::new("/run/a.sock"))], &held),
            vec![Some(1)]
        );
    }

    #[test]
    fn port_zero_takes_the_one_socket_on_its_ip_and_binds_anew_when_in_doubt() {
        let any_local = [tcp("127.0.0.1:0")];
        let other_ip = [tcp("127.0.0.2:0")];
        let one = held_tcp(&["127.0.0.1:4000"]);
        assert_eq!(pair(&[Wanted::Tcp(&any_local)], &one), vec![Some(0)]);
        assert_eq!(pair(&[Wanted::Tcp(&other_ip)], &one), vec![None]);
        // Two sockets on the IP: which one is meant cannot be told.
        let two = held_tcp(&["127.0.0.1:4000", "127.0.0.1:4001"]);
        assert_eq!(pair(&[Wanted::Tcp(&any_local)], &two), vec![None]);
        // Unless a listener with a port takes the other one first.
        let fixed = [tcp("127.0.0.1:4001")];
        assert_eq!(
            pair(&[Wanted::Tcp(&any_local), Wanted::Tcp(&fixed)], &two),
            vec![Some(0), Some(1)]
        );
        // Two port-0 listeners on one socket's IP: neither takes it.
        assert_eq!(
            pair(&[Wanted::Tcp(&any_local), Wanted::Tcp(&any_local)], &one),
            vec![None, None]
        );
    }
}
