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
/// calls; [`Recycle::NEVER`] turns recycling off. Limits may be added later, so a `Recycle` is
/// built with its constructors and builder methods, not with a literal:
///
/// ```
/// use forkworker_core::Recycle;
/// use std::time::Duration;
///
/// let r = Recycle::after_calls(1000)
///     .and_after(Duration::from_secs(600))
///     .with_jitter(0.0);
/// assert_eq!((r.max_calls, r.max_age, r.jitter), (Some(1000), Some(Duration::from_secs(600)), 0.0));
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
}

impl Recycle {
    /// Workers are never retired.
    pub const NEVER: Recycle = Recycle {
        max_calls: None,
        max_age: None,
        jitter: 0.0,
    };

    /// Retire after `calls` calls (with the default jitter of 1/6, so between 5/6 of it
    /// and all of it).
    pub fn after_calls(calls: u64) -> Recycle {
        Recycle {
            max_calls: Some(calls.max(1)),
            max_age: None,
            jitter: 1.0 / 6.0,
        }
    }

    /// Retire once `age` old (with the default jitter of 1/6).
    pub fn after(age: Duration) -> Recycle {
        Recycle {
            max_calls: None,
            max_age: Some(age),
            jitter: 1.0 / 6.0,
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
        }
    }
}
