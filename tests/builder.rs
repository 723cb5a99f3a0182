//! Building a server: addresses, binding errors, configuration errors.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use common::{build, noop, within};
use switchboard::{Addr, Connection, Error, Handler, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn port_zero_reports_the_real_port_before_run() {
    let server = build(noop(), |b| b).await;
    let addr = server.local_addr().as_tcp().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port is known after build");
    // The socket listens from build on: a client can connect before run.
    within("connect before run", TcpStream::connect(addr))
        .await
        .unwrap();
}

#[tokio::test]
async fn accepts_every_address_form() {
    let forms = [
        Server::builder().bind("127.0.0.1:0"),
        Server::builder().bind(String::from("127.0.0.1:0")),
        Server::builder().bind(("127.0.0.1", 0)),
        Server::builder().bind("localhost:0"),
        Server::builder().bind(SocketAddr::from(([127, 0, 0, 1], 0))),
    ];
    for form in forms {
        let server = form.handler(noop()).build().await.unwrap();
        let addr = server.local_addr().as_tcp().unwrap();
        assert!(addr.ip().is_loopback(), "{addr} is loopback");
        assert_ne!(addr.port(), 0);
    }
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error_naming_the_address() {
    let first = build(noop(), |b| b).await;
    let taken = first.local_addr();
    let err = Server::builder()
        .bind(taken.as_tcp().unwrap())
        .handler(noop())
        .build()
        .await
        .expect_err("the port is taken");
    match &err {
        Error::Bind { addr, source } => {
            assert_eq!(addr, &taken);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            assert_eq!(err.to_string(), format!("cannot bind {taken}: {source}"));
        }
        other => panic!("expected Error::Bind, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_options_and_bad_values_are_errors_not_panics() {
    let no_handler = Server::builder().bind("127.0.0.1:0").build().await;
    assert!(
        matches!(no_handler, Err(Error::NoHandler)),
        "{no_handler:?}"
    );

    let no_addr = Server::builder().handler(noop()).build().await;
    assert!(matches!(no_addr, Err(Error::NoBindAddress)), "{no_addr:?}");

    let zero_backlog = Server::builder()
        .bind("127.0.0.1:0")
        .handler(noop())
        .backlog(0)
        .build()
        .await;
    assert!(
        matches!(
            zero_backlog,
            Err(Error::InvalidConfig {
                option: "backlog",
                ..
            })
        ),
        "{zero_backlog:?}"
    );

    // More listeners than a handover can pass: refused at build, not
    // found out at the first restart.
    #[cfg(all(unix, feature = "handover"))]
    {
        let dir = common::temp_dir("too-many");
        let control = dir.path().join("control.sock");
        let mut builder = Server::builder().handler(noop()).handover(&control);
        for _ in 0..65 {
            builder = builder.bind("127.0.0.1:0");
        }
        let too_many = builder.build().await;
        assert!(
            matches!(
                too_many,
                Err(Error::InvalidConfig {
                    option: "handover",
                    ..
                })
            ),
            "{too_many:?}"
        );
        assert!(!control.exists(), "refused before the control socket");
    }

    let unresolvable = Server::builder()
        .bind("no port here")
        .handler(noop())
        .build()
        .await;
    match unresolvable {
        Err(Error::Resolve { addr, .. }) => assert_eq!(addr, "no port here"),
        other => panic!("expected Error::Resolve, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_an_unrun_server_frees_the_port() {
    let server = build(noop(), |b| b).await;
    let addr = server.local_addr().as_tcp().unwrap();
    drop(server);
    let refused = within("connect to a dropped server", TcpStream::connect(addr)).await;
    assert_eq!(
        refused.expect_err("nothing listens").kind(),
        io::ErrorKind::ConnectionRefused
    );
    let again = Server::builder().bind(addr).handler(noop()).build().await;
    assert!(again.is_ok(), "the port can be bound again: {again:?}");
}

struct Named(&'static str);

impl Handler for Named {
    type Error = io::Error;

    async fn handle(&self, mut conn: Connection) -> io::Result<()> {
        conn.write_all(self.0.as_bytes()).await
    }
}

#[tokio::test]
async fn a_handler_chosen_at_run_time_serves_through_arc_dyn() {
    use tokio::io::AsyncReadExt;

    for pick in ["a", "b"] {
        let handler: Arc<dyn Handler> = if pick == "a" {
            Arc::new(Named("a"))
        } else {
            Arc::new(Named("b"))
        };
        let running = common::start(handler, |b| b).await;
        let mut client = running.connect().await;
        let mut got = String::new();
        within("the greeting", client.read_to_string(&mut got))
            .await
            .unwrap();
        assert_eq!(got, pick);
        let report = running.stop().await;
        assert_eq!(report.completed, 1);
    }
}

#[test]
fn public_types_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Server>();
    check::<switchboard::Builder>();
    check::<Connection>();
    check::<switchboard::ShutdownHandle>();
    check::<switchboard::ShutdownSignal>();
    check::<switchboard::Stats>();
    check::<switchboard::StatsSnapshot>();
    check::<switchboard::ShutdownReport>();
    check::<Error>();
    check::<Addr>();
    check::<Arc<dyn Handler>>();
}

/// The defaults table is written once (docs/defaults.md, included in the
/// crate docs) and must appear in the README as it is, with the numbers the
/// code uses.
#[test]
fn the_readme_defaults_table_is_true_to_the_code() {
    let readme = include_str!("../README.md");
    let table = include_str!("../docs/defaults.md");
    assert!(
        readme.contains(table.trim()),
        "README.md must contain docs/defaults.md verbatim"
    );
    let thousands = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let rows = [
        (
            "max_connections",
            thousands(switchboard::DEFAULT_MAX_CONNECTIONS as u64),
        ),
        (
            "backlog",
            thousands(u64::from(switchboard::DEFAULT_BACKLOG)),
        ),
        (
            "idle_timeout",
            format!("{} s", switchboard::DEFAULT_IDLE_TIMEOUT.as_secs()),
        ),
        (
            "drain_timeout",
            format!("{} s", switchboard::DEFAULT_DRAIN_TIMEOUT.as_secs()),
        ),
    ];
    for (option, default) in rows {
        let row = format!("| `{option}` | {default} |");
        assert!(table.contains(&row), "the table should say {row}");
    }
}
