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

use std::any::TypeId;
use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::channel::Channel;

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

/// Called in a new worker process. A worker forked by a worker (a method that runs a pool of
/// its own) inherits its forker's info, which this replaces: it belongs to its own pool.
pub(crate) fn enter(alias: &str, channel: &Channel) {
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
pub fn log(message: impl Display) {
    log::info!(target: target(), "[worker {}] {message}", std::process::id());
}

/// Logs an error and counts it (a catch-all error of this worker, in the mediator's
/// statistics; a worker reaching 10 is replaced).
pub fn error(message: impl Display) {
    log::error!(target: target(), "[worker {}] {message}", std::process::id());
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
