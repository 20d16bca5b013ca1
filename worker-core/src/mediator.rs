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
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::arena::{Arena, Block};
use crate::call::{Call, CallId, CallRecord, CallStatus, Log, Timings};
use crate::channel::{self, Request, Response};
use crate::error::{CallError, WireError};
use crate::process::{self, Child};
use crate::shm::Region;
use crate::wire;
use crate::worker::Worker;
use crate::worker_loop::{self, WorkerEnv};

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
    /// Fork every worker when the pool starts (at [`Mediator::start`] or the first call) and
    /// keep the count up.
    Aggressive,
}

/// Settings of a pool; see the builder methods of [`Mediator`].
#[derive(Debug, Clone)]
struct Config {
    workers: usize,
    timeout: Option<Duration>,
    malloc: usize,
    strategy: ForkStrategy,
    grace: Duration,
}

/// The default size of the payload area: 8 MiB.
pub const DEFAULT_MALLOC: usize = 8 << 20;
/// The default number of workers.
pub const DEFAULT_WORKERS: usize = 1;
/// The default grace period for running calls when a mediator shuts down.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// The smallest return reservation made with each call.
const MIN_RET: usize = 256;
/// How often, at most, `collect` looks for dead workers while it does not sleep.
const DEATH_CHECK: Duration = Duration::from_millis(1);
/// How long `submit` waits for running calls to free shared memory before giving up.
const SPACE_WAIT: Duration = Duration::from_secs(30);

type Handler<W> = Box<dyn FnMut(&Call<'_, W>, Log<'_>)>;

/// A call a worker holds.
#[derive(Debug, Clone, Copy)]
struct Busy {
    call: u64,
    seq: u32,
    /// Where the worker writes the return value: (offset, capacity).
    ret: (usize, usize),
    deadline: Option<Instant>,
}

/// One place in the pool: a worker process (or none yet) and the call it holds.
#[derive(Debug, Default)]
struct Slot {
    child: Option<Child>,
    busy: Option<Busy>,
    /// Calls this worker was given.
    calls: u64,
}

/// The resources of a started pool.
struct Pool {
    region: Region,
    arena: Arena,
    eventfd: OwnedFd,
    slots: Vec<Slot>,
    spin: bool,
    last_death_check: Instant,
}

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
/// A finished call is handed to its callback (`on_return` for a return, `on_timeout` for a
/// timeout, `on_error` for any other failure). If any callback is installed, the call's
/// shared memory is released after the callbacks ran, unless [`Mediator::wait`] is waiting for
/// that very call. If none is installed, the result is kept until `wait` takes it.
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
    calls: HashMap<u64, CallRecord>,
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
    _not_send: PhantomData<*const ()>,
}

/// Queues a call of method `method` with encoded-from-borrow `args`. Called by generated proxy
/// methods; `decode` turns the return bytes into `R`.
#[doc(hidden)]
pub fn submit<W: Worker, A: Serialize + ?Sized, R>(
    mediator: &mut Mediator<W>,
    method: u32,
    args: &A,
    decode: fn(&[u8]) -> Result<R, WireError>,
) -> Result<CallId<R>, CallError> {
    let id = mediator.submit_encoded(method, args)?;
    Ok(CallId::new(id, decode))
}

fn to_instant(ns: u64) -> Instant {
    let (now, now_ns) = (Instant::now(), channel::now_ns());
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns)))
        .unwrap_or(now)
}

impl<W: Worker> Mediator<W> {
    /// A mediator for `value` under the name `alias` (used in log lines and in the name of the
    /// shared-memory segment). Nothing is forked and no memory is shared until
    /// [`Mediator::start`] or the first call.
    pub fn new(alias: impl Into<String>, value: W) -> Self {
        Mediator {
            alias: alias.into(),
            value,
            config: Config {
                workers: DEFAULT_WORKERS,
                timeout: None,
                malloc: DEFAULT_MALLOC,
                strategy: ForkStrategy::default(),
                grace: DEFAULT_GRACE,
            },
            on_return: None,
            on_timeout: None,
            on_error: None,
            pool: None,
            calls: HashMap::new(),
            queue: VecDeque::new(),
            finished: Vec::new(),
            next_id: 1,
            ret_hints: vec![MIN_RET; W::METHODS.len()],
            warned_large: vec![false; W::METHODS.len()],
            shutting_down: false,
            _not_send: PhantomData,
        }
    }

    /// The alias given to [`Mediator::new`].
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Sets the number of worker processes (at least 1; default 1). After the pool started it
    /// can be lowered, or raised up to the count it started with; a higher count is clamped with
    /// a warning, since the shared-memory layout is fixed at start.
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

    /// Sets the time a call may run in a worker before the worker is killed and the call ends
    /// with [`CallStatus::Timeout`]. No timeout by default; always set a plausible one.
    /// Deadlines are enforced whenever the mediator is driven (`poll`, `wait`); `wait` wakes
    /// for the nearest deadline, to within about a millisecond.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Sets the size in bytes of the shared memory for arguments and return values (default
    /// 8 MiB). It must hold, at once, the encoded arguments and return values of every call
    /// queued or running. Takes effect when the pool starts; later calls are ignored with a
    /// warning.
    pub fn malloc(&mut self, bytes: usize) -> &mut Self {
        if self.pool.is_some() {
            log::warn!(target: &self.alias, "malloc({bytes}) after the pool started is ignored");
        } else {
            self.config.malloc = bytes;
        }
        self
    }

    /// Sets when workers are forked; see [`ForkStrategy`] (default `Mixed`).
    pub fn strategy(&mut self, strategy: ForkStrategy) -> &mut Self {
        self.config.strategy = strategy;
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

    /// Sets the callback for calls that timed out (their worker was killed).
    pub fn on_timeout(
        &mut self,
        handler: impl FnMut(&Call<'_, W>, Log<'_>) + 'static,
    ) -> &mut Self {
        self.on_timeout = Some(Box::new(handler));
        self
    }

    /// Sets the callback for calls that failed otherwise: the worker crashed
    /// ([`CallStatus::Crashed`]), the method panicked ([`CallStatus::Panicked`]), the call
    /// could not be encoded, decoded or fit ([`CallStatus::Failed`]), or it was cancelled.
    /// [`Call::error`] says why.
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
    /// shared memory and, with [`ForkStrategy::Aggressive`], forks every worker.
    pub fn start(&mut self) -> Result<(), CallError> {
        if self.pool.is_some() {
            return Ok(());
        }
        let problems = self.value.check_environment();
        if !problems.is_empty() {
            return Err(CallError::Environment(problems));
        }
        if let Some(threads) = process::thread_count().filter(|&n| n > 1) {
            log::warn!(target: &self.alias,
                "forking workers from a process with {threads} threads: a worker can deadlock on a lock another thread held at the fork; create mediators before starting threads");
        }
        let slots = self.config.workers;
        let region =
            Region::create(&self.alias, slots, self.config.malloc).map_err(CallError::Pool)?;
        // SAFETY: plain eventfd creation; the fd is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(CallError::Pool(format!(
                "eventfd failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        log::debug!(target: &self.alias, "shared memory {} with {} payload bytes", region.name(), region.arena_size());
        self.pool = Some(Pool {
            arena: Arena::new(region.arena_size()),
            region,
            // SAFETY: a fresh fd that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: (0..slots).map(|_| Slot::default()).collect(),
            spin: channel::spin_allowed(),
            last_death_check: Instant::now(),
        });
        if self.config.strategy == ForkStrategy::Aggressive {
            self.fill_pool()?;
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
        let mut live = 0;
        for (i, slot) in pool.slots.iter().enumerate().take(self.config.workers) {
            if slot.child.is_some() {
                live += 1;
            }
            let free = match slot.busy {
                None => slot.child.is_some(),
                Some(b) => pool
                    .region
                    .channel(i)
                    .answer(b.seq)
                    .is_some_and(|(kind, _, _)| {
                        Response::from_u32(kind) == Some(Response::Returned)
                    }),
            };
            if free {
                return true;
            }
        }
        live < self.config.workers
    }

    /// The status of a call, or `None` if the id is unknown or its result was already
    /// delivered.
    pub fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        let record = self.calls.get(&id.raw())?;
        if record.status == CallStatus::Called
            && let (Some(pool), Some((slot, seq))) = (&self.pool, record.posted)
            && pool.region.channel(slot).started(seq).is_some()
        {
            return Some(CallStatus::Running);
        }
        Some(record.status)
    }

    /// When a call entered each status so far, or `None` if the id is unknown.
    pub fn timings<R>(&self, id: CallId<R>) -> Option<Timings> {
        let record = self.calls.get(&id.raw())?;
        let mut timings = record.timings.clone();
        if record.status == CallStatus::Called
            && let (Some(pool), Some((slot, seq))) = (&self.pool, record.posted)
            && let Some(ns) = pool.region.channel(slot).started(seq)
        {
            let called = timings
                .entered(CallStatus::Called)
                .unwrap_or_else(Instant::now);
            timings.enter(CallStatus::Running, to_instant(ns).max(called));
        }
        Some(timings)
    }

    /// Calls queued or running.
    pub fn pending(&self) -> usize {
        self.calls.values().filter(|r| !r.status.is_final()).count()
    }

    /// The process ids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.pool
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter_map(|s| s.child.as_ref().map(Child::pid))
            .collect()
    }

    /// Processes every event that has arrived (answers, worker deaths, expired timeouts) and
    /// runs the callbacks, without blocking. Returns how many calls finished.
    pub fn poll(&mut self) -> usize {
        self.collect()
    }

    /// Blocks until call `id` finishes or `timeout` passes, driving the pool (and its
    /// callbacks) meanwhile, and returns the typed result.
    ///
    /// If the call already finished and its result was handed to a callback and released,
    /// this returns [`CallError::UnknownCall`].
    pub fn wait<R>(&mut self, id: CallId<R>, timeout: Duration) -> Result<R, CallError> {
        let raw = id.raw();
        let start = Instant::now();
        let deadline = start + timeout;
        match self.calls.get_mut(&raw) {
            Some(record) => record.awaited = true,
            None => return Err(CallError::UnknownCall(raw)),
        }
        loop {
            self.collect();
            let Some(record) = self.calls.get_mut(&raw) else {
                return Err(CallError::UnknownCall(raw));
            };
            if record.status.is_final() && !self.finished.contains(&raw) {
                return self.take_result(id);
            }
            if Instant::now() >= deadline {
                record.awaited = false;
                return Err(CallError::WaitTimeout {
                    id: raw,
                    waited: start.elapsed(),
                });
            }
            self.sleep(Some(deadline));
        }
    }

    /// Runs a finished call again: same id and arguments, [`Call::retries`] one higher, its
    /// previous status, result and timings cleared; it goes to the back of the queue.
    ///
    /// The call must still be held by the mediator: a finished call no callback released and
    /// `wait` did not take. Inside a callback, use [`Call::retry`] instead.
    pub fn retry(&mut self, id: u64) -> Result<(), CallError> {
        match self.calls.get(&id) {
            Some(record) if record.status.is_final() && !self.finished.contains(&id) => {
                self.requeue(id);
                self.dispatch_queued();
                Ok(())
            }
            _ => Err(CallError::UnknownCall(id)),
        }
    }

    /// Stops the pool: see "Ownership" above. Queued calls end as
    /// [`CallStatus::Cancelled`]. The mediator can start again afterwards.
    pub fn shutdown(&mut self) {
        if self.pool.is_none() {
            return;
        }
        self.shutting_down = true;
        let now = Instant::now();
        let queued: Vec<u64> = self.queue.drain(..).collect();
        for id in queued {
            self.finish(id, CallStatus::Cancelled, now, |m| CallError::Cancelled {
                method: m,
                reason: "the mediator shut down before a worker took the call".into(),
            });
        }
        self.fire_callbacks();
        let grace_end = Instant::now() + self.config.grace;
        while self.busy_count() > 0 && Instant::now() < grace_end {
            self.sleep(Some(grace_end));
            self.collect();
        }
        let now = Instant::now();
        let mut killed = Vec::new();
        for slot in &mut self.pool.as_mut().expect("checked above").slots {
            if let Some(busy) = slot.busy.take() {
                if let Some(child) = slot.child.as_mut() {
                    child.kill();
                }
                killed.push(busy.call);
            }
        }
        let grace = self.config.grace;
        for id in killed {
            self.finish(id, CallStatus::Cancelled, now, |m| CallError::Cancelled {
                method: m,
                reason: format!(
                    "still running {grace:?} after shutdown began; its worker was killed"
                ),
            });
        }
        self.fire_callbacks();
        let Some(mut pool) = self.pool.take() else {
            return;
        };
        for (i, slot) in pool.slots.iter().enumerate() {
            if slot.child.is_some() {
                pool.region
                    .channel(i)
                    .post(Request::Exit, 0, 0, (0, 0), (0, 0));
            }
        }
        let exit_deadline = Instant::now() + Duration::from_secs(1);
        loop {
            for child in pool.slots.iter_mut().filter_map(|s| s.child.as_mut()) {
                child.try_reap();
            }
            let live: Vec<BorrowedFd<'_>> = pool
                .slots
                .iter()
                .filter_map(|s| s.child.as_ref())
                .filter(|c| !c.is_reaped())
                .map(Child::pidfd)
                .collect();
            let left = exit_deadline.saturating_duration_since(Instant::now());
            if live.is_empty() || left.is_zero() {
                break;
            }
            process::poll_readable(&live, left.as_millis().max(1) as i32);
        }
        // Dropping the children kills any that did not exit in time, and reaps all.
        pool.slots.clear();
        // Only finished results are left; they point into the segment being removed.
        self.calls.clear();
        self.queue.clear();
        drop(pool);
        self.shutting_down = false;
    }
}

// The engine: everything below runs in the parent and is private.
impl<W: Worker> Mediator<W> {
    fn method_name(method: u32) -> &'static str {
        W::METHODS
            .get(method as usize)
            .copied()
            .unwrap_or("<unknown>")
    }

    /// Encodes the arguments into shared memory and queues the call.
    fn submit_encoded<A: Serialize + ?Sized>(
        &mut self,
        method: u32,
        args: &A,
    ) -> Result<u64, CallError> {
        let name = Self::method_name(method);
        self.start()?;
        let wire_err = |source| CallError::Wire {
            method: name,
            source,
        };
        let args_len = wire::encoded_len(args).map_err(wire_err)?;
        let allocation = self.pool.as_ref().map_or(0, |p| p.arena.size());
        self.warn_if_large(method, args_len, allocation);
        let block = self.alloc_call_block(method, args_len)?;
        let pool = self.pool.as_mut().expect("started above");
        // SAFETY: the block was just allocated: no worker has it.
        let buf = unsafe { pool.region.payload_mut(block.offset, args_len) }
            .expect("arena blocks lie inside the payload area");
        if let Err(e) = wire::encode_into(args, buf) {
            pool.arena.free(block);
            return Err(wire_err(e));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut timings = Timings::default();
        timings.enter(CallStatus::Uncalled, Instant::now());
        self.calls.insert(
            id,
            CallRecord {
                id,
                method,
                status: CallStatus::Uncalled,
                retries: 0,
                pid: None,
                timings,
                error: None,
                block,
                args_len,
                ret: None,
                ret_block: None,
                posted: None,
                awaited: false,
            },
        );
        self.queue.push_back(id);
        self.dispatch_queued();
        Ok(id)
    }

    fn warn_if_large(&mut self, method: u32, len: usize, allocation: usize) {
        let m = method as usize;
        if len > allocation / 50 && !self.warned_large[m] {
            self.warned_large[m] = true;
            let suggested = (len * 50).div_ceil(1 << 20);
            log::warn!(target: &self.alias,
                "a call to {}() moves {len} bytes, more than 1/50 of the {allocation}-byte allocation; consider malloc({suggested} << 20)",
                Self::method_name(method));
        }
    }

    /// A block for the arguments plus a return reservation, waiting for running calls to free
    /// memory if the allocation is full.
    fn alloc_call_block(&mut self, method: u32, args_len: usize) -> Result<Block, CallError> {
        let name = Self::method_name(method);
        let hint = self.ret_hints[method as usize];
        let start = Instant::now();
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
            let in_flight = self.calls.values().any(|r| !r.status.is_final());
            if !in_flight || start.elapsed() > SPACE_WAIT {
                let pool = self.pool.as_ref().expect("started");
                let retained = self
                    .calls
                    .values()
                    .filter(|r| r.status.is_final())
                    .map(|r| r.block.len + r.ret_block.map_or(0, |b| b.len))
                    .sum();
                return Err(CallError::OutOfMemory {
                    method: name,
                    needed: args_len + MIN_RET,
                    available: pool.arena.available(),
                    allocation: pool.arena.size(),
                    retained,
                });
            }
            self.sleep(Some(start + SPACE_WAIT));
            self.collect();
        }
    }

    /// Forks a worker into slot `i`.
    fn spawn(&mut self, i: usize) -> Result<(), CallError> {
        let pool = self.pool.as_mut().expect("started");
        let channel = pool.region.channel(i);
        channel.reset();
        let env = WorkerEnv {
            region: &pool.region,
            slot: i,
            start_seq: channel.req.seq.load(Ordering::Relaxed),
            eventfd: pool.eventfd.as_fd(),
            spin: pool.spin,
        };
        let value = &mut self.value;
        let child = process::spawn(|| worker_loop::run(value, env)).map_err(CallError::Pool)?;
        log::debug!(target: &self.alias, "forked worker {} into slot {i}", child.pid());
        pool.slots[i] = Slot {
            child: Some(child),
            busy: None,
            calls: 0,
        };
        Ok(())
    }

    /// Forks workers into the empty slots up to the configured count.
    fn fill_pool(&mut self) -> Result<(), CallError> {
        let workers = self.config.workers;
        let empty: Vec<usize> = self.pool.as_ref().map_or(Vec::new(), |p| {
            (0..workers.min(p.slots.len()))
                .filter(|&i| p.slots[i].child.is_none())
                .collect()
        });
        for i in empty {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Hands queued calls, oldest first, to idle workers, forking as the strategy allows.
    fn dispatch_queued(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if self.config.strategy != ForkStrategy::Lazy
            && let Err(e) = self.fill_pool()
        {
            log::error!(target: &self.alias, "cannot fork a worker: {e}");
        }
        while let Some(&id) = self.queue.front() {
            let Some(i) = self.idle_slot() else { break };
            self.queue.pop_front();
            self.post_call(i, id);
        }
    }

    /// An idle live worker, or an empty slot with a freshly forked one (lazy strategy).
    fn idle_slot(&mut self) -> Option<usize> {
        let pool = self.pool.as_ref()?;
        let workers = self.config.workers.min(pool.slots.len());
        if let Some(i) =
            (0..workers).find(|&i| pool.slots[i].child.is_some() && pool.slots[i].busy.is_none())
        {
            return Some(i);
        }
        let empty = (0..workers).find(|&i| pool.slots[i].child.is_none())?;
        match self.spawn(empty) {
            Ok(()) => Some(empty),
            Err(e) => {
                log::error!(target: &self.alias, "cannot fork a worker: {e}");
                None
            }
        }
    }

    fn post_call(&mut self, i: usize, id: u64) {
        let pool = self.pool.as_mut().expect("started");
        let record = self.calls.get_mut(&id).expect("queued calls have records");
        let ret = (
            record.block.offset + record.args_len,
            record.block.len - record.args_len,
        );
        let seq = pool.region.channel(i).post(
            Request::Call,
            record.method,
            id,
            (record.block.offset, record.args_len),
            ret,
        );
        let now = Instant::now();
        let slot = &mut pool.slots[i];
        record.pid = slot.child.as_ref().map(Child::pid);
        record.posted = Some((i, seq));
        record.set_status(CallStatus::Called, now);
        slot.calls += 1;
        slot.busy = Some(Busy {
            call: id,
            seq,
            ret,
            deadline: self.config.timeout.map(|t| now + t),
        });
    }

    fn busy_count(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(0, |p| p.slots.iter().filter(|s| s.busy.is_some()).count())
    }

    /// Sets a call's final status and queues its callbacks.
    fn finish(
        &mut self,
        id: u64,
        status: CallStatus,
        at: Instant,
        error: impl FnOnce(&'static str) -> CallError,
    ) {
        let Some(record) = self.calls.get_mut(&id) else {
            return;
        };
        let floor = CallStatus::ALL
            .iter()
            .filter_map(|&s| record.timings.entered(s))
            .max()
            .unwrap_or(at);
        record.set_status(status, at.max(floor));
        if status != CallStatus::Returned {
            record.error = Some(error(Self::method_name(record.method)));
        }
        self.finished.push(id);
    }

    /// Reads answers, reaps dead workers, enforces timeouts, dispatches queued calls and runs
    /// callbacks. Never blocks. Returns how many calls finished.
    fn collect(&mut self) -> usize {
        let Some(pool) = self.pool.as_ref() else {
            return 0;
        };
        let slots = pool.slots.len();
        for i in 0..slots {
            self.read_answer(i);
        }
        let pool = self.pool.as_mut().expect("checked above");
        if pool.last_death_check.elapsed() >= DEATH_CHECK {
            pool.last_death_check = Instant::now();
            for i in 0..slots {
                self.check_death(i);
            }
        }
        self.enforce_timeouts();
        self.dispatch_queued();
        let finished = self.fire_callbacks();
        // Callbacks may have retried calls.
        self.dispatch_queued();
        finished
    }

    /// Handles the answer of the worker in slot `i`, if it wrote one.
    fn read_answer(&mut self, i: usize) {
        let pool = self.pool.as_mut().expect("started");
        let Some(busy) = pool.slots[i].busy else {
            return;
        };
        let channel = pool.region.channel(i);
        let Some((kind, len, finished_ns)) = channel.answer(busy.seq) else {
            return;
        };
        let started = channel.started(busy.seq);
        let record = self
            .calls
            .get_mut(&busy.call)
            .expect("busy calls have records");
        let called = record
            .timings
            .entered(CallStatus::Called)
            .unwrap_or_else(Instant::now);
        let running = started.map_or(called, |ns| to_instant(ns).max(called));
        record.timings.enter(CallStatus::Running, running);
        let finished = to_instant(finished_ns).max(running);
        let method = record.method;
        // SAFETY: the worker answered, so it no longer writes the block.
        let text = |len: usize| {
            unsafe { pool.region.payload(busy.ret.0, len.min(busy.ret.1)) }
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        match Response::from_u32(kind) {
            Some(Response::Returned) if len <= busy.ret.1 => {
                record.ret = Some((busy.ret.0, len));
                // Give back what the reservation did not use.
                if let Some(rb) = record.ret_block {
                    record.block = pool.arena.shrink(record.block, record.args_len);
                    record.ret_block = Some(pool.arena.shrink(rb, len));
                } else {
                    record.block = pool.arena.shrink(record.block, record.args_len + len);
                }
                self.ret_hints[method as usize] = len.max(MIN_RET);
                let allocation = pool.arena.size();
                pool.slots[i].busy = None;
                self.warn_if_large(method, len, allocation);
                self.finish(
                    busy.call,
                    CallStatus::Returned,
                    finished,
                    |_| unreachable!(),
                );
            }
            Some(Response::NeedSpace) => {
                if let Some(block) = pool.arena.alloc(len) {
                    record.ret_block = Some(block);
                    let seq = channel.post(
                        Request::Space,
                        method,
                        busy.call,
                        (0, 0),
                        (block.offset, block.len),
                    );
                    pool.slots[i].busy = Some(Busy {
                        seq,
                        ret: (block.offset, block.len),
                        ..busy
                    });
                } else {
                    let (available, allocation) = (pool.arena.available(), pool.arena.size());
                    pool.slots[i].busy = None;
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
                pool.slots[i].busy = None;
                // The object may be half-updated: replace the process.
                pool.slots[i].child = None;
                self.finish(busy.call, CallStatus::Panicked, finished, |method| {
                    CallError::Panicked {
                        method,
                        pid,
                        message,
                    }
                });
            }
            Some(Response::WireError) => {
                let message = text(len);
                pool.slots[i].busy = None;
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Remote(message),
                    }
                });
            }
            _ => {
                // An answer we cannot read: the channel is not trustworthy, replace the worker.
                pool.slots[i].busy = None;
                pool.slots[i].child = None;
                self.finish(busy.call, CallStatus::Failed, finished, |method| {
                    CallError::Wire {
                        method,
                        source: WireError::Corrupted(format!(
                            "answer of kind {kind} with length {len} for a reservation of {} bytes",
                            busy.ret.1
                        )),
                    }
                });
            }
        }
    }

    /// Reaps the worker in slot `i` if it died, failing the call it held.
    fn check_death(&mut self, i: usize) {
        let pool = self.pool.as_mut().expect("started");
        let slot = &mut pool.slots[i];
        let Some(cause) = slot.child.as_mut().and_then(Child::try_reap) else {
            return;
        };
        let pid = slot.child.as_ref().map_or(0, Child::pid);
        // A worker can answer and then die: take the answer first.
        if slot.busy.is_some() {
            self.read_answer(i);
        }
        let slot = &mut self.pool.as_mut().expect("started").slots[i];
        slot.child = None;
        match slot.busy.take() {
            Some(b) => {
                log::warn!(target: &self.alias, "worker {pid} {cause} while running call {}", b.call);
                self.finish(b.call, CallStatus::Crashed, Instant::now(), |method| {
                    CallError::Crashed { method, pid, cause }
                });
            }
            None => log::warn!(target: &self.alias, "idle worker {pid} {cause}"),
        }
        self.replace_dead();
    }

    /// Keeps the pool at size after a death, as the strategy says.
    fn replace_dead(&mut self) {
        if self.config.strategy != ForkStrategy::Lazy
            && (self.config.strategy == ForkStrategy::Aggressive || !self.queue.is_empty())
            && let Err(e) = self.fill_pool()
        {
            log::error!(target: &self.alias, "cannot replace a worker: {e}");
        }
    }

    /// Kills the workers whose call ran past its deadline.
    fn enforce_timeouts(&mut self) {
        let Some(timeout) = self.config.timeout else {
            return;
        };
        let now = Instant::now();
        let pool = self.pool.as_mut().expect("started");
        let mut expired = Vec::new();
        for slot in &mut pool.slots {
            if let Some(busy) = slot.busy
                && busy.deadline.is_some_and(|d| d <= now)
            {
                let pid = slot.child.as_mut().map_or(0, |c| {
                    c.kill();
                    c.pid()
                });
                slot.child = None;
                slot.busy = None;
                expired.push((busy.call, pid));
            }
        }
        for (id, pid) in expired {
            log::warn!(target: &self.alias, "call {id} ran past its timeout of {timeout:?}; killed worker {pid}");
            self.finish(id, CallStatus::Timeout, now, |method| CallError::Timeout {
                method,
                pid,
                timeout,
            });
        }
        if !self.queue.is_empty() || self.config.strategy == ForkStrategy::Aggressive {
            self.replace_dead();
        }
    }

    /// Runs the callbacks of finished calls in the order they finished, then releases the
    /// calls no one waits for. Returns how many calls it handled.
    fn fire_callbacks(&mut self) -> usize {
        let finished = std::mem::take(&mut self.finished);
        let has_handlers =
            self.on_return.is_some() || self.on_timeout.is_some() || self.on_error.is_some();
        for &id in &finished {
            let Some(record) = self.calls.get(&id) else {
                continue;
            };
            let handler = match record.status {
                CallStatus::Returned => self.on_return.as_mut(),
                CallStatus::Timeout => self.on_timeout.as_mut(),
                _ => self.on_error.as_mut(),
            };
            if let (Some(handler), Some(pool)) = (handler, self.pool.as_ref()) {
                // SAFETY: the call is final: no worker writes its blocks any more.
                let args = unsafe { pool.region.payload(record.block.offset, record.args_len) }
                    .unwrap_or_default();
                let ret = record
                    .ret
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
                    continue;
                }
            } else if let Some(error) = &record.error {
                log::warn!(target: &self.alias, "call {id}: {error}");
            }
            if has_handlers && !record.awaited {
                self.release(id);
            }
        }
        finished.len()
    }

    /// Puts a call back in the queue with one more retry and a clean state.
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
        record.status = CallStatus::Uncalled;
        record.error = None;
        record.ret = None;
        record.pid = None;
        record.posted = None;
        record.timings = Timings::default();
        record.timings.enter(CallStatus::Uncalled, Instant::now());
        self.queue.push_back(id);
    }

    /// Frees a finished call's shared memory and forgets it.
    fn release(&mut self, id: u64) {
        if let Some(record) = self.calls.remove(&id)
            && let Some(pool) = self.pool.as_mut()
        {
            pool.arena.free(record.block);
            if let Some(b) = record.ret_block {
                pool.arena.free(b);
            }
        }
    }

    /// Takes the result of a finished call out of the mediator.
    fn take_result<R>(&mut self, id: CallId<R>) -> Result<R, CallError> {
        let raw = id.raw();
        let record = self.calls.get(&raw).ok_or(CallError::UnknownCall(raw))?;
        let result = match (record.status, record.ret, self.pool.as_ref()) {
            (CallStatus::Returned, Some((off, len)), Some(pool)) => {
                // SAFETY: the call returned: the worker no longer writes its block.
                let bytes = unsafe { pool.region.payload(off, len) }.unwrap_or_default();
                id.decode(bytes).map_err(|source| CallError::Wire {
                    method: Self::method_name(record.method),
                    source,
                })
            }
            _ => Err(record.error.clone().unwrap_or(CallError::UnknownCall(raw))),
        };
        self.release(raw);
        result
    }

    /// Sleeps until an answer arrives, a worker dies, or the nearest deadline (the caller's
    /// `until`, or a running call's timeout) passes. Spins briefly first on several CPUs.
    fn sleep(&mut self, until: Option<Instant>) {
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        let answered = |pool: &Pool| {
            pool.slots.iter().enumerate().any(|(i, s)| {
                s.busy
                    .is_some_and(|b| pool.region.channel(i).answer(b.seq).is_some())
            })
        };
        if pool.spin {
            for _ in 0..channel::PARENT_SPIN {
                if answered(pool) {
                    return;
                }
                std::hint::spin_loop();
            }
        }
        let wake = pool
            .slots
            .iter()
            .filter_map(|s| s.busy.and_then(|b| b.deadline))
            .chain(until)
            .min();
        let timeout_ms = match wake {
            None => -1,
            Some(w) => {
                let left = w.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                // Round up so that we wake after the deadline, not just before it.
                (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            }
        };
        let header = pool.region.header();
        header.parent_sleeping.store(1, Ordering::SeqCst);
        if !answered(pool) {
            let mut fds = vec![pool.eventfd.as_fd()];
            fds.extend(
                pool.slots
                    .iter()
                    .filter_map(|s| s.child.as_ref().map(Child::pidfd)),
            );
            process::poll_readable(&fds, timeout_ms);
        }
        header.parent_sleeping.store(0, Ordering::Relaxed);
        channel::eventfd_drain(pool.eventfd.as_fd());
        // A pidfd may have woken us: look for deaths at the next collect.
        pool.last_death_check = Instant::now() - DEATH_CHECK;
    }
}

impl<W: Worker> Drop for Mediator<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
