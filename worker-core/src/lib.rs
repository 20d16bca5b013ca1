//! The runtime of forkworker. Users depend on the `forkworker` facade, not on this crate.
//!
//! # Map of the crate
//!
//! A call goes one way through these modules:
//!
//! | step | module |
//! |---|---|
//! | the user's type, as the macro describes it | [`worker`] |
//! | the typed proxy, the queue, timeouts, crashes, retries, callbacks, `wait` | [`mediator`] |
//! | the settings: strategy, recycling | [`config`] |
//! | encoding straight into shared memory | [`wire`] |
//! | the worker processes of a mediator: spawn, deaths, kills, retiring, what the parent sleeps on | `pool` |
//! | the shared-memory region and its layout | `shm` |
//! | payload blocks inside the region | `arena` |
//! | one request/response channel per worker: its two cache lines, checksums | `channel` |
//! | the sleep/wake protocol: spinning, the sleep flags, futex and eventfd wake-ups | `wake` |
//! | time on the hot path: the tick counter, calibrated against CLOCK_MONOTONIC | `clock` |
//! | forking, watching (pidfd), killing and reaping one process | `process` |
//! | forking workers from a single-threaded server, for threaded programs | `fork_server` |
//! | the loop a worker process runs after the fork | `worker_loop` |
//! | the call journal that survives a crash, for recovery | `journal` |
//! | a call's id, status, timings; the view handed to callbacks | [`call`] |
//! | per-method timings, error counts, memory | [`stats`] |
//! | what a method running in a worker can ask: log, error, fatal_error, daemon | [`this_worker`] |
//! | what can go wrong | [`error`] |
//!
//! Around the pools:
//!
//! | concept | module |
//! |---|---|
//! | a pool made from a closure (the seed's function workers) | [`closure`] |
//! | one loop sleeping on several pools | [`drive`] |
//! | the daemon host: the application's loop, callbacks with `&mut` state, signals | [`daemon`] |
//! | ad-hoc background processes (the seed's Task API) | [`task`] |
//! | signals as flags and a wake-up descriptor | [`signals`] |
//! | single instance lock and pid file | [`instance`] |
#![deny(missing_docs)]

mod arena;
pub mod call;
mod channel;
mod clock;
pub mod closure;
pub mod config;
pub mod daemon;
pub mod drive;
pub mod error;
mod fork_server;
pub mod instance;
mod journal;
pub mod mediator;
mod pool;
mod process;
mod shm;
pub mod signals;
pub mod stats;
pub mod task;
pub mod this_worker;
mod wake;
pub mod wire;
pub mod worker;
mod worker_loop;

pub use call::{Call, CallId, CallStatus, ExitCause, Log, Timings};
pub use closure::FnMediator;
pub use config::{ForkStrategy, Recycle};
pub use daemon::{Application, Control, Daemon, WorkerKey, Workers};
pub use drive::{Drive, sleep_on};
pub use error::{CallError, ErrorCounts, WireError};
pub use mediator::Mediator;
pub use stats::{MethodStats, Stats, Summary};
pub use task::{TaskError, TaskId, Tasks};
pub use wire::ReturnSlot;
pub use worker::Worker;

/// Items the generated code calls. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::mediator::submit;
    pub use crate::wire::decode;

    /// Fails to compile, at the span of the type, unless `T` can be an argument.
    pub fn assert_arg<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    /// Fails to compile, at the span of the type, unless `T` can be a return value.
    pub fn assert_return<T: serde::Serialize + serde::de::DeserializeOwned>() {}
}
