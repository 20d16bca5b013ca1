//! The daemon host: an application's event loop with its worker pools, signals, runtime
//! statistics, single instance and recovery (the seed's `Core_Daemon`).
//!
//! The daemon owns the mediators and the application's state side by side, so a callback can
//! have `&mut` access to both: the state, and every *other* mediator (a mediator's own calls
//! are retried with [`Call::retry`]).
//!
//! ```ignore
//! struct App { found: u64 }
//!
//! impl Application for App {
//!     fn execute(&mut self, workers: &mut Workers<Self>, ctl: &mut Control) {
//!         if ctl.iteration() % 10 == 0 {
//!             workers.get(self.factors).call(rand_number()).ok();
//!         }
//!     }
//! }
//!
//! let mut daemon = Daemon::new("PrimeNumbers", App { found: 0 });
//! let primes = daemon.add(PrimesMediator::new("PrimeNumbers", Primes::new()));
//! let factors = daemon.add(FnMediator::new("GetFactors", factors));
//! daemon.on_return(factors, move |app, workers, call, log| {
//!     if let Some(Ok(found)) = call.return_value() {
//!         workers.get(primes).primes_among(&found).ok();
//!     }
//! });
//! daemon.on_timeout(factors, |_, _, call, _| if call.retries() < 3 { call.retry() });
//! daemon.run()?;
//! ```
//!
//! | signal | what the daemon does (in its loop; the handler only sets a flag) |
//! |---|---|
//! | SIGINT, SIGTERM | graceful stop: no new call starts, running calls may finish until their timeout, queued ones stay in shared memory for the next run (with recovery); exit 0 |
//! | SIGHUP | graceful restart: as above, then the program re-executes itself with `--recover-workers` |
//! | SIGUSR1 | writes every pool's statistics table to the log |
//! | SIGCONT | wakes the loop |

use std::any::Any;
use std::io;
use std::ops::DerefMut;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::call::{Call, Log};
use crate::callbacks::{Callbacks, On};
use crate::drive::{Drive, sleep_on};
use crate::error::StartError;
use crate::id::{Id, PoolOf};
use crate::instance::{InstanceError, InstanceLock, PidFile};
use crate::mediator::{ExternalHandler, Mediator};
use crate::signals::{SignalEvents, Signals};
use crate::task::Tasks;
use crate::this_worker;
use crate::worker::Worker;

/// The flag that turns recovery on, as the seed's `--recoverworkers`.
pub const RECOVER_FLAG: &str = "--recover-workers";

/// Any error, boxed: what [`Application::setup`] may fail with, so that `?` works on the
/// application's own errors (and on a [`crate::CallError`], or a `String` turned `into()` one).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An application run by a [`Daemon`].
pub trait Application: Sized + 'static {
    /// Runs once, before the loop (and before the pools start). An error ends
    /// [`Daemon::run`] with [`DaemonError::Setup`].
    fn setup(&mut self, _workers: &mut Workers<Self>, _ctl: &mut Control) -> Result<(), BoxError> {
        Ok(())
    }

    /// Runs every loop interval (or, with an interval of zero, after every wake-up), after
    /// every pool was polled and its callbacks ran.
    fn execute(&mut self, workers: &mut Workers<Self>, ctl: &mut Control);

    /// Runs once when the loop ends, before the pools stop.
    fn teardown(&mut self, _workers: &mut Workers<Self>, _ctl: &mut Control) {}
}

/// The loop's state, handed to the application.
#[derive(Debug)]
pub struct Control {
    iteration: u64,
    started: Instant,
    stop: Option<Stop>,
    signals: SignalEvents,
}

/// Why [`Daemon::run`] could not run, or could not restart.
///
/// A second instance is told apart from other failures by matching, not by reading a
/// message:
///
/// ```
/// use forkworker_core::daemon::{Application, Control, Daemon, DaemonError, Workers};
/// use forkworker_core::instance::{InstanceError, InstanceLock};
///
/// struct App;
/// impl Application for App {
///     fn execute(&mut self, _: &mut Workers<Self>, ctl: &mut Control) {
///         ctl.stop();
///     }
/// }
///
/// // The lock file goes in this user's private runtime directory (unless `lock_dir` is set).
/// let dir = forkworker_core::instance::default_dir()?;
/// // Another instance holds the lock (here, this very process, through another open).
/// let other = InstanceLock::acquire(dir.join("DocDaemon.lock"))?;
/// let daemon = Daemon::new("DocDaemon", App);
/// match daemon.run() {
///     Err(DaemonError::Instance(InstanceError::Held { pid, .. })) => {
///         assert_eq!(pid, Some(std::process::id() as i32));
///         eprintln!("already running as pid {pid:?}");
///     }
///     other => panic!("expected Held, got {other:?}"),
/// }
/// # drop(other);
/// # std::fs::remove_file(dir.join("DocDaemon.lock"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another instance holds the lock ([`InstanceError::Held`]), or the lock or pid file
    /// cannot be used.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// [`Application::setup`] failed; the pools were not started.
    #[error("setup failed: {0}")]
    Setup(#[source] BoxError),
    /// A pool could not start.
    #[error("pool {alias}: {source}")]
    Start {
        /// The pool's alias.
        alias: String,
        /// Why.
        #[source]
        source: StartError,
    },
    /// The loop stopped for a restart, but the program could not be executed again.
    #[error("cannot restart: {0}")]
    Restart(#[source] io::Error),
}

/// How a daemon's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stopped (SIGINT, SIGTERM, or [`Control::stop`]).
    Shutdown,
    /// Restarting (SIGHUP, or [`Control::restart`]): [`Daemon::run`] re-executes the program
    /// with recovery on, and returns this only if that fails.
    Restart,
}

impl Control {
    /// How many times `execute` ran before this one.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Time since the loop started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The signals that arrived since the previous `execute` (the daemon has already acted
    /// on them: logged statistics for SIGUSR1; SIGCONT only wakes the loop, for the
    /// application to act on).
    pub fn signals(&self) -> SignalEvents {
        self.signals
    }

    /// Ends the loop gracefully after this iteration.
    pub fn stop(&mut self) {
        self.stop = Some(Stop::Shutdown);
    }

    /// Ends the loop gracefully and restarts the program with recovery on.
    pub fn restart(&mut self) {
        self.stop = Some(Stop::Restart);
    }
}

/// Typed access to a pool added to a [`Daemon`]; copy it into callbacks. An
/// [`Id`]: a number with a kind, cheap to copy.
pub type WorkerKey<M> = Id<PoolOf<M>>;

/// A daemon callback: the application, the other pools, the finished call, a logger.
type DaemonHandler<A, W> = Box<dyn FnMut(&mut A, &mut Workers<A>, &Call<'_, W>, Log<'_>)>;

/// What the daemon needs of a pool, whatever its worker type.
trait Registered<A> {
    fn mediator_any(&mut self) -> &mut dyn Any;
    fn entry_any(&mut self) -> &mut dyn Any;
    fn drive(&mut self) -> &mut dyn Drive;
    fn poll(&mut self, app: &mut A, workers: &mut Workers<A>) -> usize;
    fn suspend(&mut self, app: &mut A, workers: &mut Workers<A>) -> usize;
}

struct Entry<A, M, W: Worker> {
    mediator: M,
    callbacks: Callbacks<DaemonHandler<A, W>>,
}

impl<A, M, W> Registered<A> for Entry<A, M, W>
where
    A: 'static,
    M: DerefMut<Target = Mediator<W>> + 'static,
    W: Worker,
{
    fn mediator_any(&mut self) -> &mut dyn Any {
        &mut self.mediator
    }

    fn entry_any(&mut self) -> &mut dyn Any {
        self
    }

    fn drive(&mut self) -> &mut dyn Drive {
        &mut *self.mediator
    }

    fn poll(&mut self, app: &mut A, workers: &mut Workers<A>) -> usize {
        self.with_handler(app, workers, |mediator, handler| {
            mediator.poll_with(handler)
        })
    }

    fn suspend(&mut self, app: &mut A, workers: &mut Workers<A>) -> usize {
        self.with_handler(app, workers, |mediator, handler| {
            mediator.suspend_with(Some(handler))
        })
    }
}

impl<A, M, W> Entry<A, M, W>
where
    M: DerefMut<Target = Mediator<W>>,
    W: Worker,
{
    /// Runs `f` on the mediator with a handler that hands finished calls to this pool's
    /// daemon callbacks, with the application and the other pools.
    fn with_handler<T>(
        &mut self,
        app: &mut A,
        workers: &mut Workers<A>,
        f: impl FnOnce(&mut Mediator<W>, &mut ExternalHandler<'_, W>) -> T,
    ) -> T {
        let Entry {
            mediator,
            callbacks,
        } = self;
        let mut handler = |call: &Call<'_, W>, log: Log<'_>| match (
            callbacks.for_status(call.status()),
            call.error(),
        ) {
            (Some(callback), _) => callback(app, workers, call, log),
            (None, Some(error)) => log.warn(format_args!("call {}: {error}", call.id())),
            (None, None) => {}
        };
        f(mediator, &mut handler)
    }
}

/// The pools of a daemon, reachable from the application and from callbacks by their
/// [`WorkerKey`].
pub struct Workers<A> {
    entries: Vec<Option<Box<dyn Registered<A>>>>,
    tasks: Tasks,
}

impl<A: 'static> Workers<A> {
    /// The pool of `key`, or `None` if it is the one whose callback is running (retry its
    /// calls with [`Call::retry`]).
    pub fn try_get<M: 'static>(&mut self, key: WorkerKey<M>) -> Option<&mut M> {
        self.entries
            .get_mut(key.raw() as usize)?
            .as_mut()?
            .mediator_any()
            .downcast_mut::<M>()
    }

    /// The pool of `key`.
    ///
    /// # Panics
    /// Inside a callback of that very pool, which is busy delivering the call: use
    /// [`Workers::try_get`] or [`Call::retry`] there.
    pub fn get<M: 'static>(&mut self, key: WorkerKey<M>) -> &mut M {
        self.try_get(key)
            .expect("a pool cannot be reached from its own callback; use call.retry() or try_get")
    }

    /// The daemon's ad-hoc background processes (the seed's Task API): each runs a closure
    /// once in a forked process; the loop polls them and sleeps on them with the pools.
    pub fn tasks(&mut self) -> &mut Tasks {
        &mut self.tasks
    }

    fn drives(&mut self) -> Vec<&mut dyn Drive> {
        self.entries
            .iter_mut()
            .flatten()
            .map(|e| e.drive())
            .collect()
    }
}

/// An application's event loop: see the module documentation.
pub struct Daemon<A: Application> {
    name: String,
    app: A,
    workers: Workers<A>,
    loop_interval: Duration,
    recover: bool,
    pid_file: Option<PathBuf>,
    /// `None`: [`crate::instance::default_dir`].
    lock_dir: Option<PathBuf>,
}

impl<A: Application> Daemon<A> {
    /// A daemon named `name` (its pools' shared memory, lock file and log lines are named
    /// after it) running `app`. Recovery is on if the program's arguments contain
    /// [`RECOVER_FLAG`]. The loop interval is 1 s.
    pub fn new(name: impl Into<String>, app: A) -> Self {
        Daemon {
            name: name.into(),
            app,
            workers: Workers {
                entries: Vec::new(),
                tasks: Tasks::new("tasks"),
            },
            loop_interval: Duration::from_secs(1),
            recover: std::env::args().any(|a| a == RECOVER_FLAG),
            pid_file: None,
            lock_dir: None,
        }
    }

    /// Sets how often `execute` runs (zero: after every wake-up, as fast as events arrive).
    pub fn loop_interval(&mut self, interval: Duration) -> &mut Self {
        self.loop_interval = interval;
        self
    }

    /// Turns recovery of the calls an earlier run left on or off (see
    /// [`Mediator::recover`]).
    pub fn recover_workers(&mut self, recover: bool) -> &mut Self {
        self.recover = recover;
        self
    }

    /// Writes the daemon's pid to `path` while it runs.
    pub fn pid_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Where the single-instance lock file `<name>.lock` goes (default:
    /// [`crate::instance::default_dir`], a directory private to this user). The directory
    /// must be this user's or root's and not writable by others unless sticky (as `/tmp`).
    pub fn lock_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.lock_dir = Some(dir.into());
        self
    }

    /// The application.
    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }

    /// Adds a pool; it becomes persistent under the daemon's name, so its calls can be
    /// recovered after a restart.
    pub fn add<M, W>(&mut self, mut mediator: M) -> WorkerKey<M>
    where
        M: DerefMut<Target = Mediator<W>> + 'static,
        W: Worker,
    {
        mediator.persist(self.name.clone());
        self.workers.entries.push(Some(Box::new(Entry::<A, M, W> {
            mediator,
            callbacks: Callbacks::default(),
        })));
        WorkerKey::new((self.workers.entries.len() - 1) as u64)
    }

    /// Sets `key`'s callback for `on`.
    fn set_handler<M, W>(
        &mut self,
        key: WorkerKey<M>,
        on: On,
        callback: DaemonHandler<A, W>,
    ) -> &mut Self
    where
        M: DerefMut<Target = Mediator<W>> + 'static,
        W: Worker,
    {
        let entry = self.workers.entries[key.raw() as usize]
            .as_mut()
            .and_then(|e| e.entry_any().downcast_mut::<Entry<A, M, W>>())
            .expect("a WorkerKey of this daemon");
        entry.callbacks.set(on, callback);
        self
    }

    /// Sets the callback for `key`'s calls that returned: it gets the application, the other
    /// pools, the call and a logger.
    pub fn on_return<M, W>(
        &mut self,
        key: WorkerKey<M>,
        callback: impl FnMut(&mut A, &mut Workers<A>, &Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self
    where
        M: DerefMut<Target = Mediator<W>> + 'static,
        W: Worker,
    {
        self.set_handler(key, On::Return, Box::new(callback))
    }

    /// Sets the callback for `key`'s calls that timed out.
    pub fn on_timeout<M, W>(
        &mut self,
        key: WorkerKey<M>,
        callback: impl FnMut(&mut A, &mut Workers<A>, &Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self
    where
        M: DerefMut<Target = Mediator<W>> + 'static,
        W: Worker,
    {
        self.set_handler(key, On::Timeout, Box::new(callback))
    }

    /// Sets the callback for `key`'s calls that failed otherwise (crash, panic, ...).
    pub fn on_error<M, W>(
        &mut self,
        key: WorkerKey<M>,
        callback: impl FnMut(&mut A, &mut Workers<A>, &Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self
    where
        M: DerefMut<Target = Mediator<W>> + 'static,
        W: Worker,
    {
        self.set_handler(key, On::Error, Box::new(callback))
    }

    /// Typed access to a pool before the loop runs.
    pub fn worker<M: 'static>(&mut self, key: WorkerKey<M>) -> &mut M {
        self.workers.get(key)
    }

    /// Runs the loop until a signal or the application stops it; see the module docs. On a
    /// restart it re-executes the program with [`RECOVER_FLAG`] and does not return unless
    /// that fails.
    ///
    /// # Errors
    /// [`DaemonError::Instance`] if another instance runs ([`InstanceError::Held`], with its
    /// pid) or the lock or pid file cannot be used; [`DaemonError::Setup`] with the
    /// application's error; [`DaemonError::Start`] if a pool cannot start;
    /// [`DaemonError::Signals`]; [`DaemonError::Restart`] if a restart cannot execute the
    /// program again. See [`DaemonError`] for an example.
    pub fn run(mut self) -> Result<Stop, DaemonError> {
        let name = self.name.clone();
        let lock_dir = match &self.lock_dir {
            Some(dir) => dir.clone(),
            None => crate::instance::default_dir()?,
        };
        let lock_path = lock_dir.join(format!("{name}.lock"));
        let _lock = InstanceLock::acquire(&lock_path)?;
        let _pid = match &self.pid_file {
            Some(p) => Some(PidFile::create(p)?),
            None => None,
        };
        let signals = Signals::install().map_err(DaemonError::Signals)?;
        // SAFETY: `self.app` stays where it is for the whole loop, during which workers fork.
        unsafe { this_worker::set_daemon_state(&self.app) };
        let recover = self.recover;
        for entry in self.workers.entries.iter_mut().flatten() {
            entry.drive().set_recover(recover);
        }
        let mut ctl = Control {
            iteration: 0,
            started: Instant::now(),
            stop: None,
            signals: SignalEvents::default(),
        };
        log::info!(target: &name, "daemon {name} started (pid {}, recovery {})", std::process::id(), if recover { "on" } else { "off" });
        self.app
            .setup(&mut self.workers, &mut ctl)
            .map_err(DaemonError::Setup)?;
        for entry in self.workers.entries.iter_mut().flatten() {
            let drive = entry.drive();
            drive.start_pool().map_err(|source| DaemonError::Start {
                alias: drive.alias().to_owned(),
                source,
            })?;
        }
        let mut next_execute = Instant::now();
        let stop = loop {
            let events = signals.take();
            ctl.signals.stats |= events.stats;
            ctl.signals.wake |= events.wake;
            if events.stats {
                for d in self.workers.drives() {
                    log::info!(target: &name, "\n{}", d.stats());
                }
            }
            if events.shutdown {
                break Stop::Shutdown;
            }
            if events.restart {
                break Stop::Restart;
            }
            self.poll_all();
            let now = Instant::now();
            if now >= next_execute || self.loop_interval.is_zero() {
                self.app.execute(&mut self.workers, &mut ctl);
                ctl.iteration += 1;
                ctl.signals = SignalEvents::default();
                next_execute = (next_execute + self.loop_interval).max(now);
                self.poll_all();
            }
            if let Some(stop) = ctl.stop {
                break stop;
            }
            let until = (!self.loop_interval.is_zero())
                .then_some(next_execute)
                .into_iter()
                .chain(self.workers.tasks.next_deadline())
                .min();
            let Workers { entries, tasks } = &mut self.workers;
            let mut extra = tasks.wake_fds();
            extra.push(signals.wake_fd());
            let mut drives: Vec<&mut dyn Drive> =
                entries.iter_mut().flatten().map(|e| e.drive()).collect();
            sleep_on(&mut drives, &extra, until);
        };
        log::info!(target: &name, "daemon {name} stopping ({stop:?})");
        self.app.teardown(&mut self.workers, &mut ctl);
        let mut kept = 0;
        for i in 0..self.workers.entries.len() {
            if let Some(mut entry) = self.workers.entries[i].take() {
                kept += entry.suspend(&mut self.app, &mut self.workers);
                self.workers.entries[i] = Some(entry);
            }
        }
        log::info!(target: &name, "daemon {name} stopped; {kept} calls kept for the next run");
        drop(self);
        drop(signals);
        if stop == Stop::Restart {
            return Err(DaemonError::Restart(reexec_with_recovery()));
        }
        Ok(stop)
    }

    /// Polls every pool, each with the application and the other pools at hand, and the
    /// tasks.
    fn poll_all(&mut self) {
        self.workers.tasks.poll();
        for i in 0..self.workers.entries.len() {
            let Some(mut entry) = self.workers.entries[i].take() else {
                continue;
            };
            entry.poll(&mut self.app, &mut self.workers);
            self.workers.entries[i] = Some(entry);
        }
    }
}

/// Re-executes this program with [`RECOVER_FLAG`]; returns only on failure, with the error.
fn reexec_with_recovery() -> io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == RECOVER_FLAG) {
        args.push(RECOVER_FLAG.to_owned());
    }
    std::process::Command::new(exe).args(args).exec()
}
