//! Unix socket files on disk, for the listeners of
//! [`Builder::bind_unix`](crate::Builder::bind_unix) and the handover
//! control socket: created without a step that a name swapped by another
//! user could redirect, and removed only while their name still names them.
//!
//! # Why a staging directory
//!
//! A socket file is created by `bind`, with the mode the umask leaves; the
//! mode asked for has to be set afterwards. `chmod` by path follows a
//! symlink, so in a directory another user may write to, that user could
//! swap a symlink onto the path between the `bind` and the `chmod` and have
//! a privileged server change the mode of any file. So [`create`] binds the
//! socket in a fresh directory that only this user can enter, made next to
//! the path; sets the mode there, through a descriptor of that directory;
//! makes the socket listen; and only then links it under its name. The link
//! never replaces anything (an existing name is an error), and the socket
//! is published already listening, so no other server's probe can find it
//! stale and replace it between its creation and its `listen`.
//!
//! Tools that show a socket's bound address (`ss -x`, `lsof`) show the
//! staging name (`.sb-XXXXXXXX/NAME` next to the path), the address the
//! kernel recorded at `bind`; clients connect to the path as usual.

use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawMode, Stat};
use socket2::{SockAddr, Socket};

/// The prefix of a staging directory's name; a random suffix follows.
const STAGING_PREFIX: &str = ".sb-";

/// How many random names [`create`] tries for its staging directory before
/// it gives up (each is taken only if some other process has made it).
const STAGING_ATTEMPTS: u32 = 16;

/// A file's identity, to tell whether a path still names the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file at `path` itself (a symlink there is not
    /// followed).
    pub(crate) fn of(path: &Path) -> io::Result<FileId> {
        Ok(FileId::from_stat(&rustix::fs::lstat(path)?))
    }

    // `st_dev` and `st_ino` are u64 on some platforms and narrower on
    // others; every `FileId` is made here, so the widening is consistent.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(stat: &Stat) -> FileId {
        FileId {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }

    /// Removes the file at `path` if it is still this one; a file another
    /// server has put there since (or nothing) is left alone.
    ///
    /// `unlink` does not follow a symlink at `path`; between the look and
    /// the `unlink` only a user who may write to the directory, and so
    /// could remove the file anyway, can swap the name.
    ///
    /// # Errors
    ///
    /// Any error of the look or the removal but "not found".
    pub(crate) fn remove_if_at(self, path: &Path) -> io::Result<()> {
        match FileId::of(path) {
            Ok(found) if found == self => {}
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        }
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// [`remove_if_at`](FileId::remove_if_at) for a clean-up that cannot
    /// fail: an error is logged.
    pub(crate) fn clean_up(self, path: &Path) {
        if let Err(err) = self.remove_if_at(path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove the socket file");
        }
    }
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Nothing,
    Socket(FileId),
    /// Anything that is not a socket, a symlink included.
    Other,
}

/// Looks at what is at `path` itself, without following a symlink there.
///
/// # Errors
///
/// Any error of the look but "not found".
pub(crate) fn look(path: &Path) -> io::Result<Found> {
    match rustix::fs::lstat(path) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Socket => {
            Ok(Found::Socket(FileId::from_stat(&stat)))
        }
        Ok(_) => Ok(Found::Other),
        Err(rustix::io::Errno::NOENT) => Ok(Found::Nothing),
        Err(err) => Err(err.into()),
    }
}

/// Binds `socket` (an unbound Unix stream socket), sets its file's mode to
/// `mode` (or leaves the umask's), makes it listen, and links its file at
/// `path`: see the [module docs](self). Returns the file's identity.
///
/// Nothing at `path` is ever replaced: the caller removes a stale file
/// first; a name taken meanwhile is an error. On error nothing is left
/// behind (but the staging directory, if another user moved it away).
///
/// # Errors
///
/// `AddrInUse` if a socket appeared at `path` meanwhile, `AlreadyExists` if
/// anything else did; `InvalidInput` if `path` has no file name or the
/// staging path (13 bytes longer) is too long for a socket address; a
/// staging directory that another user replaced (`PermissionDenied`); any
/// error of creating, binding or listening.
pub(crate) fn create(
    socket: &Socket,
    path: &Path,
    mode: Option<u32>,
    backlog: i32,
) -> io::Result<FileId> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        )
    })?;
    let parent = path.parent().unwrap_or_else(|| Path::new(""));
    let mut staging = Staging::new(parent)?;
    let staged = staging.path.join(name);
    staging.name = Some(name.to_owned());
    socket.bind(&SockAddr::unix(&staged).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "{err}: the socket is bound at {} before it is moved into place",
                staged.display()
            ),
        )
    })?)?;
    // The bind went by path; look through the directory's descriptor to
    // make sure it landed in our directory. Only this user can create
    // files there, so the file found there is the one just bound.
    let stat = rustix::fs::statat(&staging.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| {
        if err == rustix::io::Errno::NOENT {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the staging directory of the socket file was replaced by another user",
            )
        } else {
            err.into()
        }
    })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err(io::Error::other(
            "the staged socket file is not a socket (the staging directory was tampered with)",
        ));
    }
    if let Some(mode) = mode {
        let raw = RawMode::try_from(mode & 0o7777).expect("permission bits fit every mode_t");
        // No symlink can be there: nobody else may enter the directory.
        rustix::fs::chmodat(
            &staging.fd,
            name,
            Mode::from_raw_mode(raw),
            AtFlags::empty(),
        )?;
    }
    socket.listen(backlog)?;
    match rustix::fs::linkat(&staging.fd, name, CWD, path, AtFlags::empty()) {
        Ok(()) => Ok(FileId::from_stat(&stat)),
        Err(rustix::io::Errno::EXIST) => Err(match look(path) {
            Ok(Found::Socket(_)) => io::Error::new(
                io::ErrorKind::AddrInUse,
                "another socket was created at this path while this one was being bound",
            ),
            _ => io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file was created at this path while the socket was being bound; \
                 refusing to replace it",
            ),
        }),
        Err(err) => Err(err.into()),
    }
    // `staging` drops here: the staged name goes, the file stays at `path`.
}

/// The private directory a socket file is created in: `0o700`, owned by
/// this user, next to the socket's path. Removed (with the staged name in
/// it) when dropped.
#[derive(Debug)]
struct Staging {
    path: PathBuf,
    fd: OwnedFd,
    /// The name the socket is bound at in the directory, once it is.
    name: Option<OsString>,
}

impl Staging {
    fn new(parent: &Path) -> io::Result<Staging> {
        let mut attempts = 0;
        let path = loop {
            let path = parent.join(format!("{STAGING_PREFIX}{:08x}", random_u32()));
            match rustix::fs::mkdir(&path, Mode::RWXU) {
                Ok(()) => break path,
                Err(rustix::io::Errno::EXIST) if attempts + 1 < STAGING_ATTEMPTS => attempts += 1,
                Err(err) => return Err(err.into()),
            }
        };
        let opened = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(err) => {
                remove_dir(&path);
                return Err(err.into());
            }
        };
        let staging = Staging {
            path,
            fd,
            name: None,
        };
        // Another user who may write to `parent` could have swapped their
        // own directory in between the mkdir and the open: it must be ours
        // and closed to everyone else.
        let stat = rustix::fs::fstat(&staging.fd)?;
        let private = FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            && stat.st_uid == rustix::process::geteuid().as_raw()
            && stat.st_mode & 0o077 == 0;
        if !private {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the staging directory of the socket file was replaced by another user",
            ));
        }
        Ok(staging)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The file stays where `create` linked it, if it did; the staged
        // name goes (not found if the bind failed).
        if let Some(name) = &self.name {
            let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
        }
        // Only an empty directory is removed, so whatever another user may
        // have put at this name meanwhile is safe from this.
        remove_dir(&self.path);
    }
}

fn remove_dir(path: &Path) {
    if let Err(err) = std::fs::remove_dir(path) {
        tracing::debug!(path = %path.display(), error = %err, "cannot remove a staging directory");
    }
}

/// A name for a staging directory: unpredictable, so that no other process
/// picks it first by chance (one that does costs an attempt).
fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let [a, b, c, d, ..] = hasher.finish().to_le_bytes();
    u32::from_le_bytes([a, b, c, d])
}

/// Whether a Unix socket whose bound address is `bound` has its file at
/// `path`, as far as names tell: bound there, or bound at the staging name
/// [`create`] uses for `path`. For taking over a handed-over socket.
#[cfg(any(test, feature = "handover"))]
pub(crate) fn bound_for(bound: &Path, path: &Path) -> bool {
    if bound == path {
        return true;
    }
    let staged_in = bound.parent();
    bound.file_name() == path.file_name()
        && staged_in.and_then(Path::parent) == path.parent()
        && staged_in
            .and_then(Path::file_name)
            .and_then(|dir| dir.to_str())
            .is_some_and(|dir| dir.starts_with(STAGING_PREFIX))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use socket2::{Domain, Type};

    use super::*;

    /// A fresh directory for the test's sockets, removed when dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("switchboard-socket-file-{name}-"))
            .tempdir()
            .expect("create the test directory")
    }

    /// The names in `dir`, sorted.
    fn entries(dir: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read the test directory")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        names.sort();
        names
    }

    fn unix_socket() -> Socket {
        Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket")
    }

    #[test]
    fn a_created_socket_listens_at_the_path_with_its_mode() {
        let dir = temp_dir("create");
        let path = dir.path().join("app.sock");
        let socket = unix_socket();
        let id = create(&socket, &path, Some(0o640), 8).expect("create");

        assert_eq!(look(&path).expect("look"), Found::Socket(id));
        let mode = std::fs::symlink_metadata(&path)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        std::os::unix::net::UnixStream::connect(&path).expect("it listens at the path");
        assert_eq!(entries(&dir), ["app.sock"], "the staging directory is gone");
        // The kernel keeps the address of the bind: the staging name.
        let bound = socket.local_addr().expect("local_addr");
        let bound = bound.as_pathname().expect("a path");
        assert_ne!(bound, path);
        assert!(
            bound_for(bound, &path),
            "{} is not staged for the path",
            bound.display()
        );
    }

    #[test]
    fn nothing_that_appeared_at_the_path_is_replaced() {
        let dir = temp_dir("taken");
        let path = dir.path().join("app.sock");
        std::fs::write(&path, b"keep me").expect("write");
        let err = create(&unix_socket(), &path, Some(0o600), 8).expect_err("a file is there");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
        assert_eq!(entries(&dir), ["app.sock"], "the staging directory is gone");

        std::fs::remove_file(&path).expect("remove");
        let live = unix_socket();
        let id = create(&live, &path, None, 8).expect("create");
        let err = create(&unix_socket(), &path, None, 8).expect_err("a socket is there");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert_eq!(look(&path).expect("look"), Found::Socket(id), "untouched");
        assert_eq!(entries(&dir), ["app.sock"], "the staging directory is gone");
    }

    #[test]
    fn a_path_without_a_file_name_is_invalid() {
        let err = create(&unix_socket(), Path::new("/"), None, 8).expect_err("no name");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn only_the_same_file_is_removed() {
        let dir = temp_dir("remove");
        let path = dir.path().join("file");
        std::fs::write(&path, b"first").expect("write");
        let first = FileId::of(&path).expect("stat");
        // Another file takes the name (created before the first goes, so
        // that it cannot reuse the first one's inode).
        let other = dir.path().join("other");
        std::fs::write(&other, b"second").expect("write");
        std::fs::rename(&other, &path).expect("rename");
        first.remove_if_at(&path).expect("remove_if_at");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");

        FileId::of(&path)
            .expect("stat")
            .remove_if_at(&path)
            .expect("remove_if_at");
        assert!(!path.exists(), "its own file is removed");
        first.remove_if_at(&path).expect("nothing there is fine");
    }

    #[test]
    fn a_symlink_is_looked_at_not_followed() {
        let dir = temp_dir("symlink");
        let target = dir.path().join("app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&target).expect("bind");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(look(&link).expect("look"), Found::Other);
        assert_eq!(
            look(&dir.path().join("none")).expect("look"),
            Found::Nothing
        );
    }

    #[test]
    fn staging_names_are_recognised() {
        let path = Path::new("/run/app/app.sock");
        assert!(bound_for(path, path));
        assert!(bound_for(Path::new("/run/app/.sb-0123abcd/app.sock"), path));
        assert!(!bound_for(Path::new("/run/app/other/app.sock"), path));
        assert!(!bound_for(Path::new("/run/app/.sb-0123abcd/b.sock"), path));
        assert!(!bound_for(Path::new("/run/b/.sb-0123abcd/app.sock"), path));
        assert!(!bound_for(Path::new("/run/app/other.sock"), path));
    }
}
