//! Calls: their ids, statuses, timings, and the view of a finished call handed to callbacks.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::time::Instant;

use crate::clock::to_instant;
use crate::error::{CallError, WireError};
use crate::id::{CallOf, Id};
use crate::worker::Worker;

/// The id of a call whose method returns `R`: [`crate::Handle::id`] of the handle every proxy
/// method returns. Copy it freely; pass it to [`crate::Mediator::status`],
/// [`crate::Mediator::timings`] or [`crate::Mediator::worker_pid`] (the handle itself goes
/// to [`crate::Mediator::wait`]).
///
/// Ids are unique within one mediator for its lifetime, and increase in call order. An
/// [`Id`]: a number with a kind, cheap to copy; how to decode the return is
/// kept by the mediator, per method, not carried by the id.
pub type CallId<R> = Id<CallOf<R>>;

/// How a mediator decodes each method's return value: the function the generated proxy
/// passed to `submit` the first time the method was called, kept per method so that a
/// [`CallId`] need carry nothing but its number.
///
/// A proxy method always passes the same decoder for the same return type; `wait` finds it by
/// the call's method and checks that it returns the `R` of the id it was given (an id of
/// another mediator may name a call of another type here).
#[derive(Default)]
pub(crate) struct Decoders(Vec<Option<Box<dyn Any + Send + Sync>>>);

/// A decoder of return values of type `R`.
type Decode<R> = fn(&[u8]) -> Result<R, WireError>;

impl Decoders {
    /// Keeps `decode` for `method`, unless it has one.
    #[inline]
    pub(crate) fn set<R: 'static>(&mut self, method: u32, decode: Decode<R>) {
        let m = method as usize;
        if self.0.get(m).is_some_and(Option::is_some) {
            return;
        }
        if self.0.len() <= m {
            self.0.resize_with(m + 1, || None);
        }
        self.0[m] = Some(Box::new(decode));
    }

    /// Decodes a return value of `method` as an `R`.
    #[inline]
    pub(crate) fn decode<R: 'static>(&self, method: u32, bytes: &[u8]) -> Result<R, WireError> {
        match self.0.get(method as usize).and_then(Option::as_ref) {
            Some(f) => match f.downcast_ref::<Decode<R>>() {
                Some(decode) => decode(bytes),
                None => Err(Self::not_ours::<R>()),
            },
            None => Err(Self::not_ours::<R>()),
        }
    }

    fn not_ours<R>() -> WireError {
        WireError::Decode {
            what: std::any::type_name::<R>(),
            reason: "the call id is of another mediator: this call does not return that type"
                .to_owned(),
        }
    }
}

/// Where a call is in its life. The seed's statuses, plus distinct final states for failures
/// the seed could only report as timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// It called `exit` with this code.
    Exited(i32),
    /// It was killed by this signal (11 is SIGSEGV, 6 SIGABRT, 9 SIGKILL).
    Signaled(i32),
    /// The sandbox ([`crate::Sandbox`]) stopped it at a system call it may not make
    /// (signalling another process, tracing, exec).
    #[non_exhaustive]
    Sandbox {
        /// The system call's number (a `libc::SYS_*`), as the dying worker reported it, so
        /// only as trustworthy as the worker; `None` if it could not report it.
        syscall: Option<libc::c_long>,
    },
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
            ExitCause::Sandbox { syscall: None } => {
                write!(
                    f,
                    "stopped by the sandbox (SIGSYS; the system call is not known)"
                )
            }
            ExitCause::Sandbox { syscall: Some(nr) } => match crate::sandbox::syscall_name(nr) {
                Some(name) => write!(f, "stopped by the sandbox at syscall {name} ({nr})"),
                None => write!(f, "stopped by the sandbox at syscall {nr}"),
            },
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

/// The journal entry of a call that holds none: a held call whose arguments and result moved
/// to the parent's own memory (see `Engine::keep`).
pub(crate) const NO_ENTRY: usize = usize::MAX;

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
    /// The call's blocks in shared memory (arguments, then the return reservation; a larger
    /// block for the return value if it needed one), while the parent holds them: `None`
    /// while they are lent to the worker that holds the call.
    pub(crate) blocks: Option<crate::arena::Blocks>,
    /// Where the arguments are: the first `args_len` bytes of the first block.
    pub(crate) args_len: usize,
    /// Where the return value lies in shared memory once returned: (offset, length).
    pub(crate) ret: Option<crate::arena::Span>,
    /// The worker slot and request sequence number the call was posted with.
    pub(crate) posted: Option<crate::channel::PostedAt>,
    /// Its entry in the shared-memory journal ([`NO_ENTRY`] once it holds none).
    pub(crate) entry: usize,
    /// A handle to the call exists (see `Engine::hold`): once its callbacks ran, its result
    /// stays until the handle takes it or is dropped. A call no handle holds is released
    /// after its callbacks.
    pub(crate) held: bool,
    /// The return value in the parent's own memory, once it left shared memory (see
    /// `Engine::read_answer` and `Engine::keep`).
    pub(crate) ret_bytes: Option<Vec<u8>>,
    /// The arguments in the parent's own memory, for a held call whose shared memory was
    /// given back (see `Engine::keep`): only a retry needs them again.
    pub(crate) args_bytes: Option<Box<[u8]>>,
}

impl CallRecord {
    /// Where the arguments are, while the parent holds the call's blocks.
    pub(crate) fn args(&self) -> Option<crate::arena::Span> {
        self.blocks
            .as_ref()
            .map(|b| crate::arena::Span::new(b.block.offset, self.args_len))
    }

    /// A new call's record, queued, holding `blocks` and journal entry `entry`.
    pub(crate) fn new(
        id: u64,
        method: u32,
        blocks: Option<crate::arena::Blocks>,
        args_len: usize,
        entry: usize,
    ) -> Self {
        CallRecord {
            id,
            method,
            status: CallStatus::Uncalled,
            retries: 0,
            pid: None,
            timings: Timings::default(),
            error: None,
            blocks,
            args_len,
            ret: None,
            posted: None,
            entry,
            held: false,
            ret_bytes: None,
            args_bytes: None,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_decode_by_method_and_refuse_another_type() {
        let mut decoders = Decoders::default();
        decoders.set::<u64>(2, crate::wire::decode::<u64>);
        // A second decoder for the same method is ignored: a proxy method always passes the same.
        decoders.set::<String>(2, |_| Ok("not kept".to_owned()));
        let bytes = crate::wire::encode_to_vec(&7u64).unwrap();
        assert_eq!(decoders.decode::<u64>(2, &bytes), Ok(7));
        // An id of another mediator may name this method with another return type, or a
        // method no call of this mediator used yet.
        assert!(matches!(
            decoders.decode::<String>(2, &bytes),
            Err(WireError::Decode { what, .. }) if what.contains("String")
        ));
        assert!(matches!(
            decoders.decode::<u64>(0, &bytes),
            Err(WireError::Decode { .. })
        ));
        assert!(matches!(
            decoders.decode::<u64>(9, &bytes),
            Err(WireError::Decode { .. })
        ));
    }
}
