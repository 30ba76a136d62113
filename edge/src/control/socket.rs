//! Creating the control socket file safely, and removing it again.
//!
//! - Mode 0600 from birth: the socket inode is fchmod'ed before bind (Linux gives the new file
//!   that mode), and the file is checked — and if need be chmod'ed — before `listen`, so even
//!   then nobody can have connected while it was wider.
//! - One owner per path: an exclusive flock on `PATH.lock` for the server's life. Without it,
//!   two instances starting together could each find the file "stale" and the second would
//!   delete the first one's live socket. The lock file stays behind on purpose: unlinking a
//!   lock file reopens exactly that race.
//! - A directory nobody else can write to: group- or world-writable directories (sticky ones
//!   like /tmp included) and directories owned by a uid other than root or ours are refused,
//!   since whoever can create a file there can take the socket path before us (a squatter that
//!   blocks the server, or a fake server that `wssedge ctl` would talk to).
//! - A leftover socket file (a crash, a SIGKILL) is probed: if something answers, another
//!   instance is live and we refuse; if the connection is refused and the file is ours (our
//!   uid), it is stale and goes. Another user's file and anything that is not a socket are
//!   never deleted.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::server::ControlError;
use super::sys;

/// The only mode the socket file ever has.
pub(crate) const SOCKET_MODE: u32 = 0o600;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_PATH_BYTES: usize = 107;

/// Pending connections the kernel queues before `accept`; beyond it `connect` waits.
const BACKLOG: i32 = 16;

/// A bound, listening control socket and what is needed to clean it up.
pub(crate) struct BoundSocket {
    pub(crate) listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the file we created: drop removes the path only if it is still ours.
    identity: (u64, u64),
    /// Held (flock) until drop, after the socket file is gone.
    _lock: File,
}

impl BoundSocket {
    pub(crate) fn bind(path: &Path) -> Result<BoundSocket, ControlError> {
        check_path(path, sys::effective_uid())?;
        let lock = lock(path)?;
        clear_stale(path)?;
        let io_err = |action: &'static str| {
            move |source| ControlError::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let socket =
            Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io_err("creating the socket"))?;
        sys::fchmod(socket.as_fd(), SOCKET_MODE).map_err(io_err("setting mode 0600"))?;
        let addr = SockAddr::unix(path).map_err(io_err("building the address"))?;
        socket.bind(&addr).map_err(io_err("binding"))?;
        let identity = secure_mode(path).map_err(io_err("checking the mode after bind"))?;
        socket.listen(BACKLOG).map_err(io_err("listening"))?;
        Ok(BoundSocket {
            listener: socket.into(),
            path: path.to_owned(),
            identity,
            _lock: lock,
        })
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "the control socket file was replaced by someone else; leaving it"
            ),
            Err(_) => {}
        }
    }
}

pub(crate) fn check_path(path: &Path, me: u32) -> Result<(), ControlError> {
    let len = path.as_os_str().len();
    if len > MAX_PATH_BYTES {
        return Err(ControlError::PathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_PATH_BYTES,
        });
    }
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(ControlError::NotAFilePath {
            path: path.to_owned(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        _ => {
            return Err(ControlError::NoDirectory {
                dir: dir.to_owned(),
            })
        }
    };
    directory_is_private(dir, meta.mode(), meta.uid(), me)?;
    // The directory itself could be swapped from its parent: every ancestor must be one only
    // root or we may rename entries in — owned by root or us, and writable by others only when
    // sticky (as /tmp is: there nobody renames what is not theirs).
    let canonical = fs::canonicalize(dir).map_err(|_| ControlError::NoDirectory {
        dir: dir.to_owned(),
    })?;
    for ancestor in canonical.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        ancestor_is_safe(ancestor, meta.mode(), meta.uid(), me)?;
    }
    Ok(())
}

/// An ancestor of the socket's directory: nobody but root and we may rename what it holds.
pub(crate) fn ancestor_is_safe(
    dir: &Path,
    mode: u32,
    owner: u32,
    me: u32,
) -> Result<(), ControlError> {
    const STICKY: u32 = 0o1000;
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(ControlError::SharedAncestor {
            dir: dir.to_owned(),
            mode: mode & 0o7777,
        });
    }
    if owner != 0 && owner != me {
        return Err(ControlError::ForeignAncestor {
            dir: dir.to_owned(),
            owner,
            me,
        });
    }
    Ok(())
}

/// Only root and we may create files in the socket's directory: not group- or world-writable
/// (sticky or not) and owned by root or by us.
pub(crate) fn directory_is_private(
    dir: &Path,
    mode: u32,
    owner: u32,
    me: u32,
) -> Result<(), ControlError> {
    if mode & 0o022 != 0 {
        return Err(ControlError::SharedDirectory {
            dir: dir.to_owned(),
            mode: mode & 0o7777,
        });
    }
    if owner != 0 && owner != me {
        return Err(ControlError::ForeignDirectory {
            dir: dir.to_owned(),
            owner,
            me,
        });
    }
    Ok(())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

fn lock(path: &Path) -> Result<File, ControlError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(SOCKET_MODE)
        // A symlink planted at the lock path must not make us create or lock another file.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|source| ControlError::Io {
            path: lock_path.clone(),
            action: "opening the lock file",
            source,
        })?;
    match sys::try_lock_exclusive(file.as_fd()) {
        Ok(true) => Ok(file),
        Ok(false) => Err(ControlError::Locked {
            path: path.to_owned(),
            lock: lock_path,
        }),
        Err(source) => Err(ControlError::Io {
            path: lock_path,
            action: "locking",
            source,
        }),
    }
}

/// Removes a leftover socket file of ours nobody answers on; refuses a live one, another
/// user's, or a non-socket.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Io {
                path: path.to_owned(),
                action: "inspecting the existing file",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ControlError::AlreadyServed {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let me = sys::effective_uid();
            if meta.uid() != me {
                return Err(ControlError::ForeignSocket {
                    path: path.to_owned(),
                    owner: meta.uid(),
                    me,
                });
            }
            tracing::info!(path = %path.display(), "removing a stale control socket (nothing answers on it)");
            fs::remove_file(path).map_err(|source| ControlError::Io {
                path: path.to_owned(),
                action: "removing the stale socket file",
                source,
            })
        }
        Err(source) => Err(ControlError::Io {
            path: path.to_owned(),
            action: "probing the existing socket file",
            source,
        }),
    }
}

/// Makes sure the freshly bound file has mode 0600 (fchmod already did it on Linux; this is
/// the check, and the fallback for a kernel that ignores it). Runs before `listen`, while
/// every connect is still refused. Returns the file's (device, inode).
fn secure_mode(path: &Path) -> io::Result<(u64, u64)> {
    let mut meta = fs::symlink_metadata(path)?;
    if meta.mode() & 0o7777 != SOCKET_MODE {
        tracing::debug!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o7777), "socket mode fixed before listen");
        fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))?;
        meta = fs::symlink_metadata(path)?;
    }
    if !meta.file_type().is_socket() || meta.mode() & 0o7777 != SOCKET_MODE {
        return Err(io::Error::other(format!(
            "the file at the path is not our socket with mode 0600 (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok((meta.dev(), meta.ino()))
}
