//! A place and a file only this user can touch: the runtime directory, and files opened in a
//! checked directory without following a symbolic link, checked before anything is written.
//!
//! Other local users may plant entries where a program puts its files (a link from
//! `/tmp/App.lock` to the user's `~/.bashrc`, a 0666 file for the program to trust). This
//! module is the one door through which the lock file, the pid file and the persistent
//! journal are opened, and it refuses such entries with an [`UnsafePath`] naming the path,
//! its owner and its mode.
//!
//! # Rules
//! - **The runtime directory** ([`PrivateDir::runtime`], [`runtime_dir`]):
//!   `$XDG_RUNTIME_DIR/forkworker` when `XDG_RUNTIME_DIR` is set and is a directory of this
//!   effective user that neither group nor others can write; else `forkworker-<uid>` in the
//!   temp directory (`$TMPDIR`, else `/tmp`), as tmux does. It is created with mode 0700 if
//!   missing. If present, it must be a real directory (opened with `O_DIRECTORY |
//!   O_NOFOLLOW`, then `fstat`), owned by this effective user, with no group or other bit.
//!   A directory an attacker made there first is refused, never used.
//! - **A directory the user names** ([`PrivateDir::open`]; the directory of a lock or pid
//!   file path the user gives): the path is resolved as usual (intermediate symbolic links
//!   are the user's choice: `/var/run` is one on many systems), and the directory it leads
//!   to is checked on its open descriptor: owned by this user or root, and either not
//!   writable by group or others, or sticky (as `/tmp` is: others may add entries there but
//!   cannot rename or remove this user's, and every entry is checked as below).
//! - **A file in a checked directory** ([`PrivateDir::open_file`], [`open_private`]): opened
//!   with `openat` on the directory's descriptor, `O_NOFOLLOW | O_CLOEXEC` (and `O_NONBLOCK`,
//!   so that a planted FIFO cannot block the open), read-write. It is created with
//!   `O_CREAT | O_EXCL` and the mode of [`How`] (0600, or 0644 for a pid file), else opened
//!   as it is; never with `O_TRUNC`. Then `fstat` on the descriptor: a regular file, owned by
//!   this effective user, with one link, and a mode within [`How`]'s. Only then may the
//!   caller truncate (`File::set_len`) or write. A symbolic link is refused whatever the
//!   kernel's `fs.protected_symlinks` says.
//!
//! # The persistent journal
//! A daemon's pool keeps its journal in one regular file that only the parent maps:
//!
//! ```ignore
//! let dir = PrivateDir::runtime()?;
//! let (file, created) = dir.open_file(OsStr::new("App.pool.journal"), How::private())?;
//! match created {
//!     Created::New => { file.set_len(size)?; /* fallocate(fd, 0, 0, size), then map */ }
//!     Created::Existing => { /* check fstat's size against the geometry, map, recover */ }
//! }
//! ```
//!
//! [`How::private`] suits it: read-write, created 0600, refused if anyone else could read
//! or write it. `How::private().existing_only()` opens it only if it exists (recovery,
//! purging). The returned [`File`] is close-on-exec; it is the caller's to size, map and
//! drop; [`PrivateDir::remove`] unlinks it through the same checked directory.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{UnsafePath, Unsafety};

/// Why a private directory or file could not be had: refused, or an I/O error.
#[derive(Debug)]
pub(crate) enum FsError {
    /// Another user could have planted or changed it (see [`UnsafePath`]).
    Unsafe(UnsafePath),
    /// It could not be created, opened or examined.
    Io {
        /// The path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

/// How [`PrivateDir::open_file`] opens a file: always read-write, with a creation mode that
/// is also the most the file may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct How {
    /// The mode a new file is created with, and the most an existing one may have.
    mode: u32,
    /// Whether a missing file is created.
    create: bool,
}

impl How {
    /// Only this user may read or write it: created 0600, refused above (a lock file, the
    /// persistent journal).
    pub(crate) const fn private() -> How {
        How {
            mode: 0o600,
            create: true,
        }
    }

    /// Others may read it, only this user write it: created 0644, refused above (a pid
    /// file, which scripts read).
    pub(crate) const fn readable_by_all() -> How {
        How {
            mode: 0o644,
            create: true,
        }
    }

    /// Does not create a missing file: its absence is an [`FsError::Io`] with `NotFound`.
    pub(crate) const fn existing_only(self) -> How {
        How {
            create: false,
            ..self
        }
    }
}

/// Whether [`PrivateDir::open_file`] created the file or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// Created by this open (it is empty).
    New,
    /// It existed, and passed the checks.
    Existing,
}

/// A checked directory, held open: files are opened relative to its descriptor, so that
/// renaming a directory on the path afterwards changes nothing.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn c_path(path: &Path) -> Result<CString, FsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"),
    })
}

/// A single path component: not empty, no `/`, not `.` or `..`.
fn c_name(dir: &Path, name: &OsStr) -> Result<CString, FsError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(FsError::Io {
            path: dir.join(name),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a file name must be one path component",
            ),
        });
    }
    CString::new(bytes).map_err(|_| FsError::Io {
        path: dir.join(name),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the name holds a NUL byte"),
    })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The status of `name` in `dir` itself (a link is not followed), for the message of a
/// refusal; `None` if it cannot be read (it vanished).
fn lstat_at(dir: RawFd, name: &CString) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter; valid C string and fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return None;
    }
    Some(st)
}

/// A refusal of `name` in `dir` that `open` reported, with what is there now; a link is
/// named as such whatever `open` said (`O_DIRECTORY` on a link fails with ENOTDIR).
fn refused_at(dir: RawFd, name: &CString, path: PathBuf, why: Unsafety) -> FsError {
    let st = lstat_at(dir, name);
    let why = match st {
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Unsafety::SymbolicLink,
        _ => why,
    };
    FsError::Unsafe(UnsafePath {
        path,
        owner: st.map(|s| s.st_uid),
        mode: st.map(|s| s.st_mode & 0o7777),
        why,
    })
}

fn unsafe_path(path: &Path, st: &libc::stat, why: Unsafety) -> FsError {
    FsError::Unsafe(UnsafePath {
        path: path.to_owned(),
        owner: Some(st.st_uid),
        mode: Some(st.st_mode & 0o7777),
        why,
    })
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The check of a directory the user names (or the parent of the runtime directory): owned
/// by this user or root; not writable by group or others unless sticky.
fn check_shared_dir(path: &Path, st: &libc::stat) -> Result<(), FsError> {
    let me = euid();
    if !is_dir(st) {
        Err(unsafe_path(path, st, Unsafety::NotDirectory))
    } else if st.st_uid != me && st.st_uid != 0 {
        Err(unsafe_path(path, st, Unsafety::OtherOwner { me }))
    } else if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        Err(unsafe_path(path, st, Unsafety::WritableByOthers))
    } else {
        Ok(())
    }
}

/// The check of the runtime directory itself: this user's, no group or other bit.
fn check_private_dir(path: &Path, st: &libc::stat) -> Result<(), FsError> {
    let me = euid();
    if !is_dir(st) {
        Err(unsafe_path(path, st, Unsafety::NotDirectory))
    } else if st.st_uid != me {
        Err(unsafe_path(path, st, Unsafety::OtherOwner { me }))
    } else if st.st_mode & 0o077 != 0 {
        Err(unsafe_path(path, st, Unsafety::TooOpen { allowed: 0o700 }))
    } else {
        Ok(())
    }
}

/// The check of an opened file: regular, this user's, one link, mode within `allowed`.
fn check_file(path: &Path, st: &libc::stat, allowed: u32) -> Result<(), FsError> {
    let me = euid();
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        Err(unsafe_path(path, st, Unsafety::NotRegular))
    } else if st.st_uid != me {
        Err(unsafe_path(path, st, Unsafety::OtherOwner { me }))
    } else if st.st_mode & 0o7777 & !allowed != 0 {
        Err(unsafe_path(path, st, Unsafety::TooOpen { allowed }))
    } else if st.st_nlink != 1 {
        // nlink_t is u32 on some targets.
        #[allow(clippy::unnecessary_cast)]
        let links = st.st_nlink as u64;
        Err(unsafe_path(path, st, Unsafety::HardLinked { links }))
    } else {
        Ok(())
    }
}

/// `open(2)` returning an owned descriptor, retrying EINTR.
fn open_fd(dir: Option<RawFd>, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a valid C string; `dir` is an open directory descriptor if given.
        let fd = unsafe {
            match dir {
                Some(dir) => libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint),
                None => libc::open(name.as_ptr(), flags, mode as libc::c_uint),
            }
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

impl PrivateDir {
    /// The runtime directory (see the [module documentation](self)), created 0700 if
    /// missing, checked if present.
    ///
    /// # Errors
    /// [`FsError::Unsafe`] if it is a link, not a directory, another user's, or open to
    /// group or others; [`FsError::Io`] if it cannot be created or opened.
    pub(crate) fn runtime() -> Result<PrivateDir, FsError> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        if let Some(base) = xdg {
            match Self::usable_xdg(&base) {
                Some(fd) => return Self::make_private(fd, &base, OsStr::new("forkworker")),
                None => log::debug!(
                    "XDG_RUNTIME_DIR={} is not a directory of uid {} closed to others; using the temp directory",
                    base.display(),
                    euid()
                ),
            }
        }
        let base = std::env::temp_dir();
        let fd = open_fd(None, &c_path(&base)?, DIR_FLAGS, 0).map_err(|source| FsError::Io {
            path: base.clone(),
            source,
        })?;
        let st = fstat(fd.as_raw_fd()).map_err(|source| FsError::Io {
            path: base.clone(),
            source,
        })?;
        check_shared_dir(&base, &st)?;
        let name = OsString::from(format!("forkworker-{}", euid()));
        Self::make_private(fd, &base, &name)
    }

    /// `base` opened, if it is a directory of this user's that group and others cannot
    /// write to.
    fn usable_xdg(base: &Path) -> Option<OwnedFd> {
        let fd = open_fd(None, &c_path(base).ok()?, DIR_FLAGS, 0).ok()?;
        let st = fstat(fd.as_raw_fd()).ok()?;
        (is_dir(&st) && st.st_uid == euid() && st.st_mode & 0o022 == 0).then_some(fd)
    }

    /// Creates `name` (0700) in the checked directory `base` if missing; opens it without
    /// following a link; checks it is this user's alone.
    fn make_private(base_fd: OwnedFd, base: &Path, name: &OsStr) -> Result<PrivateDir, FsError> {
        let path = base.join(name);
        let c = c_name(base, name)?;
        // SAFETY: a valid C string and directory descriptor.
        if unsafe { libc::mkdirat(base_fd.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(FsError::Io { path, source: err });
            }
        }
        let fd = match open_fd(
            Some(base_fd.as_raw_fd()),
            &c,
            DIR_FLAGS | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::ELOOP) => Unsafety::SymbolicLink,
                    Some(libc::ENOTDIR) => Unsafety::NotDirectory,
                    _ => return Err(FsError::Io { path, source: e }),
                };
                return Err(refused_at(base_fd.as_raw_fd(), &c, path, why));
            }
        };
        let st = fstat(fd.as_raw_fd()).map_err(|source| FsError::Io {
            path: path.clone(),
            source,
        })?;
        check_private_dir(&path, &st)?;
        Ok(PrivateDir { fd, path })
    }

    /// A directory the user names, checked (see the [module documentation](self)).
    ///
    /// # Errors
    /// [`FsError::Unsafe`] if it is not a directory, belongs to another user than this one
    /// or root, or others may write to it and it is not sticky; [`FsError::Io`] if it cannot
    /// be opened.
    pub(crate) fn open(path: &Path) -> Result<PrivateDir, FsError> {
        let fd = open_fd(None, &c_path(path)?, DIR_FLAGS, 0).map_err(|source| FsError::Io {
            path: path.to_owned(),
            source,
        })?;
        let st = fstat(fd.as_raw_fd()).map_err(|source| FsError::Io {
            path: path.to_owned(),
            source,
        })?;
        check_shared_dir(path, &st)?;
        Ok(PrivateDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The directory's path, as given or found.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) `name` in this directory, read-write, and checks it; see the
    /// [module documentation](self). Nothing is written, truncated or read before the check.
    ///
    /// # Errors
    /// [`FsError::Unsafe`] if `name` is a symbolic link, not a regular file, another user's,
    /// has more than one link, or a mode beyond `how`'s; [`FsError::Io`] if it cannot be
    /// created or opened (`NotFound` with [`How::existing_only`]), or `name` is not a single
    /// path component.
    pub(crate) fn open_file(&self, name: &OsStr, how: How) -> Result<(File, Created), FsError> {
        let path = self.path.join(name);
        let c = c_name(&self.path, name)?;
        let base = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let dir = self.fd.as_raw_fd();
        let io = |source| FsError::Io {
            path: path.clone(),
            source,
        };
        // The file may be removed between a failed exclusive create and the open: try again,
        // a few times.
        for _ in 0..8 {
            if how.create {
                match open_fd(Some(dir), &c, base | libc::O_CREAT | libc::O_EXCL, how.mode) {
                    Ok(fd) => return self.checked(fd, &path, how, Created::New),
                    // Something is there (a link too: O_EXCL does not follow it).
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(io(e)),
                }
            }
            match open_fd(Some(dir), &c, base, 0) {
                Ok(fd) => return self.checked(fd, &path, how, Created::Existing),
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::ENOENT) if how.create => continue,
                        Some(libc::ELOOP) => Unsafety::SymbolicLink,
                        // A directory, a socket.
                        Some(libc::EISDIR | libc::ENXIO) => Unsafety::NotRegular,
                        _ => return Err(io(e)),
                    };
                    return Err(refused_at(dir, &c, path, why));
                }
            }
        }
        Err(io(io::Error::new(
            io::ErrorKind::Interrupted,
            "the file kept appearing and disappearing while being opened",
        )))
    }

    fn checked(
        &self,
        fd: OwnedFd,
        path: &Path,
        how: How,
        created: Created,
    ) -> Result<(File, Created), FsError> {
        let io = |source| FsError::Io {
            path: path.to_owned(),
            source,
        };
        let st = fstat(fd.as_raw_fd()).map_err(io)?;
        check_file(path, &st, how.mode)?;
        // The check is done: back to blocking I/O for the caller.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok((File::from(fd), created))
    }

    /// Removes `name` from this directory (`unlinkat`: a link is removed, not followed).
    pub(crate) fn remove(&self, name: &OsStr) -> Result<(), FsError> {
        let c = c_name(&self.path, name)?;
        // SAFETY: a valid C string and directory descriptor.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(FsError::Io {
                path: self.path.join(name),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The runtime directory's path (created and checked; see the [module documentation](self)).
pub(crate) fn runtime_dir() -> Result<PathBuf, FsError> {
    PrivateDir::runtime().map(|d| d.path().to_owned())
}

/// Opens `name` in the directory `dir` (checked as a directory the user names); see
/// [`PrivateDir::open_file`].
#[allow(dead_code)] // for the persistent journal
pub(crate) fn open_private(dir: &Path, name: &OsStr, how: How) -> Result<(File, Created), FsError> {
    PrivateDir::open(dir)?.open_file(name, how)
}

/// Opens the file at a full path the user gave: its directory is checked as one the user
/// names, then the file as by [`PrivateDir::open_file`]. Returns the directory too, and the
/// file's name in it, for a later [`PrivateDir::remove`].
pub(crate) fn open_private_path(
    path: &Path,
    how: How,
) -> Result<(File, Created, PrivateDir, OsString), FsError> {
    let name = path.file_name().ok_or_else(|| FsError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // An I/O error on the directory (missing, say) names the file, as open(2) would; a
    // refusal names the directory, which is what is wrong.
    let dir = PrivateDir::open(parent).map_err(|e| match e {
        FsError::Io { source, .. } => FsError::Io {
            path: path.to_owned(),
            source,
        },
        refused => refused,
    })?;
    let (file, created) = dir.open_file(name, how)?;
    Ok((file, created, dir, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A fresh directory (mode 0700), removed with its contents when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!(
                "forkworker-private-fs-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refusal(e: FsError) -> UnsafePath {
        match e {
            FsError::Unsafe(u) => u,
            FsError::Io { path, source } => panic!("expected a refusal, got {path:?}: {source}"),
        }
    }

    #[test]
    fn a_file_is_created_0600_then_found_and_never_truncated_by_opening() {
        let scratch = Scratch::new("create");
        let dir = PrivateDir::open(&scratch.0).unwrap();
        let name = OsStr::new("App.pool.journal");
        let (mut file, created) = dir.open_file(name, How::private()).unwrap();
        assert_eq!(created, Created::New);
        file.write_all(b"journal").unwrap();
        let meta = std::fs::metadata(scratch.0.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o7777 & !0o600, 0);
        let (file, created) = dir.open_file(name, How::private()).unwrap();
        assert_eq!(created, Created::Existing);
        assert_eq!(file.metadata().unwrap().len(), 7, "not truncated");
        assert!(
            open_private(&scratch.0, name, How::private().existing_only()).is_ok(),
            "found"
        );
        dir.remove(name).unwrap();
        match dir.open_file(name, How::private().existing_only()) {
            Err(FsError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(
                dir.open_file(OsStr::new(bad), How::private()),
                Err(FsError::Io { .. })
            ));
        }
    }

    #[test]
    fn another_users_journal_file_is_refused_and_left_unchanged() {
        if euid() != 0 {
            assert!(
                std::env::var_os("FORKWORKER_SKIP_ROOT_TESTS").is_some_and(|v| v == "1"),
                "needs root (as CI) to chown a file to another user; \
                 set FORKWORKER_SKIP_ROOT_TESTS=1 to skip it knowingly"
            );
            eprintln!("SKIPPED: needs root to chown a file to another user");
            return;
        }
        let scratch = Scratch::new("theirs");
        let path = scratch.0.join("App.pool.journal");
        std::fs::write(&path, b"planted call").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let u = refusal(
            open_private(&scratch.0, OsStr::new("App.pool.journal"), How::private()).unwrap_err(),
        );
        assert_eq!(
            (&u.path, u.owner, u.mode, u.why),
            (
                &path,
                Some(65534),
                Some(0o666),
                Unsafety::OtherOwner { me: 0 }
            )
        );
        let text = u.to_string();
        assert!(
            text.contains("App.pool.journal")
                && text.contains("uid 65534")
                && text.contains("mode 0666"),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"planted call");
    }

    #[test]
    fn a_private_directory_is_made_0700_and_an_open_one_refused() {
        let scratch = Scratch::new("runtime");
        let base = || open_fd(None, &c_path(&scratch.0).unwrap(), DIR_FLAGS, 0).unwrap();
        let made = PrivateDir::make_private(base(), &scratch.0, OsStr::new("forkworker")).unwrap();
        let meta = std::fs::symlink_metadata(made.path()).unwrap();
        assert!(meta.is_dir() && meta.mode() & 0o7777 == 0o700);
        // Found again as it is.
        PrivateDir::make_private(base(), &scratch.0, OsStr::new("forkworker")).unwrap();
        std::fs::set_permissions(made.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let u = refusal(
            PrivateDir::make_private(base(), &scratch.0, OsStr::new("forkworker")).unwrap_err(),
        );
        assert_eq!(
            (u.mode, u.why),
            (Some(0o750), Unsafety::TooOpen { allowed: 0o700 })
        );
        // A plain file in its place.
        std::fs::write(scratch.0.join("file"), "").unwrap();
        let u =
            refusal(PrivateDir::make_private(base(), &scratch.0, OsStr::new("file")).unwrap_err());
        assert_eq!(u.why, Unsafety::NotDirectory);
    }
}
