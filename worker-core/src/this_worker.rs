//! The worker-side API: what a method running in a worker process can ask of forkworker (the
//! seed's mediator methods for workers).
//!
//! These are process-wide functions, so any code running in a worker (a method, a helper it
//! calls, a library's callback) can use them without a parameter threaded through:
//!
//! ```ignore
//! use forkworker::this_worker;
//!
//! pub struct Parser;
//!
//! #[forkworker::worker]
//! impl Parser {
//!     pub fn parse(&mut self, input: String) -> Option<u64> {
//!         match input.trim().parse() {
//!             Ok(n) => Some(n),
//!             Err(e) => {
//!                 this_worker::error(format_args!("bad input {input:?}: {e}"));
//!                 None
//!             }
//!         }
//!     }
//! }
//! ```
//!
//! Called in the parent (through `inline()`, say), [`log()`] and [`error()`] just log, and
//! [`fatal_error`] logs without exiting.
//!
//! In a worker, [`log()`] and [`error()`] records are forwarded to the parent, which hands them
//! to its own `log` logger (target: the mediator's alias) when it is next driven (`poll`,
//! `wait`): a worker holds none of the program's files (its descriptors are /dev/null there),
//! so a file logger's copy in the worker writes nowhere. Forwarding never blocks the worker: a
//! record the parent has no room for yet is dropped, and the next one says how many were.
//! The `log` crate's own macros (`log::info!` ...) in a worker still go through the worker's
//! copy of the program's logger: `log` lets a logger be set only once per process, so they
//! cannot be redirected; a logger writing to stderr still works (the worker's stderr reaches
//! the program's), one writing to a file or a socket does not.

use std::any::TypeId;
use std::fmt::{Display, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::channel::Channel;
use crate::error::SpawnError;

/// Exit code of a worker that called [`fatal_error`].
pub(crate) const EXIT_FATAL: i32 = 103;

/// What a worker process knows about itself; set right after the fork. A worker that starts a
/// pool of its own forks workers that set their own (see [`enter`]).
struct WorkerInfo {
    alias: String,
    channel: *const Channel,
}

// SAFETY: the channel pointer refers to shared memory mapped for the life of the process; it
// is only used for atomic operations.
unsafe impl Send for WorkerInfo {}
// SAFETY: as above.
unsafe impl Sync for WorkerInfo {}

/// This process's [`WorkerInfo`], leaked, or null in a process that is no worker.
static WORKER: AtomicPtr<WorkerInfo> = AtomicPtr::new(std::ptr::null_mut());
static FATAL: AtomicBool = AtomicBool::new(false);
static DAEMON: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static DAEMON_TYPE: AtomicU64 = AtomicU64::new(0);
/// In a worker, the socket its records are forwarded on; -1 elsewhere.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);
/// Records that could not be forwarded since the last one that was.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The longest forwarded record in bytes (its level byte included); longer messages are cut.
const RECORD_MAX: usize = 8 << 10;
/// How many records the parent relays at one look, so that a worker logging without pause
/// cannot keep it there.
const RELAY_MAX: usize = 256;

/// Called in a new worker process, with the socket its records are forwarded on. A worker
/// forked by a worker (a method that runs a pool of its own) inherits its forker's info,
/// which this replaces: it belongs to its own pool.
pub(crate) fn enter(alias: &str, channel: &Channel, log_fd: RawFd) {
    LOG_FD.store(log_fd, Ordering::Relaxed);
    let info = Box::new(WorkerInfo {
        alias: alias.to_owned(),
        channel,
    });
    // The forker's info stays allocated (leaked, like this one): a `&'static str` from
    // `alias()` taken before may still point into it.
    WORKER.store(Box::into_raw(info), Ordering::Release);
    FATAL.store(false, Ordering::Relaxed);
}

/// This process's worker info, if it is a worker.
fn worker() -> Option<&'static WorkerInfo> {
    let info = WORKER.load(Ordering::Acquire);
    // SAFETY: non-null values come from `Box::into_raw` in `enter` and are never freed.
    (!info.is_null()).then(|| unsafe { &*info })
}

/// The socket pair workers forward their records on: the parent's end (which [`relay`] reads)
/// and the workers' end. Datagrams, one record each: a level byte (`log::Level as u8`) and
/// the text. The parent's end receives each sender's credentials from the kernel
/// (`SO_PASSCRED`), so the pid a record is shown with is the sender's, whatever its text says.
pub(crate) fn log_socket() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| SpawnError::Channel(e.into()))?;
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(|e| SpawnError::Channel(e.into()))?;
    Ok((ours, theirs))
}

/// In a worker: sends a record to the parent, without blocking. False if this process has no
/// parent to forward to (it is not a worker).
fn forward(level: log::Level, message: &dyn Display) -> bool {
    let fd = LOG_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return false;
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    let mut text = String::with_capacity(128);
    text.push(level as u8 as char);
    if dropped > 0 {
        let _ = write!(
            text,
            "({dropped} earlier records dropped: the parent did not take them in time) "
        );
    }
    let _ = write!(text, "{message}");
    let mut n = text.len().min(RECORD_MAX);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    // `write`, not `send`: a sandboxed worker may write to descriptors it holds but not send
    // (see `sandbox`). The socket is non-blocking (`log_socket`), and a datagram socket
    // raises no SIGPIPE.
    // SAFETY: writing from a valid buffer to our socket.
    let sent = unsafe { libc::write(fd, text.as_ptr().cast(), n) };
    if sent < 0 {
        DROPPED.fetch_add(dropped + 1, Ordering::Relaxed);
    }
    true
}

/// In the parent: hands the records workers forwarded on `fd` to the program's logger (target:
/// `alias`), at most [`RELAY_MAX`] of them; never blocks.
pub(crate) fn relay(fd: BorrowedFd<'_>, alias: &str) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    let mut buf = [0u8; RECORD_MAX];
    for _ in 0..RELAY_MAX {
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let Ok(r) = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) else {
            return;
        };
        let pid = r.cmsgs().ok().and_then(|mut c| {
            c.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                _ => None,
            })
        });
        let n = r.bytes;
        if n == 0 {
            continue; // An empty record: nothing to show.
        }
        let record = &buf[..n.min(RECORD_MAX)];
        let level = match record[0] {
            1 => log::Level::Error,
            2 => log::Level::Warn,
            4 => log::Level::Debug,
            5 => log::Level::Trace,
            _ => log::Level::Info,
        };
        let text = String::from_utf8_lossy(&record[1..]);
        match pid {
            Some(pid) => log::log!(target: alias, level, "[worker {pid}] {text}"),
            None => log::log!(target: alias, level, "[worker ?] {text}"),
        }
    }
}

/// A warning of forkworker's own from code that runs in a worker before and around the
/// user's `setup` (the limits, the sandbox): forwarded to the parent like [`log()`], so that
/// the worker never goes through the program's logger, whose lock another thread of the
/// program may have held when the fork server was forked (see `fork_server`). The parent
/// shows it as `[worker <pid>] <message>`, as it does outside a worker.
pub(crate) fn warn(alias: &str, message: impl Display) {
    if !forward(log::Level::Warn, &message) {
        log::warn!(target: alias, "[worker {}] {message}", std::process::id());
    }
}

/// Whether the current method asked for its worker to be restarted.
pub(crate) fn fatal_requested() -> bool {
    FATAL.load(Ordering::Relaxed)
}

fn type_key<T: 'static>() -> u64 {
    let mut h = DefaultHasher::new();
    TypeId::of::<T>().hash(&mut h);
    h.finish() | 1
}

/// Makes `state` readable from workers forked from now on, through [`daemon`]. The daemon
/// host calls this with its application before the first fork.
///
/// # Safety
/// `state` must stay at its address and alive while workers may be forked; workers read the
/// copy that their fork made, never the parent's live value.
pub(crate) unsafe fn set_daemon_state<T: 'static>(state: &T) {
    DAEMON_TYPE.store(type_key::<T>(), Ordering::Relaxed);
    DAEMON.store(state as *const T as *mut (), Ordering::Release);
}

/// Whether this process is a forkworker worker.
pub fn is_worker() -> bool {
    worker().is_some()
}

/// The alias of this worker's mediator, in a worker.
pub fn alias() -> Option<&'static str> {
    worker().map(|w| w.alias.as_str())
}

fn target() -> &'static str {
    alias().unwrap_or("forkworker")
}

/// Writes to the program's log (the `log` crate, tagged with the mediator's alias).
///
/// In a worker the record is forwarded to the parent's logger (see the module's doc).
pub fn log(message: impl Display) {
    if !forward(log::Level::Info, &message) {
        log::info!(target: target(), "[worker {}] {message}", std::process::id());
    }
}

/// Logs an error and counts it (a catch-all error of this worker, in the mediator's
/// statistics; a worker reaching 10 is replaced).
///
/// In a worker the record is forwarded to the parent's logger (see the module's doc).
pub fn error(message: impl Display) {
    if !forward(log::Level::Error, &message) {
        log::error!(target: target(), "[worker {}] {message}", std::process::id());
    }
    if let Some(w) = worker() {
        // SAFETY: the channel lives in the shared mapping for the life of the process.
        unsafe { &*w.channel }
            .resp
            .errors
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs an error, counts it, and restarts this worker: the current call finishes and
/// returns normally, then the process runs `teardown` and exits, and the mediator forks a
/// replacement.
pub fn fatal_error(message: impl Display) {
    error(format_args!("fatal: {message}; this worker will restart"));
    if is_worker() {
        FATAL.store(true, Ordering::Relaxed);
    }
}

/// The daemon's application state as it was when this worker was forked, if the daemon
/// host runs one of type `T` (in the parent, and for any other type, `None`).
///
/// ```ignore
/// let ini: &Config = this_worker::daemon::<App>().map(|app| &app.config)?;
/// ```
pub fn daemon<T: 'static>() -> Option<&'static T> {
    if !is_worker() || DAEMON_TYPE.load(Ordering::Relaxed) != type_key::<T>() {
        return None;
    }
    let ptr = DAEMON.load(Ordering::Acquire) as *const T;
    // SAFETY: set by `set_daemon_state` with a `&T` that was alive at the fork; this process
    // is a copy made then, in which nothing else will ever write it (the parent's code that
    // held it does not run here).
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}
