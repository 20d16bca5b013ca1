//! # forkworker
//!
//! Typed method calls in pools of forked worker processes, with arguments and return values
//! passed through shared memory. A thread cannot be killed; a process can. forkworker is for
//! work that may hang, crash, leak or abort and must not take the host program down with it.
//!
//! ```
//! use forkworker::prelude::*;
//! use std::time::Duration;
//!
//! pub struct Primes;
//!
//! #[forkworker::worker]
//! impl Primes {
//!     /// Every prime in `start..end`.
//!     pub fn sieve(&self, start: u64, end: u64) -> Vec<u64> {
//!         (start.max(2)..end).filter(|&n| (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect()
//!     }
//! }
//!
//! let mut primes = PrimesMediator::new("PrimeNumbers", Primes);
//! primes.workers(4).timeout(Duration::from_secs(60));
//! let call = primes.sieve(1000, 2000)?;                     // returns at once: a Handle
//! let id = call.id();                                       // a copyable CallId
//! let found: Vec<u64> = primes.wait(call, Duration::from_secs(5))?;
//! assert_eq!(found.first(), Some(&1009));
//! assert_eq!(primes.status(id), Some(CallStatus::Returned)); // answers after wait too
//! let direct = primes.inline().sieve(1, 10);                // in this process, no fork
//! assert_eq!(direct, [2, 3, 5, 7]);
//! # Ok::<(), forkworker::CallError>(())
//! ```
//!
//! See the README for the mapping from PHP-Daemon's Worker API to these names.
#![deny(missing_docs)]

#[doc(inline)]
pub use worker_macros::worker;

// The public surface, listed: the types of a pool and its calls at the root, and a module for
// each concept that has more than one or two names of its own. Everything else in the runtime
// is private; the generated code reaches what it needs through `__private`.
pub use worker_core::{
    Application, Builder, Call, CallError, CallId, CallStatus, CancelReason, Control, Daemon,
    DaemonError, Drive, ErrorCounts, ExitCause, ExternalHandler, FnMediator, FnPool, ForkStrategy,
    Handle, Host, Id, Inline, LimitMechanism, Log, MAX_REQUEUES, Mediator, MethodStats, OsError,
    Outcomes, Pending, PoolError, Recycle, RemoteBuilder, RemoteError, RemotePool, ReturnSlot,
    Sandbox, ServeError, SharedPool, SpawnError, StartError, Stats, SubmitError, Summary,
    TaskError, TaskId, Tasks, Timings, WireError, Worker, WorkerKey, Workers, sleep_on,
};
pub use worker_core::{
    closure, daemon, error, id, instance, remote, sandbox, signals, stats, task, this_worker,
};

/// The names most programs need: `use forkworker::prelude::*;`.
pub mod prelude {
    pub use worker_core::{
        Application, Call, CallError, CallId, CallStatus, Control, Daemon, DaemonError,
        ErrorCounts, ExitCause, FnMediator, FnPool, ForkStrategy, Handle, Log, Mediator, Pending,
        Recycle, SharedPool, StartError, TaskError, TaskId, Tasks, WireError, Worker, WorkerKey,
        Workers, this_worker,
    };
}

/// The one door through which generated code reaches the runtime. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use ::core;
    pub use ::serde::{Serialize, de::DeserializeOwned};
    pub use ::serde_bytes::Bytes;
    pub use ::std;
    pub use worker_core::__private::*;
    pub use worker_core::{
        Builder, CallError, CallId, Face, Handle, Mediator, Pending, RemoteBuilder, RemotePool,
        ReturnSlot, SharedPool, WireError, Worker,
    };
}
