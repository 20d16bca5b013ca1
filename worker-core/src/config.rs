//! The settings of a pool, set through the builder methods of [`crate::Mediator`].

use std::time::Duration;

/// When worker processes are forked.
///
/// The default is [`ForkStrategy::Mixed`]: nothing is forked until the first call, so an
/// unused mediator costs nothing, and after it every worker exists, so no later call waits for
/// a fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForkStrategy {
    /// Fork one more worker only when a call is waiting and every live worker is busy.
    /// Fewest processes; a burst of calls pays for forks.
    Lazy,
    /// Fork every worker at the first call; replace dead ones at once.
    #[default]
    Mixed,
    /// Fork every worker when the pool starts (at [`crate::Mediator::start`] or the first
    /// call) and keep the count up.
    Aggressive,
}

/// When a worker retires and is replaced by a fresh fork (the seed's `auto_restart`): after
/// serving `max_calls` calls, or once it is `max_age` old, whichever comes first.
///
/// Each worker draws its own limits, up to `jitter` (a fraction) below the configured ones,
/// so that workers forked together do not all retire together. A worker retires only between
/// calls, and its replacement is forked before it is asked to exit, so the pool is never short
/// for longer than a fork and no call is dropped.
///
/// The default retires workers after about 30 minutes (25 to 30), whatever their number of
/// calls; [`Recycle::NEVER`] turns recycling off.
///
/// [`Recycle::above_memory`] also retires a worker between calls once its resident memory
/// passes a threshold (Celery's `worker_max_memory_per_child`), for work that leaks or
/// fragments the heap. The parent reads it from `/proc/<pid>/statm`, at most every
/// [`Recycle::MEMORY_CHECK`] per worker, only when the rule is set, and counts the worker's
/// anonymous memory (resident pages minus file and shared-memory pages: the payload area it
/// shares with the parent does not count). The threshold is not jittered.
///
/// Limits may be added later, so a `Recycle` is built with its constructors and builder
/// methods, not with a literal:
///
/// ```
/// use forkworker_core::Recycle;
/// use std::time::Duration;
///
/// let r = Recycle::after_calls(1000)
///     .and_after(Duration::from_secs(600))
///     .with_jitter(0.0);
/// assert_eq!((r.max_calls, r.max_age, r.jitter), (Some(1000), Some(Duration::from_secs(600)), 0.0));
///
/// // Also retire a worker once it holds more than 512 MiB.
/// let r = Recycle::after_calls(1000).and_above_memory(512 << 20);
/// assert_eq!((r.max_calls, r.max_memory), (Some(1000), Some(512 << 20)));
/// assert_eq!(Recycle::above_memory(1 << 30).max_calls, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Recycle {
    /// Retire after this many calls.
    pub max_calls: Option<u64>,
    /// Retire once this old.
    pub max_age: Option<Duration>,
    /// How far below the limits each worker's own limits may be drawn, from 0.0 to 1.0.
    pub jitter: f64,
    /// Retire once the worker's resident anonymous memory passes this many bytes (checked
    /// between calls, at most every [`Recycle::MEMORY_CHECK`]).
    pub max_memory: Option<u64>,
}

impl Recycle {
    /// Workers are never retired.
    pub const NEVER: Recycle = Recycle {
        max_calls: None,
        max_age: None,
        jitter: 0.0,
        max_memory: None,
    };

    /// How often, at most, the parent reads an idle worker's memory for
    /// [`Recycle::above_memory`] (one read of `/proc/<pid>/statm`).
    pub const MEMORY_CHECK: Duration = Duration::from_millis(20);

    /// Retire after `calls` calls (with the default jitter of 1/6, so between 5/6 of it
    /// and all of it).
    pub fn after_calls(calls: u64) -> Recycle {
        Recycle {
            max_calls: Some(calls.max(1)),
            max_age: None,
            jitter: 1.0 / 6.0,
            max_memory: None,
        }
    }

    /// Retire once `age` old (with the default jitter of 1/6).
    pub fn after(age: Duration) -> Recycle {
        Recycle {
            max_calls: None,
            max_age: Some(age),
            jitter: 1.0 / 6.0,
            max_memory: None,
        }
    }

    /// Retire a worker, between calls, once its resident anonymous memory passes `bytes`
    /// (see the type's documentation); no other limit.
    pub fn above_memory(bytes: u64) -> Recycle {
        Recycle {
            max_memory: Some(bytes),
            ..Recycle::NEVER
        }
    }

    /// These limits, and also retire once the worker's resident anonymous memory passes
    /// `bytes`.
    pub fn and_above_memory(self, bytes: u64) -> Recycle {
        Recycle {
            max_memory: Some(bytes),
            ..self
        }
    }

    /// These limits, and also retire after `calls` calls.
    pub fn and_after_calls(self, calls: u64) -> Recycle {
        Recycle {
            max_calls: Some(calls.max(1)),
            ..self
        }
    }

    /// These limits, and also retire once `age` old.
    pub fn and_after(self, age: Duration) -> Recycle {
        Recycle {
            max_age: Some(age),
            ..self
        }
    }

    /// These limits with each worker's own drawn up to `jitter` (a fraction, clamped to 0.0
    /// to 1.0) below them; 0.0 makes every worker retire exactly at the limits.
    pub fn with_jitter(self, jitter: f64) -> Recycle {
        Recycle {
            jitter: jitter.clamp(0.0, 1.0),
            ..self
        }
    }
}

impl Default for Recycle {
    fn default() -> Self {
        Recycle::after(Duration::from_secs(30 * 60))
    }
}

/// All the settings of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) malloc: usize,
    pub(crate) strategy: ForkStrategy,
    pub(crate) grace: Duration,
    pub(crate) recycle: Recycle,
    /// Descriptors the workers inherit on purpose (`Mediator::inherit_fd`).
    pub(crate) inherit_fds: Vec<std::os::fd::RawFd>,
    /// The application name of a persistent mediator's segment.
    pub(crate) persist: Option<String>,
    /// Whether to recover the calls found in a persistent segment.
    pub(crate) recover: bool,
    /// The memory a worker may use, in bytes (see `limits`).
    pub(crate) memory_limit: Option<u64>,
    /// The CPU time one call may use.
    pub(crate) cpu_limit: Option<Duration>,
    /// How workers are confined after `setup`, if they are.
    pub(crate) sandbox: Option<crate::sandbox::Sandbox>,
    /// How long a worker may stay idle before it exits, above `min_workers`
    /// (`Mediator::idle_timeout`); `None`: workers never exit for idleness.
    pub(crate) idle_timeout: Option<Duration>,
    /// How many live workers an idle timeout leaves (`Mediator::min_workers`).
    pub(crate) min_workers: usize,
}

/// The default size of the payload area: 8 MiB.
pub(crate) const DEFAULT_MALLOC: usize = 8 << 20;
/// The default number of workers.
pub(crate) const DEFAULT_WORKERS: usize = 1;
/// The default grace period for running calls when a mediator shuts down.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: DEFAULT_WORKERS,
            timeout: None,
            malloc: DEFAULT_MALLOC,
            strategy: ForkStrategy::default(),
            grace: DEFAULT_GRACE,
            recycle: Recycle::default(),
            inherit_fds: Vec::new(),
            persist: None,
            recover: false,
            memory_limit: None,
            cpu_limit: None,
            sandbox: None,
            idle_timeout: None,
            min_workers: 0,
        }
    }
}
