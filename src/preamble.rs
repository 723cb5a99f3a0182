//! What a listener does on each new connection before its handler runs:
//! read the PROXY protocol header, perform the TLS handshake. Both run in
//! the connection's own task, never in the accept loop, so a slow client
//! holds up nobody else.

use std::sync::Arc;

use crate::Addr;
use crate::connection::{ProxyInfo, Stream};
use crate::listen::ProxyProtocol;
use crate::stats::Counters;

/// A listener's per-connection work before the handler.
#[derive(Debug)]
pub(crate) struct Preamble {
    proxy: Option<ProxyProtocol>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

/// A connection ready for its handler.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) stream: Stream,
    /// The client: from the PROXY header when there is one.
    pub(crate) peer: Addr,
    pub(crate) proxy: Option<Box<ProxyInfo>>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsInfo>,
}

impl Preamble {
    /// `None` when the listener has nothing to do before the handler, so
    /// that plain listeners pay nothing.
    pub(crate) fn new(
        proxy: Option<ProxyProtocol>,
        #[cfg(feature = "tls")] tls: Option<crate::tls::TlsAcceptor>,
    ) -> Option<Arc<Self>> {
        #[cfg(feature = "tls")]
        let nothing = proxy.is_none() && tls.is_none();
        #[cfg(not(feature = "tls"))]
        let nothing = proxy.is_none();
        (!nothing).then(|| {
            Arc::new(Preamble {
                proxy,
                #[cfg(feature = "tls")]
                tls,
            })
        })
    }

    /// Whether connections on this listener have a PROXY header read.
    pub(crate) fn reads_proxy_header(&self) -> bool {
        self.proxy.is_some()
    }

    /// Runs the preamble. `Err(())`: the connection was refused (logged and
    /// counted here); drop it without running the handler.
    pub(crate) async fn run(
        &self,
        stream: Stream,
        peer: Addr,
        counters: &Counters,
    ) -> Result<Prepared, ()> {
        // The builder allows a preamble on TCP listeners only.
        let (Stream::Tcp(mut tcp), Some(socket_peer)) = (stream, peer.as_tcp()) else {
            unreachable!("a preamble runs on TCP connections only");
        };
        let mut prepared_peer = peer;
        let mut proxy = None;
        if let Some(protocol) = &self.proxy {
            if let Some(header) = protocol.read(&mut tcp, socket_peer, counters).await? {
                if let Some(client) = header.source_addr() {
                    tracing::Span::current().record("client", tracing::field::display(client));
                    prepared_peer = Addr::Tcp(client);
                }
                proxy = Some(Box::new(ProxyInfo {
                    header,
                    balancer: Addr::Tcp(socket_peer),
                }));
            }
        }
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            return match acceptor.accept(tcp).await {
                Ok((stream, info)) => {
                    tracing::debug!(
                        alpn = ?info.alpn_protocol().map(String::from_utf8_lossy),
                        sni = info.server_name(),
                        "TLS handshake done"
                    );
                    Ok(Prepared {
                        stream: Stream::Tls(Box::new(stream)),
                        peer: prepared_peer,
                        proxy,
                        tls: Some(info),
                    })
                }
                Err(err) => {
                    let peer = &prepared_peer;
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
                    Err(())
                }
            };
        }
        Ok(Prepared {
            stream: Stream::Tcp(tcp),
            peer: prepared_peer,
            proxy,
            #[cfg(feature = "tls")]
            tls: None,
        })
    }
}
