//! The mediator: the seed's face on one pool of workers, driven by its caller.
//!
//! A generated proxy method calls [`submit`], which hands the encoded arguments to the engine
//! (see `engine`); [`Mediator::poll`] and [`Mediator::wait`] drive the engine, which hands
//! finished calls back to the mediator's callbacks.

use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::call::{Call, CallId, CallStatus, Log, Timings};
use crate::callbacks::{Callbacks, On};
use crate::config::Config;
use crate::config::{ForkStrategy, Recycle};
use crate::drive::{Drive, Sleep, Token};
use crate::engine::{Configured, Engine, Sink};
use crate::error::{CallError, ErrorCounts, StartError, WireError};
use crate::handle::{Dropped, Handle};
use crate::sandbox::Sandbox;
use crate::stats::Stats;
use crate::worker::Worker;

pub use crate::engine::MAX_REQUEUES;

type Handler<W> = Box<dyn FnMut(&Call<'_, W>, Log<'_>)>;

/// A callback lent for one [`Mediator::poll_with`].
pub type ExternalHandler<'h, W> = dyn FnMut(&Call<'_, W>, Log<'_>) + 'h;

/// The parent's handle on a pool of worker processes running the methods of `W`.
///
/// `#[forkworker::worker]` generates a `{Type}Mediator` that wraps a `Mediator<Type>` and
/// adds one typed proxy method per public method; every method below is reachable from it.
///
/// # Ownership
/// Dropping the mediator (or calling [`Mediator::shutdown`]) cancels queued calls, lets running
/// calls finish for up to the grace period ([`Mediator::grace`], 5 s by default) and kills the
/// workers still busy after it, asks idle workers to run `teardown` and exit (killing any that
/// take more than a second), reaps every worker and removes the shared-memory segment.
///
/// # Results
/// A proxy method returns a [`Handle`] on its call. Callbacks observe a call, they do not
/// consume it: a finished call goes to its callback if one is installed for its outcome
/// (`on_return` for a return, `on_timeout` for a timeout, `on_error` for any other failure),
/// and then its result is kept for as long as its handle lives, until [`Mediator::wait`]
/// takes it (after the callback ran). A handle dropped unwaited lets its call run to its end,
/// fire its callbacks and be released. Once a call is final its result is in this process's
/// own memory, not in the shared memory, so results nobody took yet never stand in the way of
/// new calls. [`Mediator::status`] and [`Mediator::timings`] keep answering for released
/// calls, the last [`Mediator::status_history`] of them.
///
/// # A callback that panics
/// A panic in a callback (the mediator's own, or a daemon's) does not unwind into the
/// caller of `poll` or `wait`: it is caught, logged at error level with the call's id and the
/// callback's name (`call 7: its on_return callback panicked: ...`), and counted as a
/// catch-all error ([`Mediator::errors`]); the call counts as delivered, as if the callback
/// had returned (a [`Call::retry`] asked for before the panic is dropped), and the mediator
/// goes on with the next call. Its result goes where it goes after a callback that returned:
/// a `wait` waiting for that very call still takes it. The panic hook runs first, as for any
/// panic (by default it prints the message to stderr); built with `panic = "abort"`, the
/// program aborts there. What the callback shares with other code (a `RefCell`, a counter)
/// is as the panic left it.
///
/// # Delivery guarantee
/// Every call a proxy accepted ends exactly once in a final status, its callback fires once,
/// and its handle, if still held, gets its result, within one run of the program. Its method runs at most
/// once per run of the call: a call is requeued behind the caller's back only when its worker
/// died before starting it (at most [`MAX_REQUEUES`] times); a call that was running when its
/// worker died ends [`CallStatus::Crashed`] and is re-run only if you [`Call::retry`] it.
/// Across a crash of the parent, a persistent mediator ([`Mediator::persist`]) recovers every
/// call that had not been delivered (to a callback, or taken by its handle): at least once,
/// since a call whose callback ran just before the parent died is delivered again.
///
/// A mediator is not `Send`; create and drive it on a thread that lives as long as it does
/// (the main thread). Its workers and their descendants go when the process dies, even of
/// SIGKILL: the fork server learns of it from its socket's end of file and from its
/// parent-death signal (which Linux sends when the thread that started the pool exits; the
/// server then checks that its parent really changed).
pub struct Mediator<W: Worker> {
    stage: Stage<W>,
    callbacks: Callbacks<Handler<W>>,
    /// The calls whose handles were dropped unwaited, released at the next poll, wait or call.
    dropped: Rc<Dropped>,
    _not_send: PhantomData<*const ()>,
}

/// Whether the mediator's pool runs.
// One per mediator, and the running engine is used on every call: inline, not boxed.
#[allow(clippy::large_enum_variant)]
enum Stage<W: Worker> {
    /// Not started, or stopped: settings can change, nothing is forked or shared.
    Configured(Configured<W>),
    /// Started: the engine drives a pool.
    Running(Engine<W>),
    /// Only while moving between the two, through code that runs nothing of the user's.
    Moving,
}

const MOVING: &str = "a mediator is between stages only inside start and stop";

/// Where the engine hands the mediator's finished calls: its callbacks, then the handler
/// lent for one poll, if any.
struct Lent<'a, 'h, W: Worker> {
    own: &'a mut Callbacks<Handler<W>>,
    external: Option<&'a mut ExternalHandler<'h, W>>,
}

impl<W: Worker> Sink<W> for Lent<'_, '_, W> {
    #[inline]
    fn takes_returns(&self) -> bool {
        self.own.has(On::Return)
    }

    fn deliver(&mut self, call: &Call<'_, W>, log: Log<'_>) -> bool {
        match self.own.for_status(call.status()) {
            Some(handler) => handler(call, log),
            None => match self.external.as_deref_mut() {
                Some(handler) => handler(call, log),
                None => return false,
            },
        }
        true
    }
}

/// Queues a call of method `method` with encoded-from-borrow `args` and returns its handle.
/// Called by generated proxy methods; `decode` turns the return bytes into `R`.
#[doc(hidden)]
pub fn submit<W: Worker, A: Serialize + ?Sized, R: 'static>(
    mediator: &mut Mediator<W>,
    method: u32,
    args: &A,
    decode: fn(&[u8]) -> Result<R, WireError>,
) -> Result<Handle<R>, CallError> {
    mediator.release_dropped();
    let (engine, mut sink) = mediator.started()?;
    engine.base_mut().decoders.set(method, decode);
    let id = engine.submit_encoded(method, args, &mut sink)?;
    engine.hold(id);
    Ok(Handle::new(CallId::new(id), &mediator.dropped))
}

impl<W: Worker> Mediator<W> {
    /// A mediator for `value` under the name `alias` (used in log lines and in the name of the
    /// shared-memory segment). Nothing is forked and no memory is shared until
    /// [`Mediator::start`] or the first call.
    pub fn new(alias: impl Into<String>, value: W) -> Self {
        Mediator {
            stage: Stage::Configured(Configured::new(alias.into(), value)),
            callbacks: Callbacks::default(),
            dropped: Dropped::new(),
            _not_send: PhantomData,
        }
    }

    /// Releases the calls whose handles were dropped unwaited (see [`Handle`]): those whose
    /// callbacks ran go now, the others after their callbacks.
    #[inline]
    fn release_dropped(&mut self) {
        if let Stage::Running(engine) = &mut self.stage {
            self.dropped.drain(|id| engine.drop_handle(id));
        }
    }

    /// What the mediator keeps whether its pool runs or not.
    fn base(&self) -> &Configured<W> {
        match &self.stage {
            Stage::Configured(base) => base,
            Stage::Running(engine) => engine.base(),
            Stage::Moving => unreachable!("{MOVING}"),
        }
    }

    fn base_mut(&mut self) -> &mut Configured<W> {
        match &mut self.stage {
            Stage::Configured(base) => base,
            Stage::Running(engine) => engine.base_mut(),
            Stage::Moving => unreachable!("{MOVING}"),
        }
    }

    /// The engine if the pool runs, and the sink for its finished calls: the callbacks, then
    /// `external`.
    fn running<'a, 'h>(
        &'a mut self,
        external: Option<&'a mut ExternalHandler<'h, W>>,
    ) -> Option<(&'a mut Engine<W>, Lent<'a, 'h, W>)> {
        match &mut self.stage {
            Stage::Running(engine) => Some((
                engine,
                Lent {
                    own: &mut self.callbacks,
                    external,
                },
            )),
            _ => None,
        }
    }

    /// The running engine and its sink, with the dropped handles' calls released first.
    fn driven<'a, 'h>(
        &'a mut self,
        external: Option<&'a mut ExternalHandler<'h, W>>,
    ) -> Option<(&'a mut Engine<W>, Lent<'a, 'h, W>)> {
        self.release_dropped();
        self.running(external)
    }

    /// The running engine, started now if it was not.
    fn started(&mut self) -> Result<(&mut Engine<W>, Lent<'_, 'static, W>), CallError> {
        if !matches!(self.stage, Stage::Running(_)) {
            self.start()?;
        }
        Ok(self.running(None).expect("started just above"))
    }

    /// Applies a setting that only takes effect when the pool starts; after it, warns and
    /// ignores it.
    fn before_start(&mut self, what: &str, set: impl FnOnce(&mut Config)) -> &mut Self {
        match &mut self.stage {
            Stage::Configured(base) => set(&mut base.config),
            _ => log::warn!(target: self.alias(), "{what}() after the pool started is ignored"),
        }
        self
    }

    /// Winds a running pool down with `wind` (shutdown or suspend), then stops it: the
    /// mediator is configured again. Returns what `wind` returned, if the pool ran.
    fn stop_with<T>(
        &mut self,
        external: Option<&mut ExternalHandler<'_, W>>,
        wind: impl FnOnce(&mut Engine<W>, &mut dyn Sink<W>) -> T,
    ) -> Option<T> {
        let (engine, mut sink) = self.driven(external)?;
        let out = wind(engine, &mut sink);
        if let Stage::Running(engine) = std::mem::replace(&mut self.stage, Stage::Moving) {
            self.stage = Stage::Configured(engine.stop());
        }
        Some(out)
    }

    /// The alias given to [`Mediator::new`].
    pub fn alias(&self) -> &str {
        &self.base().alias
    }

    /// Sets the number of worker processes (at least 1; default 1). After the pool started it
    /// can be lowered: the extra workers take no new call, and exit (running `teardown`) once
    /// their running calls are done, at the next `poll` or `wait`. It can be raised again up
    /// to the count it started with (workers are forked as the strategy says); a higher count
    /// is clamped with a warning, since the shared-memory layout is fixed at start.
    ///
    /// Calls go to idle workers, except tiny ones: a call of a method whose calls ran 5 µs or
    /// less on average waits (up to 100 µs) for a worker that runs another such call rather
    /// than wake another worker, which would only compete with the parent for the CPUs.
    pub fn workers(&mut self, count: usize) -> &mut Self {
        let mut count = count.max(1);
        if let Stage::Running(engine) = &self.stage
            && count > engine.size()
        {
            let size = engine.size();
            log::warn!(target: self.alias(),
                "workers({count}) after the pool started with {size}: keeping {size}; set workers() before the first call");
            count = size;
        }
        self.base_mut().config.workers = count;
        self
    }

    /// Sets the time a call may run in a worker before the worker is killed (SIGKILL), the call
    /// ends with [`CallStatus::Timeout`] and `on_timeout` fires. No timeout by default; always
    /// set a plausible one. Deadlines are enforced whenever the mediator is driven (`poll`,
    /// `wait`); a waiting mediator wakes for the nearest deadline, to within about a
    /// millisecond.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.base_mut().config.timeout = Some(timeout);
        self
    }

    /// Lets a worker that has been idle for `idle` exit (running `teardown`), as long as more
    /// than [`Mediator::min_workers`] workers are left (loky's `idle_timeout`): a pool that
    /// had a burst of work gives its processes back. Workers are forked again when calls come,
    /// as the strategy says: with [`ForkStrategy::Lazy`] one per call that finds every worker
    /// busy; with `Mixed` and `Aggressive`, every missing worker at the next call. A worker
    /// that dies meanwhile is replaced only up to the minimum. `None` (the default) turns it
    /// off: workers never exit for idleness.
    ///
    /// A worker's idle time counts from when the mediator first saw it idle, so it is checked
    /// whenever the mediator is driven (`poll`, `wait`, the daemon's loop, which wakes for it:
    /// see [`Drive::next_deadline`]). It can be changed while the pool runs.
    /// [`Mediator::pids`] and [`Stats::workers`] show the workers that are left.
    ///
    /// ```
    /// use forkworker_core::closure::FnMediator;
    /// use std::time::Duration;
    ///
    /// let mut double = FnMediator::new("Double", |n: u64| n * 2);
    /// double.workers(4).idle_timeout(Duration::from_millis(50)).min_workers(1);
    /// let id = double.call(21)?;
    /// assert_eq!(double.wait(id, Duration::from_secs(10))?, 42);
    /// // Idle workers exit while the mediator is driven; one stays.
    /// for _ in 0..500 {
    ///     if double.pids().len() == 1 {
    ///         break;
    ///     }
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     double.poll();
    /// }
    /// assert_eq!(double.pids().len(), 1);
    /// let id = double.call(1)?; // forked again
    /// assert_eq!(double.wait(id, Duration::from_secs(10))?, 2);
    /// # Ok::<(), forkworker_core::CallError>(())
    /// ```
    pub fn idle_timeout(&mut self, idle: impl Into<Option<Duration>>) -> &mut Self {
        self.base_mut().config.idle_timeout = idle.into();
        self
    }

    /// Sets how many workers [`Mediator::idle_timeout`] leaves alive (default 0: every idle
    /// worker may exit). The minimum counts live workers; it forks none by itself (the
    /// strategy does), and above [`Mediator::workers`] it keeps them all. It can be changed
    /// while the pool runs.
    pub fn min_workers(&mut self, count: usize) -> &mut Self {
        self.base_mut().config.min_workers = count;
        self
    }

    /// Sets the size in bytes of the memory for arguments and return values (default 8 MiB).
    /// It sizes two things: the parent's store, which holds at once the encoded arguments of
    /// every call queued or running (and a persistent mediator's returns not yet delivered:
    /// any other's finished results are in this process's memory); and each worker's own
    /// area, which holds the call the worker runs, its arguments and its return (so no call's
    /// arguments plus return may exceed it). A pool of `n` workers uses `n + 1` times this
    /// much memory. Takes effect when the pool starts; later calls are ignored with a warning.
    pub fn malloc(&mut self, bytes: usize) -> &mut Self {
        self.before_start("malloc", |c| c.malloc = bytes)
    }

    /// Sets when workers are forked; see [`ForkStrategy`] (default `Mixed`).
    pub fn strategy(&mut self, strategy: ForkStrategy) -> &mut Self {
        self.base_mut().config.strategy = strategy;
        self
    }

    /// Limits the memory each worker may use to `bytes` (default: no limit). A worker that
    /// passes it while running a call ends that call with [`CallError::MemoryLimit`] (status
    /// [`CallStatus::Crashed`]); it is replaced and the pool goes on. The limit counts what the
    /// worker allocates after its `setup` (every thread of it, thread stacks included).
    ///
    /// Enforced, in this order of preference, with a cgroup per worker (v2 `memory.max` under
    /// the program's own cgroup if it is delegated the memory controller; else v1
    /// `memory.limit_in_bytes`), where the kernel's OOM killer ends the worker and the group's
    /// counters say so; or, where no cgroup can be made, with `RLIMIT_DATA` set in the worker,
    /// where an allocation fails and the worker aborts with Rust's "memory allocation of N
    /// bytes failed", which is told from a plain crash by that line on its stderr.
    /// [`Stats::memory_limit`] says which mechanism is in force. The environment variable
    /// `FORKWORKER_MEMORY_LIMIT_MECHANISM` (`cgroup_v2`, `cgroup_v1`, `rlimit_data`) restricts
    /// the choice, for tests. Set before the pool starts.
    ///
    /// ```no_run
    /// # use forkworker_core::Mediator;
    /// # fn limit<W: forkworker_core::Worker>(m: &mut Mediator<W>) {
    /// m.memory_limit(256 << 20); // 256 MiB per worker
    /// # }
    /// ```
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.before_start("memory_limit", |c| c.memory_limit = Some(bytes))
    }

    /// Limits the CPU time a single call may use to `limit` (default: no limit): a call past it
    /// ends with [`CallError::CpuLimit`] (status [`CallStatus::Crashed`]) and its worker is
    /// replaced. It counts the CPU time of every thread of the worker while the method runs,
    /// not time spent waiting, so it complements [`Mediator::timeout`] (wall-clock time).
    ///
    /// Enforced by a timer on the worker's CPU clock (`CLOCK_PROCESS_CPUTIME_ID`), armed when a
    /// call starts and disarmed when it ends (two system calls per call, only with a limit),
    /// precise to the kernel's tick (a few milliseconds); when it fires the worker exits from
    /// its SIGXCPU handler. A method that installs its own SIGXCPU handler defeats it. Set
    /// before the pool starts.
    pub fn cpu_limit(&mut self, limit: Duration) -> &mut Self {
        self.before_start("cpu_limit", |c| c.cpu_limit = Some(limit))
    }

    /// Sets when workers retire and are replaced; see [`Recycle`] (default: after about 30
    /// minutes). Applies to workers forked afterwards.
    pub fn recycle(&mut self, recycle: Recycle) -> &mut Self {
        self.base_mut().config.recycle = recycle;
        self
    }

    /// Lets the workers inherit descriptor `fd` of this process, under the same number.
    ///
    /// Workers hold none of the program's files or sockets: every descriptor they would
    /// inherit, except stdin, stdout, stderr and those forkworker needs, is /dev/null in them
    /// (keeping its number, so that a library still holding it writes nowhere rather than into
    /// whatever reuses the number), and the first time that happens the mediator logs a warning
    /// naming them. Pass here a descriptor a worker needs (a socket it serves, a file it
    /// appends to); call it once per descriptor. The descriptor must be open when the pool
    /// starts ([`Mediator::start`] or the first call): workers are forked from a fork server
    /// forked then, so descriptors opened later never reach them. Set before the pool starts.
    ///
    /// ```ignore
    /// use std::os::fd::AsRawFd;
    /// let journal = std::fs::File::options().append(true).open("/var/log/parser.log")?;
    /// mediator.inherit_fd(journal.as_raw_fd());
    /// ```
    pub fn inherit_fd(&mut self, fd: std::os::fd::RawFd) -> &mut Self {
        self.before_start("inherit_fd", |c| c.inherit_fds.push(fd))
    }

    /// Makes the mediator persistent: its store (the journal, queued arguments, returns not yet
    /// delivered) is a file named after `app` and the alias, `<app>.<alias>.store` in the
    /// user's private runtime directory (`$XDG_RUNTIME_DIR/forkworker`, else
    /// `/tmp/forkworker-<uid>`: see `instance::default_dir`), mapped by the parent alone, and it
    /// is kept when the mediator is dropped with calls still queued or running, so that a
    /// restarted program finds them. See [`Mediator::recover`]. Set before the pool starts.
    pub fn persist(&mut self, app: impl Into<String>) -> &mut Self {
        let app = app.into();
        self.before_start("persist", |c| c.persist = Some(app))
    }

    /// With [`Mediator::persist`]: whether to complete, at start, the calls an earlier run
    /// left in the shared memory (the seed's `--recoverworkers`). Calls that were queued run
    /// as they were; calls that had been handed to a worker (running, or about to start) run
    /// again with `retries()` one higher; calls that
    /// returned but were not delivered go to `on_return`. Recovered calls are delivered to the
    /// callbacks (no `CallId` of them exists in the new program). Without recovery, what an
    /// earlier run left is removed at start, with a log line. A segment made with other
    /// `workers()` or `malloc()` is never misread: it is removed with a warning that says so.
    pub fn recover(&mut self, recover: bool) -> &mut Self {
        self.base_mut().config.recover = recover;
        self
    }

    /// Confines every worker after its `setup` runs, for work on hostile input: with
    /// [`Sandbox::strict`] a worker can no longer open files, create sockets, truncate a
    /// descriptor, exec, or signal or trace any process but itself (see [`crate::sandbox`]).
    /// Denied calls fail with `EPERM`; an attack on another process kills the worker and
    /// ends its call with [`CallError::Crashed`], whose cause
    /// ([`crate::ExitCause::Sandbox`]) names the system call. No sandbox by default. Set
    /// before the pool starts.
    ///
    /// ```
    /// use forkworker_core::{closure::FnMediator, Sandbox};
    ///
    /// let mut parse = FnMediator::new("Parse", |text: String| text.trim().parse::<u64>().ok());
    /// parse.sandbox(Sandbox::strict());
    /// let id = parse.call(" 42 ".to_owned())?;
    /// assert_eq!(parse.wait(id, std::time::Duration::from_secs(10))?, Some(42));
    /// # Ok::<(), forkworker_core::CallError>(())
    /// ```
    pub fn sandbox(&mut self, sandbox: Sandbox) -> &mut Self {
        self.before_start("sandbox", |c| c.sandbox = Some(sandbox))
    }

    /// Sets how long running calls may go on when the mediator shuts down (default 5 s).
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.base_mut().config.grace = grace;
        self
    }

    /// Sets the callback for calls that returned. It runs in the parent, when the mediator is
    /// driven, with the finished call and a logger tagged with the alias.
    pub fn on_return(&mut self, handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static) -> &mut Self {
        self.callbacks.set(On::Return, Box::new(handler));
        self
    }

    /// Sets the callback for calls that timed out (their worker was killed). [`Call::retry`]
    /// runs the call again.
    pub fn on_timeout(
        &mut self,
        handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self {
        self.callbacks.set(On::Timeout, Box::new(handler));
        self
    }

    /// Sets the callback for calls that failed otherwise: the worker crashed
    /// ([`CallStatus::Crashed`]), the method panicked ([`CallStatus::Panicked`]), the call
    /// could not be encoded, decoded or fit ([`CallStatus::Failed`]), or it was cancelled
    /// ([`CallStatus::Cancelled`]). [`Call::error`] says why; [`Call::retry`] runs it again.
    pub fn on_error(&mut self, handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static) -> &mut Self {
        self.callbacks.set(On::Error, Box::new(handler));
        self
    }

    /// The value the workers were forked from, for calls in this process: blocking, with no
    /// fork, no shared memory and no callbacks. Workers are copies of the value as it was when
    /// the pool started (the fork server was forked then): what is changed through it later
    /// reaches no worker.
    pub fn inline(&mut self) -> &mut W {
        &mut self.base_mut().value
    }

    /// Starts the pool now instead of at the first call: runs `check_environment`, creates the
    /// shared memory, starts the fork server (which every worker is forked from) and, with
    /// [`ForkStrategy::Aggressive`], forks every worker.
    ///
    /// # Errors
    /// [`StartError::Environment`] with the problems `check_environment` reported, or
    /// [`StartError::Pool`] if the shared memory, the eventfd or the fork server cannot be
    /// had. Nothing is left behind.
    pub fn start(&mut self) -> Result<(), StartError> {
        let base = match &self.stage {
            Stage::Running(_) => return Ok(()),
            Stage::Configured(base) => base,
            Stage::Moving => unreachable!("{MOVING}"),
        };
        base.check()?;
        let Stage::Configured(base) = std::mem::replace(&mut self.stage, Stage::Moving) else {
            unreachable!("configured just above")
        };
        match Engine::start(base) {
            Ok(engine) => {
                self.stage = Stage::Running(engine);
                Ok(())
            }
            Err(failed) => {
                let (base, error) = *failed;
                self.stage = Stage::Configured(base);
                Err(error)
            }
        }
    }

    /// True when a call made now would start at once: nothing is queued and a worker is idle
    /// (or one more may be forked).
    pub fn is_idle(&self) -> bool {
        match &self.stage {
            Stage::Running(engine) => engine.is_idle(),
            _ => true,
        }
    }

    /// The status of a call (take its id from [`Handle::id`]). A finished call keeps its
    /// final status while its handle lives, and after that while it is among the last
    /// [`Mediator::status_history`] calls released (so right after `wait` it is
    /// [`CallStatus::Returned`], or [`CallStatus::Timeout`] for a call that timed out).
    /// `None` if the id is unknown or older than that.
    pub fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        match &self.stage {
            Stage::Running(engine) => engine.status(id),
            _ => self.base().past(id.raw()).map(|(status, ..)| status),
        }
    }

    /// When a call entered each status so far, or `None` if the id is unknown (or older than
    /// the history: see [`Mediator::status`]).
    pub fn timings<R>(&self, id: CallId<R>) -> Option<Timings> {
        match &self.stage {
            Stage::Running(engine) => engine.timings(id),
            _ => self.base().past(id.raw()).map(|(.., t)| t.clone()),
        }
    }

    /// The process id of the worker that holds a call (or last held it), or `None` if the
    /// call is unknown (or older than the history: see [`Mediator::status`]) or no worker
    /// took it yet.
    pub fn worker_pid<R>(&self, id: CallId<R>) -> Option<i32> {
        match &self.stage {
            Stage::Running(engine) => engine.worker_pid(id),
            _ => self.base().past(id.raw()).and_then(|(_, pid, _)| pid),
        }
    }

    /// Sets how many released calls (taken by their handle, or released after their
    /// callbacks) [`Mediator::status`], [`Mediator::timings`] and [`Mediator::worker_pid`]
    /// still answer for: the most recent `calls` of them (default 1,024; 0 for none). Only
    /// their status, worker and timings are kept, about 100 bytes each, no payload.
    pub fn status_history(&mut self, calls: usize) -> &mut Self {
        self.base_mut().status_history(calls);
        self
    }

    /// Calls queued or running.
    pub fn pending(&self) -> usize {
        match &self.stage {
            Stage::Running(engine) => engine.pending(),
            _ => 0,
        }
    }

    /// The process ids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        match &self.stage {
            Stage::Running(engine) => engine.pids(),
            _ => Vec::new(),
        }
    }

    /// Errors counted since the mediator was made, by kind.
    pub fn errors(&self) -> ErrorCounts {
        self.base().errors()
    }

    /// A snapshot of the statistics: per method, the time calls waited for a worker and ran
    /// (mean, median, p90, p99, count), error counts, processes and memory. Its `Display` is
    /// the seed's runtime statistics table.
    pub fn stats(&self) -> Stats {
        match &self.stage {
            Stage::Running(engine) => engine.stats(),
            _ => self.base().stats(),
        }
    }

    /// Processes every event that has arrived (answers, worker deaths, expired timeouts) and
    /// runs the callbacks, without blocking. Returns how many calls finished.
    pub fn poll(&mut self) -> usize {
        match self.driven(None) {
            Some((engine, mut sink)) => engine.collect(&mut sink),
            None => 0,
        }
    }

    /// As [`Mediator::poll`], and the finished calls that no callback of the mediator's takes
    /// go to `handler` (an event loop that owns the state the callbacks act on, such as the
    /// daemon host, lends its callbacks this way).
    pub fn poll_with(&mut self, handler: &mut ExternalHandler<'_, W>) -> usize {
        match self.driven(Some(handler)) {
            Some((engine, mut sink)) => engine.collect(&mut sink),
            None => 0,
        }
    }

    /// Blocks until the call of `handle` finishes and its callback ran, or `timeout` passes,
    /// driving the pool (and its callbacks) meanwhile, and returns the typed result.
    ///
    /// When the time is up this gives [`CallError::WaitTimeout`] and the handle is gone: the
    /// call runs on, its callbacks fire, and its result is released. To wait again after a
    /// timeout, use [`Mediator::wait_timeout`], which gives the handle back.
    /// [`CallError::UnknownCall`] if the mediator was shut down since the call was made.
    pub fn wait<R: 'static>(
        &mut self,
        handle: Handle<R>,
        timeout: Duration,
    ) -> Result<R, CallError> {
        if !handle.is_of(&self.dropped) {
            // Another mediator's: it releases the call when the handle drops.
            return Err(CallError::UnknownCall(handle.id().raw()));
        }
        let result = self.wait_id(handle.id(), timeout);
        if let Err(CallError::WaitTimeout { .. }) = result {
            drop(handle);
            self.release_dropped();
        } else {
            handle.disarm();
        }
        result
    }

    /// Waits for call `id`, which a handle holds.
    fn wait_id<R: 'static>(&mut self, id: CallId<R>, timeout: Duration) -> Result<R, CallError> {
        match self.driven(None) {
            Some((engine, mut sink)) => engine.wait(id, timeout, &mut sink),
            None => Err(CallError::UnknownCall(id.raw())),
        }
    }

    /// As [`Mediator::wait`], but when `timeout` passes first the handle comes back
    /// (`Err(handle)`), to wait again later or drop:
    ///
    /// ```
    /// use forkworker_core::closure::FnMediator;
    /// use std::time::Duration;
    ///
    /// let mut slow = FnMediator::new("Slow", |ms: u64| {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// });
    /// let mut handle = slow.call(300)?;
    /// let done = loop {
    ///     match slow.wait_timeout(handle, Duration::from_millis(50)) {
    ///         Ok(result) => break result?,
    ///         Err(again) => handle = again, // not yet: do something else, then wait again
    ///     }
    /// };
    /// assert_eq!(done, 300);
    /// # Ok::<(), forkworker_core::CallError>(())
    /// ```
    pub fn wait_timeout<R: 'static>(
        &mut self,
        handle: Handle<R>,
        timeout: Duration,
    ) -> Result<Result<R, CallError>, Handle<R>> {
        if !handle.is_of(&self.dropped) {
            return Ok(Err(CallError::UnknownCall(handle.id().raw())));
        }
        match self.wait_id(handle.id(), timeout) {
            Err(CallError::WaitTimeout { .. }) => Err(handle),
            result => {
                handle.disarm();
                Ok(result)
            }
        }
    }

    /// Waits for every call of `handles` until `timeout` passes (one deadline for all) and
    /// returns their results in the same order. A call still unfinished at the deadline gives
    /// [`CallError::WaitTimeout`], as [`Mediator::wait`] does (it runs on, and is released
    /// after its callbacks).
    pub fn wait_all<R: 'static>(
        &mut self,
        handles: impl IntoIterator<Item = Handle<R>>,
        timeout: Duration,
    ) -> Vec<Result<R, CallError>> {
        let start = Instant::now();
        handles
            .into_iter()
            .map(|handle| self.wait(handle, timeout.saturating_sub(start.elapsed())))
            .collect()
    }

    /// Blocks until one of the calls of `handles` finishes (and its callback ran), or
    /// `timeout` passes; takes that call's handle out of `handles` and returns its id and its
    /// result. `None` when the time is up first (`handles` is then untouched) or `handles` is
    /// empty.
    ///
    /// ```
    /// use forkworker_core::closure::FnMediator;
    /// use std::time::Duration;
    ///
    /// let mut square = FnMediator::new("Square", |n: u64| n * n);
    /// square.workers(2);
    /// let mut handles = (1..=4).map(|n| square.call(n)).collect::<Result<Vec<_>, _>>()?;
    /// let mut sum = 0;
    /// while let Some((_id, result)) = square.wait_any(&mut handles, Duration::from_secs(10)) {
    ///     sum += result?;
    /// }
    /// assert_eq!(sum, 1 + 4 + 9 + 16);
    /// # Ok::<(), forkworker_core::CallError>(())
    /// ```
    pub fn wait_any<R: 'static>(
        &mut self,
        handles: &mut Vec<Handle<R>>,
        timeout: Duration,
    ) -> Option<(CallId<R>, Result<R, CallError>)> {
        if handles.is_empty() {
            return None;
        }
        if let Some(k) = handles.iter().position(|h| !h.is_of(&self.dropped)) {
            // Another mediator's: it releases the call when the handle drops.
            let id = handles.remove(k).id();
            return Some((id, Err(CallError::UnknownCall(id.raw()))));
        }
        let ids: Vec<u64> = handles.iter().map(|h| h.id().raw()).collect();
        let Some((engine, mut sink)) = self.driven(None) else {
            // The pool stopped since the calls were made: they are unknown.
            let id = handles.remove(0).disarm();
            return Some((id, Err(CallError::UnknownCall(id.raw()))));
        };
        let k = engine.wait_any(&ids, timeout, &mut sink)?;
        let handle = handles.remove(k);
        let id = handle.id();
        let result = engine.take_result(id);
        handle.disarm();
        Some((id, result))
    }

    /// Runs a finished call again: same id and arguments, [`Call::retries`] one higher, its
    /// previous status, result and timings cleared; it goes to the back of the queue.
    ///
    /// The call must still be held: a finished call whose [`Handle`] lives and was not
    /// waited for. Inside a callback, use [`Call::retry`] instead. A held call's arguments
    /// moved out of shared memory once it finished; they go back in, which fails like a call
    /// ([`CallError::OutOfMemory`], [`CallError::TooManyCalls`]) when there is no room.
    pub fn retry(&mut self, id: u64) -> Result<(), CallError> {
        match &mut self.stage {
            Stage::Running(engine) => engine.retry(id),
            _ => Err(CallError::UnknownCall(id)),
        }
    }

    /// Stops the pool but keeps unfinished calls for the next run (the daemon's graceful
    /// stop): no new call is started, running calls may finish until their timeout (or the
    /// grace period if there is none), and the calls still queued or running after it stay in
    /// the persistent shared memory, which is kept. Returns how many calls were kept. Without
    /// [`Mediator::persist`] nothing can be kept: this is [`Mediator::shutdown`].
    pub fn suspend(&mut self) -> usize {
        self.suspend_with(None)
    }

    /// [`Mediator::suspend`], delivering the calls that finish meanwhile to `handler` when no
    /// callback of the mediator's takes them (see [`Mediator::poll_with`]).
    pub fn suspend_with(&mut self, handler: Option<&mut ExternalHandler<'_, W>>) -> usize {
        self.stop_with(handler, |engine, sink| engine.suspend(sink))
            .unwrap_or(0)
    }

    /// Stops the pool: see "Ownership" above. Queued calls end as [`CallStatus::Cancelled`],
    /// and so do calls still running after the grace period. The mediator can start again
    /// afterwards.
    pub fn shutdown(&mut self) {
        self.stop_with(None, |engine, sink| engine.shutdown(sink));
    }
}

impl<W: Worker> Drive for Mediator<W> {
    fn alias(&self) -> &str {
        Mediator::alias(self)
    }

    fn poll(&mut self) -> usize {
        Mediator::poll(self)
    }

    fn stats(&self) -> Stats {
        Mediator::stats(self)
    }

    fn pending(&self) -> usize {
        Mediator::pending(self)
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Running(engine) => engine.next_deadline(),
            _ => None,
        }
    }

    fn shutdown(&mut self) {
        Mediator::shutdown(self)
    }

    fn suspend(&mut self) -> usize {
        Mediator::suspend(self)
    }

    fn set_recover(&mut self, recover: bool) {
        Mediator::recover(self, recover);
    }

    fn start_pool(&mut self) -> Result<(), StartError> {
        Mediator::start(self)
    }
}

impl<W: Worker> Sleep for Mediator<W> {
    fn begin_sleep(&mut self, fds: &mut Vec<std::os::fd::RawFd>, _: Token) -> bool {
        match &mut self.stage {
            Stage::Running(engine) => engine.begin_sleep(fds),
            _ => true,
        }
    }

    fn end_sleep(&mut self, _: Token) {
        if let Stage::Running(engine) = &mut self.stage {
            engine.end_sleep();
        }
    }
}

impl<W: Worker> Drop for Mediator<W> {
    /// Shuts down; a persistent mediator suspends instead, keeping unfinished calls.
    fn drop(&mut self) {
        if self.base().config.persist.is_some() {
            self.suspend();
        } else {
            self.shutdown();
        }
    }
}
