//! Opening what each `Listen` names: resolving it, binding it, or taking
//! over the socket a predecessor handed over for its address.

use std::net::SocketAddr;
#[cfg(unix)]
use std::path::PathBuf;

use crate::config::Config;
#[cfg(all(unix, feature = "handover"))]
use crate::handover::{Inherited, Wanted};
#[cfg(feature = "proxy-protocol")]
use crate::listen::ProxyProtocol;
use crate::listen::bind::{self, Listener};
use crate::listen::{Listen, ListenOn};
use crate::{Addr, Error};

impl Listen {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        #[cfg(feature = "proxy-protocol")]
        if let Some(proxy) = &self.proxy {
            proxy.validate().map_err(|reason| Error::InvalidConfig {
                option: "proxy_protocol",
                reason,
            })?;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.validate()
                .map_err(|(option, reason)| Error::InvalidConfig { option, reason })?;
        }
        Ok(())
    }

    /// Resolves what this names to listen on (a name to its addresses).
    pub(crate) async fn resolve(self) -> Result<Resolved, Error> {
        let settings = Settings::of(&self);
        let on = match self.on {
            ListenOn::Tcp(target) => Target::Tcp(target.resolve().await?),
            #[cfg(unix)]
            ListenOn::UnixPath(path) => Target::UnixPath(path),
            ListenOn::TcpListener(std) => Target::TcpListener(std),
            #[cfg(unix)]
            ListenOn::UnixListener(std) => Target::UnixListener(std),
            #[cfg(unix)]
            ListenOn::Systemd => Target::Systemd,
        };
        Ok(Resolved { settings, on })
    }
}

/// A configured listener, its addresses resolved: ready to be bound, or to
/// take over a socket handed over by a predecessor.
pub(crate) struct Resolved {
    settings: Settings,
    on: Target,
}

/// [`ListenOn`] with a TCP name resolved to its addresses.
enum Target {
    Tcp(Vec<SocketAddr>),
    #[cfg(unix)]
    UnixPath(PathBuf),
    TcpListener(std::net::TcpListener),
    #[cfg(unix)]
    UnixListener(std::os::unix::net::UnixListener),
    #[cfg(unix)]
    Systemd,
}

impl Resolved {
    /// Binds or takes over what this names: usually one listener, several
    /// for systemd; each with this `Listen`'s settings.
    fn open(self, config: &Config) -> Result<Vec<Bound>, Error> {
        let listeners = match self.on {
            Target::Tcp(addrs) => {
                let listener =
                    bind::bind_tcp(&addrs, config).map_err(|(addr, source)| Error::Bind {
                        addr: Addr::Tcp(addr),
                        source,
                    })?;
                vec![listener]
            }
            #[cfg(unix)]
            Target::UnixPath(path) => {
                vec![
                    bind::bind_unix(&path, config).map_err(|source| Error::Bind {
                        addr: Addr::Unix(Some(path)),
                        source,
                    })?,
                ]
            }
            Target::TcpListener(std) => {
                vec![
                    Listener::from_std_tcp(std).map_err(|source| Error::Listener {
                        what: "given TCP listener",
                        source,
                    })?,
                ]
            }
            #[cfg(unix)]
            Target::UnixListener(std) => {
                vec![
                    Listener::from_std_unix(std).map_err(|source| Error::Listener {
                        what: "given Unix listener",
                        source,
                    })?,
                ]
            }
            #[cfg(unix)]
            Target::Systemd => bind::systemd().map_err(|source| Error::Listener {
                what: "systemd sockets",
                source,
            })?,
        };
        listeners
            .into_iter()
            .map(|listener| self.settings.bound(listener))
            .collect()
    }

    /// What this asks a handed-over socket to be.
    #[cfg(all(unix, feature = "handover"))]
    fn wanted(&self) -> Wanted<'_> {
        match &self.on {
            Target::Tcp(addrs) => Wanted::Tcp(addrs),
            Target::UnixPath(path) => Wanted::Unix(path),
            Target::TcpListener(_) | Target::UnixListener(_) | Target::Systemd => Wanted::Nothing,
        }
    }

    /// Takes `socket`, handed over by a predecessor and paired with this
    /// listener, with this listener's settings.
    #[cfg(all(unix, feature = "handover"))]
    fn take(self, socket: Inherited, addr: &Addr, config: &Config) -> Result<Bound, Error> {
        let refused = |source| Error::Bind {
            addr: addr.clone(),
            source,
        };
        // The socket file this server would create is the one it takes
        // over, to remove when it stops.
        let configured = match &self.on {
            Target::UnixPath(path) => Some(path.as_path()),
            _ => None,
        };
        socket.reconfigure(config, configured).map_err(refused)?;
        let listener = Listener::from_inherited(socket, configured).map_err(refused)?;
        self.settings.bound(listener)
    }
}

/// Binds (or opens) every configured listener.
pub(crate) fn open_all(resolved: Vec<Resolved>, config: &Config) -> Result<Vec<Bound>, Error> {
    let mut bound = Vec::with_capacity(resolved.len());
    for listen in resolved {
        bound.extend(listen.open(config)?);
    }
    Ok(bound)
}

/// A successor's listeners: each configured listener takes the socket the
/// predecessor handed over for its address, if there is one (see
/// `handover::pair`), and binds one of its own
/// otherwise; the sockets no listener takes are dropped here, and closed by
/// the predecessor when it stops.
#[cfg(all(unix, feature = "handover"))]
pub(crate) fn take_over(
    resolved: Vec<Resolved>,
    inherited: Vec<Inherited>,
    config: &Config,
) -> Result<Vec<Bound>, Error> {
    let unreadable = |source| Error::Listener {
        what: "handed-over sockets",
        source,
    };
    let held = inherited
        .iter()
        .map(Inherited::addr)
        .collect::<std::io::Result<Vec<Addr>>>()
        .map_err(unreadable)?;
    let wanted: Vec<Wanted<'_>> = resolved.iter().map(Resolved::wanted).collect();
    let pairs = crate::handover::pair(&wanted, &held);
    let mut sockets: Vec<Option<Inherited>> = inherited.into_iter().map(Some).collect();
    let mut bound = Vec::with_capacity(resolved.len());
    for (listen, pair) in resolved.into_iter().zip(pairs) {
        // `pair` names each socket once at most.
        match pair.and_then(|index| sockets[index].take().map(|s| (s, &held[index]))) {
            Some((socket, addr)) => bound.push(listen.take(socket, addr, config)?),
            None => bound.extend(listen.open(config)?),
        }
    }
    for (socket, addr) in sockets.iter().zip(&held) {
        if socket.is_some() {
            tracing::info!(%addr, "not taking over this listener (no longer configured); the running server closes it when it stops");
        }
    }
    Ok(bound)
}

/// What a `Listen` asks of each of its connections before the handler.
struct Settings {
    #[cfg(feature = "proxy-protocol")]
    proxy: Option<ProxyProtocol>,
    #[cfg(feature = "tls")]
    tls: Option<crate::TlsConfig>,
}

impl Settings {
    // Without PROXY and TLS a listener has no such settings.
    #[cfg_attr(
        not(any(feature = "proxy-protocol", feature = "tls")),
        allow(unused_variables)
    )]
    fn of(listen: &Listen) -> Self {
        Settings {
            #[cfg(feature = "proxy-protocol")]
            proxy: listen.proxy.clone(),
            #[cfg(feature = "tls")]
            tls: listen.tls.clone(),
        }
    }

    /// A listener with these settings, checked against each other.
    fn bound(&self, listener: Listener) -> Result<Bound, Error> {
        #[cfg(any(feature = "proxy-protocol", feature = "tls"))]
        let tcp = matches!(listener, Listener::Tcp(_));
        #[cfg(feature = "proxy-protocol")]
        if self.proxy.is_some() && !tcp {
            return Err(Error::InvalidConfig {
                option: "proxy_protocol",
                reason: "the PROXY protocol is supported on TCP listeners only",
            });
        }
        #[cfg(feature = "tls")]
        if self.tls.is_some() && !tcp {
            return Err(Error::InvalidConfig {
                option: "tls",
                reason: "TLS is supported on TCP listeners only",
            });
        }
        Ok(Bound {
            listener,
            #[cfg(feature = "proxy-protocol")]
            proxy: self.proxy.clone(),
            // One acceptor per listener: the cap on handshakes is per listener.
            #[cfg(feature = "tls")]
            tls: self.tls.as_ref().map(crate::tls::TlsAcceptor::new),
        })
    }
}

/// A listener and its settings, ready for the server.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: Listener,
    #[cfg(feature = "proxy-protocol")]
    pub(crate) proxy: Option<ProxyProtocol>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsAcceptor>,
}
