//! Errors: what can go wrong with a call, and with bytes on the wire.

use std::time::Duration;

/// Encoding or decoding a value crossing the process boundary failed.
///
/// Returned by the generated dispatch code and by the decoders of [`crate::Call`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The call fits in the allocation, but not in what is free while other calls hold
    /// their blocks, and no block was freed in time.
    #[error(
        "call to {method}() needs {needed} bytes of shared memory; {available} of {allocation} are free and {retained} are held by finished calls whose results were not taken with wait()"
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
        /// Bytes held by finished calls waiting to be taken by `wait`.
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
        /// The panic message.
        message: String,
    },
    /// The worker process died while it held the call.
    #[error("worker {pid} running {method}() died: {cause}")]
    Crashed {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
        pid: i32,
        /// How it died.
        cause: crate::ExitCause,
    },
    /// The call ran longer than the mediator's timeout; its worker was killed.
    #[error("{method}() ran longer than its timeout of {timeout:?}; worker {pid} was killed")]
    Timeout {
        /// The method called.
        method: &'static str,
        /// The worker's process id.
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
        reason: String,
    },
    /// `wait` gave up before the call finished. The call goes on; wait again or poll.
    #[error("call {id} has not finished after waiting {waited:?}")]
    WaitTimeout {
        /// The call id.
        id: u64,
        /// How long `wait` waited.
        waited: Duration,
    },
    /// No call with this id is known: it never existed, or its result was already taken by
    /// `wait` or released after the `on_return` handler ran.
    #[error("no pending result for call {0}: unknown id, or its result was already delivered")]
    UnknownCall(u64),
    /// The pool could not start or could not fork a worker.
    #[error("the worker pool could not start: {0}")]
    Pool(String),
    /// The worker's `check_environment` reported problems; no process was forked.
    #[error("check_environment() failed: {}", .0.join("; "))]
    Environment(Vec<String>),
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

    pub(crate) fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Communication => self.communication += 1,
            ErrorKind::Corruption => self.corruption += 1,
            ErrorKind::Catchall => self.catchall += 1,
        }
    }
}

/// The kind an error is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Communication,
    Corruption,
    Catchall,
}
