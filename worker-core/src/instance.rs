//! One instance at a time: a lock file held with `flock`, and a pid file.
//!
//! [`InstanceLock::acquire`] takes an exclusive, non-blocking `flock` on a lock file and
//! writes this process's pid into it; a second instance gets
//! [`InstanceError::Held`], naming the file and the pid of the holder. The kernel releases
//! the lock when the holder exits, however it exits (even by SIGKILL), so a stale lock file
//! never blocks a restart. The file itself is left in place (removing a lock file is racy).
//!
//! Both files are opened through one door that other local users cannot get past (the
//! crate's `private_fs` module): never through a symbolic link (`O_NOFOLLOW`, whatever the
//! kernel's `fs.protected_symlinks`), in a directory that is this user's or root's and not
//! writable by others unless sticky (as `/tmp`), and checked on the open descriptor before
//! anything is written or truncated: a regular file of this user's with one link, mode 0600
//! for a lock file, 0644 at most for a pid file. Anything else is refused with
//! [`InstanceError::Unsafe`], an [`UnsafePath`] naming the path, its owner and its mode, and
//! the file is left as it was. A daemon's lock file goes by default in [`default_dir`], a
//! directory private to this user, not in the world-writable temp directory.
//!
//! ```
//! use forkworker_core::instance::{InstanceError, InstanceLock};
//!
//! let path = std::env::temp_dir().join(format!("doc-{}.lock", std::process::id()));
//! let lock = InstanceLock::acquire(&path)?;
//! // A second acquisition (another open of the file) fails, naming the holder.
//! match InstanceLock::acquire(&path) {
//!     Err(InstanceError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id() as i32)),
//!     other => panic!("expected Held, got {other:?}"),
//! }
//! drop(lock);
//! let again = InstanceLock::acquire(&path)?;
//! # drop(again);
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), InstanceError>(())
//! ```
//!
//! # Forked children
//! A `flock` belongs to the open file, which a forked child shares. Dropping the lock releases
//! it for all of them; but if the holder dies without dropping it, the lock stays held until
//! every process it forked after `acquire` (a worker, a task) has exited too. Workers and tasks
//! die with their parent, so this only delays a restart by as long as they take to die. The
//! file is opened close-on-exec, so programs started with `exec` do not hold it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub use crate::error::{UnsafePath, Unsafety};
use crate::private_fs::{self, FsError, How, PrivateDir};

/// How long [`InstanceLock::acquire`] waits for a holder that has just taken the lock to
/// write its pid.
const PID_WAIT: Duration = Duration::from_millis(200);

/// Why an instance lock or a pid file could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// Another process holds the lock.
    #[error("another instance holds the lock file {}{}", path.display(), holder(*pid))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it into the lock file (`None` if unreadable).
        pid: Option<i32>,
    },
    /// The file, or its directory, is one another user could have planted or could change:
    /// a symbolic link, not a regular file, another user's, a mode that grants others more
    /// than reading a pid file, a directory others can write to... The error names the
    /// path, its owner and its mode. Nothing was written to it.
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    /// The file could not be opened, locked, read or written.
    #[error("cannot use {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<FsError> for InstanceError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Unsafe(u) => InstanceError::Unsafe(u),
            FsError::Io { path, source } => InstanceError::Io { path, source },
        }
    }
}

fn holder(pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!(" (pid {pid})"),
        None => " (its pid is not in the file)".to_owned(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory where a [`Daemon`](crate::daemon::Daemon)'s lock file goes unless
/// [`Daemon::lock_dir`](crate::daemon::Daemon::lock_dir) says otherwise, private to this
/// user: `$XDG_RUNTIME_DIR/forkworker` if `XDG_RUNTIME_DIR` is a directory of this user's
/// that others cannot write to, else `forkworker-<uid>` in the temp directory (`$TMPDIR`,
/// else `/tmp`). Created with mode 0700 if missing.
///
/// # Errors
/// [`InstanceError::Unsafe`] if it exists and is a symbolic link, not a directory, another
/// user's, or has any group or other permission bit (someone may have made it first: it is
/// refused, not used); [`InstanceError::Io`] if it cannot be created.
///
/// ```
/// let dir = forkworker_core::instance::default_dir()?;
/// assert!(dir.ends_with("forkworker") || dir.file_name().unwrap().to_str().unwrap().starts_with("forkworker-"));
/// # Ok::<(), forkworker_core::instance::InstanceError>(())
/// ```
pub fn default_dir() -> Result<PathBuf, InstanceError> {
    Ok(private_fs::runtime_dir()?)
}

/// The pid written in `file`, if it holds one.
fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|&pid: &i32| pid > 0)
}

/// Writes `pid` and a newline as the whole content of `file`.
fn write_pid(file: &mut File, pid: u32) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(format!("{pid}\n").as_bytes())?;
    file.flush()
}

/// The descriptor of the lock this process holds, -1 if none: forked children close it, so
/// that a daemon killed with SIGKILL frees its lock at once, not when its last worker died.
static HELD_LOCK_FD: AtomicI32 = AtomicI32::new(-1);

/// In a freshly forked child: closes its copy of the instance lock's descriptor (the parent
/// keeps the lock).
pub(crate) fn close_in_child() {
    let fd = HELD_LOCK_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: our copy of the descriptor; nothing in the child uses it.
        unsafe { libc::close(fd) };
    }
}

/// An exclusive lock on a lock file, held until dropped (or until the process exits).
///
/// The file holds the holder's pid while the lock is held; it is emptied on drop.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
    pid: u32,
}

impl InstanceLock {
    /// Takes the lock on `path`, creating the file (mode 0600) if needed, and writes this
    /// process's pid into it (after the checks of the [module documentation](self), and
    /// once the lock is held).
    ///
    /// # Errors
    /// [`InstanceError::Held`] if another open of the file holds the lock: another process,
    /// or another `InstanceLock` of this one. [`InstanceError::Unsafe`] if the file is a
    /// symbolic link, not a regular file, another user's, open to others (mode beyond
    /// 0600) or has other links, or its directory is another user's or writable by others
    /// without the sticky bit. [`InstanceError::Io`] if the file cannot be opened, locked
    /// or written.
    pub fn acquire(path: impl AsRef<Path>) -> Result<InstanceLock, InstanceError> {
        let path = path.as_ref();
        let (mut file, _, _, _) = private_fs::open_private_path(path, How::private())?;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    // The holder writes its pid right after locking: give it a moment.
                    let end = Instant::now() + PID_WAIT;
                    let pid = loop {
                        let pid = read_pid(&mut file);
                        if pid.is_some() || Instant::now() >= end {
                            break pid;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    };
                    return Err(InstanceError::Held {
                        path: path.to_owned(),
                        pid,
                    });
                }
                _ => return Err(io_error(path)(err)),
            }
        }
        let pid = std::process::id();
        write_pid(&mut file, pid).map_err(io_error(path))?;
        HELD_LOCK_FD.store(file.as_raw_fd(), Ordering::Relaxed);
        Ok(InstanceLock {
            file,
            path: path.to_owned(),
            pid,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Only the process that took the lock clears the pid; closing the file releases the
        // lock (once every process that shares the open file has closed it or exited).
        if std::process::id() == self.pid {
            HELD_LOCK_FD.store(-1, Ordering::Relaxed);
            let _ = self.file.set_len(0);
            // SAFETY: flock on an fd we own.
            unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

/// A file holding this process's pid, written at creation and removed on drop.
///
/// It tells scripts which process to signal; it does not keep a second instance out (use
/// [`InstanceLock`] for that).
///
/// ```
/// use forkworker_core::instance::PidFile;
///
/// let path = std::env::temp_dir().join(format!("doc-{}.pid", std::process::id()));
/// let pid_file = PidFile::create(&path)?;
/// assert_eq!(std::fs::read_to_string(&path)?, format!("{}\n", std::process::id()));
/// drop(pid_file);
/// assert!(!path.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
    /// The file's directory and name in it, to check and remove it on drop (the directory
    /// is not held open: forked workers would inherit the descriptor).
    dir: PathBuf,
    name: OsString,
}

impl PidFile {
    /// Writes this process's pid into `path` (created with mode 0644, or truncated after
    /// the checks of the [module documentation](self)).
    ///
    /// # Errors
    /// [`InstanceError::Unsafe`] if the file is a symbolic link, not a regular file, another
    /// user's, writable by others (mode beyond 0644) or has other links, or its directory is
    /// another user's or writable by others without the sticky bit; [`InstanceError::Io`] if
    /// it cannot be written.
    pub fn create(path: impl AsRef<Path>) -> Result<PidFile, InstanceError> {
        let path = path.as_ref();
        let pid = std::process::id();
        let (mut file, _, dir, name) = private_fs::open_private_path(path, How::readable_by_all())?;
        write_pid(&mut file, pid).map_err(io_error(path))?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
            dir: dir.path().to_owned(),
            name,
        })
    }

    /// The pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed only by the process that wrote it, and only if it still names it (another
        // instance may have replaced it); read through the same checks, in the same
        // directory, without following a link.
        if std::process::id() != self.pid {
            return;
        }
        let Ok(dir) = PrivateDir::open(&self.dir) else {
            return;
        };
        let ours = dir
            .open_file(&self.name, How::readable_by_all().existing_only())
            .is_ok_and(|(mut file, _)| read_pid(&mut file) == Some(self.pid as i32));
        if ours {
            let _ = dir.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "forkworker-unit-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn a_second_lock_fails_with_the_holder_named_until_the_first_is_dropped() {
        let path = temp("lock");
        let lock = InstanceLock::acquire(&path).expect("first");
        assert_eq!(lock.path(), path);
        let me = std::process::id() as i32;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{me}\n"),
            "the holder's pid is in the file"
        );
        let err = InstanceLock::acquire(&path).expect_err("held");
        match &err {
            InstanceError::Held { path: p, pid } => {
                assert_eq!((p, *pid), (&path, Some(me)));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains(&me.to_string()),
            "{message}"
        );
        drop(lock);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "emptied");
        let again = InstanceLock::acquire(&path).expect("free again");
        drop(again);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_unusable_path_is_an_io_error_naming_it() {
        let path = temp("missing-dir").join("x.lock");
        let err = InstanceLock::acquire(&path).expect_err("no such directory");
        assert!(matches!(err, InstanceError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(PidFile::create(&path).is_err());
    }

    #[test]
    fn a_symbolic_link_or_a_fifo_is_refused_and_left_alone() {
        let target = temp("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = temp("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for err in [
            InstanceLock::acquire(&link).expect_err("a link"),
            PidFile::create(&link).map(drop).expect_err("a link"),
        ] {
            match &err {
                InstanceError::Unsafe(u) => {
                    assert_eq!((&u.path, u.why), (&link, Unsafety::SymbolicLink))
                }
                other => panic!("expected Unsafe, got {other:?}"),
            }
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&target).unwrap();

        let fifo = temp("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        match InstanceLock::acquire(&fifo).expect_err("a FIFO") {
            InstanceError::Unsafe(u) => assert_eq!(u.why, Unsafety::NotRegular),
            other => panic!("expected Unsafe, got {other:?}"),
        }
        std::fs::remove_file(&fifo).unwrap();

        // Another user's file (only root can make one here); tests/other_users.rs has more.
        let theirs = temp("theirs");
        std::fs::write(&theirs, "").unwrap();
        if std::os::unix::fs::chown(&theirs, Some(65534), None).is_ok() {
            match PidFile::create(&theirs)
                .map(drop)
                .expect_err("another user's")
            {
                InstanceError::Unsafe(u) => {
                    assert_eq!(
                        (u.owner, u.why),
                        (Some(65534), Unsafety::OtherOwner { me: 0 })
                    )
                }
                other => panic!("expected Unsafe, got {other:?}"),
            }
        }
        std::fs::remove_file(&theirs).unwrap();
    }

    #[test]
    fn a_pid_file_is_written_and_removed_unless_replaced() {
        let path = temp("pid");
        let pid_file = PidFile::create(&path).expect("create");
        assert_eq!(pid_file.path(), path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        assert!(!path.exists());
        // Replaced by another instance: left alone.
        let pid_file = PidFile::create(&path).expect("create");
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        std::fs::remove_file(&path).unwrap();
    }
}
