//! Calls: their ids, statuses, timings, and the view of a finished call handed to callbacks.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{CallError, WireError};
use crate::worker::Worker;

/// The id of a call whose method returns `R`. Returned at once by every proxy method; pass it
/// to [`crate::Mediator::wait`] for the typed result or to [`crate::Mediator::status`].
///
/// Ids are unique within one mediator for its lifetime, and increase in call order.
pub struct CallId<R> {
    id: u64,
    decode: fn(&[u8]) -> Result<R, WireError>,
    _r: PhantomData<fn() -> R>,
}

impl<R> CallId<R> {
    pub(crate) fn new(id: u64, decode: fn(&[u8]) -> Result<R, WireError>) -> Self {
        CallId {
            id,
            decode,
            _r: PhantomData,
        }
    }

    /// The id as a number, as seen in [`Call::id`] and in log lines.
    pub fn raw(&self) -> u64 {
        self.id
    }

    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<R, WireError> {
        (self.decode)(bytes)
    }
}

impl<R> Clone for CallId<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for CallId<R> {}
impl<R> PartialEq for CallId<R> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl<R> Eq for CallId<R> {}
impl<R> std::hash::Hash for CallId<R> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}
impl<R> fmt::Debug for CallId<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", self.id)
    }
}
impl<R> fmt::Display for CallId<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// Where a call is in its life. The seed's statuses, plus distinct final states for failures
/// the seed could only report as timeouts.
///
/// Statuses may be added: a `match` needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CallStatus {
    /// Queued in the parent; no worker has it yet.
    Uncalled = 0,
    /// Handed to a worker process, which has not started it yet.
    Called = 1,
    /// The worker is running the method.
    Running = 2,
    /// The method returned; its value is in shared memory.
    Returned = 3,
    /// Cancelled before it returned (shutdown, or too many retries).
    Cancelled = 4,
    /// Ran longer than the timeout; the worker was killed.
    Timeout = 5,
    /// The worker process died while it held the call.
    Crashed = 6,
    /// The method panicked.
    Panicked = 7,
    /// The call failed for another reason (encoding, decoding, return too large).
    Failed = 8,
}

impl CallStatus {
    /// Every status, in order.
    pub const ALL: [CallStatus; 9] = [
        CallStatus::Uncalled,
        CallStatus::Called,
        CallStatus::Running,
        CallStatus::Returned,
        CallStatus::Cancelled,
        CallStatus::Timeout,
        CallStatus::Crashed,
        CallStatus::Panicked,
        CallStatus::Failed,
    ];

    /// True once the call can change no more.
    pub fn is_final(self) -> bool {
        self >= CallStatus::Returned
    }
}

/// How a worker process ended. Causes may be added: a `match` needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// It called `exit` with this code.
    Exited(i32),
    /// It was killed by this signal (11 is SIGSEGV, 6 SIGABRT, 9 SIGKILL).
    Signaled(i32),
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Exited(code) => write!(f, "exited with code {code}"),
            ExitCause::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {sig} ({name})")
            }
        }
    }
}

/// The time a call entered each status it went through.
///
/// Held as CLOCK_MONOTONIC nanoseconds and turned into `Instant`s only when asked: the parent
/// records several times per call and most are never looked at. On the hot path the times
/// come from the CPU's time-stamp counter where the kernel keeps time with it, kept within
/// about a microsecond of the clock. A call that a spinning worker picked up as it was posted
/// is `Running` from the time it was handed over (the two differ by a cache line's crossing),
/// and a run shorter than 100 µs is measured by the worker with the counter.
#[derive(Clone, Default)]
pub struct Timings {
    /// Nanoseconds per status; 0 for a status not entered (the clock is past 0 once the
    /// system has booted).
    entered: [u64; CallStatus::ALL.len()],
}

impl Timings {
    /// When the call entered `status`, if it did.
    pub fn entered(&self, status: CallStatus) -> Option<Instant> {
        self.entered_ns(status).map(to_instant)
    }

    pub(crate) fn entered_ns(&self, status: CallStatus) -> Option<u64> {
        Some(self.entered[status as usize]).filter(|&ns| ns != 0)
    }

    /// The latest time any status was entered.
    pub(crate) fn latest_ns(&self) -> Option<u64> {
        self.entered.iter().copied().max().filter(|&ns| ns != 0)
    }

    pub(crate) fn enter(&mut self, status: CallStatus, at_ns: u64) {
        self.entered[status as usize] = at_ns;
    }
}

impl fmt::Debug for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entered: Vec<Option<Instant>> =
            CallStatus::ALL.iter().map(|&s| self.entered(s)).collect();
        f.debug_struct("Timings")
            .field("entered", &entered)
            .finish()
    }
}

/// The `Instant` of a CLOCK_MONOTONIC reading in nanoseconds (as `clock::now_ns` gives).
///
/// `Instant` is CLOCK_MONOTONIC on Linux too, so the two differ by a constant: one pair of
/// readings taken together, once per process (a forked worker inherits it), fixes it, and a
/// conversion is then an addition instead of two clock reads.
pub(crate) fn to_instant(ns: u64) -> Instant {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(at, at_ns) = ANCHOR.get_or_init(|| (Instant::now(), crate::clock::now_ns()));
    if ns >= at_ns {
        at + Duration::from_nanos(ns - at_ns)
    } else {
        at.checked_sub(Duration::from_nanos(at_ns - ns))
            .unwrap_or(at)
    }
}

/// The parent's record of one call.
pub(crate) struct CallRecord {
    pub(crate) id: u64,
    pub(crate) method: u32,
    pub(crate) status: CallStatus,
    pub(crate) retries: u32,
    pub(crate) pid: Option<i32>,
    pub(crate) timings: Timings,
    /// Boxed: rare, and large enough to double the size of every record moved around.
    pub(crate) error: Option<Box<CallError>>,
    /// The payload block in shared memory: arguments, then the return reservation.
    pub(crate) block: crate::arena::Block,
    pub(crate) args_len: usize,
    /// Where the return value lies in shared memory once returned: (offset, length).
    pub(crate) ret: Option<(usize, usize)>,
    /// A worker asked for more room for the return: the block that holds it.
    pub(crate) ret_block: Option<crate::arena::Block>,
    /// The worker slot and request sequence number the call was posted with.
    pub(crate) posted: Option<(usize, u32)>,
    /// Its entry in the shared-memory journal.
    pub(crate) entry: usize,
    /// `wait` is waiting for this call: keep its result after `on_return`.
    pub(crate) awaited: bool,
}

impl CallRecord {
    pub(crate) fn set_status(&mut self, status: CallStatus, at_ns: u64) {
        self.status = status;
        self.timings.enter(status, at_ns);
    }
}

/// A finished call, as handed to `on_return` and `on_timeout` callbacks.
///
/// The arguments and the return value stay encoded in shared memory; [`Call::args`] and
/// [`Call::return_value`] decode them on demand.
pub struct Call<'a, W: Worker> {
    pub(crate) record: &'a CallRecord,
    pub(crate) args: &'a [u8],
    pub(crate) ret: Option<&'a [u8]>,
    pub(crate) retry: Cell<bool>,
    pub(crate) _w: PhantomData<fn() -> W>,
}

impl<W: Worker> Call<'_, W> {
    /// The call's id.
    pub fn id(&self) -> u64 {
        self.record.id
    }

    /// The name of the method called.
    pub fn method(&self) -> &'static str {
        W::METHODS[self.record.method as usize]
    }

    /// The call's status.
    pub fn status(&self) -> CallStatus {
        self.record.status
    }

    /// How many times the call was retried (0 on the first run).
    pub fn retries(&self) -> u32 {
        self.record.retries
    }

    /// The process id of the worker that ran (or last held) the call.
    pub fn pid(&self) -> Option<i32> {
        self.record.pid
    }

    /// When the call entered each status.
    pub fn timings(&self) -> &Timings {
        &self.record.timings
    }

    /// Why the call failed, if it did.
    pub fn error(&self) -> Option<&CallError> {
        self.record.error.as_deref()
    }

    /// The call's arguments, decoded from shared memory.
    pub fn args(&self) -> Result<W::Args, WireError> {
        W::decode_args(self.record.method, self.args)
    }

    /// The return value, decoded from shared memory; `None` unless the call returned.
    pub fn return_value(&self) -> Option<Result<W::Return, WireError>> {
        self.ret
            .map(|bytes| W::decode_return(self.record.method, bytes))
    }

    /// Runs the call again once the callback returns: same id and arguments (they are still
    /// in shared memory), [`Call::retries`] one higher, its previous status, result and
    /// timings cleared. It goes to the back of the queue. Check `retries()` so as not to retry
    /// forever:
    ///
    /// ```ignore
    /// primes.on_timeout(|call, log| {
    ///     if call.retries() < 3 {
    ///         log.warn(format_args!("call {} timed out; retrying", call.id()));
    ///         call.retry();
    ///     }
    /// });
    /// ```
    pub fn retry(&self) {
        self.retry.set(true);
    }
}

impl<W: Worker> fmt::Debug for Call<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id())
            .field("method", &self.method())
            .field("status", &self.status())
            .field("retries", &self.retries())
            .field("pid", &self.pid())
            .finish()
    }
}

/// The logger handed to callbacks: writes to the `log` crate with the worker's alias as target.
#[derive(Debug, Clone, Copy)]
pub struct Log<'a> {
    pub(crate) alias: &'a str,
}

impl<'a> Log<'a> {
    /// A logger for `alias`.
    pub fn new(alias: &'a str) -> Self {
        Log { alias }
    }

    /// Logs at info level.
    pub fn info(&self, message: impl fmt::Display) {
        log::info!(target: self.alias, "{message}");
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl fmt::Display) {
        log::warn!(target: self.alias, "{message}");
    }

    /// Logs at error level.
    pub fn error(&self, message: impl fmt::Display) {
        log::error!(target: self.alias, "{message}");
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl fmt::Display) {
        log::debug!(target: self.alias, "{message}");
    }
}
