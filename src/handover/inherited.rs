//! A listening socket handed over, or to be: its kind and descriptor for
//! the offer, its address, and the settings it keeps from its first bind.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use socket2::SockRef;

use crate::Addr;
use crate::config::Config;

use super::protocol::{KIND_TCP, KIND_UNIX};

/// A listening socket handed over, with its kind.
#[derive(Debug)]
pub(crate) enum Inherited {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Inherited {
    /// A duplicate of a running listener's descriptor, as `kind`
    /// (`Inherited::Tcp` or `Inherited::Unix`), to [`offer`]. It refers to
    /// the same socket (same queue, same address), so the listener keeps
    /// serving meanwhile.
    ///
    /// # Errors
    ///
    /// The process is out of descriptors.
    ///
    /// [`offer`]: super::control::offer
    pub(crate) fn duplicate<L: From<OwnedFd>>(
        listener: &impl AsFd,
        kind: fn(L) -> Inherited,
    ) -> io::Result<Self> {
        let fd = listener.as_fd().try_clone_to_owned()?;
        Ok(kind(fd.into()))
    }

    pub(super) fn kind(&self) -> u8 {
        match self {
            Inherited::Tcp(_) => KIND_TCP,
            Inherited::Unix(_) => KIND_UNIX,
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Inherited::Tcp(listener) => listener.as_fd(),
            Inherited::Unix(listener) => listener.as_fd(),
        }
    }
}

impl Inherited {
    /// The address the socket is bound to: what a configured listener is
    /// paired with (see [`pair`](super::pair())).
    pub(crate) fn addr(&self) -> io::Result<Addr> {
        match self {
            Inherited::Tcp(listener) => listener.local_addr().map(Addr::Tcp),
            Inherited::Unix(listener) => Ok(Addr::Unix(
                listener.local_addr()?.as_pathname().map(Path::to_path_buf),
            )),
        }
    }

    /// Gives a socket taken over the settings of this server's `config`
    /// where they can still be given (the backlog: `listen` again), and
    /// refuses, with an `InvalidInput` error naming the option, those that
    /// were fixed when the predecessor bound it and differ.
    ///
    /// The permissions of a Unix socket's file are checked, not changed:
    /// changing them by path, after the file has been there for the
    /// predecessor's whole life, would follow whatever name has been put
    /// there meanwhile.
    pub(crate) fn reconfigure(&self, config: &Config, configured: Option<&Path>) -> io::Result<()> {
        let refuse = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} differs from the running server's socket, which keeps it; \
                     change it with a restart without handover"
                ),
            ))
        };
        let socket = SockRef::from(self);
        if let Inherited::Tcp(listener) = self {
            if socket.reuse_port()? != config.reuse_port {
                return refuse("reuse_port");
            }
            if let (Some(only), SocketAddr::V6(_)) = (config.ipv6_only, listener.local_addr()?) {
                if socket.only_v6()? != only {
                    return refuse("ipv6_only");
                }
            }
        }
        if let (Inherited::Unix(_), Some(mode), Some(path)) = (self, config.unix_mode, configured) {
            {
                let found = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
                if found != mode & 0o7777 {
                    return refuse("unix_permissions");
                }
            }
        }
        // The kernel caps it anyway; saturate rather than wrap.
        socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))
    }
}

impl AsFd for Inherited {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}
