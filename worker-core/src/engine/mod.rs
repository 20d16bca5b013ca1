//! The engine: everything the parent does for one pool of workers, whatever face drives it
//! (the seed's [`crate::Mediator`] today). It owns the settings, the worker value it forks
//! from, and the rooms that own the state: the pool of processes (`pool`), the call table
//! (`table`), the payload room (`room`) and the health counts (`supervise`).
//!
//! A call's path: the face's proxy calls [`Engine::submit_encoded`], which encodes the
//! arguments straight into a block of shared memory and posts the call to an idle worker, or
//! queues it. [`Engine::collect`] reads the answers (each a pure step, see `answer`), notices
//! dead workers and expired timeouts (see `supervise`), dispatches queued calls and hands
//! finished calls to the face's [`Sink`]. [`Engine::wait`] takes one call's result, through a
//! short path when its worker answered with nothing else to do. Between events the parent
//! sleeps in `poll(2)` on an eventfd and the workers' pidfds, woken by an answer, a death, or
//! the nearest deadline.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::Serialize;

mod answer;
mod handles;
mod history;
mod recovery;
mod room;
mod supervise;
mod table;
mod wait;

use self::answer::Outcome;
pub(crate) use self::handles::Progress;
use self::history::{History, Past};
use self::room::{NoRoom, Room};
use self::supervise::Supervisor;
use self::table::CallTable;
use self::wait::{Delivered, delivered_times};
use crate::arena::{Block, Blocks, Span};
use crate::call::{Call, CallId, CallRecord, CallStatus, Decoders, Log, NO_ENTRY, Timings};
use crate::channel::{self, ArgsAt, PostedAt, Response};
use crate::clock;
use crate::clock::to_instant;
use crate::config::{Config, ForkStrategy};
use crate::error::{
    CallError, CancelReason, ErrorCounts, ErrorKind, PoolError, StartError, SubmitError, WireError,
};
use crate::journal;
use crate::pool::{Busy, Pool};
use crate::process;
use crate::stats::{self, MethodStats, Outcomes, Recorder, Stats};
use crate::wire;
use crate::worker::Worker;

/// How many times a call is requeued after its worker died before starting it.
pub const MAX_REQUEUES: u32 = 3;

/// Where finished calls go: the face's callbacks.
pub(crate) trait Sink<W: Worker> {
    /// Whether returned calls go to a callback (then `wait` does not take its short path,
    /// which delivers a return without one).
    fn takes_returns(&self) -> bool;
    /// Hands a finished call to the callback for its status. False if there is none.
    fn deliver(&mut self, call: &Call<'_, W>, log: Log<'_>) -> bool;
}

// An engine may move to another thread with its worker value, so that a face can drive it
// from a thread of its own. (The seed's `Mediator` stays `!Send` by a marker: its workers'
// parent-death signal follows the thread that forked them.)
const _: () = {
    fn send<T: Send>() {}
    #[allow(dead_code)]
    fn engine_is_send<W: Worker + Send>() {
        send::<Engine<W>>();
        send::<Configured<W>>();
    }
};

/// What a mediator keeps whether its pool runs or not: its name, the value workers are
/// forked from, the settings, and what outlives one run of the pool (health counts,
/// statistics, the id counter, the return-size hints).
pub(crate) struct Configured<W: Worker> {
    pub(crate) alias: String,
    /// The value workers are forked from (and the face's `inline()`).
    pub(crate) value: W,
    pub(crate) config: Config,
    /// Error counts, the start-failure breaker, replacements due.
    health: Supervisor,
    /// Per method: queue waits and run times.
    timing: Vec<(Recorder, Recorder)>,
    /// Per method: how calls ended.
    outcomes: Vec<Outcomes>,
    /// When the pool last started.
    started_at: Option<Instant>,
    /// Calls made so far: ids stay unique across restarts.
    calls: CallTable,
    /// Blocks, journal entries (none until the pool starts), return-size hints.
    room: Room,
    /// How each method's return value is decoded (see [`Decoders`]).
    pub(crate) decoders: Decoders,
    /// The most recent released calls, for `status` (see `history`).
    history: History,
    /// Set by a face that starts the pool from a thread of its own (the shared pool): the
    /// program is threaded by design then, and the fork is made safe for it (see
    /// `process::fork_child`), so starting in a threaded process is not warned about.
    pub(crate) own_thread: bool,
}

impl<W: Worker> Configured<W> {
    /// A mediator's state for `value` under the name `alias`, before its pool starts.
    pub(crate) fn new(alias: String, value: W) -> Self {
        Configured {
            alias,
            value,
            config: Config::default(),
            health: Supervisor::default(),
            timing: vec![Default::default(); W::METHODS.len()],
            outcomes: vec![Outcomes::default(); W::METHODS.len()],
            started_at: None,
            calls: CallTable::default(),
            room: Room::new(W::METHODS.len()),
            decoders: Decoders::default(),
            history: History::default(),
            own_thread: false,
        }
    }

    /// Remembers the status and timings of the last `calls` released calls (see `history`).
    pub(crate) fn status_history(&mut self, calls: usize) {
        self.history.set_capacity(calls);
    }

    /// What the history remembers of call `id`: its status, worker and timings.
    pub(crate) fn past(&self, id: u64) -> Option<(CallStatus, Option<i32>, &Timings)> {
        self.history.get(id).map(|p| (p.status, p.pid, &p.timings))
    }

    /// Errors counted since the mediator was made, by kind.
    pub(crate) fn errors(&self) -> ErrorCounts {
        self.health.errors()
    }

    /// Runs the worker's `check_environment` (user code: before anything else of a start).
    pub(crate) fn check(&self) -> Result<(), StartError> {
        let problems = self.value.check_environment();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StartError::Environment(problems))
        }
    }

    /// Whether `method`'s calls are short (see [`SHORT_CALL_NS`]), by their mean run time.
    #[inline]
    fn is_short(&self, method: u32) -> bool {
        self.timing
            .get(method as usize)
            .and_then(|(_, running)| running.mean_ns_after(SHORT_SAMPLES))
            .is_some_and(|mean| mean <= SHORT_CALL_NS)
    }

    /// The statistics with no pool running.
    pub(crate) fn stats(&self) -> Stats {
        self.stats_with(&self.timing, &self.outcomes, Vec::new(), 0, 0, (0, 0))
    }

    /// The statistics, given what only a running pool knows.
    #[allow(clippy::too_many_arguments)]
    fn stats_with(
        &self,
        timing: &[(Recorder, Recorder)],
        outcomes: &[Outcomes],
        pids: Vec<i32>,
        queued: usize,
        running: usize,
        shared_memory: (usize, usize),
    ) -> Stats {
        Stats {
            alias: self.alias.clone(),
            uptime: self.started_at.map_or(Duration::ZERO, |t| t.elapsed()),
            workers: pids.len(),
            configured_workers: self.config.workers,
            queued,
            running,
            methods: W::METHODS
                .iter()
                .zip(timing.iter())
                .zip(outcomes.iter())
                .map(|((&method, (called, running)), &outcomes)| MethodStats {
                    method,
                    called: called.summary(),
                    running: running.summary(),
                    outcomes,
                })
                .collect(),
            errors: self.health.errors(),
            parent_rss_kib: stats::rss_kib(0),
            worker_rss_kib: pids.iter().map(|&p| (p, stats::rss_kib(p))).collect(),
            shared_memory,
            memory_limit: None,
        }
    }
}

/// The parent's side of a running pool of workers for the methods of `W`.
pub(crate) struct Engine<W: Worker> {
    base: Configured<W>,
    pool: Pool,
    calls: CallTable,
    /// Blocks, journal entries, return-size hints.
    room: Room,
    /// Set while `shutdown` runs: retries are refused.
    shutting_down: bool,
    /// Set while `collect` gives workers waiting for room their last chance.
    room_pass: bool,
    /// When the last full collection ran (CLOCK_MONOTONIC nanoseconds).
    collected_at: Option<u64>,
    /// The call `wait` delivered last, whose bookkeeping waits for the next call's post (see
    /// [`Engine::settle`]).
    delivered: Option<Delivered>,
    /// Where a return is copied out of shared memory to be decoded (see `wait`), kept for
    /// the next one: at most the payload area's size.
    scratch: Vec<u8>,
    /// Where the arguments and the return of a finished call are copied for the callbacks'
    /// view, kept for the next one.
    views: (Vec<u8>, Vec<u8>),
    /// Set by a face whose callers must not block inside the engine (the shared pool): a
    /// call that finds no room fails at once instead of waiting for running calls to free
    /// some (the face then waits outside the engine).
    pub(crate) never_wait_for_room: bool,
    /// Until when (CLOCK_MONOTONIC nanoseconds) queued calls wait for a worker running a
    /// short call rather than go to another, idle one (see [`Engine::held_for_short_call`]);
    /// a deadline for the parent's sleep.
    held_until: Option<u64>,
}

/// A method whose calls ran this long or less on average (over [`SHORT_SAMPLES`] calls) is
/// short: the parent's own work per call (posting, reading the answer, bookkeeping) is of
/// the same order, so a second worker running such calls adds no speed, only a process that
/// competes with the parent for the CPUs.
const SHORT_CALL_NS: u64 = 5_000;
/// Calls of a method measured before it counts as short.
const SHORT_SAMPLES: u64 = 16;
/// How long a short call may keep the queue from an idle worker: past it (a short method's
/// call that hangs, or a worker the scheduler put aside), queued calls go to the idle
/// worker. 20 us let the second worker in too often on a loaded machine (two workers at
/// 0.85-0.92x of one in the full table, against 1.10-1.15x with 100 us).
const HOLD_NS: u64 = 100_000;

impl<W: Worker> Engine<W> {
    /// The state the engine started from, as it is now.
    pub(crate) fn base(&self) -> &Configured<W> {
        &self.base
    }

    /// The state the engine started from, to change what may change while the pool runs.
    pub(crate) fn base_mut(&mut self) -> &mut Configured<W> {
        &mut self.base
    }

    /// How many workers the pool has room for.
    pub(crate) fn size(&self) -> usize {
        self.pool.size()
    }

    /// The nearest deadline the pool must be collected at: a running call's timeout, or an
    /// idle worker's exit (see `supervise`'s `Engine::retire_idle`).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let idle = self.idle_deadline();
        let held = self.held_until.map(to_instant);
        self.pool
            .next_deadline()
            .into_iter()
            .chain(idle)
            .chain(held)
            .min()
    }

    /// See [`crate::Drive::begin_sleep`].
    pub(crate) fn begin_sleep(&mut self, fds: &mut Vec<std::os::fd::RawFd>) -> bool {
        self.pool.begin_sleep(fds)
    }

    /// See [`crate::Drive::end_sleep`].
    pub(crate) fn end_sleep(&mut self) {
        self.pool.end_sleep();
    }

    /// Starts a pool for `base`, whose [`Configured::check`] passed: creates the shared
    /// memory, starts the fork server, recovers or purges an earlier run's journal
    /// for a persistent mediator and, with [`ForkStrategy::Aggressive`], forks every worker.
    /// Runs no user code in this process. On failure `base` comes back unchanged.
    pub(crate) fn start(
        mut base: Configured<W>,
    ) -> Result<Engine<W>, Box<(Configured<W>, StartError)>> {
        if let Some(threads) = process::thread_count().filter(|&n| n > 1 && !base.own_thread) {
            log::warn!(target: &base.alias,
                "starting the fork server in a process with {threads} threads: it can inherit a lock another thread held at the fork; call start() before starting threads");
        }
        let (pool, matching) = match Pool::create(&base.alias, &base.config, &mut base.value) {
            Ok(created) => created,
            Err(e) => return Err(Box::new((base, StartError::Pool(e)))),
        };
        let mut room = std::mem::replace(&mut base.room, Room::new(0));
        room.start(
            pool.region().arena_size(),
            pool.region().entries(),
            pool.region().id(),
        );
        let calls = std::mem::take(&mut base.calls);
        base.health.restart();
        base.started_at = Some(Instant::now());
        let mut engine = Engine {
            base,
            pool,
            calls,
            room,
            shutting_down: false,
            room_pass: false,
            collected_at: None,
            delivered: None,
            scratch: Vec::new(),
            views: (Vec::new(), Vec::new()),
            never_wait_for_room: false,
            held_until: None,
        };
        if matching {
            if engine.base.config.recover {
                let found = recovery::recover(
                    &engine.pool,
                    &mut engine.room,
                    &mut engine.calls,
                    W::METHODS.len(),
                    &engine.base.alias,
                );
                for _ in 0..found.corrupted {
                    engine.count_error(ErrorKind::Corruption, None);
                }
            } else {
                recovery::purge(&engine.pool, &engine.base.alias);
            }
        }
        if engine.base.config.strategy == ForkStrategy::Aggressive {
            engine.fill_pool();
        }
        Ok(engine)
    }

    /// Drops the pool (after [`Engine::shutdown`] or [`Engine::suspend`]): what outlives it
    /// goes back to the configured state. Runs no user code.
    pub(crate) fn stop(self) -> Configured<W> {
        let Engine {
            mut base,
            pool,
            mut calls,
            room,
            ..
        } = self;
        // Dropping the pool stops and reaps the workers, then removes the shared memory. The
        // finished results left point into it, so they go too.
        drop(pool);
        for record in calls.records().filter(|r| r.status.is_final()) {
            base.history.add(record.id, Past::of(record));
        }
        calls.clear();
        base.calls = calls;
        base.room = room;
        base
    }

    /// True when a call made now would start at once: nothing is queued and a worker is idle
    /// (or one more may be forked).
    pub(crate) fn is_idle(&self) -> bool {
        if !self.calls.nothing_queued() {
            return false;
        }
        let pool = &self.pool;
        let workers = self.base.config.workers.min(pool.size());
        let mut live = 0;
        for i in 0..workers {
            live += usize::from(pool.has_worker(i));
            let free = match pool.busy(i) {
                None => pool.has_worker(i),
                Some(_) => pool
                    .answer(i)
                    .is_some_and(|(_, a)| a.kind() == Some(Response::Returned)),
            };
            if free {
                return true;
            }
        }
        live < workers
    }

    /// The status of a call: from its record while the engine holds it, then from the
    /// history of released calls; `None` if the id is unknown or older than the history.
    pub(crate) fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        let raw = id.raw();
        let Some(record) = self.record(raw) else {
            if self.is_delivered(raw) {
                return Some(CallStatus::Returned);
            }
            return self.base.past(raw).map(|(status, ..)| status);
        };
        if record.status == CallStatus::Called && self.started_ns(record).is_some() {
            return Some(CallStatus::Running);
        }
        Some(record.status)
    }

    /// When a call entered each status so far, or `None` if the id is unknown (or older than
    /// the history of released calls).
    pub(crate) fn timings<R>(&self, id: CallId<R>) -> Option<Timings> {
        let raw = id.raw();
        let Some(record) = self.record(raw) else {
            if let Some(timings) = self.delivered_timings(raw) {
                return Some(timings);
            }
            return self.base.past(raw).map(|(.., timings)| timings.clone());
        };
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
    /// call is unknown (or older than the history) or no worker took it yet.
    pub(crate) fn worker_pid<R>(&self, id: CallId<R>) -> Option<i32> {
        match self.calls.get(id.raw()) {
            Some(record) => record.pid,
            None => self.base.past(id.raw()).and_then(|(_, pid, _)| pid),
        }
    }

    /// Marks call `id` as held: a handle to it exists, so once its callbacks ran its result
    /// stays until [`Engine::take_result`] takes it or [`Engine::drop_handle`] lets it go.
    /// A face calls it right after submitting the call.
    pub(crate) fn hold(&mut self, id: u64) {
        if let Some(record) = self.calls.get_mut(id) {
            record.held = true;
        }
    }

    /// The handle of call `id` was dropped without taking its result: a call that is final
    /// and whose callbacks ran is released now; any other is released after its callbacks
    /// (it runs on; cancelling it is the face's business).
    pub(crate) fn drop_handle(&mut self, id: u64) {
        if self.is_delivered(id) {
            return;
        }
        let Some(record) = self.calls.get_mut(id) else {
            return;
        };
        record.held = false;
        if record.status.is_final() && !self.calls.awaits_callbacks(id) {
            self.release(id);
        }
    }

    /// Calls queued or running.
    pub(crate) fn pending(&self) -> usize {
        self.calls
            .records()
            .filter(|r| !r.status.is_final() && !self.is_delivered(r.id))
            .count()
    }

    /// The process ids of the live workers.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.pool.pids().collect()
    }

    /// A snapshot of the statistics: per method, the time calls waited for a worker and ran
    /// (mean, median, p90, p99, count), error counts, processes and memory. Its `Display` is
    /// the seed's runtime statistics table.
    pub(crate) fn stats(&self) -> Stats {
        // The times of a delivered call whose bookkeeping is still due count already.
        let mut timing = std::borrow::Cow::Borrowed(&self.base.timing);
        let mut outcomes = std::borrow::Cow::Borrowed(&self.base.outcomes);
        if let Some(d) = &self.delivered
            && let Some(r) = self.calls.get(d.id)
        {
            let times = delivered_times(&r.timings, &d.ran);
            record_times(timing.to_mut(), d.method, times);
            if let Some(o) = outcomes.to_mut().get_mut(d.method as usize) {
                o.count(CallStatus::Returned);
            }
        }
        // A delivered call's block is as good as free (see `settle`).
        let held = self.delivered.as_ref().map_or(0, |d| {
            d.held.as_ref().map_or(0, |(_, b)| b.len) + d.ret_block.as_ref().map_or(0, |b| b.len)
        });
        let shared_memory = (
            self.room.size(),
            self.room.size() - self.room.available() - held,
        );
        let mut stats = self.base.stats_with(
            &timing,
            &outcomes,
            self.pids(),
            self.calls.queued(),
            self.busy_count(),
            shared_memory,
        );
        stats.memory_limit = self.pool.memory_mechanism();
        stats
    }

    /// Runs a finished call again: same id and arguments, [`Call::retries`] one higher, its
    /// previous status, result and timings cleared; it goes to the back of the queue.
    ///
    /// The call must still be held: finished, its callbacks ran, and its handle lives (see
    /// [`Engine::keep`]; its arguments go back into shared memory). Inside a callback, use
    /// [`Call::retry`] instead.
    pub(crate) fn retry(&mut self, id: u64) -> Result<(), CallError> {
        self.settle();
        match self.calls.get(id) {
            Some(record) if record.status.is_final() && !self.calls.awaits_callbacks(id) => {
                if record.entry == NO_ENTRY {
                    self.restore(id)?;
                }
                self.requeue(id);
                self.dispatch_queued();
                Ok(())
            }
            _ => Err(CallError::UnknownCall(id)),
        }
    }

    /// Winds the pool down keeping unfinished calls for the next run (see
    /// `Mediator::suspend`), delivering the calls that finish meanwhile to `sink`; then
    /// [`Engine::stop`]. Returns how many calls were kept.
    pub(crate) fn suspend(&mut self, sink: &mut dyn Sink<W>) -> usize {
        self.settle();
        if self.base.config.persist.is_none() {
            log::warn!(target: &self.base.alias, "suspend() without persist(): shutting down instead");
            self.shutdown(sink);
            return 0;
        }
        self.shutting_down = true;
        // Running calls may finish; queued ones are not started.
        let queued = self.calls.take_queue();
        let limit = Instant::now() + self.base.config.timeout.unwrap_or(self.base.config.grace);
        self.collect(sink);
        while self.busy_count() > 0 && Instant::now() < limit {
            self.pool.sleep(Some(limit));
            self.collect(sink);
        }
        let mut kept = queued.len();
        for i in 0..self.pool.size() {
            // Killed while running: the journal says it was started, so it runs again, with
            // one more retry, after recovery.
            if self.kill_worker(i).1.is_some() {
                kept += 1;
            }
        }
        // Results not delivered yet stay in the journal too.
        kept += self
            .calls
            .records()
            .filter(|r| r.status == CallStatus::Returned && r.entry != NO_ENTRY)
            .count();
        self.pool.keep_segment(kept > 0);
        log::info!(target: &self.base.alias, "suspended with {kept} calls kept in {}", self.pool.region().name());
        kept
    }

    /// Winds the pool down (see `Mediator::shutdown`): queued calls end as
    /// [`CallStatus::Cancelled`], and so do calls still running after the grace period; then
    /// [`Engine::stop`].
    pub(crate) fn shutdown(&mut self, sink: &mut dyn Sink<W>) {
        self.settle();
        self.shutting_down = true;
        let now = clock::now_ns();
        for id in self.calls.take_queue() {
            self.finish(id, CallStatus::Cancelled, now, |method| {
                CallError::Cancelled {
                    method,
                    reason: CancelReason::Shutdown,
                }
            });
        }
        self.fire_callbacks(sink);
        let grace_end = Instant::now() + self.base.config.grace;
        while self.busy_count() > 0 && Instant::now() < grace_end {
            self.pool.sleep(Some(grace_end));
            self.collect(sink);
        }
        let grace = self.base.config.grace;
        let now = clock::now_ns();
        let slots = self.pool.size();
        for i in 0..slots {
            if self.pool.busy(i).is_some() {
                let (_, busy) = self.kill_worker(i);
                if let Some(b) = busy {
                    self.finish(b.call, CallStatus::Cancelled, now, |method| {
                        CallError::Cancelled {
                            method,
                            reason: CancelReason::ShutdownGrace { grace },
                        }
                    });
                }
            }
        }
        self.fire_callbacks(sink);
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
        self.pool.now_ns()
    }

    /// When the worker holding `record` started running it, if it did.
    fn started_ns(&self, record: &CallRecord) -> Option<u64> {
        let posted = record.posted?;
        self.pool.started(posted.slot, posted.seq)
    }

    /// Encodes the arguments into shared memory and queues the call.
    #[inline]
    pub(crate) fn submit_encoded<A: Serialize + ?Sized>(
        &mut self,
        method: u32,
        args: &A,
        sink: &mut dyn Sink<W>,
    ) -> Result<u64, SubmitError> {
        self.submit_encoded_as(method, args, sink, None)
    }

    /// A new call id, for a call submitted later with [`Engine::submit_encoded_as`].
    pub(crate) fn reserve_id(&mut self) -> u64 {
        self.calls.new_id()
    }

    /// [`Engine::submit_encoded`], under the id `reserved` if given (from
    /// [`Engine::reserve_id`]).
    pub(crate) fn submit_encoded_as<A: Serialize + ?Sized>(
        &mut self,
        method: u32,
        args: &A,
        sink: &mut dyn Sink<W>,
        reserved: Option<u64>,
    ) -> Result<u64, SubmitError> {
        let name = Self::method_name(method);
        let wire_err = |source| SubmitError::Encode {
            method: name,
            source,
        };
        // Small arguments are encoded once, on the stack: they travel in the request's line,
        // and a copy goes into the block (for the journal, for posting the call again if its
        // worker dies before starting it, and for the callbacks' view) once the call is
        // posted: the worker runs it meanwhile.
        let mut small = [0u8; channel::INLINE_ARGS];
        let inline_len = wire::encode_into(args, &mut small).map_err(wire_err)?;
        let args_len = match inline_len {
            Some(n) => n,
            None => wire::encoded_len(args).map_err(wire_err)?,
        };
        self.warn_if_large(method, args_len);
        let (entry, mut block) = self.call_room(method, args_len, sink)?;
        let args_at = Span::new(block.offset, args_len);
        if inline_len.is_none() {
            let buf = self
                .pool
                .region()
                .bytes_mut(&mut block, args_at)
                .expect("a call's block holds its arguments");
            if let Err(e) = wire::encode_into(args, buf) {
                self.free_call(entry, block, None);
                return Err(wire_err(e));
            }
        }
        let inline = inline_len.map(|n| &small[..n]);
        let id = reserved.unwrap_or_else(|| self.calls.new_id());
        // With nothing queued before it and a worker idle, the call goes out at once, before
        // the bookkeeping below: the worker runs it meanwhile. (A persistent mediator's call is
        // in the journal before this function returns, which is when the caller can count on
        // it.)
        let slot = if self.calls.nothing_queued() {
            self.ready_slot()
                .filter(|&i| !self.held_for_short_call(i, method))
        } else {
            None
        };
        let blocks = Blocks {
            block,
            ret_block: None,
        };
        let (posted, mut blocks) = match slot {
            Some(i) => (
                Some(PostedAt {
                    slot: i,
                    seq: self.post_blocks(i, id, method, blocks, args_len, inline),
                }),
                None,
            ),
            None => (None, Some(blocks)),
        };
        // The last delivered call's bookkeeping: while the worker runs this one, or before the
        // queue is looked at.
        self.settle();
        let pool = &mut self.pool;
        if let Some(bytes) = inline {
            match (posted, blocks.as_mut()) {
                (Some(p), _) => pool.fill_args(p.slot, args_at, bytes),
                (None, Some(b)) => pool
                    .region()
                    .bytes_mut(&mut b.block, args_at)
                    .expect("a call's block holds its arguments")
                    .copy_from_slice(bytes),
                (None, None) => unreachable!("a call not posted keeps its blocks"),
            }
        }
        // One clock read for the call's creation and its hand-over, if it was handed over.
        let now = pool.now_ns();
        let mut timings = Timings::default();
        timings.enter(CallStatus::Uncalled, now);
        let mut status = CallStatus::Uncalled;
        if posted.is_some() {
            timings.enter(CallStatus::Called, now);
            status = CallStatus::Called;
        }
        if let Some(journal) = pool.journal(entry) {
            match posted {
                Some(posted) => journal.write_posted_call(id, method, args_at, posted),
                None => journal.write_call(id, method, 0, args_at),
            }
        }
        let mut record = CallRecord::new(id, method, blocks, args_len, entry);
        record.status = status;
        record.pid = posted.and_then(|p| pool.pid(p.slot));
        record.timings = timings;
        record.posted = posted;
        self.calls.insert(record);
        if posted.is_none() {
            self.calls.enqueue(id);
            self.dispatch_queued_at(Some(now));
        }
        Ok(id)
    }

    /// An idle worker that can take a call now, as `dispatch_queued` would choose it; `None`
    /// when that would fork a worker first, which it does for an empty slot unless the
    /// strategy is lazy.
    fn ready_slot(&self) -> Option<usize> {
        if self.base.config.strategy != ForkStrategy::Lazy && self.empty_slot().is_some() {
            return None;
        }
        let pool = &self.pool;
        let workers = self.base.config.workers.min(pool.size());
        (0..workers).find(|&i| pool.is_idle(i) && !pool.is_worn(i, None))
    }

    /// Whether a call of `method` should wait for a worker that runs a short call (see
    /// [`SHORT_CALL_NS`]) instead of going to idle worker `idle`: `method` is short, another
    /// worker runs a short call handed over less than [`HOLD_NS`] ago. Pipelined tiny calls
    /// then stay on one worker, and the others sleep instead of taking CPU time from the
    /// parent, which does every call's bookkeeping: two workers ran 100,000 pipelined empty
    /// calls at 0.66-0.82x the speed of one on two CPUs, and at 1.00x when kept to one
    /// (1.10-1.15x with this hold, in the bench's full table).
    /// Records until when it holds ([`Engine::next_deadline`] wakes the parent then).
    fn held_for_short_call(&mut self, idle: usize, method: u32) -> bool {
        let workers = self.base.config.workers.min(self.pool.size());
        if workers < 2 || !self.base.is_short(method) {
            return false;
        }
        let mut until = None;
        for j in (0..workers).filter(|&j| j != idle) {
            let Some(busy) = self.pool.busy(j) else {
                continue;
            };
            let Some(record) = self.calls.get(busy.call) else {
                continue;
            };
            if !self.base.is_short(record.method) {
                continue;
            }
            if let Some(posted) = record.timings.entered_ns(CallStatus::Called) {
                let end = posted + HOLD_NS;
                until = Some(until.map_or(end, |u: u64| u.max(end)));
            }
        }
        let Some(until) = until else {
            return false;
        };
        if self.pool.now_ns() >= until {
            return false;
        }
        self.held_until = Some(self.held_until.map_or(until, |h| h.min(until)));
        true
    }

    /// The first of the configured slots with no worker, if any.
    fn empty_slot(&self) -> Option<usize> {
        let pool = &self.pool;
        let workers = self.base.config.workers.min(pool.size());
        (0..workers).find(|&i| !pool.has_worker(i))
    }

    /// Warns, once per method, about a payload larger than 1/50 of the allocation.
    #[inline]
    fn warn_if_large(&mut self, method: u32, len: usize) {
        if let Some(suggested) = self.room.large(method, len) {
            log::warn!(target: &self.base.alias,
                "a call to {}() moves {len} bytes, more than 1/50 of the {}-byte allocation; consider malloc({suggested} << 20)",
                Self::method_name(method), self.room.size());
        }
    }

    /// A journal entry and a block for a new call's `args_len` argument bytes and its return
    /// reservation. The call `wait` delivered last hands over its own when its block fits
    /// (nothing is freed and allocated again between an answer and the next post); otherwise
    /// they are fresh.
    #[inline]
    fn call_room(
        &mut self,
        method: u32,
        args_len: usize,
        sink: &mut dyn Sink<W>,
    ) -> Result<(usize, Block), SubmitError> {
        let needed = self.room.wanted(method, args_len);
        if let Some(d) = self.delivered.as_mut()
            && d.ret_block.is_none()
            // Not one much larger than needed: it would stay taken for as long as this call.
            && let Some((entry, block)) = d
                .held
                .take_if(|(_, block)| (needed..=needed * 4).contains(&block.len))
        {
            // A persistent mediator's entry was freed when the call was delivered (see
            // `take_returned`); no other mediator writes one (see `Pool::journal`).
            return Ok((entry, block));
        }
        self.fresh_call_room(method, args_len, sink)
    }

    /// [`Engine::call_room`] when the delivered call's entry and block cannot be taken over.
    #[inline(never)]
    fn fresh_call_room(
        &mut self,
        method: u32,
        args_len: usize,
        sink: &mut dyn Sink<W>,
    ) -> Result<(usize, Block), SubmitError> {
        if !self.room.has_free_entry() {
            self.settle();
        }
        // A face whose submit must not run callbacks (the shared pool's: its driver runs
        // them, and its submit's sink delivers nothing) does not collect here.
        if !self.room.has_free_entry()
            && !self.calls.nothing_finished()
            && !self.never_wait_for_room
        {
            // Finished calls give their entries back once their callbacks ran (see `keep`).
            self.collect(sink);
        }
        let Some(entry) = self.room.take_entry() else {
            return Err(SubmitError::TooManyCalls {
                method: Self::method_name(method),
                capacity: self.room.entries(),
            });
        };
        match self.alloc_call_block(method, args_len, sink) {
            Ok(block) => Ok((entry, block)),
            Err(e) => {
                self.room.give_entry(entry);
                Err(e)
            }
        }
    }

    /// A block for the arguments plus a return reservation. When the allocation is full it
    /// collects once (finished calls give their blocks back when their callbacks ran: see
    /// `keep`) and then fails: what holds the room then is calls queued or running, and this
    /// never blocks (a face that waits for room does so itself, on `OutOfMemory`).
    fn alloc_call_block(
        &mut self,
        method: u32,
        args_len: usize,
        sink: &mut dyn Sink<W>,
    ) -> Result<Block, SubmitError> {
        let name = Self::method_name(method);
        let mut collected = false;
        loop {
            let needed = match self.room.alloc_call(method, args_len) {
                Ok(block) => return Ok(block),
                Err(NoRoom::Never { needed, allocation }) => {
                    return Err(SubmitError::TooLarge {
                        method: name,
                        needed,
                        allocation,
                    });
                }
                Err(NoRoom::Full { needed }) => needed,
            };
            if self.delivered.is_some() {
                self.settle();
                continue;
            }
            // A face whose submit must not run callbacks (the shared pool's: its driver
            // runs them) does not collect here.
            if !collected && !self.never_wait_for_room {
                collected = true;
                self.collect(sink);
                continue;
            }
            return Err(SubmitError::OutOfMemory {
                method: name,
                needed,
                available: self.room.available(),
                allocation: self.room.size(),
                retained: self.calls.retained_bytes(),
            });
        }
    }

    /// Hands queued calls, oldest first, to idle workers, forking as the strategy allows.
    fn dispatch_queued(&mut self) {
        self.dispatch_queued_at(None)
    }

    /// [`Engine::dispatch_queued`], with the time the caller just read, if any, as the time
    /// the calls are handed over (a fork in between reads the clock again).
    fn dispatch_queued_at(&mut self, mut now: Option<u64>) {
        self.held_until = None;
        if self.calls.nothing_queued() {
            return;
        }
        // A worker to fork first takes long enough to make the reading stale.
        if now.is_some() && self.empty_slot().is_some() {
            now = None;
        }
        if self.base.config.strategy != ForkStrategy::Lazy {
            self.fill_pool();
        }
        while let Some(id) = self.calls.first_queued() {
            let Some(i) = self.idle_slot() else { break };
            if self.base.config.workers > 1 {
                let method = self.calls.get(id).map_or(0, |r| r.method);
                if self.held_for_short_call(i, method) {
                    break;
                }
            }
            self.calls.dequeue();
            self.post_call(i, id, now.take());
        }
        if let Some(failures) = self.base.health.tripped() {
            self.fail_queue(PoolError::WorkersDying { failures });
        }
    }

    /// An idle live worker, or an empty slot with a freshly forked one.
    fn idle_slot(&mut self) -> Option<usize> {
        let pool = &self.pool;
        let workers = self.base.config.workers.min(pool.size());
        if let Some(i) = (0..workers).find(|&i| pool.is_idle(i)) {
            return Some(i);
        }
        let empty = self.empty_slot()?;
        self.spawn(empty).then_some(empty)
    }

    /// Posts call `id` to slot `i`'s worker; `now`, if given, is a clock reading taken just
    /// before, used as the time the call was handed over.
    fn post_call(&mut self, i: usize, id: u64, now: Option<u64>) {
        let record = self.calls.get_mut(id).expect("queued calls have records");
        let (method, args_len) = (record.method, record.args_len);
        let blocks = record
            .blocks
            .take()
            .expect("a queued call's blocks are the parent's");
        let seq = self.post_blocks(i, id, method, blocks, args_len, None);
        let pool = &self.pool;
        let record = self.calls.get_mut(id).expect("queued calls have records");
        if let Some(journal) = pool.journal(record.entry) {
            journal.write_progress(journal::PENDING, Some(PostedAt { slot: i, seq }), None);
        }
        record.pid = pool.pid(i);
        record.posted = Some(PostedAt { slot: i, seq });
        record.set_status(CallStatus::Called, now.unwrap_or_else(clock::now_ns));
    }

    /// Posts call `id`, whose arguments are the first `args_len` bytes of its first block
    /// (and, when given, `inline`, the same bytes), to slot `i`'s worker: they ride in the
    /// request, or are copied into its area (see `Pool::post_call`). The blocks stay with the
    /// slot until the worker answers. Returns the request's sequence number.
    fn post_blocks(
        &mut self,
        i: usize,
        id: u64,
        method: u32,
        blocks: Blocks,
        args_len: usize,
        inline: Option<&[u8]>,
    ) -> u32 {
        let pool = &mut self.pool;
        let block = &blocks.block;
        let (offset, len) = (block.offset, args_len);
        // Small arguments ride in the request's cache line: the worker then never reads the
        // block, which stays in this process's cache. The block keeps them for the journal
        // and for a requeue.
        let mut small = [0u8; channel::INLINE_ARGS];
        let args = match inline {
            Some(bytes) => ArgsAt::Inline(bytes),
            None if len <= small.len()
                && pool
                    .region()
                    .read(block, Span::new(offset, len), &mut small[..len]) =>
            {
                ArgsAt::Inline(&small[..len])
            }
            None => ArgsAt::Block(offset, len),
        };
        let timeout = self.base.config.timeout;
        pool.post_call(i, id, method, args, blocks, timeout)
    }

    fn busy_count(&self) -> usize {
        self.pool.busy_count()
    }

    /// Sets a call's final status and queues its callbacks.
    fn finish(
        &mut self,
        id: u64,
        status: CallStatus,
        at_ns: u64,
        error: impl FnOnce(&'static str) -> CallError,
    ) {
        let Some(record) = self
            .calls
            .finish(id, status, at_ns, |m| error(Self::method_name(m)))
        else {
            return;
        };
        if let Some(o) = self.base.outcomes.get_mut(record.method as usize) {
            o.count(status);
        }
        if status == CallStatus::Returned {
            let t = &record.timings;
            if let (Some(called), Some(running), Some(returned)) = (
                t.entered_ns(CallStatus::Uncalled),
                t.entered_ns(CallStatus::Running),
                t.entered_ns(CallStatus::Returned),
            ) {
                let method = record.method;
                record_times(&mut self.base.timing, method, [called, running, returned]);
            }
        } else if let Some(journal) = self.pool.journal(record.entry) {
            // A failed call is final: a restarted program must not run it again.
            journal.clear();
        }
    }

    /// Slot `i`'s worker returned a `len`-byte value of `method`: the slot is free again, the
    /// method's next return reservation follows this one, and a large value is warned about.
    fn slot_returned(&mut self, i: usize, method: u32, len: usize) -> Option<Blocks> {
        self.room.returned(method, len);
        self.base.health.answered();
        self.warn_if_large(method, len);
        self.release_slot(i)
    }

    /// Slot `i`'s worker is done with its call (see `Pool::release`); one that exits after
    /// it (`fatal_error`) left the slot, and its replacement is due.
    #[inline]
    fn release_slot(&mut self, i: usize) -> Option<Blocks> {
        let blocks = self.pool.release(i);
        if !self.pool.has_worker(i) {
            self.base.health.refill_later();
        }
        blocks
    }

    /// Reads answers, reaps dead workers, enforces timeouts, retires worn workers, dispatches
    /// queued calls and hands finished calls to `sink`. Never blocks. Returns how many calls
    /// finished.
    pub(crate) fn collect(&mut self, sink: &mut dyn Sink<W>) -> usize {
        let now = self.now_ns();
        self.collect_at(sink, now)
    }

    /// [`Engine::collect`], with `now_ns`, a clock reading the caller just took, for the
    /// collection's periodic checks.
    fn collect_at(&mut self, sink: &mut dyn Sink<W>, now_ns: u64) -> usize {
        self.settle();
        self.collected_at = Some(now_ns);
        let now = to_instant(now_ns);
        let slots = self.pool.size();
        let check_deaths = self.pool.death_check_due(now);
        if self.base.health.take_refill() {
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
        let finished = self.fire_callbacks(sink);
        // Released calls may have made the room a worker waits for; a worker that still finds
        // none, with no other call left to free any, fails its call.
        self.room_pass = true;
        for i in 0..slots {
            if self.pool.is_awaiting_room(i) {
                self.read_answer(i);
            }
        }
        self.room_pass = false;
        // Callbacks may have retried calls.
        self.dispatch_queued();
        finished
    }

    /// Handles the answer of the worker in slot `i`, if it wrote one: reads it into an
    /// [`Outcome`] (see `answer`), then applies that to the call, the slot and the counts.
    /// The blocks lent with the call come back with every outcome but a wait for room.
    fn read_answer(&mut self, i: usize) {
        let Some((busy, answer)) = self.pool.answer(i) else {
            if let Some(seq) = self.pool.scribbled_answer(i) {
                self.answer_line_scribbled(i, seq);
            }
            return;
        };
        let reported = self.pool.take_worker_errors(i);
        self.count_errors(ErrorKind::Catchall, reported, Some(i));
        let record = self
            .calls
            .get_mut(busy.call)
            .expect("busy calls have records");
        let called = record
            .timings
            .entered_ns(CallStatus::Called)
            .unwrap_or_else(clock::now_ns);
        let running = answer.ran.running_ns(called);
        record.timings.enter(CallStatus::Running, running);
        let finished = answer.ran.finished_ns(running);
        let (method, args_len, pid) = (record.method, record.args_len, record.pid.unwrap_or(0));
        match answer::outcome(&answer, busy.ret) {
            Outcome::Returned { value, inline } => {
                let len = value.len;
                if self.base.config.persist.is_none() {
                    // The value moves once, straight from the worker's area (or the answer)
                    // into the parent's own memory, where it waits for the callbacks and its
                    // handle: a finished call holds no room a new call needs. (A persistent
                    // mediator's journal needs it in the store until it is delivered.)
                    let mut bytes = heap_buffer(len);
                    let copied = match &inline {
                        Some(b) => {
                            bytes.extend_from_slice(&b[..len]);
                            true
                        }
                        None => self.pool.copy_from_area(i, value, &mut bytes),
                    };
                    if copied {
                        let blocks = self.slot_returned(i, method, len);
                        // Only the arguments stay in the store: the return reservation goes.
                        let blocks = blocks.map(|Blocks { block, ret_block }| {
                            if let Some(rb) = ret_block {
                                self.room.free(rb);
                            }
                            Blocks {
                                block: self.room.shrink(block, args_len.max(1)),
                                ret_block: None,
                            }
                        });
                        if let Some(record) = self.calls.get_mut(busy.call) {
                            record.blocks = blocks;
                            record.ret_bytes = Some(bytes);
                        }
                        self.finish(busy.call, CallStatus::Returned, finished, |_| {
                            unreachable!("a returned call has no error")
                        });
                        return;
                    }
                }
                // The value moves out of the worker's area (or the answer, inline) into the
                // store, where it waits for `wait` or the callbacks, and the journal sees it.
                let room = &mut self.room;
                let inline = inline.as_ref().map(|b| &b[..]);
                let stored = self
                    .pool
                    .store_return(i, value, inline, args_len, |n| room.alloc(n));
                let Some(stored) = stored else {
                    if len <= self.room.size() && (!self.room_pass || self.pool.others_running(i)) {
                        // Room may be freed when this collection delivers finished calls, or
                        // when other calls are done: try again then (the value waits in the
                        // worker's area; the call's timeout still runs).
                        self.pool.wait_for_room(i);
                    } else {
                        let room = (self.room.available(), self.room.size());
                        self.return_too_large(i, busy.call, finished, len, room);
                    }
                    return;
                };
                let blocks = self.slot_returned(i, method, len);
                // Give back what the reservation did not use.
                let blocks = blocks.map(|Blocks { block, ret_block }| match ret_block {
                    Some(rb) => Blocks {
                        block: self.room.shrink(block, args_len),
                        ret_block: Some(self.room.shrink(rb, len)),
                    },
                    None => Blocks {
                        block: self.room.shrink(block, args_len + len),
                        ret_block: None,
                    },
                });
                if let Some(record) = self.calls.get_mut(busy.call) {
                    record.blocks = blocks;
                    record.ret = Some(stored);
                    if let Some(journal) = self.pool.journal(record.entry) {
                        journal.write_progress(journal::RETURNED, record.posted, record.ret);
                    }
                }
                self.finish(busy.call, CallStatus::Returned, finished, |_| {
                    unreachable!("a returned call has no error")
                });
            }
            Outcome::NeedSpace { len } => {
                // More than the worker's area has room for after the arguments.
                let room = (busy.ret.len, self.pool.area_size());
                self.return_too_large(i, busy.call, finished, len, room);
            }
            Outcome::Panicked { message } => {
                let message = self.text(i, message);
                // The object may be half-updated: replace the process.
                self.kill_worker(i);
                self.base.health.answered();
                self.count_error(ErrorKind::Catchall, None);
                self.finish(busy.call, CallStatus::Panicked, finished, |method| {
                    CallError::Panicked {
                        method,
                        pid,
                        message,
                    }
                });
                self.base.health.refill_later();
            }
            Outcome::WireError { message } => {
                let message = self.text(i, message);
                self.release_worker(i, busy.call);
                self.base.health.answered();
                self.count_error(ErrorKind::Catchall, Some(i));
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Remote(message),
                    }
                });
            }
            Outcome::Refused => {
                // The worker refused a request that failed its checksum.
                self.release_worker(i, busy.call);
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
            Outcome::Invalid { detail } => {
                // The channel cannot be trusted, so the worker is replaced.
                self.kill_worker(i);
                self.count_error(ErrorKind::Corruption, None);
                log::warn!(target: &self.base.alias, "call {}: corrupted {detail}", busy.call);
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Corrupted(detail),
                    }
                });
                self.base.health.refill_later();
            }
        }
    }

    /// Call `id`, which slot `i`'s worker holds, returned `len` bytes, more than `room` had
    /// (available, of an allocation of): the call fails; the worker stays.
    fn return_too_large(
        &mut self,
        i: usize,
        id: u64,
        finished: u64,
        len: usize,
        (available, allocation): (usize, usize),
    ) {
        self.release_worker(i, id);
        self.base.health.answered();
        self.finish(id, CallStatus::Failed, finished, |method| {
            CallError::ReturnTooLarge {
                method,
                needed: len,
                available,
                allocation,
            }
        });
    }

    /// Slot `i`'s answer line holds sequence number `seq`, which no worker of ours writes
    /// there: the channel cannot be trusted; the call fails as corrupted and the worker is
    /// replaced (rather than the call ending by its timeout, uncounted).
    fn answer_line_scribbled(&mut self, i: usize, seq: u32) {
        let (pid, busy) = self.kill_worker(i);
        let Some(busy) = busy else { return };
        let detail = format!("answer line: sequence number {seq}, not one of its requests");
        self.count_error(ErrorKind::Corruption, None);
        log::warn!(target: &self.base.alias, "call {}: worker {pid} corrupted its {detail}", busy.call);
        self.finish(busy.call, CallStatus::Failed, clock::now_ns(), |method| {
            CallError::Wire {
                method,
                source: WireError::Corrupted(detail),
            }
        });
        self.base.health.refill_later();
    }

    /// The text slot `i`'s worker wrote in `span` of its area (a panic's message, a decoding
    /// error's), lossily decoded; empty if `span` is not in it.
    fn text(&self, i: usize, span: Span) -> String {
        let mut bytes = Vec::new();
        self.pool.copy_from_area(i, span, &mut bytes);
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Kills slot `i`'s worker (see `Pool::kill`); the blocks lent with its call come back to
    /// the call's record. Returns the worker's pid and the call it held.
    pub(super) fn kill_worker(&mut self, i: usize) -> (i32, Option<Busy>) {
        let (pid, held) = self.pool.kill(i);
        let busy = held.map(|(busy, blocks)| {
            self.take_back(busy.call, Some(blocks));
            busy
        });
        (pid, busy)
    }

    /// Slot `i`'s worker answered call `call` for good: it is idle again, and the blocks
    /// lent with the call come back to its record.
    fn release_worker(&mut self, i: usize, call: u64) {
        let blocks = self.release_slot(i);
        self.take_back(call, blocks);
    }

    /// The blocks lent with call `id` came back: its record holds them again (they are freed
    /// if the call is gone).
    fn take_back(&mut self, id: u64, blocks: Option<Blocks>) {
        let Some(blocks) = blocks else {
            return;
        };
        match self.calls.get_mut(id) {
            Some(record) => {
                debug_assert!(record.blocks.is_none(), "a call's blocks are in one place");
                record.blocks = Some(blocks);
            }
            None => {
                self.room.free(blocks.block);
                if let Some(b) = blocks.ret_block {
                    self.room.free(b);
                }
            }
        }
    }

    /// Hands finished calls to `sink` in the order they finished. Callbacks observe a call,
    /// they do not consume it: then a call a handle holds keeps its result (see
    /// [`Engine::keep`]), and any other is released. Returns how many calls it handled.
    pub(crate) fn fire_callbacks(&mut self, sink: &mut dyn Sink<W>) -> usize {
        let finished = self.calls.take_finished();
        for &id in &finished {
            let Some(record) = self.calls.get(id) else {
                continue;
            };
            // The call is final: its blocks are the parent's. The view gets copies (see
            // `Region::copy_out`), in buffers kept for the next callback; a return already in
            // the parent's memory is lent as it is.
            let region = self.pool.region();
            let blocks = record.blocks.as_ref();
            let (args, ret) = &mut self.views;
            let has_args = record
                .args()
                .zip(blocks)
                .is_some_and(|(span, b)| region.copy_out(&b.block, span, args));
            let has_ret = record.ret_bytes.is_none()
                && record
                    .ret
                    .zip(blocks)
                    .is_some_and(|(span, b)| region.copy_out_in(b, span, ret));
            let call = Call {
                record,
                args: if has_args { args } else { &[] },
                ret: match &record.ret_bytes {
                    Some(bytes) => Some(bytes),
                    None => has_ret.then_some(&ret[..]),
                },
                retry: Cell::new(false),
                _w: PhantomData,
            };
            let delivered =
                supervise::deliver_guarded(sink, &call, &self.base.alias, &mut self.base.health)
                    .then(|| call.retry.get());
            let held = record.held;
            match delivered {
                Some(true) => {
                    self.requeue(id);
                    continue;
                }
                Some(false) => {}
                None => {
                    // A timeout, a crash or calls whose workers kept dying were logged when
                    // they were found: once is enough.
                    if let Some(error) = &record.error
                        && !logged_when_found(error)
                    {
                        log::warn!(target: &self.base.alias, "call {id}: {error}");
                    }
                }
            }
            if held {
                self.keep(
                    id,
                    Viewed {
                        args: has_args,
                        ret: has_ret,
                        delivered: delivered.is_some(),
                    },
                );
            } else {
                self.release(id);
            }
        }
        let handled = finished.len();
        // Hand the buffer back, so that the next call to finish does not allocate a new one.
        self.calls.return_finished(finished);
        handled
    }

    /// Puts a finished call back in the queue with one more retry and a clean state.
    fn requeue(&mut self, id: u64) {
        if self.shutting_down {
            log::warn!(target: &self.base.alias, "call {id} not retried: the mediator is shutting down");
            return;
        }
        let Some(record) = self.calls.rerun(id, clock::now_ns()) else {
            return;
        };
        if let Some(block) = record.blocks.as_mut().and_then(|b| b.ret_block.take()) {
            self.room.free(block);
        }
        if let (Some(journal), Some(args)) = (self.pool.journal(record.entry), record.args()) {
            journal.write_call(id, record.method, record.retries, args);
        }
    }

    /// A held call's callbacks ran (`viewed` says what they saw) and did not retry it: its
    /// arguments and result move out of shared memory into the parent's own (from the copies
    /// the callbacks' view was made of, or where the result already is) and its entry and
    /// blocks are freed, so that results nobody took yet leave all the room to new calls. The
    /// arguments are kept only for [`Engine::retry`]. A persistent mediator's call that no
    /// callback took stays in the store: its journal hands it to the next run should this
    /// one die before the handle takes it. A call whose blocks are still lent to a worker
    /// stays as it is.
    fn keep(&mut self, id: u64, viewed: Viewed) {
        if self.base.config.persist.is_some() && !viewed.delivered {
            return;
        }
        let Some(record) = self.calls.get_mut(id) else {
            return;
        };
        if record.entry == NO_ENTRY || record.blocks.is_none() {
            return;
        }
        let (args, ret) = &mut self.views;
        record.args_bytes = Some(if viewed.args {
            args[..].into()
        } else {
            Box::new([])
        });
        if record.ret.take().is_some() {
            // From the store: the view's copy is the value (empty, and failing to decode, if
            // it could not be read).
            let mut value = Vec::new();
            if viewed.ret {
                std::mem::swap(&mut value, ret);
            }
            record.ret_bytes = Some(value);
        }
        let entry = std::mem::replace(&mut record.entry, NO_ENTRY);
        if let Some(Blocks { block, ret_block }) = record.blocks.take() {
            self.free_call(entry, block, ret_block);
        }
    }

    /// A held call whose arguments moved to the parent's memory (see [`Engine::keep`]) is to
    /// run again: they go back into a fresh entry and block of shared memory.
    fn restore(&mut self, id: u64) -> Result<(), CallError> {
        let Some(record) = self.calls.get(id) else {
            return Err(CallError::UnknownCall(id));
        };
        let (method, args_len) = (record.method, record.args_len);
        let name = Self::method_name(method);
        let Some(entry) = self.room.take_entry() else {
            return Err(SubmitError::TooManyCalls {
                method: name,
                capacity: self.room.entries(),
            }
            .into());
        };
        let mut block = match self.room.alloc_call(method, args_len) {
            Ok(block) => block,
            Err(no_room) => {
                self.room.give_entry(entry);
                return Err(match no_room {
                    NoRoom::Never { needed, allocation } => SubmitError::TooLarge {
                        method: name,
                        needed,
                        allocation,
                    },
                    NoRoom::Full { needed } => SubmitError::OutOfMemory {
                        method: name,
                        needed,
                        available: self.room.available(),
                        allocation: self.room.size(),
                        retained: self.calls.retained_bytes(),
                    },
                }
                .into());
            }
        };
        let at = Span::new(block.offset, args_len);
        let record = self.calls.get_mut(id).expect("looked up above");
        let args = record.args_bytes.take().unwrap_or_default();
        if let Some(dst) = self.pool.region().bytes_mut(&mut block, at)
            && dst.len() == args.len()
        {
            dst.copy_from_slice(&args);
        }
        record.blocks = Some(Blocks {
            block,
            ret_block: None,
        });
        record.entry = entry;
        record.ret_bytes = None;
        Ok(())
    }

    /// Frees a finished call's shared memory and forgets it, but for its status and timings
    /// (see `history`).
    fn release(&mut self, id: u64) {
        if let Some(record) = self.calls.remove(id) {
            self.remember(&record);
            self.free_record(record);
        }
    }

    /// Adds a call leaving the table to the history of released calls, if it is final.
    #[inline]
    fn remember(&mut self, record: &CallRecord) {
        if record.status.is_final() {
            self.base.history.add(record.id, Past::of(record));
        }
    }

    /// Frees the shared memory of a call taken out of `calls`.
    fn free_record(&mut self, record: CallRecord) {
        match record.blocks {
            // Its arguments and result are in the parent's memory (see `keep`).
            None if record.entry == NO_ENTRY => {}
            Some(Blocks { block, ret_block }) => self.free_call(record.entry, block, ret_block),
            // Its blocks are lent to a worker: they come back to the arena when it answers
            // or is killed (see `take_back`).
            None => {
                if let Some(journal) = self.pool.journal(record.entry) {
                    journal.clear();
                }
                self.room.give_entry(record.entry);
            }
        }
    }

    /// Frees a call's journal entry and payload blocks.
    fn free_call(&mut self, entry: usize, block: Block, ret_block: Option<Block>) {
        if let Some(journal) = self.pool.journal(entry) {
            journal.clear();
        }
        self.room.free_call(entry, block, ret_block);
    }
}

/// A buffer for a `len`-byte return in the parent's memory: from 2 MiB on, with transparent
/// huge pages asked for before it is touched (as `wire::copy_to_vec` does), so that a large
/// return costs a few page faults per 2 MiB rather than one per 4 KiB page.
fn heap_buffer(len: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let v = Vec::with_capacity(len);
    if len >= HUGE {
        let p = v.as_ptr() as usize;
        let start = p.next_multiple_of(HUGE);
        let end = (p + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: advice on pages of our own fresh allocation; failure is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// What the callbacks' view of a finished call held: its arguments, its return value (copied
/// from the store), and whether a callback took it at all.
struct Viewed {
    args: bool,
    ret: bool,
    delivered: bool,
}

/// Whether a call's failure was logged where it was found (`enforce_timeouts`, `reap_dead`,
/// `requeue_unstarted`), so that its delivery need not log it again.
pub(crate) fn logged_when_found(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Timeout { .. }
            | CallError::Crashed { .. }
            | CallError::Cancelled {
                reason: CancelReason::WorkersDied { .. },
                ..
            }
    )
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
