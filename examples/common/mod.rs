//! What every example's `main` does: take the address from the first
//! argument, log to stderr, serve until Ctrl-C or SIGTERM, print the report.

use std::error::Error;
use std::io::IsTerminal;

use switchboard::{Handler, Server, termination};
use tracing_subscriber::EnvFilter;

/// The address an example listens on when no argument is given.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Serves `handler` on the address given as the first argument (default
/// [`DEFAULT_ADDR`]) until Ctrl-C or SIGTERM, then prints the shutdown report.
///
/// The argument is `HOST:PORT` (port 0 picks a free port), `unix:PATH` for a
/// Unix socket, or `systemd` for the sockets passed by systemd socket
/// activation. Several can be given, separated by commas.
///
/// With `SWITCHBOARD_REUSE_PORT=1` in the environment the listeners set
/// `SO_REUSEPORT`, so that several instances can share one port.
///
/// With `SWITCHBOARD_HANDOVER=PATH` the server restarts without downtime:
/// a new instance started with the same arguments and `PATH` takes over the
/// running one's listeners, and the old one drains and exits.
///
/// With `SWITCHBOARD_TLS_CERT=cert.pem` and `SWITCHBOARD_TLS_KEY=key.pem`
/// (and the crate's `tls` feature: `cargo run --features tls --example ...`)
/// every TCP listener serves TLS, offering the ALPN protocols listed in
/// `SWITCHBOARD_TLS_ALPN` (comma-separated), if any.
///
/// The first line on stdout is always `listening on ADDR[, ADDR...]` with the
/// bound addresses, so scripts and tests can start an example on port 0.
pub(crate) async fn serve(handler: impl Handler) -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let addrs = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let mut builder = Server::builder();
    if std::env::var_os("SWITCHBOARD_REUSE_PORT").is_some_and(|v| v == "1") {
        builder = builder.reuse_port(true);
    }
    if let Some(control) = std::env::var_os("SWITCHBOARD_HANDOVER") {
        builder = builder.handover(control);
    }
    for addr in addrs.split(',') {
        builder = if addr == "systemd" {
            builder.systemd_listeners()
        } else if let Some(path) = addr.strip_prefix("unix:") {
            builder.bind_unix(path)
        } else {
            match tls_from_env()? {
                #[cfg(feature = "tls")]
                Some(tls) => builder.listen(switchboard::Listen::tcp(addr).tls(tls)),
                _ => builder.bind(addr),
            }
        };
    }
    let server = builder
        .handler(handler)
        .shutdown_signal(termination())
        .build()
        .await?;
    let bound: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("listening on {}", bound.join(", "));
    let report = server.run().await?;
    println!("shutdown report: {report}");
    Ok(())
}

/// The TLS settings the environment asks for, if any.
#[cfg(feature = "tls")]
fn tls_from_env() -> Result<Option<switchboard::TlsConfig>, Box<dyn Error>> {
    let (Some(cert), Some(key)) = (
        std::env::var_os("SWITCHBOARD_TLS_CERT"),
        std::env::var_os("SWITCHBOARD_TLS_KEY"),
    ) else {
        return Ok(None);
    };
    let mut tls = switchboard::TlsConfig::from_pem(&std::fs::read(cert)?, &std::fs::read(key)?)?;
    if let Ok(alpn) = std::env::var("SWITCHBOARD_TLS_ALPN") {
        tls = tls.alpn_protocols(alpn.split(',').filter(|p| !p.is_empty()));
    }
    Ok(Some(tls))
}

/// Without the `tls` feature, asking for TLS is an error, not plain TCP.
#[cfg(not(feature = "tls"))]
fn tls_from_env() -> Result<Option<std::convert::Infallible>, Box<dyn Error>> {
    if std::env::var_os("SWITCHBOARD_TLS_CERT").is_some() {
        return Err(
            "SWITCHBOARD_TLS_CERT is set, but the example was built without the `tls` feature"
                .into(),
        );
    }
    Ok(None)
}
