//! The mediator: the parent's handle on one pool of workers.
//!
//! A call's path: a generated proxy method calls [`submit`], which encodes the arguments
//! straight into a block of shared memory and queues the call. `Mediator::dispatch_queued`
//! hands queued calls, in call order, to idle workers through their channels. Whenever the
//! caller drives the mediator ([`Mediator::poll`], [`Mediator::wait`]), `Mediator::collect`
//! reads the answers, notices dead workers and expired timeouts, and fires the callbacks.
//! Between events the parent sleeps in `poll(2)` on an eventfd and the workers' pidfds, woken
//! by an answer, a death, or the nearest deadline.

use std::cell::Cell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::arena::Block;
use crate::call::{
    Call, CallId, CallMap, CallRecord, CallStatus, Decoders, ExitCause, Log, Timings,
};
use crate::channel::{self, ArgsAt, Ran, Request, Response};
use crate::clock::{self, to_instant};
use crate::config::{Config, ForkStrategy, Recycle};
use crate::drive::{Drive, Sleep, Token};
use crate::error::{CallError, ErrorCounts, ErrorKind, WireError};
use crate::journal;
use crate::pool::{Busy, Pool};
use crate::process;
use crate::stats::{self, MethodStats, Recorder, Stats};
use crate::this_worker;
use crate::wire;
use crate::worker::Worker;

/// The smallest return reservation made with each call.
const MIN_RET: usize = 256;
/// How long `submit` waits for running calls to free shared memory before giving up.
const SPACE_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait` goes without a full collection while answers keep coming (see
/// `Mediator::nothing_else_to_collect`).
const FULL_EVERY: Duration = Duration::from_millis(1);
/// How many times a call is requeued after its worker died before starting it.
pub const MAX_REQUEUES: u32 = 3;
/// How many workers in a row may die before answering a call before the pool stops forking.
const START_FAILURE_LIMIT: u32 = 5;

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
/// Every call is delivered once. A finished call goes to its callback if one is installed for
/// its outcome (`on_return` for a return, `on_timeout` for a timeout, `on_error` for any other
/// failure), and is then released, unless [`Mediator::wait`] is waiting for that very call,
/// which then takes it too. A call with no callback for its outcome is kept, in shared memory,
/// until `wait` takes it.
///
/// # Delivery guarantee
/// Every call a proxy accepted ends exactly once in a final status and is delivered exactly
/// once (to its callback or to `wait`) within one run of the program. Its method runs at most
/// once per run of the call: a call is requeued behind the caller's back only when its worker
/// died before starting it (at most [`MAX_REQUEUES`] times); a call that was running when its
/// worker died ends [`CallStatus::Crashed`] and is re-run only if you [`Call::retry`] it.
/// Across a crash of the parent, a persistent mediator ([`Mediator::persist`]) recovers every
/// call that had not been delivered: at least once, since a call whose callback ran just
/// before the parent died is delivered again.
///
/// A mediator is not `Send`: its workers are killed when the thread that forked them exits
/// (Linux's parent-death signal follows the forking thread).
pub struct Mediator<W: Worker> {
    alias: String,
    value: W,
    config: Config,
    on_return: Option<Handler<W>>,
    on_timeout: Option<Handler<W>>,
    on_error: Option<Handler<W>>,
    pool: Option<Pool>,
    calls: CallMap,
    /// How each method's return value is decoded (see [`Decoders`]).
    decoders: Decoders,
    queue: VecDeque<u64>,
    /// Calls that reached a final status and whose callbacks have not run yet, in order.
    finished: Vec<u64>,
    next_id: u64,
    /// Per method: the size of its last return value, used to size the next reservation.
    ret_hints: Vec<usize>,
    /// Per method: whether the "large payload" warning was logged.
    warned_large: Vec<bool>,
    /// Set while `shutdown` runs: retries are refused.
    shutting_down: bool,
    /// Errors counted by kind since the mediator was made.
    errors: ErrorCounts,
    /// Whether the parent error limits were reported.
    errors_reported: bool,
    /// Workers that died in a row before answering any call.
    start_failures: u32,
    /// A worker died or was killed: fork its replacement at the next collection, after the
    /// call's outcome was reported (a report should not wait for a fork).
    refill_due: bool,
    /// Set while `collect` gives workers waiting for room their last chance.
    room_pass: bool,
    /// When the pool started.
    started_at: Option<Instant>,
    /// Per method: queue waits and run times.
    timing: Vec<(Recorder, Recorder)>,
    /// Free journal entries.
    free_entries: Vec<usize>,
    /// When the last full collection ran (CLOCK_MONOTONIC nanoseconds).
    collected_at: Option<u64>,
    /// The call `wait` delivered last, whose bookkeeping waits for the next call's post (see
    /// [`Mediator::settle`]).
    delivered: Option<Delivered>,
    _not_send: PhantomData<*const ()>,
}

/// A call `wait` delivered through its short path, with what its bookkeeping still needs:
/// its record to drop (the views of the mediator already treat it as gone), its times for
/// the statistics, its journal entry and blocks to free, and its worker's wear to check. The
/// bookkeeping is done by [`Mediator::settle`], after the next call is posted (its worker runs
/// meanwhile) or before anything else looks at the pool.
struct Delivered {
    id: u64,
    slot: usize,
    method: u32,
    /// When the worker ran it.
    ran: Ran,
    /// Its journal entry and block, unless the next call took them over (see
    /// [`Mediator::call_room`]).
    held: Option<(usize, Block)>,
    ret_block: Option<Block>,
}

/// What `wait` reads before looking at its call again.
enum Round {
    /// Everything: `collect`.
    Full,
    /// The answer of the worker in this slot, which holds the awaited call.
    Answer(usize),
    /// Nothing.
    Nothing,
}

/// Queues a call of method `method` with encoded-from-borrow `args`. Called by generated proxy
/// methods; `decode` turns the return bytes into `R`.
#[doc(hidden)]
pub fn submit<W: Worker, A: Serialize + ?Sized, R: 'static>(
    mediator: &mut Mediator<W>,
    method: u32,
    args: &A,
    decode: fn(&[u8]) -> Result<R, WireError>,
) -> Result<CallId<R>, CallError> {
    let id = mediator.submit_encoded(method, args)?;
    mediator.decoders.set(method, decode);
    Ok(CallId::new(id))
}

impl<W: Worker> Mediator<W> {
    /// A mediator for `value` under the name `alias` (used in log lines and in the name of the
    /// shared-memory segment). Nothing is forked and no memory is shared until
    /// [`Mediator::start`] or the first call.
    pub fn new(alias: impl Into<String>, value: W) -> Self {
        Mediator {
            alias: alias.into(),
            value,
            config: Config::default(),
            on_return: None,
            on_timeout: None,
            on_error: None,
            pool: None,
            calls: CallMap::default(),
            decoders: Decoders::default(),
            queue: VecDeque::new(),
            finished: Vec::new(),
            next_id: 1,
            ret_hints: vec![MIN_RET; W::METHODS.len()],
            warned_large: vec![false; W::METHODS.len()],
            shutting_down: false,
            errors: ErrorCounts::default(),
            errors_reported: false,
            start_failures: 0,
            refill_due: false,
            room_pass: false,
            started_at: None,
            timing: vec![Default::default(); W::METHODS.len()],
            free_entries: Vec::new(),
            collected_at: None,
            delivered: None,
            _not_send: PhantomData,
        }
    }

    /// The alias given to [`Mediator::new`].
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Sets the number of worker processes (at least 1; default 1). After the pool started it
    /// can be lowered, or raised up to the count it started with; a higher count is clamped
    /// with a warning, since the shared-memory layout is fixed at start.
    pub fn workers(&mut self, count: usize) -> &mut Self {
        let mut count = count.max(1);
        if let Some(pool) = &self.pool
            && count > pool.slots.len()
        {
            log::warn!(target: &self.alias,
                "workers({count}) after the pool started with {}: keeping {}; set workers() before the first call",
                pool.slots.len(), pool.slots.len());
            count = pool.slots.len();
        }
        self.config.workers = count;
        self
    }

    /// Sets the time a call may run in a worker before the worker is killed (SIGKILL), the call
    /// ends with [`CallStatus::Timeout`] and `on_timeout` fires. No timeout by default; always
    /// set a plausible one. Deadlines are enforced whenever the mediator is driven (`poll`,
    /// `wait`); a waiting mediator wakes for the nearest deadline, to within about a
    /// millisecond.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Sets the size in bytes of the shared memory for arguments and return values (default
    /// 8 MiB). It must hold, at once, the encoded arguments and return values of every call
    /// queued or running. Takes effect when the pool starts; later calls are ignored with a
    /// warning.
    pub fn malloc(&mut self, bytes: usize) -> &mut Self {
        self.before_start("malloc", |c| c.malloc = bytes)
    }

    /// Sets when workers are forked; see [`ForkStrategy`] (default `Mixed`).
    pub fn strategy(&mut self, strategy: ForkStrategy) -> &mut Self {
        self.config.strategy = strategy;
        self
    }

    /// Sets when workers retire and are replaced; see [`Recycle`] (default: after about 30
    /// minutes). Applies to workers forked afterwards.
    pub fn recycle(&mut self, recycle: Recycle) -> &mut Self {
        self.config.recycle = recycle;
        self
    }

    /// Forks workers through a fork server: a small process forked when the pool starts, from
    /// which every worker is forked.
    ///
    /// Forking from a process with several threads can deadlock the child on a lock another
    /// thread held at that instant (stdout's, a logger's, any `Mutex`). With a fork server,
    /// only the server is forked from this process: enable it and call [`Mediator::start`]
    /// before the program starts its threads, and workers can be forked safely at any time
    /// after. Workers then start from the object as it was at `start`. Set before the pool
    /// starts.
    pub fn fork_server(&mut self, enabled: bool) -> &mut Self {
        self.before_start("fork_server", |c| c.fork_server = enabled)
    }

    /// Makes the mediator persistent: its shared memory is named after `app` and the alias
    /// (`/dev/shm/fw.app.<app>.<alias>`) instead of after this process, and it is kept when
    /// the mediator is dropped with calls still queued or running, so that a restarted
    /// program finds them. See [`Mediator::recover`]. Set before the pool starts.
    pub fn persist(&mut self, app: impl Into<String>) -> &mut Self {
        let app = app.into();
        self.before_start("persist", |c| c.persist = Some(app))
    }

    /// With [`Mediator::persist`]: whether to complete, at start, the calls an earlier run
    /// left in the shared memory (the seed's `--recoverworkers`). Calls that were queued run
    /// as they were; calls that were running run again with `retries()` one higher; calls that
    /// returned but were not delivered go to `on_return`. Recovered calls are delivered to the
    /// callbacks (no `CallId` of them exists in the new program). Without recovery, what an
    /// earlier run left is removed at start, with a log line. A segment made with other
    /// `workers()` or `malloc()` is never misread: it is removed with a warning that says so.
    pub fn recover(&mut self, recover: bool) -> &mut Self {
        self.config.recover = recover;
        self
    }

    /// Sets how long running calls may go on when the mediator shuts down (default 5 s).
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.config.grace = grace;
        self
    }

    /// Sets the callback for calls that returned. It runs in the parent, when the mediator is
    /// driven, with the finished call and a logger tagged with the alias.
    pub fn on_return(&mut self, handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static) -> &mut Self {
        self.on_return = Some(Box::new(handler));
        self
    }

    /// Sets the callback for calls that timed out (their worker was killed). [`Call::retry`]
    /// runs the call again.
    pub fn on_timeout(
        &mut self,
        handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self {
        self.on_timeout = Some(Box::new(handler));
        self
    }

    /// Sets the callback for calls that failed otherwise: the worker crashed
    /// ([`CallStatus::Crashed`]), the method panicked ([`CallStatus::Panicked`]), the call
    /// could not be encoded, decoded or fit ([`CallStatus::Failed`]), or it was cancelled
    /// ([`CallStatus::Cancelled`]). [`Call::error`] says why; [`Call::retry`] runs it again.
    pub fn on_error(&mut self, handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static) -> &mut Self {
        self.on_error = Some(Box::new(handler));
        self
    }

    /// The value the workers were forked from, for calls in this process: blocking, with no
    /// fork, no shared memory and no callbacks.
    pub fn inline(&mut self) -> &mut W {
        &mut self.value
    }

    /// Starts the pool now instead of at the first call: runs `check_environment`, creates the
    /// shared memory, starts the fork server if enabled and, with
    /// [`ForkStrategy::Aggressive`], forks every worker.
    pub fn start(&mut self) -> Result<(), CallError> {
        if self.pool.is_some() {
            return Ok(());
        }
        let problems = self.value.check_environment();
        if !problems.is_empty() {
            return Err(CallError::Environment(problems));
        }
        if self.config.fork_server
            && let Some(threads) = process::thread_count().filter(|&n| n > 1)
        {
            log::warn!(target: &self.alias,
                "starting the fork server in a process with {threads} threads: it can inherit a lock another thread held at the fork; call start() before starting threads");
        }
        let (pool, matching) =
            Pool::create(&self.alias, &self.config, &mut self.value).map_err(CallError::Pool)?;
        self.free_entries = (0..pool.region.entries()).rev().collect();
        self.pool = Some(pool);
        self.start_failures = 0;
        if matching {
            if self.config.recover {
                self.recover_calls();
            } else {
                self.purge_journal();
            }
        }
        self.started_at = Some(Instant::now());
        if self.config.strategy == ForkStrategy::Aggressive {
            self.fill_pool();
        }
        Ok(())
    }

    /// True when a call made now would start at once: nothing is queued and a worker is idle
    /// (or one more may be forked).
    pub fn is_idle(&self) -> bool {
        if !self.queue.is_empty() {
            return false;
        }
        let Some(pool) = &self.pool else {
            return true;
        };
        let workers = self.config.workers.min(pool.slots.len());
        let mut live = 0;
        for (i, slot) in pool.slots.iter().enumerate().take(workers) {
            live += usize::from(slot.child.is_some());
            let free = match slot.busy {
                None => slot.child.is_some(),
                Some(b) => pool.region.channel(i).answer(b.seq).is_some_and(|a| {
                    a.valid && Response::from_u32(a.kind) == Some(Response::Returned)
                }),
            };
            if free {
                return true;
            }
        }
        live < workers
    }

    /// The status of a call, or `None` if the id is unknown or its result was already
    /// delivered.
    pub fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        let record = self.record(id.raw())?;
        if record.status == CallStatus::Called && self.started_ns(record).is_some() {
            return Some(CallStatus::Running);
        }
        Some(record.status)
    }

    /// When a call entered each status so far, or `None` if the id is unknown.
    pub fn timings<R>(&self, id: CallId<R>) -> Option<Timings> {
        let record = self.record(id.raw())?;
        let mut timings = record.timings.clone();
        if record.status == CallStatus::Called
            && let Some(ns) = self.started_ns(record)
        {
            let called = timings
                .entered_ns(CallStatus::Called)
                .unwrap_or_else(clock::now_ns);
            timings.enter(CallStatus::Running, ns.max(called));
        }
        Some(timings)
    }

    /// The process id of the worker that holds a call (or last held it), or `None` if the
    /// call is unknown or no worker took it yet.
    pub fn worker_pid<R>(&self, id: CallId<R>) -> Option<i32> {
        self.record(id.raw())?.pid
    }

    /// Calls queued or running.
    pub fn pending(&self) -> usize {
        self.calls
            .values()
            .filter(|r| !r.status.is_final() && !self.is_delivered(r.id))
            .count()
    }

    /// The process ids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.pool
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter_map(|s| s.pid())
            .collect()
    }

    /// Errors counted since the mediator was made, by kind.
    pub fn errors(&self) -> ErrorCounts {
        self.errors
    }

    /// A snapshot of the statistics: per method, the time calls waited for a worker and ran
    /// (mean, median, p90, p99, count), error counts, processes and memory. Its `Display` is
    /// the seed's runtime statistics table.
    pub fn stats(&self) -> Stats {
        let pids = self.pids();
        // The times of a delivered call whose bookkeeping is still due count already.
        let mut timing = std::borrow::Cow::Borrowed(&self.timing);
        if let Some(d) = &self.delivered
            && let Some(r) = self.calls.get(&d.id)
        {
            let times = delivered_times(&r.timings, &d.ran);
            record_times(timing.to_mut(), d.method, times);
        }
        Stats {
            alias: self.alias.clone(),
            uptime: self.started_at.map_or(Duration::ZERO, |t| t.elapsed()),
            workers: pids.len(),
            configured_workers: self.config.workers,
            queued: self.queue.len(),
            running: self.busy_count(),
            methods: W::METHODS
                .iter()
                .zip(timing.iter())
                .map(|(&method, (called, running))| MethodStats {
                    method,
                    called: called.summary(),
                    running: running.summary(),
                })
                .collect(),
            errors: self.errors,
            parent_rss_kib: stats::rss_kib(0),
            worker_rss_kib: pids.iter().map(|&p| (p, stats::rss_kib(p))).collect(),
            shared_memory: self.pool.as_ref().map_or((0, 0), |p| {
                // A delivered call's block is as good as free (see `settle`).
                let held = self.delivered.as_ref().map_or(0, |d| {
                    d.held.map_or(0, |(_, b)| b.len) + d.ret_block.map_or(0, |b| b.len)
                });
                (p.arena.size(), p.arena.size() - p.arena.available() - held)
            }),
        }
    }

    /// Processes every event that has arrived (answers, worker deaths, expired timeouts) and
    /// runs the callbacks, without blocking. Returns how many calls finished.
    pub fn poll(&mut self) -> usize {
        self.collect()
    }

    /// As [`Mediator::poll`], and the finished calls that no callback of the mediator's takes
    /// go to `handler` (an event loop that owns the state the callbacks act on, such as the
    /// daemon host, lends its callbacks this way).
    pub fn poll_with(&mut self, handler: &mut ExternalHandler<'_, W>) -> usize {
        self.collect_with(Some(handler))
    }

    /// Blocks until call `id` finishes or `timeout` passes, driving the pool (and its
    /// callbacks) meanwhile, and returns the typed result.
    ///
    /// If the call already finished and its result was handed to a callback and released,
    /// this returns [`CallError::UnknownCall`].
    pub fn wait<R: 'static>(&mut self, id: CallId<R>, timeout: Duration) -> Result<R, CallError> {
        let raw = id.raw();
        // At most one call's bookkeeping waits at a time (`take_returned` makes one).
        self.settle();
        // Times in CLOCK_MONOTONIC nanoseconds from the pool's clock; an `Instant` is made
        // only for a sleep or a full collection.
        let start = self.now_ns();
        let deadline = start.saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64);
        let (status, posted) = match self.calls.get_mut(&raw) {
            Some(record) => {
                record.awaited = true;
                (record.status, record.posted)
            }
            None => return Err(CallError::UnknownCall(raw)),
        };
        // One clock read per round, for the collection and the deadline.
        let mut now = start;
        // What to read before looking at the call: everything (a full collection), only the
        // answer of the worker that holds it (it has answered: the result then goes back at
        // once), or nothing (a call just handed to a worker, with nothing else to read: the
        // collection would only delay the spin that sees the answer come). Anything else that
        // wakes the sleep brings a full collection, as does a last one older than FULL_EVERY
        // (so that periodic checks, such as a worker's age, still run).
        let due = self
            .collected_at
            .is_none_or(|t| now >= t + FULL_EVERY.as_nanos() as u64);
        // The awaited call's own answer is not "something else": if it comes in between the
        // two looks, the spin that follows `Nothing` sees it at once.
        let mut round = match self.answered_slot(posted) {
            _ if due => Round::Full,
            Some(i) => Round::Answer(i),
            None if status == CallStatus::Called
                && self.nothing_else_to_collect(posted.map(|(i, _)| i)) =>
            {
                Round::Nothing
            }
            None => Round::Full,
        };
        loop {
            let short = match std::mem::replace(&mut round, Round::Full) {
                Round::Answer(slot) => {
                    if let Some(result) = self.take_returned(slot, id) {
                        return result;
                    }
                    self.collect_answer(slot);
                    true
                }
                Round::Full => {
                    self.collect_with_at(None, now);
                    false
                }
                Round::Nothing => false,
            };
            let Some(record) = self.calls.get(&raw) else {
                return Err(CallError::UnknownCall(raw));
            };
            if record.status.is_final() {
                return self.take_result(id);
            }
            let posted = record.posted;
            if short {
                now = self.now_ns();
            }
            if now >= deadline {
                if let Some(record) = self.calls.get_mut(&raw) {
                    record.awaited = false;
                }
                return Err(CallError::WaitTimeout {
                    id: raw,
                    waited: Duration::from_nanos(now - start),
                });
            }
            if let Some(pool) = self.pool.as_mut() {
                pool.sleep_with(|| Some(to_instant(deadline)));
            }
            if let Some(i) = self.answered_slot(posted) {
                round = Round::Answer(i);
            }
            // The short round needs no clock reading unless the call goes on.
            if !matches!(round, Round::Answer(_)) {
                now = self.now_ns();
            }
        }
    }

    /// Whether `wait` may skip its first collection: nothing is queued, finished or due for a
    /// refill, and no worker answered but the one in slot `mine` (the awaited call's, if it
    /// was posted).
    fn nothing_else_to_collect(&self, mine: Option<usize>) -> bool {
        self.queue.is_empty()
            && self.finished.is_empty()
            && !self.refill_due
            && self.pool.as_ref().is_some_and(|p| !p.any_answer_but(mine))
    }

    /// The slot of the worker that holds a call `posted` there, if it answered.
    fn answered_slot(&self, posted: Option<(usize, u32)>) -> Option<usize> {
        let pool = self.pool.as_ref()?;
        posted
            .filter(|&(i, seq)| pool.region.channel(i).answered(seq))
            .map(|(i, _)| i)
    }

    /// Runs a finished call again: same id and arguments, [`Call::retries`] one higher, its
    /// previous status, result and timings cleared; it goes to the back of the queue.
    ///
    /// The call must still be held by the mediator: a finished call no callback released and
    /// `wait` did not take. Inside a callback, use [`Call::retry`] instead.
    pub fn retry(&mut self, id: u64) -> Result<(), CallError> {
        self.settle();
        match self.calls.get(&id) {
            Some(record) if record.status.is_final() && !self.finished.contains(&id) => {
                self.requeue(id);
                self.dispatch_queued();
                Ok(())
            }
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
    pub fn suspend_with(&mut self, mut handler: Option<&mut ExternalHandler<'_, W>>) -> usize {
        if self.pool.is_none() {
            return 0;
        }
        self.settle();
        if self.config.persist.is_none() {
            log::warn!(target: &self.alias, "suspend() without persist(): shutting down instead");
            self.shutdown();
            return 0;
        }
        self.shutting_down = true;
        // Running calls may finish; queued ones are not started.
        let queued = std::mem::take(&mut self.queue);
        let limit = Instant::now() + self.config.timeout.unwrap_or(self.config.grace);
        self.collect_with(handler.as_deref_mut());
        while self.busy_count() > 0 && Instant::now() < limit {
            if let Some(pool) = self.pool.as_mut() {
                pool.sleep(Some(limit));
            }
            self.collect_with(handler.as_deref_mut());
        }
        let pool = self.pool.as_mut().expect("checked above");
        let mut kept = queued.len();
        for i in 0..pool.slots.len() {
            // Killed while running: the journal says it was started, so it runs again, with
            // one more retry, after recovery.
            if pool.clear(i).1.is_some() {
                kept += 1;
            }
        }
        // Results not delivered yet stay in the journal too.
        kept += self
            .calls
            .values()
            .filter(|r| r.status == CallStatus::Returned)
            .count();
        let mut pool = self.pool.take().expect("checked above");
        pool.region.keep(kept > 0);
        log::info!(target: &self.alias, "suspended with {kept} calls kept in {}", pool.region.name());
        drop(pool);
        self.calls.clear();
        self.finished.clear();
        self.shutting_down = false;
        kept
    }

    /// Stops the pool: see "Ownership" above. Queued calls end as [`CallStatus::Cancelled`],
    /// and so do calls still running after the grace period. The mediator can start again
    /// afterwards.
    pub fn shutdown(&mut self) {
        if self.pool.is_none() {
            return;
        }
        self.settle();
        self.shutting_down = true;
        let now = clock::now_ns();
        for id in std::mem::take(&mut self.queue) {
            self.finish(id, CallStatus::Cancelled, now, |method| {
                CallError::Cancelled {
                    method,
                    reason: "the mediator shut down before a worker took the call".into(),
                }
            });
        }
        self.fire_callbacks();
        let grace_end = Instant::now() + self.config.grace;
        while self.busy_count() > 0 && Instant::now() < grace_end {
            if let Some(pool) = self.pool.as_mut() {
                pool.sleep(Some(grace_end));
            }
            self.collect();
        }
        let grace = self.config.grace;
        let now = clock::now_ns();
        let slots = self.pool.as_ref().map_or(0, |p| p.slots.len());
        for i in 0..slots {
            let pool = self.pool.as_mut().expect("checked above");
            if pool.slots[i].busy.is_some() {
                let (_, busy) = pool.clear(i);
                if let Some(b) = busy {
                    self.finish(b.call, CallStatus::Cancelled, now, |method| {
                        CallError::Cancelled {
                            method,
                            reason: format!(
                                "still running {grace:?} after shutdown began; its worker was killed"
                            ),
                        }
                    });
                }
            }
        }
        self.fire_callbacks();
        // Dropping the pool stops and reaps the workers, then removes the shared memory. The
        // finished results left point into it, so they go too.
        self.pool = None;
        self.calls.clear();
        self.queue.clear();
        self.shutting_down = false;
    }
}

// The engine: everything below runs in the parent and is private.
impl<W: Worker> Mediator<W> {
    /// Applies a setting that only takes effect when the pool starts; after it, warns and
    /// ignores it.
    fn before_start(&mut self, what: &str, set: impl FnOnce(&mut Config)) -> &mut Self {
        if self.pool.is_some() {
            log::warn!(target: &self.alias, "{what}() after the pool started is ignored");
        } else {
            set(&mut self.config);
        }
        self
    }

    fn method_name(method: u32) -> &'static str {
        W::METHODS
            .get(method as usize)
            .copied()
            .unwrap_or("<unknown>")
    }

    /// CLOCK_MONOTONIC nanoseconds, read through the pool's tick counter when the pool runs
    /// (see `clock`).
    fn now_ns(&mut self) -> u64 {
        match self.pool.as_mut() {
            Some(pool) => pool.clock.now_ns(),
            None => clock::now_ns(),
        }
    }

    /// When the worker holding `record` started running it, if it did.
    fn started_ns(&self, record: &CallRecord) -> Option<u64> {
        let (slot, seq) = record.posted?;
        self.pool.as_ref()?.region.channel(slot).started(seq)
    }

    /// Encodes the arguments into shared memory and queues the call.
    fn submit_encoded<A: Serialize + ?Sized>(
        &mut self,
        method: u32,
        args: &A,
    ) -> Result<u64, CallError> {
        let name = Self::method_name(method);
        if self.pool.is_none() {
            self.start()?;
        }
        let wire_err = |source| CallError::Wire {
            method: name,
            source,
        };
        // Small arguments are encoded once, on the stack: they travel in the request's line
        // and are copied into the block (for the journal, and for posting the call again if
        // its worker dies before starting it) once the call is posted.
        let mut small = [0u8; channel::INLINE_ARGS];
        let inline_len = wire::encode_into(args, &mut small).map_err(wire_err)?;
        let args_len = match inline_len {
            Some(n) => n,
            None => wire::encoded_len(args).map_err(wire_err)?,
        };
        let allocation = self.pool.as_ref().map_or(0, |p| p.arena.size());
        self.warn_if_large(method, args_len, allocation);
        let (entry, block) = self.call_room(method, args_len)?;
        if inline_len.is_none() {
            let pool = self.pool.as_mut().expect("started above");
            // SAFETY: the block is this call's: no worker has it.
            let buf = unsafe { pool.region.payload_mut(block.offset, args_len) }
                .expect("arena blocks lie inside the payload area");
            if let Err(e) = wire::encode_into(args, buf) {
                self.free_call(entry, block, None);
                return Err(wire_err(e));
            }
        }
        let inline = inline_len.map(|n| &small[..n]);
        let id = self.next_id;
        self.next_id += 1;
        // With nothing queued before it and a worker idle, the call goes out at once, before
        // the bookkeeping below: the worker runs it meanwhile. (A persistent mediator's call is
        // in the journal before this function returns, which is when the caller can count on
        // it.)
        let slot = if self.queue.is_empty() {
            self.ready_slot()
        } else {
            None
        };
        let posted = slot.map(|i| (i, self.post_block(i, id, method, block, args_len, inline)));
        // The last delivered call's bookkeeping: while the worker runs this one, or before the
        // queue is looked at.
        self.settle();
        let pool = self.pool.as_mut().expect("started above");
        if let Some(bytes) = inline {
            // SAFETY: the block is this call's, and a call posted with inline arguments is
            // never read from it by the worker.
            unsafe { pool.region.payload_mut(block.offset, bytes.len()) }
                .expect("arena blocks lie inside the payload area")
                .copy_from_slice(bytes);
        }
        // One clock read for the call's creation and its hand-over, if it was handed over.
        let now = pool.clock.now_ns();
        let mut timings = Timings::default();
        timings.enter(CallStatus::Uncalled, now);
        let mut status = CallStatus::Uncalled;
        if posted.is_some() {
            timings.enter(CallStatus::Called, now);
            status = CallStatus::Called;
        }
        if let Some(journal) = pool.journal(entry) {
            match posted {
                Some(posted) => {
                    journal.write_posted_call(id, method, (block.offset, args_len), posted)
                }
                None => journal.write_call(id, method, 0, (block.offset, args_len)),
            }
        }
        self.calls.insert(
            id,
            CallRecord {
                id,
                method,
                status,
                retries: 0,
                pid: posted.and_then(|(i, _)| pool.slots[i].pid()),
                timings,
                error: None,
                block,
                args_len,
                ret: None,
                ret_block: None,
                posted,
                entry,
                awaited: false,
            },
        );
        if posted.is_none() {
            self.queue.push_back(id);
            self.dispatch_queued_at(Some(now));
        }
        Ok(id)
    }

    /// An idle worker that can take a call now, as `dispatch_queued` would choose it; `None`
    /// when that would fork a worker first, which it does for an empty slot unless the
    /// strategy is lazy.
    fn ready_slot(&self) -> Option<usize> {
        if self.config.strategy != ForkStrategy::Lazy && self.empty_slot().is_some() {
            return None;
        }
        let pool = self.pool.as_ref()?;
        let workers = self.config.workers.min(pool.slots.len());
        (0..workers).find(|&i| pool.slots[i].is_idle() && !pool.is_worn(i, None))
    }

    /// The first of the configured slots with no worker, if any.
    fn empty_slot(&self) -> Option<usize> {
        let pool = self.pool.as_ref()?;
        let workers = self.config.workers.min(pool.slots.len());
        (0..workers).find(|&i| pool.slots[i].child.is_none())
    }

    /// Warns, once per method, about a payload larger than 1/50 of the allocation.
    #[inline]
    fn warn_if_large(&mut self, method: u32, len: usize, allocation: usize) {
        if len.saturating_mul(50) > allocation {
            self.warn_large(method, len, allocation);
        }
    }

    #[cold]
    fn warn_large(&mut self, method: u32, len: usize, allocation: usize) {
        let m = method as usize;
        if !self.warned_large[m] {
            self.warned_large[m] = true;
            let suggested = (len * 50).div_ceil(1 << 20);
            log::warn!(target: &self.alias,
                "a call to {}() moves {len} bytes, more than 1/50 of the {allocation}-byte allocation; consider malloc({suggested} << 20)",
                Self::method_name(method));
        }
    }

    /// A journal entry and a block for a new call's `args_len` argument bytes and its return
    /// reservation. The call `wait` delivered last hands over its own when its block fits
    /// (nothing is freed and allocated again between an answer and the next post); otherwise
    /// they are fresh.
    #[inline]
    fn call_room(&mut self, method: u32, args_len: usize) -> Result<(usize, Block), CallError> {
        let needed = args_len + self.ret_hints[method as usize].max(MIN_RET);
        if let Some(d) = self.delivered.as_mut()
            && d.ret_block.is_none()
            && let Some((entry, block)) = d.held
            // Not one much larger than needed: it would stay taken for as long as this call.
            && (needed..=needed * 4).contains(&block.len)
        {
            // A persistent mediator's entry was freed when the call was delivered (see
            // `take_returned`); no other mediator writes one (see `Pool::journal`).
            d.held = None;
            return Ok((entry, block));
        }
        self.fresh_call_room(method, args_len)
    }

    /// [`Mediator::call_room`] when the delivered call's entry and block cannot be taken over.
    #[inline(never)]
    fn fresh_call_room(
        &mut self,
        method: u32,
        args_len: usize,
    ) -> Result<(usize, Block), CallError> {
        if self.free_entries.is_empty() {
            self.settle();
        }
        let Some(entry) = self.free_entries.pop() else {
            return Err(CallError::TooManyCalls {
                method: Self::method_name(method),
                capacity: self.pool.as_ref().map_or(0, |p| p.region.entries()),
            });
        };
        match self.alloc_call_block(method, args_len) {
            Ok(block) => Ok((entry, block)),
            Err(e) => {
                self.free_entries.push(entry);
                Err(e)
            }
        }
    }

    /// A block for the arguments plus a return reservation, waiting for running calls to free
    /// memory if the allocation is full.
    fn alloc_call_block(&mut self, method: u32, args_len: usize) -> Result<Block, CallError> {
        let name = Self::method_name(method);
        let hint = self.ret_hints[method as usize];
        // Read the clock only once the allocation is full: most calls never wait.
        let mut start = None;
        loop {
            let pool = self.pool.as_mut().expect("started");
            let size = pool.arena.size();
            if args_len + MIN_RET > size {
                return Err(CallError::TooLarge {
                    method: name,
                    needed: args_len + MIN_RET,
                    allocation: size,
                });
            }
            if let Some(b) = pool.arena.alloc(args_len + hint.max(MIN_RET)) {
                return Ok(b);
            }
            if let Some(b) = pool.arena.alloc(args_len + MIN_RET) {
                return Ok(b);
            }
            if self.delivered.is_some() {
                self.settle();
                continue;
            }
            let start = *start.get_or_insert_with(Instant::now);
            let in_flight = self.calls.values().any(|r| !r.status.is_final());
            if !in_flight || start.elapsed() > SPACE_WAIT {
                let retained = self
                    .calls
                    .values()
                    .filter(|r| r.status.is_final())
                    .map(|r| r.block.len + r.ret_block.map_or(0, |b| b.len))
                    .sum();
                let pool = self.pool.as_ref().expect("started");
                return Err(CallError::OutOfMemory {
                    method: name,
                    needed: args_len + MIN_RET,
                    available: pool.arena.available(),
                    allocation: pool.arena.size(),
                    retained,
                });
            }
            self.pool
                .as_mut()
                .expect("started")
                .sleep(Some(start + SPACE_WAIT));
            self.collect();
        }
    }

    /// Counts an error against the mediator and, if given, against a slot's worker.
    fn count_error(&mut self, kind: ErrorKind, slot: Option<usize>) {
        self.errors.add(kind);
        if let (Some(i), Some(pool)) = (slot, self.pool.as_mut()) {
            pool.count_error(i, kind);
        }
        if !self.errors_reported && self.errors.reached(&ErrorCounts::PARENT_LIMITS) {
            self.errors_reported = true;
            log::error!(target: &self.alias,
                "error counts reached their limits: {:?} (limits {:?}); see the warnings above",
                self.errors, ErrorCounts::PARENT_LIMITS);
        }
    }

    /// Forks a worker into slot `i`, unless workers keep dying before answering anything.
    fn spawn(&mut self, i: usize) -> bool {
        if self.start_failures >= START_FAILURE_LIMIT {
            return false;
        }
        let pool = self.pool.as_mut().expect("started");
        match pool.spawn(i, &mut self.value) {
            Ok(pid) => {
                log::debug!(target: &self.alias, "forked worker {pid} into slot {i}");
                true
            }
            Err(e) => {
                log::error!(target: &self.alias, "cannot fork a worker: {e}");
                self.count_error(ErrorKind::Communication, None);
                false
            }
        }
    }

    /// Forks workers into the empty slots up to the configured count.
    fn fill_pool(&mut self) {
        let workers = self.config.workers;
        let slots = self.pool.as_ref().map_or(0, |p| workers.min(p.slots.len()));
        // By index, not through a collected list: this runs with every dispatch.
        for i in 0..slots {
            if self
                .pool
                .as_ref()
                .is_some_and(|p| p.slots[i].child.is_none())
            {
                self.spawn(i);
            }
        }
    }

    /// Hands queued calls, oldest first, to idle workers, forking as the strategy allows.
    fn dispatch_queued(&mut self) {
        self.dispatch_queued_at(None)
    }

    /// [`Mediator::dispatch_queued`], with the time the caller just read, if any, as the time
    /// the calls are handed over (a fork in between reads the clock again).
    fn dispatch_queued_at(&mut self, mut now: Option<u64>) {
        if self.queue.is_empty() {
            return;
        }
        // A worker to fork first takes long enough to make the reading stale.
        if now.is_some() && self.empty_slot().is_some() {
            now = None;
        }
        if self.config.strategy != ForkStrategy::Lazy {
            self.fill_pool();
        }
        while let Some(&id) = self.queue.front() {
            let Some(i) = self.idle_slot() else { break };
            self.queue.pop_front();
            self.post_call(i, id, now.take());
        }
        if self.start_failures >= START_FAILURE_LIMIT {
            self.fail_queue_after_start_failures();
        }
    }

    /// Workers keep dying before they answer anything (a `setup` that panics, say): forking
    /// more would loop forever, so the queued calls fail instead.
    fn fail_queue_after_start_failures(&mut self) {
        let now = clock::now_ns();
        let failures = self.start_failures;
        for id in std::mem::take(&mut self.queue) {
            self.finish(id, CallStatus::Failed, now, |_| {
                CallError::Pool(format!(
                    "{failures} workers in a row died before answering a call (see the log); no more are forked until the mediator is restarted"
                ))
            });
        }
    }

    /// An idle live worker, or an empty slot with a freshly forked one.
    fn idle_slot(&mut self) -> Option<usize> {
        let pool = self.pool.as_ref()?;
        let workers = self.config.workers.min(pool.slots.len());
        if let Some(i) = (0..workers).find(|&i| pool.slots[i].is_idle()) {
            return Some(i);
        }
        let empty = self.empty_slot()?;
        self.spawn(empty).then_some(empty)
    }

    /// Posts call `id` to slot `i`'s worker; `now`, if given, is a clock reading taken just
    /// before, used as the time the call was handed over.
    fn post_call(&mut self, i: usize, id: u64, now: Option<u64>) {
        let record = self.calls.get(&id).expect("queued calls have records");
        let (method, block, args_len) = (record.method, record.block, record.args_len);
        let seq = self.post_block(i, id, method, block, args_len, None);
        let pool = self.pool.as_ref().expect("started");
        let record = self.calls.get_mut(&id).expect("queued calls have records");
        if let Some(journal) = pool.journal(record.entry) {
            journal.write_progress(journal::PENDING, Some((i, seq)), None);
        }
        record.pid = pool.slots[i].pid();
        record.posted = Some((i, seq));
        record.set_status(CallStatus::Called, now.unwrap_or_else(clock::now_ns));
    }

    /// Posts call `id`, whose arguments are the first `args_len` bytes of `block` (or, when
    /// given, `inline`, the same bytes not yet copied there), to slot `i`'s worker. Returns the
    /// request's sequence number.
    fn post_block(
        &mut self,
        i: usize,
        id: u64,
        method: u32,
        block: Block,
        args_len: usize,
        inline: Option<&[u8]>,
    ) -> u32 {
        let pool = self.pool.as_mut().expect("started");
        let (offset, len) = (block.offset, args_len);
        // Small arguments ride in the request's cache line: the worker then never reads the
        // block, which stays in this process's cache. The block keeps them for the journal
        // and for a requeue.
        let mut small = [0u8; channel::INLINE_ARGS];
        let args = match inline {
            Some(bytes) => ArgsAt::Inline(bytes),
            // SAFETY: the block is this call's; no worker writes it before the call is posted.
            None => match unsafe { pool.region.payload(offset, len) } {
                Some(bytes) if len <= small.len() => {
                    small[..len].copy_from_slice(bytes);
                    ArgsAt::Inline(&small[..len])
                }
                _ => ArgsAt::Block(offset, len),
            },
        };
        let ret = (offset + len, block.len - len);
        pool.post_call(i, id, method, args, ret, self.config.timeout)
    }

    fn busy_count(&self) -> usize {
        self.pool.as_ref().map_or(0, Pool::busy_count)
    }

    /// Sets a call's final status and queues its callbacks.
    fn finish(
        &mut self,
        id: u64,
        status: CallStatus,
        at_ns: u64,
        error: impl FnOnce(&'static str) -> CallError,
    ) {
        let Some(record) = self.calls.get_mut(&id) else {
            return;
        };
        let floor = record.timings.latest_ns().unwrap_or(at_ns);
        record.set_status(status, at_ns.max(floor));
        if status == CallStatus::Returned {
            let t = &record.timings;
            if let (Some(called), Some(running), Some(returned)) = (
                t.entered_ns(CallStatus::Uncalled),
                t.entered_ns(CallStatus::Running),
                t.entered_ns(CallStatus::Returned),
            ) {
                let method = record.method;
                record_times(&mut self.timing, method, [called, running, returned]);
            }
        } else {
            record.error = Some(Box::new(error(Self::method_name(record.method))));
            // A failed call is final: a restarted program must not run it again.
            if let Some(journal) = self.pool.as_ref().and_then(|p| p.journal(record.entry)) {
                journal.clear();
            }
        }
        self.finished.push(id);
    }

    /// Slot `i`'s worker returned a `len`-byte value of `method`: the slot is free again, the
    /// method's next return reservation follows this one, and a large value is warned about.
    fn slot_returned(&mut self, i: usize, method: u32, len: usize) {
        self.ret_hints[method as usize] = len.max(MIN_RET);
        self.start_failures = 0;
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        pool.slots[i].busy = None;
        let allocation = pool.arena.size();
        self.warn_if_large(method, len, allocation);
    }

    /// Reads answers, reaps dead workers, enforces timeouts, retires worn workers, dispatches
    /// queued calls and runs callbacks. Never blocks. Returns how many calls finished.
    fn collect(&mut self) -> usize {
        self.collect_with(None)
    }

    /// [`Mediator::collect`], with `external` for the calls no callback of the mediator's
    /// takes.
    fn collect_with(&mut self, external: Option<&mut ExternalHandler<'_, W>>) -> usize {
        let now = self.now_ns();
        self.collect_with_at(external, now)
    }

    /// [`Mediator::collect_with`], with `now_ns`, a clock reading the caller just took, for the
    /// collection's periodic checks.
    fn collect_with_at(
        &mut self,
        external: Option<&mut ExternalHandler<'_, W>>,
        now_ns: u64,
    ) -> usize {
        self.settle();
        let Some(pool) = self.pool.as_mut() else {
            return 0;
        };
        self.collected_at = Some(now_ns);
        let now = to_instant(now_ns);
        let slots = pool.slots.len();
        let check_deaths = pool.death_check_due(now);
        if std::mem::take(&mut self.refill_due) {
            self.replace_dead();
        }
        for i in 0..slots {
            self.read_answer(i);
        }
        if check_deaths {
            self.reap_dead();
        }
        self.enforce_timeouts();
        self.retire_worn(now);
        self.dispatch_queued();
        let finished = self.fire_callbacks_with(external);
        // Released calls may have made the room a worker waits for; a worker that still finds
        // none, with no other call left to free any, fails its call.
        self.room_pass = true;
        for i in 0..slots {
            if self.pool.as_ref().is_some_and(|p| p.is_awaiting_room(i)) {
                self.read_answer(i);
            }
        }
        self.room_pass = false;
        // Callbacks may have retried calls.
        self.dispatch_queued();
        finished
    }

    /// The shortest way from an answer to a result, taken by `wait` when slot `i`'s worker
    /// answered the awaited call `id`: if the call returned and no `on_return` handler wants
    /// it, the result is decoded and the call released at once, with the bookkeeping of
    /// [`Mediator::read_answer`], [`Mediator::finish`] and [`Mediator::take_result`] that a
    /// delivered call needs and nothing else: one lookup instead of five, no "returned" state
    /// in the journal for a return that is delivered in the same breath, no trip through the
    /// callback queue. What can wait (statistics, freeing, the worker's wear) waits for
    /// [`Mediator::settle`]. `None`: anything else; the caller takes the general path.
    fn take_returned<R: 'static>(
        &mut self,
        i: usize,
        id: CallId<R>,
    ) -> Option<Result<R, CallError>> {
        if self.on_return.is_some() {
            return None;
        }
        // `wait` settled on entry; this keeps a second delivery from dropping the first's
        // bookkeeping should that ever change.
        if self.delivered.is_some() {
            self.settle();
        }
        let pool = self.pool.as_mut()?;
        let busy = pool.slots[i].busy.filter(|b| b.call == id.raw())?;
        let answer = pool.region.channel(i).answer(busy.seq)?;
        let len = answer.ret_len;
        if !answer.valid || answer.kind != Response::Returned as u32 || len > busy.ret.1 {
            return None;
        }
        let record = self.calls.get(&id.raw())?;
        let (method, entry, block, ret_block) =
            (record.method, record.entry, record.block, record.ret_block);
        // Errors the worker reported count now: `errors` and `stats` read them.
        for _ in 0..pool.take_worker_errors(i) {
            self.count_error(ErrorKind::Catchall, Some(i));
        }
        self.slot_returned(i, method, len);
        let pool = self.pool.as_mut().expect("started");
        let decoded = match &answer.inline {
            Some(bytes) => self.decoders.decode::<R>(method, &bytes[..len]),
            // SAFETY: the worker answered: it no longer writes the block.
            None => self.decoders.decode::<R>(
                method,
                unsafe { pool.region.payload(busy.ret.0, len) }.unwrap_or_default(),
            ),
        };
        let result = decoded.map_err(|source| CallError::Wire {
            method: Self::method_name(method),
            source,
        });
        // The rest waits for the next post (see `settle`); the block stays allocated until
        // then (the worker is done with it), and the decoded value no longer needs it. A persistent journal forgets the
        // call now, so that a parent killed before that does not run it again at recovery.
        if let Some(journal) = pool.journal(entry) {
            journal.clear();
        }
        self.delivered = Some(Delivered {
            id: id.raw(),
            slot: i,
            method,
            ran: answer.ran,
            held: Some((entry, block)),
            ret_block,
        });
        if !self.queue.is_empty() {
            self.settle();
            self.dispatch_queued();
        }
        Some(result)
    }

    /// The bookkeeping of the call `wait` delivered last, if it is still due: its times go to
    /// the statistics, its journal entry and blocks are freed, and its worker retires if that
    /// call wore it out. Runs after the next call is posted, so that its worker runs while
    /// the parent does this, and before anything that reads the pool's state (a collection,
    /// a dispatch from the queue, an allocation that finds no room, a shutdown).
    fn settle(&mut self) {
        let Some(d) = self.delivered.take() else {
            return;
        };
        let ran = d.ran;
        if let Some(times) = self
            .calls
            .remove_with(&d.id, |r| delivered_times(&r.timings, &ran))
        {
            record_times(&mut self.timing, d.method, times);
        }
        if let Some((entry, block)) = d.held {
            self.free_call(entry, block, d.ret_block);
        }
        self.retire_if_worn(d.slot, None);
    }

    /// Whether call `id` was delivered and only its bookkeeping is due (see [`Delivered`]):
    /// the mediator's views treat it as gone.
    fn is_delivered(&self, id: u64) -> bool {
        self.delivered.as_ref().is_some_and(|d| d.id == id)
    }

    /// The record of call `id`, unless it was delivered.
    fn record(&self, id: u64) -> Option<&CallRecord> {
        self.calls.get(&id).filter(|_| !self.is_delivered(id))
    }

    /// The short collection, after the answer of slot `i`'s worker woke us: that answer,
    /// then the queue and the callbacks.
    fn collect_answer(&mut self, i: usize) {
        self.read_answer(i);
        // A worker that reached its call or error limit with this answer gets no other call.
        self.retire_if_worn(i, None);
        self.dispatch_queued();
        self.fire_callbacks_with(None);
        // Callbacks may have retried calls.
        self.dispatch_queued();
    }

    /// Handles the answer of the worker in slot `i`, if it wrote one.
    fn read_answer(&mut self, i: usize) {
        let pool = self.pool.as_mut().expect("started");
        let Some(busy) = pool.slots[i].busy else {
            return;
        };
        let channel = pool.region.channel(i);
        let Some(answer) = channel.answer(busy.seq) else {
            return;
        };
        for _ in 0..pool.take_worker_errors(i) {
            self.count_error(ErrorKind::Catchall, Some(i));
        }
        let pool = self.pool.as_mut().expect("started");
        let record = self
            .calls
            .get_mut(&busy.call)
            .expect("busy calls have records");
        let called = record
            .timings
            .entered_ns(CallStatus::Called)
            .unwrap_or_else(clock::now_ns);
        let running = answer.ran.running_ns(called);
        record.timings.enter(CallStatus::Running, running);
        let finished = answer.ran.finished_ns(running);
        let method = record.method;
        let len = answer.ret_len;
        let kind = if answer.valid {
            Response::from_u32(answer.kind)
        } else {
            None
        };
        // The worker answered: it no longer writes the block.
        let text = |len: usize| {
            // SAFETY: see above.
            unsafe { pool.region.payload(busy.ret.0, len.min(busy.ret.1)) }
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        match kind {
            Some(Response::Returned) if len <= busy.ret.1 => {
                if let Some(bytes) = answer.inline {
                    // The value came inside the answer: put it where a returned value lies,
                    // for the journal and for `wait`.
                    // SAFETY: the reservation is this call's and the worker answered.
                    if let Some(dst) = unsafe { pool.region.payload_mut(busy.ret.0, len) } {
                        dst.copy_from_slice(&bytes[..len]);
                    }
                }
                record.ret = Some((busy.ret.0, len));
                if let Some(journal) = pool.journal(record.entry) {
                    journal.write_progress(journal::RETURNED, record.posted, record.ret);
                }
                // Give back what the reservation did not use.
                if let Some(rb) = record.ret_block {
                    record.block = pool.arena.shrink(record.block, record.args_len);
                    record.ret_block = Some(pool.arena.shrink(rb, len));
                } else {
                    record.block = pool.arena.shrink(record.block, record.args_len + len);
                }
                self.slot_returned(i, method, len);
                self.finish(busy.call, CallStatus::Returned, finished, |_| {
                    unreachable!("a returned call has no error")
                });
            }
            Some(Response::NeedSpace) => {
                if let Some(block) = pool.arena.alloc(len) {
                    record.ret_block = Some(block);
                    let seq = pool.post_request(
                        i,
                        Request::Space,
                        method,
                        ArgsAt::Block(0, 0),
                        (block.offset, block.len),
                        false,
                    );
                    pool.slots[i].busy = Some(Busy {
                        seq,
                        ret: (block.offset, block.len),
                        awaiting_room: false,
                        ..busy
                    });
                } else if len <= pool.arena.size() && (!self.room_pass || pool.others_running(i)) {
                    // Room may be freed when this collection delivers finished calls, or when
                    // other calls are done: ask again then (the call's timeout still runs).
                    if let Some(b) = pool.slots[i].busy.as_mut() {
                        b.awaiting_room = true;
                    }
                } else {
                    let (available, allocation) = (pool.arena.available(), pool.arena.size());
                    pool.slots[i].busy = None;
                    self.start_failures = 0;
                    self.finish(busy.call, CallStatus::Failed, finished, |method| {
                        CallError::ReturnTooLarge {
                            method,
                            needed: len,
                            available,
                            allocation,
                        }
                    });
                }
            }
            Some(Response::Panicked) => {
                let message = text(len);
                let pid = record.pid.unwrap_or(0);
                // The object may be half-updated: replace the process.
                pool.clear(i);
                self.start_failures = 0;
                self.count_error(ErrorKind::Catchall, None);
                self.finish(busy.call, CallStatus::Panicked, finished, |method| {
                    CallError::Panicked {
                        method,
                        pid,
                        message,
                    }
                });
                self.refill_due = true;
            }
            Some(Response::WireError) => {
                let message = text(len);
                pool.slots[i].busy = None;
                self.start_failures = 0;
                self.count_error(ErrorKind::Catchall, Some(i));
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Remote(message),
                    }
                });
            }
            Some(Response::Corrupted) => {
                // The worker refused a request that failed its checksum.
                pool.slots[i].busy = None;
                self.count_error(ErrorKind::Corruption, Some(i));
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Corrupted(
                            "the worker received a request that failed validation".into(),
                        ),
                    }
                });
            }
            _ => {
                // An answer that fails validation: the channel cannot be trusted, so the
                // worker is replaced.
                let detail = format!(
                    "answer of kind {} with length {len} for a reservation of {} bytes, checksum {}",
                    answer.kind,
                    busy.ret.1,
                    if answer.valid { "valid" } else { "invalid" }
                );
                pool.clear(i);
                self.count_error(ErrorKind::Corruption, None);
                log::warn!(target: &self.alias, "call {}: corrupted {detail}", busy.call);
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Corrupted(detail),
                    }
                });
                self.refill_due = true;
            }
        }
    }

    /// Reaps the workers that died and settles the calls they held: a call the worker had
    /// not started goes back to the front of the queue (up to [`MAX_REQUEUES`] times); a call
    /// it was running ends as [`CallStatus::Crashed`].
    fn reap_dead(&mut self) {
        let dead = self.pool.as_mut().expect("started").dead_slots();
        if dead.is_empty() {
            return;
        }
        for (i, cause) in dead {
            // A worker can answer and then die: take the answer first.
            self.read_answer(i);
            let pool = self.pool.as_mut().expect("started");
            if pool.slots[i].child.is_none() {
                continue; // Its answer (a panic, say) already settled the slot.
            }
            let given = pool.calls_given(i);
            let (pid, busy) = pool.clear(i);
            let Some(b) = busy else {
                if cause == ExitCause::Exited(this_worker::EXIT_FATAL) {
                    log::info!(target: &self.alias, "worker {pid} exited after fatal_error(); replacing it");
                } else {
                    log::warn!(target: &self.alias, "idle worker {pid} {cause}");
                }
                if given == 0 {
                    self.start_failures += 1;
                }
                continue;
            };
            let started = pool.region.channel(i).started(b.seq).is_some()
                || self
                    .calls
                    .get(&b.call)
                    .is_some_and(|r| r.ret_block.is_some());
            self.count_error(ErrorKind::Communication, None);
            if started {
                log::warn!(target: &self.alias, "worker {pid} {cause} while running call {}", b.call);
                self.start_failures = 0;
                self.finish(b.call, CallStatus::Crashed, clock::now_ns(), |method| {
                    CallError::Crashed { method, pid, cause }
                });
            } else {
                self.start_failures += 1;
                self.requeue_unstarted(b.call, pid, cause);
            }
        }
        self.refill_due = true;
    }

    /// A call whose worker died before starting it goes back to the front of the queue.
    fn requeue_unstarted(&mut self, id: u64, pid: i32, cause: ExitCause) {
        let Some(record) = self.calls.get_mut(&id) else {
            return;
        };
        if record.retries >= MAX_REQUEUES {
            log::error!(target: &self.alias,
                "call {id}: its worker died before starting it {} times (last: {pid} {cause}); cancelled",
                record.retries + 1);
            let retries = record.retries;
            self.finish(id, CallStatus::Cancelled, clock::now_ns(), |method| {
                CallError::Cancelled {
                    method,
                    reason: format!(
                        "its worker died before starting it {} times (last: worker {pid} {cause})",
                        retries + 1
                    ),
                }
            });
            return;
        }
        log::info!(target: &self.alias, "call {id}: worker {pid} {cause} before starting it; requeued");
        record.retries += 1;
        record.status = CallStatus::Uncalled;
        record.posted = None;
        record.pid = None;
        record.timings.enter(CallStatus::Uncalled, clock::now_ns());
        if let Some(journal) = self.pool.as_ref().and_then(|p| p.journal(record.entry)) {
            journal.write_call(
                id,
                record.method,
                record.retries,
                (record.block.offset, record.args_len),
            );
        }
        self.queue.push_front(id);
    }

    /// Keeps the pool at size after a death, unless the strategy is lazy.
    fn replace_dead(&mut self) {
        if self.config.strategy != ForkStrategy::Lazy {
            self.fill_pool();
        }
    }

    /// Kills the workers whose call ran past its deadline.
    fn enforce_timeouts(&mut self) {
        let Some(timeout) = self.config.timeout else {
            return;
        };
        let now = Instant::now();
        let pool = self.pool.as_mut().expect("started");
        let expired: Vec<usize> = (0..pool.slots.len())
            .filter(|&i| {
                pool.slots[i]
                    .busy
                    .is_some_and(|b| b.deadline.is_some_and(|d| d <= now))
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        let now_ns = clock::now_ns();
        for i in expired {
            // An answer that arrived in time wins over the deadline.
            self.read_answer(i);
            let pool = self.pool.as_mut().expect("started");
            if pool.slots[i].busy.is_none() {
                continue;
            }
            let (pid, busy) = pool.clear(i);
            let Some(b) = busy else { continue };
            log::warn!(target: &self.alias, "call {} ran past its timeout of {timeout:?}; killed worker {pid}", b.call);
            self.finish(b.call, CallStatus::Timeout, now_ns, |method| {
                CallError::Timeout {
                    method,
                    pid,
                    timeout,
                }
            });
        }
        self.refill_due = true;
    }

    /// Retires idle workers past their recycling or error limits; each is replaced first.
    fn retire_worn(&mut self, now: Instant) {
        let slots = self.pool.as_ref().map_or(0, |p| p.slots.len());
        // By index, not through a collected list: this runs at every collection, and
        // retiring one worker does not change whether another is worn.
        for i in 0..slots {
            self.retire_if_worn(i, Some(now));
        }
    }

    /// Retires slot `i`'s worker if it is worn at `now` (see [`Pool::is_worn`]).
    fn retire_if_worn(&mut self, i: usize, now: Option<Instant>) {
        let pool = self.pool.as_mut().expect("started");
        if !pool.is_worn(i, now) {
            return;
        }
        let old = pool.slots[i].pid().unwrap_or(0);
        match pool.retire(i, &mut self.value) {
            Ok(new) => {
                log::debug!(target: &self.alias, "worker {old} retired; {new} took its place")
            }
            Err(e) => {
                log::error!(target: &self.alias, "worker {old} retired; cannot fork its replacement: {e}");
                self.count_error(ErrorKind::Communication, None);
            }
        }
    }

    /// Runs the callbacks of finished calls in the order they finished, then releases the
    /// calls no one waits for. Returns how many calls it handled.
    fn fire_callbacks(&mut self) -> usize {
        self.fire_callbacks_with(None)
    }

    /// [`Mediator::fire_callbacks`], with `external` for the calls no callback of the
    /// mediator's takes.
    fn fire_callbacks_with(&mut self, mut external: Option<&mut ExternalHandler<'_, W>>) -> usize {
        let mut finished = std::mem::take(&mut self.finished);
        for &id in &finished {
            let Some(record) = self.calls.get(&id) else {
                continue;
            };
            let own = match record.status {
                CallStatus::Returned => self.on_return.as_deref_mut(),
                CallStatus::Timeout => self.on_timeout.as_deref_mut(),
                _ => self.on_error.as_deref_mut(),
            };
            let handler: Option<&mut ExternalHandler<'_, W>> = match own {
                Some(h) => Some(h),
                None => external.as_deref_mut(),
            };
            if let (Some(handler), Some(pool)) = (handler, self.pool.as_ref()) {
                // SAFETY: the call is final: no worker writes its blocks any more.
                let args = unsafe { pool.region.payload(record.block.offset, record.args_len) }
                    .unwrap_or_default();
                let ret = record
                    .ret
                    // SAFETY: as above.
                    .and_then(|(off, len)| unsafe { pool.region.payload(off, len) });
                let call = Call {
                    record,
                    args,
                    ret,
                    retry: Cell::new(false),
                    _w: PhantomData,
                };
                handler(&call, Log::new(&self.alias));
                if call.retry.get() {
                    self.requeue(id);
                } else if !record.awaited {
                    // Handled: the callback was the call's one delivery.
                    self.release(id);
                }
            } else if let Some(error) = &record.error {
                log::warn!(target: &self.alias, "call {id}: {error}");
            }
        }
        let handled = finished.len();
        // Hand the buffer back, so that the next call to finish does not allocate a new one.
        if self.finished.is_empty() {
            finished.clear();
            self.finished = finished;
        }
        handled
    }

    /// Clears a journal an earlier run left, when recovery is off.
    fn purge_journal(&mut self) {
        let pool = self.pool.as_ref().expect("started");
        let mut purged = 0;
        for i in 0..pool.region.entries() {
            let entry = pool.region.entry(i);
            if entry.read(i).is_some() {
                purged += 1;
            }
            entry.clear();
        }
        if purged > 0 {
            log::info!(target: &self.alias,
                "removed {purged} calls an earlier run left in {} (start with recovery to complete them instead)",
                pool.region.name());
        }
    }

    /// Rebuilds the calls an earlier run left in the journal: queued and running ones are
    /// queued again in call order (running ones with one more retry), returned ones wait for
    /// their `on_return`.
    fn recover_calls(&mut self) {
        let pool = self.pool.as_mut().expect("started");
        let mut found = Vec::new();
        let mut corrupted = 0;
        for i in 0..pool.region.entries() {
            match pool.region.entry(i).read(i) {
                None => {}
                Some(Ok(r)) => found.push(r),
                Some(Err(e)) => {
                    log::warn!(target: &self.alias, "recovery: {e}; that call is lost");
                    pool.region.entry(i).clear();
                    corrupted += 1;
                }
            }
        }
        found.sort_by_key(|r| r.id);
        let (mut queued, mut rerun, mut returned) = (0, 0, 0);
        let now = clock::now_ns();
        for r in found {
            let method_ok = (r.method as usize) < W::METHODS.len();
            let journal::Progress { state, posted, ret } =
                r.progress.unwrap_or(journal::Progress {
                    state: journal::PENDING,
                    posted: None,
                    ret: None,
                });
            // The return value right after the arguments: one block; elsewhere: two.
            let (block, ret_block) = match ret {
                Some((off, len)) if state == journal::RETURNED && off == r.args.0 + r.args.1 => {
                    (pool.arena.reserve(r.args.0, r.args.1 + len), None)
                }
                Some((off, len)) if state == journal::RETURNED => (
                    pool.arena.reserve(r.args.0, r.args.1),
                    Some(pool.arena.reserve(off, len)),
                ),
                _ => (pool.arena.reserve(r.args.0, r.args.1), None),
            };
            let (Some(block), true, true) =
                (block, method_ok, ret_block.is_none_or(|b| b.is_some()))
            else {
                log::warn!(target: &self.alias,
                    "recovery: call {} has an invalid or overlapping record; it is lost", r.id);
                if let Some(b) = block {
                    pool.arena.free(b);
                }
                if let Some(Some(b)) = ret_block {
                    pool.arena.free(b);
                }
                pool.region.entry(r.index).clear();
                corrupted += 1;
                continue;
            };
            self.free_entries.retain(|&e| e != r.index);
            let started = r.progress.is_none()
                || posted.is_some_and(|(slot, seq)| {
                    slot >= pool.slots.len() || pool.region.channel(slot).started(seq).is_some()
                });
            let mut record = CallRecord {
                id: r.id,
                method: r.method,
                status: CallStatus::Uncalled,
                retries: r.retries,
                pid: None,
                timings: Timings::default(),
                error: None,
                block,
                args_len: r.args.1,
                ret: None,
                ret_block: ret_block.flatten(),
                posted: None,
                entry: r.index,
                awaited: false,
            };
            record.timings.enter(CallStatus::Uncalled, now);
            if state == journal::RETURNED {
                record.ret = ret;
                record.set_status(CallStatus::Returned, now);
                self.finished.push(r.id);
                returned += 1;
            } else {
                if started {
                    record.retries += 1;
                    rerun += 1;
                } else {
                    queued += 1;
                }
                pool.region
                    .entry(r.index)
                    .write_call(r.id, r.method, record.retries, r.args);
                self.queue.push_back(r.id);
            }
            self.next_id = self.next_id.max(r.id + 1);
            self.calls.insert(r.id, record);
        }
        for _ in 0..corrupted {
            self.count_error(ErrorKind::Corruption, None);
        }
        let pool = self.pool.as_ref().expect("started");
        log::info!(target: &self.alias,
            "recovered from {}: {queued} queued calls, {rerun} that were running (run again, retries + 1), {returned} returned and not yet delivered, {corrupted} lost to corruption",
            pool.region.name());
    }

    /// Puts a finished call back in the queue with one more retry and a clean state.
    fn requeue(&mut self, id: u64) {
        if self.shutting_down {
            log::warn!(target: &self.alias, "call {id} not retried: the mediator is shutting down");
            return;
        }
        let Some(record) = self.calls.get_mut(&id) else {
            return;
        };
        if let (Some(block), Some(pool)) = (record.ret_block.take(), self.pool.as_mut()) {
            pool.arena.free(block);
        }
        record.retries += 1;
        if let Some(journal) = self.pool.as_ref().and_then(|p| p.journal(record.entry)) {
            journal.write_call(
                id,
                record.method,
                record.retries,
                (record.block.offset, record.args_len),
            );
        }
        record.status = CallStatus::Uncalled;
        record.error = None;
        record.ret = None;
        record.pid = None;
        record.posted = None;
        record.timings = Timings::default();
        record.timings.enter(CallStatus::Uncalled, clock::now_ns());
        self.queue.push_back(id);
    }

    /// Frees a finished call's shared memory and forgets it.
    fn release(&mut self, id: u64) {
        if let Some(record) = self.calls.remove(&id) {
            self.free_record(&record);
        }
    }

    /// Frees the shared memory of a call taken out of `calls`.
    fn free_record(&mut self, record: &CallRecord) {
        self.free_call(record.entry, record.block, record.ret_block);
    }

    /// Frees a call's journal entry and payload blocks.
    fn free_call(&mut self, entry: usize, block: Block, ret_block: Option<Block>) {
        if let Some(pool) = self.pool.as_mut() {
            if let Some(journal) = pool.journal(entry) {
                journal.clear();
            }
            self.free_entries.push(entry);
            pool.arena.free(block);
            if let Some(b) = ret_block {
                pool.arena.free(b);
            }
        }
    }

    /// Takes the result of a finished call out of the mediator.
    fn take_result<R: 'static>(&mut self, id: CallId<R>) -> Result<R, CallError> {
        let raw = id.raw();
        let record = self.calls.remove(&raw).ok_or(CallError::UnknownCall(raw))?;
        let result = match (record.status, record.ret, self.pool.as_ref()) {
            (CallStatus::Returned, Some((off, len)), Some(pool)) => {
                // SAFETY: the call returned: the worker no longer writes its block.
                let bytes = unsafe { pool.region.payload(off, len) }.unwrap_or_default();
                self.decoders
                    .decode::<R>(record.method, bytes)
                    .map_err(|source| CallError::Wire {
                        method: Self::method_name(record.method),
                        source,
                    })
            }
            _ => Err(record
                .error
                .as_deref()
                .cloned()
                .unwrap_or(CallError::UnknownCall(raw))),
        };
        // Freed after decoding: until then the bytes must stay where they are.
        self.free_record(&record);
        result
    }
}

/// A delivered call's times from its record's and its answer's: created, started running,
/// answered (CLOCK_MONOTONIC nanoseconds).
fn delivered_times(timings: &Timings, ran: &Ran) -> [u64; 3] {
    let uncalled = timings.entered_ns(CallStatus::Uncalled).unwrap_or(0);
    let called = timings.entered_ns(CallStatus::Called).unwrap_or(uncalled);
    let running = ran.running_ns(called);
    [uncalled, running, ran.finished_ns(running)]
}

/// Adds a returned call's times to its method's statistics: waiting from `uncalled` to
/// `running`, running from there to `returned` (all CLOCK_MONOTONIC nanoseconds).
fn record_times(
    timing: &mut [(Recorder, Recorder)],
    method: u32,
    [uncalled, running, returned]: [u64; 3],
) {
    if let Some((queue, run)) = timing.get_mut(method as usize) {
        queue.record_ns(running.saturating_sub(uncalled));
        run.record_ns(returned.saturating_sub(running));
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
        self.pool.as_ref().and_then(Pool::next_deadline)
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

    fn start_pool(&mut self) -> Result<(), CallError> {
        Mediator::start(self)
    }
}

impl<W: Worker> Sleep for Mediator<W> {
    fn begin_sleep(&mut self, fds: &mut Vec<std::os::fd::RawFd>, _: Token) -> bool {
        match self.pool.as_mut() {
            Some(pool) => pool.begin_sleep(fds),
            None => true,
        }
    }

    fn end_sleep(&mut self, _: Token) {
        if let Some(pool) = self.pool.as_mut() {
            pool.end_sleep();
        }
    }
}

impl<W: Worker> Drop for Mediator<W> {
    /// Shuts down; a persistent mediator suspends instead, keeping unfinished calls.
    fn drop(&mut self) {
        if self.config.persist.is_some() {
            self.suspend();
        } else {
            self.shutdown();
        }
    }
}
