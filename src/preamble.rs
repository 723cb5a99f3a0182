//! What a listener does on each new connection before its handler runs:
//! read the PROXY protocol header, perform the TLS handshake. Both run in
//! the connection's own task, never in the accept loop, so a slow client
//! holds up nobody else.

use std::sync::Arc;
#[cfg(feature = "proxy-protocol")]
use std::time::Duration;

use crate::Connection;
use crate::conn::Stream;
use crate::conn::record::Extra;
use crate::stats::Counters;
#[cfg(feature = "proxy-protocol")]
use crate::{
    Addr,
    conn::ProxyInfo,
    listen::{ProxyProtocol, Refusal},
    log_limit::LogLimit,
};

/// How often a listener may log a refused PROXY header at `warn`: refusals
/// are something a peer causes at will, so one line per interval stands for
/// all of them, with their count (the others go to `debug`).
#[cfg(feature = "proxy-protocol")]
pub(crate) const PROXY_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Why a preamble ended a connection before its handler: its PROXY header
/// was refused or its TLS handshake failed. Already logged and counted where
/// it was decided; the connection is dropped without its handler.
#[derive(Debug)]
pub(crate) struct Refused;

/// A listener's per-connection work before the handler.
#[derive(Debug)]
pub(crate) struct Preamble {
    #[cfg(feature = "proxy-protocol")]
    proxy: Option<ProxyProtocol>,
    /// Shared by the listener's connections: the bound on its refusal lines.
    #[cfg(feature = "proxy-protocol")]
    proxy_refusals: LogLimit,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

impl Preamble {
    /// `None` when the listener has nothing to do before the handler, so
    /// that plain listeners pay nothing.
    pub(crate) fn new(
        #[cfg(feature = "proxy-protocol")] proxy: Option<ProxyProtocol>,
        #[cfg(feature = "tls")] tls: Option<crate::tls::TlsAcceptor>,
    ) -> Option<Arc<Self>> {
        #[cfg(feature = "proxy-protocol")]
        let proxy_nothing = proxy.is_none();
        #[cfg(not(feature = "proxy-protocol"))]
        let proxy_nothing = true;
        #[cfg(feature = "tls")]
        let tls_nothing = tls.is_none();
        #[cfg(not(feature = "tls"))]
        let tls_nothing = true;
        (!(proxy_nothing && tls_nothing)).then(|| {
            Arc::new(Preamble {
                #[cfg(feature = "proxy-protocol")]
                proxy,
                #[cfg(feature = "proxy-protocol")]
                proxy_refusals: LogLimit::new(PROXY_REFUSAL_LOG_INTERVAL),
                #[cfg(feature = "tls")]
                tls,
            })
        })
    }

    /// Whether connections on this listener have a PROXY header read.
    pub(crate) fn reads_proxy_header(&self) -> bool {
        #[cfg(feature = "proxy-protocol")]
        let reads = self.proxy.is_some();
        #[cfg(not(feature = "proxy-protocol"))]
        let reads = false;
        reads
    }

    /// Runs the preamble on `conn`, a TCP connection: reads the PROXY header
    /// (then `conn.peer_addr()` is the client it names), performs the TLS
    /// handshake (then `conn` carries the TLS stream); or [`Refused`].
    pub(crate) async fn run(
        &self,
        mut conn: Connection,
        counters: &Counters,
    ) -> Result<Connection, Refused> {
        let mut extra = Extra::default();
        #[cfg(feature = "proxy-protocol")]
        if let Some(protocol) = &self.proxy {
            // The builder allows a preamble on TCP listeners only.
            let Some(socket_peer) = conn.state.peer.as_tcp() else {
                unreachable!("a preamble runs on TCP connections only");
            };
            let Stream::Tcp(tcp) = &mut conn.stream else {
                unreachable!("a preamble runs on TCP connections only");
            };
            let read = protocol.read(tcp, socket_peer).await;
            let header = read.map_err(|refusal| {
                self.log_refusal(socket_peer, &refusal);
                counters.proxy_rejected();
                Refused
            })?;
            if let Some(header) = header {
                let client = header.source_addr();
                if let Some(client) = client {
                    tracing::Span::current().record("client", tracing::field::display(client));
                }
                extra.proxy = Some(ProxyInfo {
                    header,
                    client: client.map(Addr::Tcp),
                });
            }
        }
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let Stream::Tcp(tcp) = conn.stream else {
                unreachable!("a preamble runs on TCP connections only");
            };
            match acceptor.accept(tcp).await {
                Ok((stream, info)) => {
                    tracing::debug!(
                        alpn = ?info.alpn_protocol().map(String::from_utf8_lossy),
                        sni = info.server_name(),
                        "TLS handshake done"
                    );
                    conn.stream = Stream::Tls(Box::new(stream));
                    extra.tls = Some(info);
                }
                Err(err) => {
                    #[cfg(feature = "proxy-protocol")]
                    let peer = extra.client().unwrap_or(&conn.state.peer);
                    #[cfg(not(feature = "proxy-protocol"))]
                    let peer = &conn.state.peer;
                    if matches!(err, crate::tls::HandshakeError::QueueTimeout) {
                        tracing::warn!(
                            %peer,
                            timeout = ?acceptor.handshake_timeout(),
                            "TLS handshakes saturated for the whole handshake timeout: connection closed"
                        );
                    } else {
                        // Not `warn`: scanners and broken clients would flood it.
                        tracing::debug!(%peer, kind = err.kind(), error = %err, "TLS handshake failed");
                    }
                    counters.tls_failed();
                    return Err(Refused);
                }
            }
        }
        if !extra.is_empty() {
            // Set once: the preamble runs once, before the handler.
            let _ = conn.state.extra.set(Box::new(extra));
        }
        Ok(conn)
    }

    /// Logs a refused PROXY header: at `warn` at most once per
    /// [`PROXY_REFUSAL_LOG_INTERVAL`], that line saying how many more were
    /// refused since the last one; the others, and peers that closed before
    /// sending anything (health checks), at `debug`.
    #[cfg(feature = "proxy-protocol")]
    fn log_refusal(&self, peer: std::net::SocketAddr, refusal: &Refusal) {
        if matches!(refusal, Refusal::ClosedEarly) {
            tracing::debug!(%peer, "PROXY protocol: {refusal}");
            return;
        }
        match self.proxy_refusals.admit() {
            Some(0) => tracing::warn!(%peer, "PROXY protocol: {refusal}"),
            Some(suppressed) => tracing::warn!(
                %peer,
                suppressed,
                "PROXY protocol: {refusal}; {suppressed} more refused since the last such line (logged at debug)"
            ),
            None => tracing::debug!(%peer, "PROXY protocol: {refusal}"),
        }
    }
}
