//! Errors, one type per operation (as crossbeam-channel's `err.rs`), so that a caller
//! matches only what can happen to it:
//!
//! | operation | error | where it is produced |
//! |---|---|---|
//! | [`crate::Mediator::start`], [`crate::Drive::start_pool`] | [`StartError`] | `mediator`, from a [`PoolError`] or `check_environment` |
//! | creating a pool's resources (shared memory, eventfd, fork server) | [`PoolError`] | `shm`, `pool` |
//! | forking one process and watching it (a worker, the fork server, a task) | [`SpawnError`] | `process`, `fork_server`; inside a [`PoolError`] or a [`crate::TaskError`], or logged |
//! | submitting a call (what a proxy method can fail with) | [`SubmitError`] | `mediator` |
//! | a call, from the proxy to `wait` (the umbrella) | [`CallError`] | [`SubmitError`], [`StartError`] and [`PoolError`] convert into it with `From` |
//! | why a call was cancelled | [`CancelReason`] | `mediator`, inside [`CallError::Cancelled`] |
//! | bytes crossing the process boundary | [`WireError`] | `wire`, the generated code |
//! | opening a lock, pid or persistent file, or the runtime directory, that another user could have planted | [`UnsafePath`] | `private_fs`; inside [`crate::instance::InstanceError::Unsafe`] |
//!
//! [`CallError`] is what proxies, [`crate::Mediator::wait`] and `?` in a user's `main` see.
//! `wait` adds two failures of its own, [`CallError::WaitTimeout`] (the call goes on) and
//! [`CallError::UnknownCall`]; every other variant it returns is the call's outcome. The
//! daemon's errors are [`crate::daemon::DaemonError`], and
//! [`crate::instance::InstanceError`] for a second instance.
//!
//! ```
//! use forkworker_core::error::{CallError, PoolError, StartError};
//!
//! fn start_failed(e: StartError) -> CallError {
//!     e.into() // StartError::Pool(p) becomes CallError::Pool(p)
//! }
//! let e = start_failed(StartError::Pool(PoolError::WorkersDying { failures: 5 }));
//! assert_eq!(e, CallError::Pool(PoolError::WorkersDying { failures: 5 }));
//! ```

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Encoding or decoding a value crossing the process boundary failed.
///
/// Returned by the generated dispatch code and by the decoders of [`crate::Call`]. Variants
/// may be added: a `match` needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes could not be decoded as the expected type.
    #[error("could not decode {what}: {reason}")]
    Decode {
        /// What was being decoded (a type name).
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// Bytes were left over after decoding: the record does not match its type.
    #[error("{extra} unexpected trailing bytes after decoding {what}")]
    TrailingBytes {
        /// What was being decoded (a type name).
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The value could not be encoded.
    #[error("could not encode {what}: {reason}")]
    Encode {
        /// What was being encoded (a type name).
        what: &'static str,
        /// The encoder's explanation.
        reason: String,
    },
    /// The worker reported an encoding or decoding failure.
    #[error("in the worker: {0}")]
    Remote(String),
    /// A shared-memory record failed validation.
    #[error("corrupted shared-memory record: {0}")]
    Corrupted(String),
    /// A call named a method index that this worker type does not have.
    #[error("unknown method index {0}")]
    UnknownMethod(u32),
}

/// Why a call failed, returned by the proxy methods and by [`crate::Mediator::wait`].
///
/// The umbrella of the per-operation errors: a [`SubmitError`], a [`StartError`] and a
/// [`PoolError`] convert into it with `From` (so `?` works), each into the variant of the same
/// name. Variants may be added: a `match` needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The encoded arguments (plus the smallest return reservation) do not fit in the
    /// shared-memory allocation at all. Raise it with [`crate::Mediator::malloc`].
    #[error(
        "call to {method}() needs {needed} bytes of shared memory but the allocation is {allocation} bytes; raise it with malloc()"
    )]
    TooLarge {
        /// The method called.
        method: &'static str,
        /// Bytes the call needs.
        needed: usize,
        /// Bytes the whole allocation has for payloads.
        allocation: usize,
    },
    /// The return value did not fit in the free shared memory when the worker produced it.
    #[error(
        "the return value of {method}() is {needed} bytes, more than the {available} bytes free in the allocation of {allocation} bytes; raise it with malloc()"
    )]
    ReturnTooLarge {
        /// The method called.
        method: &'static str,
        /// Bytes the encoded return value needs.
        needed: usize,
        /// Bytes that were free when it was produced.
        available: usize,
        /// Bytes the whole allocation has for payloads.
        allocation: usize,
    },
    /// The call fits in the allocation, but not in what is free while calls queued or
    /// running hold their blocks. Not waited for: the proxy fails at once (finished calls'
    /// results are in the parent's memory and hold none).
    #[error(
        "call to {method}() needs {needed} bytes of shared memory; {available} of {allocation} are free: calls queued or running hold the rest ({retained} are a persistent mediator's finished calls not yet delivered)"
    )]
    OutOfMemory {
        /// The method called.
        method: &'static str,
        /// Bytes the call needs.
        needed: usize,
        /// Bytes free now.
        available: usize,
        /// Bytes the whole allocation has for payloads.
        allocation: usize,
        /// Bytes held by a persistent mediator's finished calls not yet delivered (to a
        /// callback or their handle); 0 for any other.
        retained: usize,
    },
    /// Every journal entry is taken: too many calls are queued or running at once.
    #[error(
        "call to {method}() refused: {capacity} calls are already queued or running; raise malloc() (one call per 512 bytes, at least 1024 calls) or wait for some"
    )]
    TooManyCalls {
        /// The method called.
        method: &'static str,
        /// How many calls the journal holds.
        capacity: usize,
    },
    /// Encoding the arguments or decoding the return failed.
    #[error("call to {method}(): {source}")]
    Wire {
        /// The method called.
        method: &'static str,
        /// What went wrong.
        #[source]
        source: WireError,
    },
    /// The method panicked in the worker. The worker process was replaced.
    #[error("{method}() panicked in worker {pid}: {message}")]
    Panicked {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
        pid: i32,
        /// The panic message, with where it panicked: `boom (at src/parse.rs:12:5)`.
        message: String,
    },
    /// The worker process died while it held the call. Fields may be added: a pattern needs
    /// `..`.
    #[non_exhaustive]
    #[error(
        "worker {pid} running {method}() died: {cause}{}",
        stderr_suffix(stderr)
    )]
    Crashed {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
        pid: i32,
        /// How it died.
        cause: crate::ExitCause,
        /// The last lines the worker wrote to its stderr before it died, at most 4 KiB
        /// (`"thread 'main' has overflowed its stack"`, `"memory allocation of 67108864
        /// bytes failed"`, a C library's message); empty if it wrote nothing.
        stderr: String,
    },
    /// The worker passed its memory limit ([`crate::Mediator::memory_limit`]) while it held
    /// the call: the kernel's OOM killer killed it in its cgroup, or, under `RLIMIT_DATA`, an
    /// allocation failed and it aborted. The call's status is [`crate::CallStatus::Crashed`];
    /// the worker was replaced.
    #[error(
        "worker {pid} running {method}() passed its memory limit of {limit} bytes ({mechanism}) and {cause}{}",
        stderr_suffix(stderr)
    )]
    #[non_exhaustive]
    MemoryLimit {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
        pid: i32,
        /// The limit in bytes.
        limit: u64,
        /// How the limit was enforced.
        mechanism: crate::LimitMechanism,
        /// How the worker ended.
        cause: crate::ExitCause,
        /// The last lines the worker wrote to its stderr, as in [`CallError::Crashed`] (under
        /// `RLIMIT_DATA`: "memory allocation of N bytes failed").
        stderr: String,
    },
    /// The call used more CPU time than [`crate::Mediator::cpu_limit`] allows; its worker
    /// ended and was replaced. The call's status is [`crate::CallStatus::Crashed`].
    #[error("{method}() used more than its CPU time limit of {limit:?}; worker {pid} ended")]
    CpuLimit {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
        pid: i32,
        /// The limit in force.
        limit: Duration,
    },
    /// The call ran longer than the mediator's timeout; its worker was killed. For a
    /// connected pool (pools across machines) whose deadline passed before a host answered,
    /// `pid` is 0: no worker of the caller's ran it (a host still running it is told to
    /// stop it).
    #[error("{method}() ran longer than its timeout of {timeout:?}; {}", timeout_end(*pid))]
    Timeout {
        /// The method called.
        method: &'static str,
        /// The worker's process id (0: a connected pool's deadline, see above).
        pid: i32,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The call was cancelled before it returned (the mediator shut down, or retries ran out).
    #[error("call to {method}() was cancelled: {reason}")]
    Cancelled {
        /// The method called.
        method: &'static str,
        /// Why.
        reason: CancelReason,
    },
    /// `wait` gave up before the call finished. The call goes on; wait again or poll.
    #[error("call {id} has not finished after waiting {waited:?}")]
    WaitTimeout {
        /// The call id.
        id: u64,
        /// How long `wait` waited.
        waited: Duration,
    },
    /// No call with this id is known here: the handle is of another mediator, the mediator
    /// was shut down since the call was made, or (for [`crate::Mediator::retry`]) the call's
    /// result was taken or released after its callbacks.
    #[error("no pending result for call {0}: unknown id, or its result was already delivered")]
    UnknownCall(u64),
    /// The pool could not start, or stopped forking workers (see [`PoolError`]).
    #[error("the worker pool could not start: {0}")]
    Pool(#[source] PoolError),
    /// The shared pool was closed or shut down (or its last clone dropped) before this call
    /// was made: it takes no new call.
    #[error("call to {method}() refused: the pool was closed or shut down")]
    Closed {
        /// The method called.
        method: &'static str,
    },
    /// A callback of a shared pool called that same pool. Callbacks run on the pool's own
    /// thread while it holds the pool's state, so the pool cannot serve them: hand the work
    /// to another thread (a channel) instead.
    #[error(
        "call to {method}() from one of the pool's own callbacks: a callback may not call its pool; send the work to another thread"
    )]
    FromCallback {
        /// The method called.
        method: &'static str,
    },
    /// The worker's `check_environment` reported problems; no process was forked.
    #[error("check_environment() failed: {}", .0.join("; "))]
    Environment(Vec<String>),
    /// A call of a connected pool (pools across machines) ran on, or was refused by, host
    /// `host` and ended with `error`: what the same call gives in a local pool, its `pid`
    /// a process on that host. Crashes, panics and timeouts on a host are reported at once,
    /// never redelivered.
    #[error("on host {host}: {error}")]
    OnHost {
        /// The host's id (its machine's name, its process id and a random part).
        host: String,
        /// What the host's local pool said.
        error: Box<CallError>,
    },
    /// Hosts died (or stalled past the visibility time) running the call this many times: it
    /// is not run again, so that it does not kill hosts forever.
    #[error(
        "call to {method}() was delivered {deliveries} times and its host died each time; it is poisoned and not run again"
    )]
    Poisoned {
        /// The method called.
        method: &'static str,
        /// How many hosts took it and died.
        deliveries: u32,
    },
    /// Host `host` runs a build whose worker interface differs from the caller's (another
    /// method list or other types, see `Worker::fingerprint`): it refused the call rather
    /// than run the wrong method.
    #[error(
        "host {host} refused the call to {method}(): its worker interface is {theirs:016x}, the caller's is {ours:016x} (different builds)"
    )]
    Incompatible {
        /// The method called.
        method: &'static str,
        /// The host's id.
        host: String,
        /// The caller's fingerprint.
        ours: u64,
        /// The host's fingerprint.
        theirs: u64,
    },
    /// A connected pool could not reach Redis for the call (after its retry time), or Redis
    /// failed a command.
    #[error("call to {method}(): {source}")]
    Remote {
        /// The method called.
        method: &'static str,
        /// What failed.
        #[source]
        source: Box<crate::remote::RemoteError>,
    },
    /// The encoded arguments (or return value) of a call through Redis are larger than the
    /// pool's payload limit.
    #[error(
        "call to {method}() carries {size} bytes through Redis, more than the payload limit of {limit} bytes; raise it with payload_limit()"
    )]
    PayloadTooLarge {
        /// The method called.
        method: &'static str,
        /// The encoded size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// How a timeout ended, by who ran the call.
fn timeout_end(pid: i32) -> String {
    if pid == 0 {
        "no host answered in time".to_owned()
    } else {
        format!("worker {pid} was killed")
    }
}

/// How a worker's stderr tail ends a message: after a colon, on lines of its own.
fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{stderr}")
    }
}

/// Why a call was cancelled ([`CallError::Cancelled`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancelReason {
    /// The mediator shut down while the call was queued; it never ran.
    #[error("the mediator shut down before a worker took the call")]
    Shutdown,
    /// The call was still running when the shutdown's grace period ended; its worker was
    /// killed.
    #[error("still running {grace:?} after shutdown began; its worker was killed")]
    ShutdownGrace {
        /// The grace period ([`crate::Mediator::grace`]).
        grace: Duration,
    },
    /// Its caller cancelled it: dropped its handle or future before it finished, or called
    /// `cancel()`. A queued call never ran; a running one's worker was killed.
    #[error("cancelled by its caller")]
    ByCaller,
    /// Its workers kept dying before starting it: it was requeued, and cancelled when its
    /// retries ran out.
    #[error("its worker died before starting it {attempts} times (last: worker {pid} {cause})")]
    WorkersDied {
        /// How many times it was handed to a worker.
        attempts: u32,
        /// The last worker's process id.
        pid: i32,
        /// How that worker ended.
        cause: crate::ExitCause,
    },
}

impl From<PoolError> for CallError {
    fn from(e: PoolError) -> Self {
        CallError::Pool(e)
    }
}

impl From<StartError> for CallError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Environment(problems) => CallError::Environment(problems),
            StartError::Pool(e) => CallError::Pool(e),
        }
    }
}

impl From<SubmitError> for CallError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::TooLarge {
                method,
                needed,
                allocation,
            } => CallError::TooLarge {
                method,
                needed,
                allocation,
            },
            SubmitError::OutOfMemory {
                method,
                needed,
                available,
                allocation,
                retained,
            } => CallError::OutOfMemory {
                method,
                needed,
                available,
                allocation,
                retained,
            },
            SubmitError::TooManyCalls { method, capacity } => {
                CallError::TooManyCalls { method, capacity }
            }
            SubmitError::Encode { method, source } => CallError::Wire { method, source },
            SubmitError::Start(e) => e.into(),
        }
    }
}

/// Why submitting a call failed: what a proxy method (or [`crate::FnMediator::call`]) can
/// return, before the call exists. The proxies return it converted into the [`CallError`]
/// variant of the same name; [`SubmitError::try_from`] narrows a [`CallError`] back.
///
/// ```
/// use forkworker_core::error::{CallError, SubmitError};
///
/// let e = CallError::TooManyCalls { method: "sieve", capacity: 1024 };
/// // Refused at submission: wait for some calls and submit again.
/// assert!(matches!(SubmitError::try_from(e), Ok(SubmitError::TooManyCalls { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// As [`CallError::TooLarge`]: the call can never fit in the allocation.
    #[error(
        "call to {method}() needs {needed} bytes of shared memory but the allocation is {allocation} bytes; raise it with malloc()"
    )]
    TooLarge {
        /// The method called.
        method: &'static str,
        /// Bytes the call needs.
        needed: usize,
        /// Bytes the whole allocation has for payloads.
        allocation: usize,
    },
    /// As [`CallError::OutOfMemory`]: no room now; calls that finish free some.
    #[error(
        "call to {method}() needs {needed} bytes of shared memory; {available} of {allocation} are free: calls queued or running hold the rest ({retained} are a persistent mediator's finished calls not yet delivered)"
    )]
    OutOfMemory {
        /// The method called.
        method: &'static str,
        /// Bytes the call needs.
        needed: usize,
        /// Bytes free now.
        available: usize,
        /// Bytes the whole allocation has for payloads.
        allocation: usize,
        /// Bytes held by a persistent mediator's finished calls not yet delivered (to a
        /// callback or their handle); 0 for any other.
        retained: usize,
    },
    /// As [`CallError::TooManyCalls`]: every journal entry is taken.
    #[error(
        "call to {method}() refused: {capacity} calls are already queued or running; raise malloc() (one call per 512 bytes, at least 1024 calls) or wait for some"
    )]
    TooManyCalls {
        /// The method called.
        method: &'static str,
        /// How many calls the journal holds.
        capacity: usize,
    },
    /// The arguments could not be encoded; becomes [`CallError::Wire`].
    #[error("call to {method}(): {source}")]
    Encode {
        /// The method called.
        method: &'static str,
        /// What went wrong.
        #[source]
        source: WireError,
    },
    /// The pool, started by the first call, could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

impl TryFrom<CallError> for SubmitError {
    type Error = CallError;

    /// The submission error `e` came from, or `e` itself if it is not one (an outcome of a
    /// call that ran, or of `wait`). A [`CallError::Wire`] is taken as an encoding failure.
    fn try_from(e: CallError) -> Result<Self, CallError> {
        Ok(match e {
            CallError::TooLarge {
                method,
                needed,
                allocation,
            } => SubmitError::TooLarge {
                method,
                needed,
                allocation,
            },
            CallError::OutOfMemory {
                method,
                needed,
                available,
                allocation,
                retained,
            } => SubmitError::OutOfMemory {
                method,
                needed,
                available,
                allocation,
                retained,
            },
            CallError::TooManyCalls { method, capacity } => {
                SubmitError::TooManyCalls { method, capacity }
            }
            CallError::Wire {
                method,
                source: source @ WireError::Encode { .. },
            } => SubmitError::Encode { method, source },
            CallError::Environment(problems) => {
                SubmitError::Start(StartError::Environment(problems))
            }
            CallError::Pool(
                e @ (PoolError::CreateSegment { .. }
                | PoolError::OpenSegment { .. }
                | PoolError::UnsafeSegment(_)
                | PoolError::EventFd(_)
                | PoolError::ForkServer(_)),
            ) => SubmitError::Start(StartError::Pool(e)),
            other => return Err(other),
        })
    }
}

/// Why a pool could not start: returned by [`crate::Mediator::start`] and
/// [`crate::Drive::start_pool`] (and by the first call, inside a [`SubmitError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The worker's `check_environment` reported problems; nothing was created or forked.
    #[error("check_environment() failed: {}", .0.join("; "))]
    Environment(Vec<String>),
    /// The pool's resources could not be had from the system.
    #[error("the worker pool could not start: {0}")]
    Pool(#[from] PoolError),
}

/// What a pool could not have from the system, or why it stopped forking workers. Carried by
/// [`CallError::Pool`] and [`StartError::Pool`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The memory of a pool (its store, a worker's area) could not be created (`memfd_create`,
    /// `fallocate`, `mmap`; a persistent store's file in the runtime directory): memory or
    /// disk short, say. Lower `malloc()` or make room.
    #[error("cannot create shared memory segment {name} of {size} bytes: {source}")]
    CreateSegment {
        /// The memfd's name, or the persistent store's path.
        name: String,
        /// Its size in bytes.
        size: usize,
        /// The system's error.
        #[source]
        source: OsError,
    },
    /// A persistent mediator's store exists under its name but is not this user's private
    /// file (another user made it first, or it is open to others, or a link): it is never
    /// used, nor changed.
    #[error("shared memory segment: {0}")]
    UnsafeSegment(#[source] UnsafePath),
    /// A persistent mediator's store, left by an earlier run, exists but cannot be opened (or
    /// the runtime directory cannot be had).
    #[error("cannot open shared memory segment {name}: {source}")]
    OpenSegment {
        /// The store's path.
        name: String,
        /// The system's error.
        #[source]
        source: OsError,
    },
    /// The eventfd the workers wake the parent with could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] OsError),
    /// The thread a shared pool drives itself from could not be started (or panicked while
    /// starting the pool).
    #[error("cannot start the pool's thread: {0}")]
    Thread(#[source] OsError),
    /// The fork server, from which every worker is forked, could not be started.
    #[error("cannot start the fork server: {0}")]
    ForkServer(#[source] SpawnError),
    /// No worker is alive and a new one cannot be forked (the program is out of descriptors,
    /// say): the queued calls fail with this instead of waiting; the next call tries again.
    #[error("no worker is alive and none can be forked: {0}")]
    CannotFork(#[source] SpawnError),
    /// Workers kept dying before they answered anything (a `setup` that panics, say): no
    /// more are forked, and the queued calls fail with this, until the mediator is restarted.
    #[error(
        "{failures} workers in a row died before answering a call (see the log); no more are forked until the mediator is restarted"
    )]
    WorkersDying {
        /// How many workers died in a row.
        failures: u32,
    },
}

/// Why a process (a worker, the fork server, a task) could not be forked or watched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The socket or pipe to talk to the new process could not be created.
    #[error("cannot create a socket or pipe for the new process: {0}")]
    Channel(#[source] OsError),
    /// `fork` failed: the process or memory limit was reached (`EAGAIN`, `ENOMEM`).
    #[error("fork failed: {0}")]
    Fork(#[source] OsError),
    /// The process was forked, but the descriptor that watches it could not be opened because
    /// the process or the system has too many open files (`EMFILE`, `ENFILE`). The process
    /// was killed.
    #[error("pidfd_open failed, too many open files: {0}")]
    TooManyFiles(#[source] OsError),
    /// The kernel has no `pidfd_open`: Linux 5.3 or later is needed.
    #[error("pidfd_open is not supported by this kernel: Linux 5.3 or later is needed")]
    PidfdUnsupported,
    /// `pidfd_open` failed otherwise. The process was killed.
    #[error("pidfd_open failed: {0}")]
    Pidfd(#[source] OsError),
    /// The fork server is gone (it died, or its socket failed).
    #[error("the fork server is gone{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    ForkServerGone(Option<OsError>),
    /// The fork server did not answer a request in time.
    #[error("the fork server did not answer within {0:?}")]
    ForkServerSilent(Duration),
}

impl SpawnError {
    /// Classifies a failed `pidfd_open`.
    pub(crate) fn pidfd(e: io::Error) -> SpawnError {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => SpawnError::TooManyFiles(e.into()),
            Some(libc::ENOSYS) => SpawnError::PidfdUnsupported,
            _ => SpawnError::Pidfd(e.into()),
        }
    }
}

/// An error from the operating system, shared so that the errors holding it can be cloned and
/// compared ([`CallError`] is `Clone + Eq`). Two are equal when their kind and errno are.
///
/// It displays as the [`io::Error`] it holds; [`OsError::as_io`] reaches it.
#[derive(Debug, Clone)]
pub struct OsError(Arc<io::Error>);

impl OsError {
    /// The error as the standard library gave it.
    pub fn as_io(&self) -> &io::Error {
        &self.0
    }

    /// Its kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind()
    }

    /// The errno, if the error came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }

    /// The last system call's error (`errno`).
    pub(crate) fn last() -> OsError {
        io::Error::last_os_error().into()
    }
}

impl From<io::Error> for OsError {
    fn from(e: io::Error) -> Self {
        OsError(Arc::new(e))
    }
}

impl From<nix::errno::Errno> for OsError {
    fn from(e: nix::errno::Errno) -> Self {
        io::Error::from(e).into()
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.raw_os_error() == other.raw_os_error()
    }
}

impl Eq for OsError {}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Errors counted by kind, as in the seed's runtime statistics.
///
/// - `communication`: a worker died while it held a call, or could not be forked;
/// - `corruption`: a shared-memory record failed validation (checksum, bounds, kind);
/// - `catchall`: anything else (a panic, an encoding or decoding failure).
///
/// A worker whose own counts reach [`ErrorCounts::WORKER_LIMITS`] is replaced; the
/// mediator's counts are compared with [`ErrorCounts::PARENT_LIMITS`] and an error is logged
/// when one is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Failures of the channel between the parent and a worker.
    pub communication: u64,
    /// Records that failed validation.
    pub corruption: u64,
    /// Any other error.
    pub catchall: u64,
}

impl ErrorCounts {
    /// Per worker: at these counts the worker is replaced (the seed's 10/10/10).
    pub const WORKER_LIMITS: ErrorCounts = ErrorCounts {
        communication: 10,
        corruption: 10,
        catchall: 10,
    };
    /// Per mediator: at these counts an error is logged (the seed's 50/25/25).
    pub const PARENT_LIMITS: ErrorCounts = ErrorCounts {
        communication: 50,
        corruption: 25,
        catchall: 25,
    };

    /// Whether any count reached its limit in `limits`.
    pub fn reached(&self, limits: &ErrorCounts) -> bool {
        self.communication >= limits.communication
            || self.corruption >= limits.corruption
            || self.catchall >= limits.catchall
    }

    /// Counts `n` errors of `kind`, saturating.
    pub(crate) fn add_n(&mut self, kind: ErrorKind, n: u64) {
        let count = match kind {
            ErrorKind::Communication => &mut self.communication,
            ErrorKind::Corruption => &mut self.corruption,
            ErrorKind::Catchall => &mut self.catchall,
        };
        *count = count.saturating_add(n);
    }
}

/// The kind an error is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Communication,
    Corruption,
    Catchall,
}

/// A file or directory forkworker refuses to use because another local user could have
/// planted it, could change it, or could redirect it: a symbolic link, another user's file,
/// a mode that lets others write to it, ...
///
/// Nothing was written to, truncated or read from the refused file. The fields name what was
/// found, so that the message says what to fix:
/// `refusing to use /tmp/App.lock: it belongs to another user (owner uid 65534, mode 0666)`.
/// Found inside [`crate::instance::InstanceError::Unsafe`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to use {}: it {why} ({})", path.display(), found(*owner, *mode))]
#[non_exhaustive]
pub struct UnsafePath {
    /// The file or directory.
    pub path: PathBuf,
    /// Its owner's user id (`None` if it could not be read: the entry vanished).
    pub owner: Option<u32>,
    /// Its permission bits (`mode & 0o7777`; `None` as for `owner`).
    pub mode: Option<u32>,
    /// What is wrong with it.
    pub why: Unsafety,
}

fn found(owner: Option<u32>, mode: Option<u32>) -> String {
    match (owner, mode) {
        (Some(owner), Some(mode)) => format!("owner uid {owner}, mode {mode:04o}"),
        _ => "owner and mode unknown".to_owned(),
    }
}

/// Why a path is refused ([`UnsafePath::why`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsafety {
    /// The last component is a symbolic link (which someone else may have planted): it is
    /// never followed.
    #[error("is a symbolic link")]
    SymbolicLink,
    /// A file was expected, and it is a directory, a FIFO, a socket, a device...
    #[error("is not a regular file")]
    NotRegular,
    /// A directory was expected.
    #[error("is not a directory")]
    NotDirectory,
    /// It belongs to another user than this process's effective user (`me`); a directory
    /// given by the user may also belong to root.
    #[error("belongs to another user (this process runs as uid {me})")]
    OtherOwner {
        /// This process's effective user id.
        me: u32,
    },
    /// Its mode grants more than `allowed` (a file: 0600, or 0644 for a pid file; a private
    /// directory: 0700).
    #[error("has a mode that grants more than {allowed:04o}")]
    TooOpen {
        /// The most the file may grant.
        allowed: u32,
    },
    /// A directory that others may write to, without the sticky bit (as /tmp has) that
    /// keeps them from replacing this user's files in it.
    #[error("is a directory others can write to, without the sticky bit")]
    WritableByOthers,
    /// A file with more than one name: another name, in a directory others can write to,
    /// may have been linked to it.
    #[error("has {links} hard links")]
    HardLinked {
        /// Its number of links.
        links: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pidfd_open_says_whether_files_ran_out_or_the_kernel_is_too_old() {
        let os = |errno| io::Error::from_raw_os_error(errno);
        assert!(matches!(
            SpawnError::pidfd(os(libc::EMFILE)),
            SpawnError::TooManyFiles(e) if e.raw_os_error() == Some(libc::EMFILE)
        ));
        assert!(matches!(
            SpawnError::pidfd(os(libc::ENFILE)),
            SpawnError::TooManyFiles(_)
        ));
        assert_eq!(
            SpawnError::pidfd(os(libc::ENOSYS)),
            SpawnError::PidfdUnsupported
        );
        let other = SpawnError::pidfd(os(libc::EINVAL));
        assert!(matches!(other, SpawnError::Pidfd(_)), "{other:?}");
        assert!(!other.to_string().contains("5.3"), "{other}");
    }

    #[test]
    fn os_errors_compare_by_kind_and_errno_and_display_as_the_io_error() {
        let a = OsError::from(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(a, a.clone());
        assert_eq!(a, OsError::from(nix::errno::Errno::ENOSPC));
        assert_ne!(a, OsError::from(io::Error::from_raw_os_error(libc::EMFILE)));
        assert_eq!(
            a.to_string(),
            io::Error::from_raw_os_error(libc::ENOSPC).to_string()
        );
    }

    #[test]
    fn a_cancelled_call_says_why_as_before() {
        let cancelled = |reason| {
            CallError::Cancelled {
                method: "m",
                reason,
            }
            .to_string()
        };
        assert_eq!(
            cancelled(CancelReason::Shutdown),
            "call to m() was cancelled: the mediator shut down before a worker took the call"
        );
        assert_eq!(
            cancelled(CancelReason::ShutdownGrace {
                grace: Duration::from_millis(200)
            }),
            "call to m() was cancelled: still running 200ms after shutdown began; its worker was killed"
        );
        assert_eq!(
            cancelled(CancelReason::WorkersDied {
                attempts: 4,
                pid: 7,
                cause: crate::ExitCause::Exited(3)
            }),
            "call to m() was cancelled: its worker died before starting it 4 times (last: worker 7 exited with code 3)"
        );
    }

    #[test]
    fn narrower_errors_become_the_call_error_of_the_same_name_and_back() {
        let submit = SubmitError::TooManyCalls {
            method: "m",
            capacity: 3,
        };
        let call = CallError::from(submit.clone());
        assert_eq!(
            call,
            CallError::TooManyCalls {
                method: "m",
                capacity: 3
            }
        );
        assert_eq!(call.to_string(), submit.to_string());
        assert_eq!(SubmitError::try_from(call), Ok(submit));

        // The messages are written twice (here and in CallError): they must not drift.
        for submit in [
            SubmitError::TooLarge {
                method: "m",
                needed: 9,
                allocation: 8,
            },
            SubmitError::OutOfMemory {
                method: "m",
                needed: 9,
                available: 1,
                allocation: 8,
                retained: 2,
            },
            SubmitError::Encode {
                method: "m",
                source: WireError::Encode {
                    what: "T",
                    reason: "no".into(),
                },
            },
        ] {
            let call = CallError::from(submit.clone());
            assert_eq!(call.to_string(), submit.to_string());
            assert_eq!(SubmitError::try_from(call), Ok(submit));
        }

        let start = StartError::Environment(vec!["no GPU".into()]);
        assert_eq!(
            CallError::from(SubmitError::from(start.clone())),
            CallError::Environment(vec!["no GPU".into()])
        );
        assert_eq!(
            SubmitError::try_from(CallError::from(start.clone())),
            Ok(SubmitError::Start(start))
        );

        let dying = CallError::from(PoolError::WorkersDying { failures: 5 });
        assert_eq!(SubmitError::try_from(dying.clone()), Err(dying));
        let timeout = CallError::WaitTimeout {
            id: 1,
            waited: Duration::ZERO,
        };
        assert_eq!(SubmitError::try_from(timeout.clone()), Err(timeout));
    }
}
