//! The hello server with every operational switch: several listeners, Unix
//! sockets, systemd socket activation, TLS, `SO_REUSEPORT` and zero-downtime
//! restarts, read from the command line and the environment.
//!
//! The other examples show the builder at its plainest; this one is where the
//! switches a deployment needs live, and what the crate's tests of those
//! switches start.
//!
//! ```text
//! cargo run --example ops [ADDR[,ADDR...]]    # default 127.0.0.1:8080
//! ```
//!
//! Each `ADDR` is `HOST:PORT` (port 0 picks a free port), `unix:PATH` for a
//! Unix socket, or `systemd` for the sockets passed by systemd socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`). The environment:
//!
//! | variable | effect |
//! | --- | --- |
//! | `SWITCHBOARD_TLS_CERT`, `SWITCHBOARD_TLS_KEY` | PEM files: every TCP listener serves TLS (needs `--features tls`) |
//! | `SWITCHBOARD_TLS_ALPN` | the ALPN protocols offered, comma-separated |
//! | `SWITCHBOARD_REUSE_PORT=1` | `SO_REUSEPORT`: several instances share one port |
//! | `SWITCHBOARD_HANDOVER=PATH` | a new instance started with the same `PATH` takes over the listeners, and this one drains and exits (feature `handover`, on by default; Unix) |
//!
//! Like the others, it prints `listening on ADDR[, ADDR...]` first and
//! `shutdown report: ...` at exit, after Ctrl-C or SIGTERM.

#[path = "../hello/http.rs"]
mod http;

use std::env;
use std::error::Error;
use std::io::IsTerminal;

use switchboard::Server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let addrs = env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());

    let mut builder = Server::builder();
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
    if env::var_os("SWITCHBOARD_REUSE_PORT").is_some_and(|v| v == "1") {
        builder = builder.reuse_port(true);
    }
    if let Some(control) = env::var_os("SWITCHBOARD_HANDOVER") {
        #[cfg(all(unix, feature = "handover"))]
        {
            builder = builder.handover(control);
        }
        // Without the feature, asking for a handover is an error, not a
        // restart that would refuse clients.
        #[cfg(not(all(unix, feature = "handover")))]
        return Err(format!(
            "SWITCHBOARD_HANDOVER={} is set, but the example was built without the `handover` feature (or not for Unix)",
            control.to_string_lossy()
        )
        .into());
    }
    let server = builder
        .handler(http::Hello::default())
        .shutdown_on(switchboard::termination())
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
        env::var_os("SWITCHBOARD_TLS_CERT"),
        env::var_os("SWITCHBOARD_TLS_KEY"),
    ) else {
        return Ok(None);
    };
    let mut tls = switchboard::TlsConfig::from_pem(&std::fs::read(cert)?, &std::fs::read(key)?)?;
    if let Ok(alpn) = env::var("SWITCHBOARD_TLS_ALPN") {
        tls = tls.alpn_protocols(alpn.split(',').filter(|p| !p.is_empty()));
    }
    Ok(Some(tls))
}

/// Without the `tls` feature, asking for TLS is an error, not plain TCP.
#[cfg(not(feature = "tls"))]
fn tls_from_env() -> Result<Option<std::convert::Infallible>, Box<dyn Error>> {
    if env::var_os("SWITCHBOARD_TLS_CERT").is_some() {
        return Err(
            "SWITCHBOARD_TLS_CERT is set, but the example was built without the `tls` feature"
                .into(),
        );
    }
    Ok(None)
}
