//! What `Error` prints: the cause on the same line, once, both through
//! `Display` and through `Debug` (what `fn main() -> Result<..>` prints), and
//! a `source` chain that does not repeat it.

mod common;

use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use common::{noop, within};
use switchboard::{Addr, Error, Server};

/// What `fn main() -> Result<(), E>` prints when `main` fails.
fn as_main_prints(err: &impl fmt::Debug) -> String {
    format!("Error: {err:?}")
}

/// Every message of the chain joined with ": ", as anyhow's `{:#}` and
/// most error reporters print an error.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}

fn tcp(addr: &str) -> Addr {
    addr.parse::<SocketAddr>()
        .expect("a literal address")
        .into()
}

/// An error with a cause of its own, as a wrapped library error would be.
#[derive(Debug)]
struct Outer(Inner);
#[derive(Debug)]
struct Inner;

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the outer failure")
    }
}
impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the inner failure")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
impl std::error::Error for Inner {}

#[tokio::test]
async fn a_taken_port_names_the_address_and_the_os_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = within(
        "build",
        Server::builder().bind(addr).handler(noop()).build(),
    )
    .await
    .expect_err("the port is taken");
    let Error::Bind { source, .. } = &err else {
        panic!("expected Error::Bind, got {err:#?}");
    };
    assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{err:#?}");
    let expected = format!("cannot bind {addr}: {source}");
    assert_eq!(err.to_string(), expected);
    assert_eq!(as_main_prints(&err), format!("Error: {expected}"));
    #[cfg(target_os = "linux")]
    assert_eq!(
        err.to_string(),
        format!("cannot bind {addr}: Address already in use (os error 98)")
    );
    // The OS error is in the message: the chain does not repeat it.
    assert!(err.source().is_none(), "{:?}", err.source());
    assert_eq!(chain(&err), expected);
}

#[tokio::test]
async fn an_address_without_a_port_names_the_resolvers_error() {
    // No port: refused by the parser, before any DNS lookup.
    let err = within(
        "build",
        Server::builder().bind("127.0.0.1").handler(noop()).build(),
    )
    .await
    .expect_err("no port");
    let Error::Resolve { source, .. } = &err else {
        panic!("expected Error::Resolve, got {err:#?}");
    };
    let expected = format!("cannot resolve bind address \"127.0.0.1\": {source}");
    assert_eq!(err.to_string(), expected);
    assert_eq!(as_main_prints(&err), format!("Error: {expected}"));
    assert_eq!(chain(&err), expected);
}

#[test]
fn every_variant_with_a_cause_prints_it_once() {
    let cases = [
        (
            Error::Resolve {
                addr: "nowhere:80".into(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such host"),
            },
            "cannot resolve bind address \"nowhere:80\": no such host",
        ),
        (
            Error::Bind {
                addr: tcp("127.0.0.1:80"),
                source: io::Error::from_raw_os_error(13),
            },
            "cannot bind 127.0.0.1:80: ",
        ),
        (
            Error::Listener {
                what: "systemd sockets",
                source: io::Error::other("LISTEN_PID is not this process"),
            },
            "cannot use the systemd sockets: LISTEN_PID is not this process",
        ),
        (
            Error::Accept {
                addr: tcp("[::1]:8080"),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            },
            "accept failed on [::1]:8080: invalid input parameter",
        ),
    ];
    for (err, expected) in cases {
        let cause = match &err {
            Error::Resolve { source, .. }
            | Error::Bind { source, .. }
            | Error::Listener { source, .. }
            | Error::Accept { source, .. } => source.to_string(),
            _ => unreachable!(),
        };
        let shown = err.to_string();
        assert!(shown.starts_with(expected), "{shown:?}, not {expected:?}");
        assert!(shown.ends_with(&format!(": {cause}")), "{shown:?}");
        assert_eq!(shown.matches(&cause).count(), 1, "{shown:?}");
        assert_eq!(format!("{err:?}"), shown, "Debug prints what main shows");
        assert!(err.source().is_none(), "{shown}: {:?}", err.source());
        assert_eq!(chain(&err), shown);
        // The alternate Debug form shows the fields.
        let fields = format!("{err:#?}");
        assert!(fields.contains("source:"), "{fields}");
    }
}

#[test]
fn what_the_cause_wraps_stays_in_the_chain() {
    let err = Error::Listener {
        what: "given TCP listener",
        source: io::Error::other(Outer(Inner)),
    };
    assert_eq!(
        err.to_string(),
        "cannot use the given TCP listener: the outer failure"
    );
    let below = err.source().expect("the wrapped error's own cause");
    assert!(below.is::<Inner>(), "{below:?}");
    assert_eq!(
        chain(&err),
        "cannot use the given TCP listener: the outer failure: the inner failure"
    );
}

#[tokio::test]
async fn errors_without_a_cause_print_as_before() {
    let err = within("build", Server::builder().bind("127.0.0.1:0").build())
        .await
        .expect_err("no handler");
    assert!(matches!(err, Error::NoHandler), "{err:#?}");
    let expected = "no handler was set: call Builder::handler before build";
    assert_eq!(err.to_string(), expected);
    assert_eq!(as_main_prints(&err), format!("Error: {expected}"));
    assert_eq!(format!("{err:#?}"), "NoHandler");
    assert!(err.source().is_none());

    let err = Error::InvalidConfig {
        option: "max_connections",
        reason: "must be at least 1",
    };
    assert_eq!(
        format!("{err:?}"),
        "invalid value for max_connections: must be at least 1"
    );
    assert!(format!("{err:#?}").starts_with("InvalidConfig {"));
}
