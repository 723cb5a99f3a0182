//! The wire format of a handover: its messages and their frames, sent and
//! received with their descriptors as `SCM_RIGHTS`, and the checks of an
//! offer's descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::sockopt;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::inherited::Inherited;

/// The most listening sockets one handover carries.
pub(crate) const MAX_LISTENERS: usize = 64;

/// The most descriptors in one message: the listeners and the control
/// socket. Far below the kernel's own cap (`SCM_MAX_FD`, 253 on Linux).
pub(crate) const MAX_DESCRIPTORS: usize = MAX_LISTENERS + 1;

const MAGIC: [u8; 4] = *b"SBHO";
pub(super) const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;
/// The longest body: one kind byte per descriptor of an OFFER.
const MAX_BODY: usize = MAX_DESCRIPTORS;
// A body's length always fits the header's `u16`.
const _: () = assert!(MAX_BODY <= u16::MAX as usize);

pub(super) const KIND_TCP: u8 = 1;
pub(super) const KIND_UNIX: u8 = 2;
pub(super) const KIND_CONTROL: u8 = 3;

/// `MSG_NOSIGNAL`: a successor that vanished must cost an `EPIPE` error,
/// not a `SIGPIPE` that kills the server. Where the flag does not exist the
/// Rust runtime's default (`SIGPIPE` ignored) is relied on.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: SendFlags = SendFlags::empty();

/// `MSG_CMSG_CLOEXEC`: received descriptors must not leak into programs this
/// process starts.
#[cfg(any(target_os = "linux", target_os = "android"))]
const RECV_FLAGS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RECV_FLAGS: RecvFlags = RecvFlags::empty();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Message {
    Request,
    Offer,
    Ready,
    Done,
    Reject,
    Watch,
    Release,
}

impl Message {
    pub(super) fn code(self) -> u8 {
        match self {
            Message::Request => 1,
            Message::Offer => 2,
            Message::Ready => 3,
            Message::Done => 4,
            Message::Reject => 5,
            Message::Watch => 6,
            Message::Release => 7,
        }
    }
}

/// One message as received, its descriptors already owned.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) version: u8,
    pub(super) code: u8,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Checks a received message's version and type, and that only an OFFER
/// carries a body or descriptors.
pub(super) fn expect(frame: Frame, want: Message) -> io::Result<Frame> {
    if frame.code == Message::Reject.code() {
        return Err(ProtocolError::Rejected {
            theirs: frame.version,
        }
        .into());
    }
    if frame.version != VERSION {
        return Err(ProtocolError::Version {
            theirs: frame.version,
        }
        .into());
    }
    if frame.code != want.code() {
        return Err(ProtocolError::Unexpected {
            want,
            got: frame.code,
        }
        .into());
    }
    if want != Message::Offer && (!frame.body.is_empty() || !frame.fds.is_empty()) {
        return Err(ProtocolError::Payload(want).into());
    }
    Ok(frame)
}

/// Turns an OFFER into owned, checked listeners and the control listener.
/// On any error every received descriptor is closed (dropped).
pub(super) fn parse_offer(
    frame: Frame,
) -> io::Result<(Vec<Inherited>, std::os::unix::net::UnixListener)> {
    let Frame {
        body: kinds, fds, ..
    } = frame;
    if kinds.len() != fds.len() {
        return Err(ProtocolError::OfferCount {
            named: kinds.len(),
            carried: fds.len(),
        }
        .into());
    }
    let Some((&KIND_CONTROL, listener_kinds)) = kinds.split_last() else {
        return Err(ProtocolError::Offer("the offer does not end with the control socket").into());
    };
    if listener_kinds.is_empty() {
        return Err(ProtocolError::Offer("the offer holds no listening socket").into());
    }
    let mut fds = fds.into_iter();
    let mut listeners = Vec::with_capacity(listener_kinds.len());
    for (index, (&kind, fd)) in listener_kinds.iter().zip(&mut fds).enumerate() {
        let listener = match kind {
            KIND_TCP => Inherited::Tcp(checked_listener(fd, Family::Ip, index)?.into()),
            KIND_UNIX => Inherited::Unix(checked_listener(fd, Family::Unix, index)?.into()),
            KIND_CONTROL => {
                return Err(ProtocolError::Offer("the offer holds two control sockets").into());
            }
            other => return Err(ProtocolError::Kind(other).into()),
        };
        listeners.push(listener);
    }
    let control = fds
        .next()
        .ok_or(ProtocolError::Offer("the offer lacks the control socket"))?;
    let control = checked_listener(control, Family::Unix, listener_kinds.len())?;
    Ok((listeners, control.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Ip,
    Unix,
}

/// Checks that a received descriptor is what the offer says: a listening
/// stream socket of the right family.
fn checked_listener(fd: OwnedFd, family: Family, index: usize) -> io::Result<OwnedFd> {
    let not_a_socket = |err: rustix::io::Errno| ProtocolError::NotASocket {
        index,
        source: err.into(),
    };
    let socket_type = sockopt::socket_type(&fd).map_err(not_a_socket)?;
    let found = rustix::net::getsockname(&fd)
        .map_err(not_a_socket)?
        .address_family();
    let family_ok = match family {
        Family::Ip => found == AddressFamily::INET || found == AddressFamily::INET6,
        Family::Unix => found == AddressFamily::UNIX,
    };
    if socket_type != SocketType::STREAM || !family_ok {
        return Err(ProtocolError::NotAStreamSocket { index, family }.into());
    }
    // Apple systems declare SO_ACCEPTCONN but do not implement it.
    #[cfg(not(target_vendor = "apple"))]
    if !sockopt::socket_acceptconn(&fd).map_err(not_a_socket)? {
        return Err(ProtocolError::NotListening { index }.into());
    }
    Ok(fd)
}

/// Sends one message, its descriptors as `SCM_RIGHTS` with its first byte.
pub(super) async fn send_frame(
    stream: &UnixStream,
    message: Message,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    // The one check of the size: within these limits the length fits the
    // header (see `MAX_BODY`) and the descriptors `send_some`'s buffer.
    if body.len() > MAX_BODY || fds.len() > MAX_DESCRIPTORS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "handover message over the size limit",
        ));
    }
    let len = body.len() as u16;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(VERSION);
    bytes.push(message.code());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(body);
    let mut sent = 0;
    while sent < bytes.len() {
        // A stream socket may take part of the bytes; the descriptors went
        // with the first part, so the rest goes without them.
        let attach = if sent == 0 { fds } else { &[] };
        let rest = &bytes[sent..];
        let n = stream
            .async_io(Interest::WRITABLE, || send_some(stream, rest, attach))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Sends what of `bytes` the socket takes, with `fds` (at most
/// [`MAX_DESCRIPTORS`], as [`send_frame`] checked).
fn send_some(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_DESCRIPTORS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        // The buffer has room for MAX_DESCRIPTORS. Were it short all the
        // same, the message would go without descriptors, and the receiver
        // refuses an offer whose descriptors are not all there.
        let pushed = ancillary.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(pushed, "send_frame checks the number of descriptors");
    }
    Ok(rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut ancillary,
        SEND_FLAGS,
    )?)
}

/// Reads one message: the header, then exactly the body it announces, so
/// that nothing of the next message is consumed.
pub(super) async fn read_frame(stream: &UnixStream) -> io::Result<Frame> {
    let mut fds = Vec::new();
    let mut header = [0; HEADER_LEN];
    read_exact(stream, &mut header, &mut fds).await?;
    if header[..4] != MAGIC {
        return Err(ProtocolError::Magic.into());
    }
    let len = usize::from(u16::from_be_bytes([header[6], header[7]]));
    if len > MAX_BODY {
        return Err(ProtocolError::BodyTooLong(len).into());
    }
    let mut body = vec![0; len];
    read_exact(stream, &mut body, &mut fds).await?;
    Ok(Frame {
        version: header[4],
        code: header[5],
        body,
        fds,
    })
}

/// Fills `buf`, keeping the descriptors that arrive on the way in `fds`
/// (owned at once: closed if the caller fails).
async fn read_exact(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let (n, batch) = stream
            .async_io(Interest::READABLE, || recv_some(stream, &mut buf[filled..]))
            .await?;
        if !batch.is_empty() {
            if !fds.is_empty() {
                return Err(ProtocolError::DescriptorsTwice.into());
            }
            *fds = batch;
        }
        if n == 0 {
            return Err(ProtocolError::Closed.into());
        }
        filled += n;
    }
    Ok(())
}

fn recv_some(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_DESCRIPTORS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut ancillary,
        RECV_FLAGS,
    )?;
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        // The kernel closed what did not fit; `fds` closes the rest.
        return Err(ProtocolError::TooManyDescriptors.into());
    }
    Ok((received.bytes, fds))
}

/// What can be wrong with what the other end of a handover sent. Carried
/// as the source of an `io::Error` of the kind its [`From`] conversion
/// names, so that callers handle every I/O failure of a handover alike.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProtocolError {
    #[error(
        "the other server speaks handover protocol version {theirs}, this one speaks {VERSION}"
    )]
    Rejected { theirs: u8 },
    #[error("handover protocol version {theirs} is not supported (this server speaks {VERSION})")]
    Version { theirs: u8 },
    #[error("expected a {want:?} message, received message type {got}")]
    Unexpected { want: Message, got: u8 },
    #[error("a {0:?} message carries no body and no descriptors")]
    Payload(Message),
    #[error("the offer names {named} sockets but carries {carried} descriptors")]
    OfferCount { named: usize, carried: usize },
    #[error("{0}")]
    Offer(&'static str),
    #[error("unknown socket kind {0} in the offer")]
    Kind(u8),
    #[error("descriptor {index} of the offer is not a socket: {source}")]
    NotASocket { index: usize, source: io::Error },
    #[error("descriptor {index} of the offer is not a {family:?} stream socket")]
    NotAStreamSocket { index: usize, family: Family },
    #[error("descriptor {index} of the offer is not listening")]
    NotListening { index: usize },
    #[error("not a switchboard handover message (bad magic)")]
    Magic,
    #[error("a handover message body of {0} bytes exceeds the limit of {MAX_BODY}")]
    BodyTooLong(usize),
    #[error("descriptors arrived twice in one handover message")]
    DescriptorsTwice,
    #[error("more descriptors than a handover message may carry")]
    TooManyDescriptors,
    #[error("the other end closed the handover control connection")]
    Closed,
}

impl From<ProtocolError> for io::Error {
    fn from(err: ProtocolError) -> Self {
        let kind = match err {
            ProtocolError::Rejected { .. } | ProtocolError::Version { .. } => {
                io::ErrorKind::Unsupported
            }
            ProtocolError::Closed => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}
