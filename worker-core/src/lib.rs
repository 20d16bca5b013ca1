//! The runtime of forkworker. Users depend on the `forkworker` facade, not on this crate.
//!
//! # Map of the crate
//!
//! A call goes one way through these modules:
//!
//! | step | module |
//! |---|---|
//! | the user's type, as the macro describes it | `worker` |
//! | the seed's face: settings, the proxies' submit, `wait`, `poll`, `status`, callbacks | `mediator` |
//! | the shared face: `Send + Sync + Clone`, self-driven by a thread of its own, calls as [`Pending`] futures and handles | `shared` (`driver`: the thread's loop; `pending`: the handle) |
//! | the settings: strategy, recycling | `config` |
//! | the engine behind a face: submit, dispatch, collect, hand finished calls back; **where a finished call's return moves to the parent's heap** (`read_answer`) and what a handle keeps (`hold`, `drop_handle`, `keep`) | `engine` |
//! | encoding straight into the parent's store | `wire` |
//! | the call table: records, queue, finished calls, moves between statuses | `engine::table` |
//! | the payload room: blocks, journal entries, return-size hints | `engine::room` |
//! | the worker processes: spawn, post (arguments into the worker's area), answers, returns into the store, deaths, kills, retiring, the parent's sleep | `pool` |
//! | the parent's store (journal, queued arguments, undelivered returns) and its payload bytes | `shm` |
//! | a worker's area: its channel and the payload of the call it holds, the only memory it shares; the spin page | `area` |
//! | payload blocks inside the store | `arena` |
//! | one request/response channel per worker: its two cache lines, typed requests and answers | `channel` |
//! | the checksum of control words in shared memory (channel lines, journal entries) | `checksum` |
//! | the sleep/wake protocol: spinning, the sleep flags, futex and eventfd wake-ups | `wake` |
//! | the loop a worker process runs after the fork | `worker_loop` |
//! | the user's limits on a worker: memory (cgroup or `RLIMIT_DATA`), CPU time per call; telling a death under them from a crash | `limits` |
//! | reading a worker's answer: a pure step to an outcome | `engine::answer` |
//! | `wait` and its short path; **where a return is taken out of shared memory** (`decode_return`) | `engine::wait` |
//! | health: error counts, the start-failure breaker, deaths, **where a timed-out worker is killed** (`enforce_timeouts`, through `Pool::kill`), wear | `engine::supervise` |
//! | the three callbacks, by the way a call ended; **where a callback's panic is caught** (`guarded`) | `callbacks` |
//! | time on the hot path: the tick counter, calibrated against CLOCK_MONOTONIC; `Instant`s | `clock` |
//! | forking, watching (pidfd), killing and reaping one process; the `Reap` trait for others' children; a forked process's descriptors (`sanitize_fds`) | `process` |
//! | forking every worker from a single-threaded server; their stderr and its tail; killing their process trees | `fork_server` |
//! | pools across machines over Redis Streams: the host (`serve`), the connected pool (`remote().connect()`), the entries, the connection and the Redis clock | [`remote`] (`host`, `caller`, `entry`, `link`) |
//! | confining a worker after `setup`: seccomp, landlock, no_new_privs; naming the call that stopped it | [`sandbox`] |
//! | the text of a caught panic (a method's, a task's) | `panics` |
//! | the call journal that survives a crash; recovering or purging it at start | `journal`, `engine::recovery` |
//! | ids of calls, tasks and pools: one generic type | [`id`] |
//! | a call's status, timings, how its return is decoded; the view handed to callbacks | `call` |
//! | the mediator's handle on a call: keeps its result, says when it was dropped | `handle` |
//! | the status and timings of the most recent released calls | `engine::history` |
//! | per-method timings, error counts, memory | [`stats`] |
//! | what a method running in a worker can ask: log, error, fatal_error, daemon | [`this_worker`] |
//! | what can go wrong, by operation | [`error`] |
//!
//! Around the pools:
//!
//! | concept | module |
//! |---|---|
//! | a pool made from a closure (the seed's function workers) | [`closure`] |
//! | one loop sleeping on several pools | `drive` |
//! | the daemon host: the application's loop, callbacks with `&mut` state, signals | [`daemon`] |
//! | ad-hoc background processes (the seed's Task API) | [`task`] |
//! | signals as flags and a wake-up descriptor | [`signals`] |
//! | single instance lock and pid file | [`instance`] |
//! | files other local users cannot plant: the runtime directory, checked opens (lock, pid, journal) | `private_fs` |
//!
//! The code `#[worker]` generates reaches this crate only through `__private` (re-exported by
//! the facade as `forkworker::__private`), which is not public API.
#![deny(missing_docs)]

mod area;
mod arena;
mod call;
mod callbacks;
mod channel;
mod checksum;
mod clock;
pub mod closure;
mod config;
pub mod daemon;
mod drive;
mod engine;
pub mod error;
mod fork_server;
mod handle;
pub mod id;
pub mod instance;
mod journal;
mod limits;
mod mediator;
mod panics;
mod pool;
mod private_fs;
mod process;
pub mod remote;
pub mod sandbox;
mod shared;
mod shm;
pub mod signals;
pub mod stats;
pub mod task;
pub mod this_worker;
mod wake;
mod wire;
mod worker;
mod worker_loop;

pub use call::{Call, CallId, CallStatus, ExitCause, Log, Timings};
pub use closure::{FnMediator, FnPool};
pub use config::{ForkStrategy, Recycle};
pub use daemon::{Application, Control, Daemon, DaemonError, WorkerKey, Workers};
pub use drive::{Drive, sleep_on};
pub use error::{
    CallError, CancelReason, ErrorCounts, OsError, PoolError, SpawnError, StartError, SubmitError,
    WireError,
};
pub use handle::Handle;
pub use id::Id;
pub use limits::LimitMechanism;
pub use mediator::{ExternalHandler, MAX_REQUEUES, Mediator};
pub use remote::{Host, RemoteBuilder, RemoteError, RemotePool, ServeError};
pub use sandbox::Sandbox;
pub use shared::{Builder, Face, Inline, Pending, SharedPool};
pub use stats::{MethodStats, Outcomes, Stats, Summary};
pub use task::{TaskError, TaskId, Tasks};
pub use wire::ReturnSlot;
pub use worker::Worker;

/// Items the generated code (and this project's tests) call. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::mediator::submit;
    pub use crate::remote::remote_builder;
    pub use crate::shared::builder as shared_builder;
    pub use crate::shared::submit as submit_shared;
    pub use crate::wire::{ByteBuf, decode, encode_to_vec};

    /// `Self` is `T`: bounds a generated pool's methods to the worker's own type, generically
    /// (so that a worker that is not `Send` still compiles, without a pool).
    pub trait Is<T> {}
    impl<T> Is<T> for T {}

    /// Fails to compile, at the span of the type, unless `T` can be an argument.
    pub fn assert_arg<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    /// Fails to compile, at the span of the type, unless `T` can be a return value.
    pub fn assert_return<T: serde::Serialize + serde::de::DeserializeOwned>() {}
}
