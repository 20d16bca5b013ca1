//! The worker processes of one mediator: the shared memory they use, forking them (through the
//! fork server, which every worker comes from), noticing their deaths, killing them, retiring
//! worn ones, relaying the log records they forward, and what the parent waits on between
//! events (the sleep itself is `wake`'s protocol).
//!
//! The pool knows processes and channels, and holds the blocks lent to each worker with its
//! call; which call a worker holds and what becomes of it is the engine's business (see
//! `engine`). Nobody outside the pool writes a slot's state: the engine asks and tells through
//! its verbs.

use std::hash::BuildHasher;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::area::{Area, SpinPage};
use crate::arena::{Block, Blocks, Span};
use crate::call::ExitCause;
use crate::channel::{Answer, ArgsAt, Channel, Request};
use crate::clock::{self, Clock, time_left, to_instant};
use crate::config::{Config, Recycle};
use crate::error::{ErrorCounts, ErrorKind, PoolError, SpawnError};
use crate::fork_server::{ForkServer, SpawnRequest};
use crate::journal::Entry;
use crate::limits::{self, Death, InForce, LimitMechanism, MemoryLimit, Verdict, WorkerLimits};
use crate::process::{self, Child};
use crate::shm::{Found, Region};
use crate::this_worker;
use crate::wake::ParentWake;
use crate::worker::Worker;
use crate::worker_loop::{self, WorkerEnv};

/// How often, at most, the pool looks for dead workers while the parent does not sleep.
const DEATH_CHECK: Duration = Duration::from_millis(1);
/// How long workers asked to exit may take before they are killed.
const EXIT_LIMIT: Duration = Duration::from_secs(1);
/// The most errors one look at a worker's `errors` word counts: far above the limits that
/// replace a worker (`ErrorCounts::WORKER_LIMITS`), so that only a scribbled word reaches it.
const MAX_REPORTED_ERRORS: u32 = 1 << 16;

/// A call a worker holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy {
    pub(crate) call: u64,
    pub(crate) seq: u32,
    /// Where the worker writes the return value: the room after the arguments in its area.
    pub(crate) ret: Span,
    pub(crate) deadline: Option<Instant>,
    /// The worker returned a value for which the parent's store has no room yet: the value
    /// stays in the worker's area, and the answer is read again at each collection until room
    /// is found. The parent does not count it as an event to wake for.
    pub(crate) awaiting_room: bool,
}

/// One place in the pool: a worker process (or none) and the call it holds.
#[derive(Debug, Default)]
struct Slot {
    child: Option<Child>,
    busy: Option<Busy>,
    /// The blocks lent to the worker with its call, while it holds one (with `busy`).
    lent: Option<Blocks>,
    /// Calls this worker was given.
    calls: u64,
    /// This worker's own recycling limits, drawn with jitter when it was forked.
    retire_after_calls: Option<u64>,
    retire_at: Option<Instant>,
    /// Errors seen with this worker.
    errors: ErrorCounts,
    /// How many of the errors the worker reported itself were counted.
    reported_errors: u32,
    /// The sequence number of the last request posted on the slot's channel: the parent's own
    /// copy, so that a post only writes the request line (see `Channel::post`).
    req_seq: u32,
    /// With [`Recycle::above_memory`]: when the worker's memory may be read next (CLOCK_MONOTONIC
    /// nanoseconds), and whether it was over the threshold then.
    next_memory_check: u64,
    over_memory: bool,
}

impl Slot {
    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(Child::pid)
    }

    #[inline]
    fn is_idle(&self) -> bool {
        self.child.is_some() && self.busy.is_none()
    }
}

/// The resources of a started pool.
pub(crate) struct Pool {
    /// The parent's store: the journal, queued arguments, returns not yet delivered.
    region: Region,
    /// Each slot's area: its channel and the payload of the call it holds (see `area`).
    areas: Vec<Area>,
    /// The spin places the workers share.
    spin: SpinPage,
    /// The parent's side of the sleep/wake protocol: its eventfd, whether it spins.
    wake: ParentWake,
    slots: Vec<Slot>,
    /// Workers asked to exit (recycled), not yet reaped.
    retiring: Vec<Child>,
    /// The fork server every worker is forked from; `None` only while the pool is dropped.
    server: Option<Arc<Mutex<ForkServer>>>,
    /// The parent's end of the socket the workers forward their `this_worker` log records on
    /// (see `this_worker::relay`), and the workers' end, kept for the next fork server.
    logs: OwnedFd,
    log_end: OwnedFd,
    /// The descriptors workers inherit on purpose (`Mediator::inherit_fd`).
    inherit_fds: Vec<RawFd>,
    recycle: Recycle,
    next_death_check: Instant,
    /// The parent's time on the hot path.
    clock: Clock,
    alias: String,
    /// Whether calls are written to the journal (see [`Pool::journal`]).
    journaled: bool,
    /// The workers' memory limit, if set: its mechanism and cgroups (see `limits`).
    memory: Option<MemoryLimit>,
    /// What the workers apply after `setup`.
    limits: WorkerLimits,
    /// How workers confine themselves after `setup`.
    sandbox: Option<crate::sandbox::Sandbox>,
}

/// The channels of the calls posted when it was made and the sequence number each answer
/// will carry: whether one of them answered can be seen without the pool (its owner's lock),
/// from the thread that drives it.
///
/// It holds pointers into the pool's areas, which are mapped for the pool's whole life and
/// never move; a watch must not outlive its pool: the shared pool's driver makes one, spins on
/// it, and drops it before it next takes its lock, and it alone ever drops the pool. Reading a
/// channel while another thread changes it (a kill, a spawn) is an atomic read that may see a
/// stale or a new value: at worst a needless collection, or a spin that runs to its end.
pub(crate) struct Watch(Vec<(*const Channel, u32)>);

impl Watch {
    /// Whether there is nothing to watch.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether one of the watched calls answered.
    #[inline]
    pub(crate) fn answered(&self) -> bool {
        self.0.iter().any(|&(channel, seq)| {
            // SAFETY: the channel lies in an area the pool maps for its whole life, and the
            // pool outlives the watch (see the type's doc); `answered` is an atomic load.
            unsafe { &*channel }.answered(seq)
        })
    }
}

/// A number in `[0, 1)`, different for every call.
fn random_fraction() -> f64 {
    let h = std::collections::hash_map::RandomState::new().hash_one(clock::now_ns());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Pool {
    /// Creates the shared memory and the fork server (which copies `value`).
    /// A persistent mediator's segment is opened if it exists with the same layout; then
    /// `matching` is true and its journal can be recovered.
    pub(crate) fn create<W: Worker>(
        alias: &str,
        config: &Config,
        value: &mut W,
    ) -> Result<(Pool, bool), PoolError> {
        let slots = config.workers;
        // Before any fork, so that the fork server and the workers inherit the calibration.
        clock::calibrate();
        let (region, matching) = match &config.persist {
            None => (Region::create(alias, slots, config.malloc)?, false),
            Some(app) => match Region::open_persistent(app, alias, slots, config.malloc)? {
                Found::Created(r) => (r, false),
                Found::Matching(r) => (r, true),
                Found::Replaced(r, why) => {
                    log::warn!(target: alias,
                        "the shared memory {} left by an earlier run cannot be read: {why}; its calls are lost. Start with the earlier workers() and malloc() to recover them", r.name());
                    (r, false)
                }
            },
        };
        let wake = ParentWake::new()?;
        // Each worker's area, and the page they share; named after the store.
        let prefix = crate::shm::segment_prefix();
        let store = region.name();
        let base = match store.strip_prefix(&prefix) {
            Some(_) => store.to_owned(),
            // A persistent store's path: named after its file, `<app>.<alias>.store`.
            None => {
                let file = store.rsplit('/').next().unwrap_or(store);
                format!("{prefix}{}", file.trim_end_matches(".store"))
            }
        };
        let area_error = |name: &str, size: usize| {
            let name = name.to_owned();
            move |source: std::io::Error| PoolError::CreateSegment {
                name,
                size,
                source: source.into(),
            }
        };
        let areas = (0..slots)
            .map(|i| {
                let name = format!("{base}.area{i}");
                Area::create(&name, config.malloc).map_err(area_error(&name, config.malloc))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spin_name = format!("{base}.spin");
        let spin = SpinPage::create(&spin_name).map_err(area_error(&spin_name, 4096))?;
        let memory = config.memory_limit.map(|b| MemoryLimit::new(alias, b));
        let limits = MemoryLimit::for_workers(memory.as_ref(), config.cpu_limit);
        let (logs, log_end) = this_worker::log_socket().map_err(PoolError::ForkServer)?;
        process::register_own_fd(logs.as_raw_fd());
        process::register_own_fd(log_end.as_raw_fd());
        log::debug!(target: alias, "store {} with {} payload bytes; {slots} worker areas of {} bytes", region.name(), region.arena_size(), config.malloc);
        let mut pool = Pool {
            region,
            areas,
            spin,
            wake,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            retiring: Vec::new(),
            server: None,
            logs,
            log_end,
            inherit_fds: config.inherit_fds.clone(),
            recycle: config.recycle,
            next_death_check: Instant::now(),
            clock: Clock::new(),
            alias: alias.to_owned(),
            journaled: config.persist.is_some(),
            memory,
            limits,
            sandbox: config.sandbox.clone(),
        };
        let server = pool.start_server(value).map_err(PoolError::ForkServer)?;
        pool.server = Some(Arc::new(Mutex::new(server)));
        Ok((pool, matching))
    }

    /// Forks the fork server, a copy of this process with `value` as it is now, from which
    /// every worker is forked.
    fn start_server<W: Worker>(&self, value: &mut W) -> Result<ForkServer, SpawnError> {
        let alias = &self.alias[..];
        // What the fork server and the workers keep; everything else they inherited from this
        // process becomes /dev/null there (see `process::sanitize_fds`).
        let keep: Vec<RawFd> = [self.wake.bell().as_raw_fd(), self.log_end.as_raw_fd()]
            .into_iter()
            .chain(self.inherit_fds.iter().copied())
            .collect();
        let replaced = process::foreign_fds(&keep);
        if !replaced.is_empty() {
            let list: Vec<String> = replaced
                .iter()
                .map(|(fd, to)| format!("{fd} ({to})"))
                .collect();
            log::warn!(target: alias,
                "workers get /dev/null in place of these descriptors of the program: {}; pass one with inherit_fd() to give it to them", list.join(", "));
        }
        // The server runs in a copy of this process: the pool stays where it is in its
        // memory, since the server never returns from here.
        // The store and the areas are not in that copy (`MADV_DONTFORK`): each worker maps its
        // own area from the descriptor sent with its spawn request.
        let (eventfd, log) = (self.wake.bell(), self.log_end.as_fd());
        let (inherit, limits, sandbox) = (&self.inherit_fds[..], &self.limits, &self.sandbox);
        let server = ForkServer::start(&keep, move |req: SpawnRequest| {
            let env = WorkerEnv {
                alias,
                slot: req.slot,
                start_seq: req.start_seq,
                eventfd,
                log,
                inherit,
                received: req.fds,
                limits,
                sandbox: sandbox.as_ref(),
            };
            worker_loop::run(&mut *value, env)
        })?;
        log::debug!(target: alias, "fork server {} started", server.pid());
        Ok(server)
    }

    /// Forks a worker into slot `i`, through the fork server: a copy of the object as it was
    /// when the server was forked. A fork server found gone is replaced by one forked now,
    /// from `value`.
    pub(crate) fn spawn<W: Worker>(&mut self, i: usize, value: &mut W) -> Result<i32, SpawnError> {
        let channel = self.areas[i].channel();
        channel.reset();
        // The previous worker of the slot may have died holding a spin place.
        self.spin.places().give_back(i);
        let start_seq = channel.req.seq.load(Ordering::Relaxed);
        // The worker's area and the spin page, which it maps (see `worker_loop::run`).
        let fds = [self.areas[i].fd(), self.spin.fd()];
        let server = self
            .server
            .clone()
            .ok_or(SpawnError::ForkServerGone(None))?;
        let spawned = server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(i, start_seq, &fds);
        let (server, (pid, pidfd)) = match spawned {
            Ok(spawned) => (server, spawned),
            Err(SpawnError::ForkServerGone(why)) => {
                // Killed from outside, most likely: its workers died with it. A new one
                // starts from the object as it is now.
                let old = server.lock().unwrap_or_else(PoisonError::into_inner).pid();
                log::warn!(target: &self.alias,
                    "the fork server {old} is gone{}; starting another", why.map(|e| format!(" ({e})")).unwrap_or_default());
                let server = Arc::new(Mutex::new(self.start_server(value)?));
                self.server = Some(server.clone());
                let spawned = server
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .spawn(i, start_seq, &fds)?;
                (server, spawned)
            }
            Err(e) => return Err(e),
        };
        let child = process::adopt(pid, pidfd, server);
        let pid = child.pid();
        let jitter = 1.0 - self.recycle.jitter.clamp(0.0, 1.0) * random_fraction();
        self.slots[i] = Slot {
            child: Some(child),
            busy: None,
            lent: None,
            calls: 0,
            retire_after_calls: self
                .recycle
                .max_calls
                .map(|n| ((n as f64 * jitter) as u64).max(1)),
            retire_at: self
                .recycle
                .max_age
                .map(|age| Instant::now() + age.mul_f64(jitter)),
            errors: ErrorCounts::default(),
            reported_errors: 0,
            req_seq: start_seq,
            next_memory_check: 0,
            over_memory: false,
        };
        Ok(pid)
    }

    /// Sleeps without spinning first (see `ParentWake::no_spin`).
    pub(crate) fn no_parent_spin(&mut self) {
        self.wake.no_spin();
    }

    /// What to look at, without this pool's lock, for the answers of the calls now posted:
    /// see [`Watch`].
    pub(crate) fn watch(&self) -> Watch {
        Watch(
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let b = s.busy.filter(|b| !b.awaiting_room)?;
                    Some((std::ptr::from_ref(self.channel(i)), b.seq))
                })
                .collect(),
        )
    }

    /// The recycling rules for the workers forked from now on (and the memory rule for all).
    pub(crate) fn set_recycle(&mut self, recycle: Recycle) {
        self.recycle = recycle;
    }

    /// Journal entry `i`, if this pool keeps a journal: only a persistent pool's journal is
    /// ever read (by the next run's recovery), so the others write none (a saving per call:
    /// benches/README.md).
    #[inline]
    pub(crate) fn journal(&self, i: usize) -> Option<&Entry> {
        self.journaled.then(|| self.region.entry(i))
    }

    /// The parent's store: journal, queued arguments, returns not yet delivered.
    #[inline]
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Slot `i`'s channel, in its area.
    #[inline]
    fn channel(&self, i: usize) -> &Channel {
        self.areas[i].channel()
    }

    /// Keeps the segment when the pool is dropped (for recovery), or not.
    pub(crate) fn keep_segment(&mut self, keep: bool) {
        self.region.keep(keep);
    }

    /// CLOCK_MONOTONIC nanoseconds, read through the tick counter (see `clock`).
    #[inline]
    pub(crate) fn now_ns(&mut self) -> u64 {
        self.clock.now_ns()
    }

    /// How many slots the pool has (the worker count it started with).
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// Whether slot `i` has a worker process.
    #[inline]
    pub(crate) fn has_worker(&self, i: usize) -> bool {
        self.slots[i].child.is_some()
    }

    /// Whether slot `i` has a worker that holds no call.
    #[inline]
    pub(crate) fn is_idle(&self, i: usize) -> bool {
        self.slots[i].is_idle()
    }

    /// The process id of slot `i`'s worker.
    #[inline]
    pub(crate) fn pid(&self, i: usize) -> Option<i32> {
        self.slots[i].pid()
    }

    /// The process ids of the live workers.
    pub(crate) fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.slots.iter().filter_map(Slot::pid)
    }

    /// The call slot `i`'s worker holds.
    #[inline]
    pub(crate) fn busy(&self, i: usize) -> Option<Busy> {
        self.slots[i].busy
    }

    /// The answer of slot `i`'s worker to the request it holds, if it wrote one, with what
    /// it holds.
    #[inline]
    pub(crate) fn answer(&self, i: usize) -> Option<(Busy, Answer)> {
        let busy = self.slots[i].busy?;
        Some((busy, self.channel(i).answer(busy.seq)?))
    }

    /// The sequence number in slot `i`'s answer line, if it is neither the request the
    /// worker holds nor the one before it, the only two a worker of ours writes there while
    /// it holds a call: the line was overwritten.
    pub(crate) fn scribbled_answer(&self, i: usize) -> Option<u32> {
        let busy = self.slots[i].busy?;
        let seq = self.channel(i).resp.seq.load(Ordering::Acquire);
        (seq != busy.seq && seq != busy.seq.wrapping_sub(1)).then_some(seq)
    }

    /// Whether slot `i`'s worker answered request `seq`, the one it holds now, with news:
    /// an answer already read whose value waits for room in the store is none.
    #[inline]
    pub(crate) fn answered(&self, i: usize, seq: u32) -> bool {
        self.slots[i]
            .busy
            .is_some_and(|b| b.seq == seq && !b.awaiting_room)
            && self.channel(i).answered(seq)
    }

    /// When slot `i`'s worker started request `seq`, if it did (`None` too for a slot this
    /// pool does not have, as a journal from another layout may name).
    pub(crate) fn started(&self, i: usize, seq: u32) -> Option<u64> {
        (i < self.slots.len())
            .then(|| self.channel(i).started(seq))
            .flatten()
    }

    /// Writes `bytes`, the arguments of the call slot `i`'s worker holds, which travelled
    /// inside its request, into `span` of the blocks lent with it: the parent's own copy (for
    /// the journal, a requeue, the callbacks' view). The worker reads such arguments from the
    /// request line and writes only the return reservation after them, so the arguments' bytes
    /// of a call posted that way stay the parent's to fill while the call runs.
    #[inline]
    pub(crate) fn fill_args(&mut self, i: usize, span: Span, bytes: &[u8]) {
        if let Some(lent) = self.slots[i].lent.as_mut()
            && let Some(dst) = self.region.bytes_mut(&mut lent.block, span)
        {
            dst.copy_from_slice(bytes);
        }
    }

    /// Slot `i`'s worker is done with its call (it answered, and the answer was taken): it
    /// is idle again, and the blocks lent with the call come back. A worker that said it
    /// exits after that answer (`fatal_error`) leaves the slot instead, which is then empty
    /// (see [`Pool::has_worker`]): it takes no other call, and a replacement may be forked.
    #[inline]
    pub(crate) fn release(&mut self, i: usize) -> Option<Blocks> {
        let slot = &mut self.slots[i];
        if let Some(busy) = slot.busy.take()
            && self.areas[i].channel().exits_after(busy.seq)
            && let Some(child) = slot.child.take()
        {
            log::info!(target: &self.alias, "worker {} exits after fatal_error(); replacing it", child.pid());
            // Reaped with the retired workers (see `dead_slots`).
            self.retiring.push(child);
        }
        let lent = slot.lent.take();
        // Before the next call is given to it (no cost without the rule).
        self.check_memory(i);
        lent
    }

    /// Slot `i`'s worker returned a value the store has no room for yet: it stays in the
    /// worker's area, the answer is read again at each collection, and it is no event to wake
    /// for meanwhile.
    pub(crate) fn wait_for_room(&mut self, i: usize) {
        if let Some(b) = self.slots[i].busy.as_mut() {
            b.awaiting_room = true;
        }
    }

    /// Moves the value slot `i`'s worker returned (`value`, in its area, or `inline` bytes
    /// that came inside the answer) into the store, into the blocks lent with the call: after
    /// its `args_len` bytes of arguments if the call's block has room, else into a block of its
    /// own from `alloc`. Returns where it now lies, or `None` (nothing moved) if `alloc` found
    /// no room, or the worker holds no call.
    pub(crate) fn store_return(
        &mut self,
        i: usize,
        value: Span,
        inline: Option<&[u8]>,
        args_len: usize,
        alloc: impl FnOnce(usize) -> Option<Block>,
    ) -> Option<Span> {
        let len = value.len;
        let lent = self.slots[i].lent.as_mut()?;
        let after_args = Span::new(lent.block.offset + args_len, len);
        if !lent.block.holds(after_args) && lent.ret_block.is_none() {
            lent.ret_block = Some(alloc(len)?);
        }
        let (block, at) = match lent.ret_block.as_mut() {
            Some(rb) => {
                let at = Span::new(rb.offset, len);
                (rb, at)
            }
            None => (&mut lent.block, after_args),
        };
        let dst = self.region.bytes_mut(block, at)?;
        match inline {
            Some(bytes) => dst.copy_from_slice(&bytes[..len]),
            None => {
                if !self.areas[i].read(value, dst) {
                    return None;
                }
            }
        }
        Some(at)
    }

    /// Copies bytes `span` of slot `i`'s area into `out` (see `Area::copy_out`): a value or a
    /// message its worker wrote.
    pub(crate) fn copy_from_area(&self, i: usize, span: Span, out: &mut Vec<u8>) -> bool {
        self.areas[i].copy_out(span, out)
    }

    /// How many payload bytes each worker's area has.
    pub(crate) fn area_size(&self) -> usize {
        self.areas.first().map_or(0, Area::payload_size)
    }

    /// The slots whose call ran past its deadline at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .busy
                    .is_some_and(|b| b.deadline.is_some_and(|d| d <= now))
            })
            .collect()
    }

    /// How many workers hold a call.
    #[inline]
    pub(crate) fn busy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.busy.is_some()).count()
    }

    /// Hands slot `i` a call of `method`: copies its arguments from the store into the
    /// worker's area unless they ride in the request (`args`: inline bytes, or a span of
    /// `blocks`), posts it on the channel with the rest of the area as the room for the
    /// answer, keeps the call's `blocks` with the slot until the worker answers, and marks the
    /// slot busy. Returns the request's sequence number.
    pub(crate) fn post_call(
        &mut self,
        i: usize,
        call: u64,
        method: u32,
        args: ArgsAt<'_>,
        blocks: Blocks,
        timeout: Option<Duration>,
    ) -> u32 {
        let area = &self.areas[i];
        let (args, ret) = match args {
            ArgsAt::Inline(bytes) => (ArgsAt::Inline(bytes), Span::new(0, area.payload_size())),
            ArgsAt::Block(offset, len) => {
                // The area is as large as the store (`malloc`), and the arguments are within
                // their block: the copy cannot fail. Were it to, the worker would get no
                // arguments, and the call would fail to decode them, visibly.
                let copied = area.args_room(len).is_some_and(|dst| {
                    self.region.read(&blocks.block, Span::new(offset, len), dst)
                });
                debug_assert!(copied, "arguments of {len} bytes copied into the area");
                let len = if copied { len } else { 0 };
                // The answer's room starts on a cache line of its own.
                let at = len.next_multiple_of(64).min(area.payload_size());
                (
                    ArgsAt::Block(0, len),
                    Span::new(at, area.payload_size() - at),
                )
            }
        };
        let crowded = self.wake.crowded(self.slots.len(), self.busy_count());
        let seq = self.post_request(i, Request::call(method, args, ret), crowded);
        let slot = &mut self.slots[i];
        slot.calls += 1;
        slot.lent = Some(blocks);
        slot.busy = Some(Busy {
            call,
            seq,
            ret,
            deadline: timeout.map(|t| to_instant(self.clock.now_ns()) + t),
            awaiting_room: false,
        });
        seq
    }

    /// Posts a request on slot `i`'s channel (see `Channel::post`); returns its sequence number.
    fn post_request(&mut self, i: usize, request: Request<'_>, crowded: bool) -> u32 {
        let seq = self.slots[i].req_seq.wrapping_add(1);
        self.slots[i].req_seq = seq;
        self.channel(i).post(seq, request, crowded);
        seq
    }

    /// Asks slot `i`'s worker to exit; returns the request's sequence number.
    fn post_exit(&mut self, i: usize) -> u32 {
        self.post_request(i, Request::exit(), false)
    }

    /// Whether a worker other than slot `i`'s holds a call that is not itself waiting for
    /// room: when it is done, room may be freed.
    pub(crate) fn others_running(&self, i: usize) -> bool {
        self.slots
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && s.busy.is_some_and(|b| !b.awaiting_room))
    }

    /// Whether slot `i`'s worker waits for room for its return value.
    pub(crate) fn is_awaiting_room(&self, i: usize) -> bool {
        self.slots[i].busy.is_some_and(|b| b.awaiting_room)
    }

    /// Counts `n` errors against slot `i`'s worker.
    pub(crate) fn count_errors(&mut self, i: usize, kind: ErrorKind, n: u64) {
        self.slots[i].errors.add_n(kind, n);
    }

    /// Whether it is time to look for dead workers (every millisecond, or after a sleep).
    pub(crate) fn death_check_due(&mut self, now: Instant) -> bool {
        if now >= self.next_death_check {
            self.next_death_check = now + DEATH_CHECK;
            true
        } else {
            false
        }
    }

    /// The slots whose worker has died (reaped now; the child stays in the slot until
    /// [`Pool::kill`]), each with how it ended and the last lines it wrote to its stderr (at
    /// most 4 KiB, empty if none). Also reaps retired workers that have exited, and relays the
    /// log records workers forwarded since the last look.
    pub(crate) fn dead_slots(&mut self) -> Vec<(usize, ExitCause, String)> {
        this_worker::relay(self.logs.as_fd(), &self.alias);
        let memory = &self.memory;
        self.retiring.retain_mut(|c| {
            let gone = c.try_reap().is_some();
            if gone && let Some(m) = memory {
                m.release(c.pid());
            }
            !gone
        });
        let (areas, sandboxed) = (&self.areas, self.sandbox.is_some());
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| {
                let child = s.child.as_mut()?;
                let cause = child.try_reap()?;
                // A sandboxed worker's stop is told from other exits by its channel's word.
                let stopped_at = &areas[i].channel().running.stopped_at;
                let cause = crate::sandbox::exit_cause(cause, stopped_at, sandboxed);
                Some((i, cause, child.take_stderr()))
            })
            .collect()
    }

    /// Empties slot `i`, killing its worker (SIGKILL) if it still lives; returns its pid and
    /// its call, with the blocks lent with it (the dead worker writes them no more). Every
    /// worker the parent gives up on (timed out, panicked, corrupted, still running at
    /// shutdown) is killed here.
    pub(crate) fn kill(&mut self, i: usize) -> (i32, Option<(Busy, Blocks)>) {
        let slot = &mut self.slots[i];
        let pid = slot.pid().unwrap_or(0);
        if let Some(mut child) = slot.child.take() {
            child.kill();
            if let Some(m) = &self.memory {
                m.release(pid);
            }
        }
        // It may have died holding a spin place.
        self.spin.places().give_back(i);
        (pid, slot.busy.take().zip(slot.lent.take()))
    }

    /// Errors slot `i`'s worker reported (`this_worker::error`) since the last look, at most
    /// [`MAX_REPORTED_ERRORS`]: the word is the worker's to write, so its number is a count
    /// to add, never a loop bound or a size.
    #[inline]
    pub(crate) fn take_worker_errors(&mut self, i: usize) -> u64 {
        let total = self.channel(i).resp.errors.load(Ordering::Relaxed);
        let slot = &mut self.slots[i];
        let new = total.wrapping_sub(slot.reported_errors);
        slot.reported_errors = total;
        u64::from(new.min(MAX_REPORTED_ERRORS))
    }

    /// Whether slot `i`'s worker got through its setup (see `RunningMark::ready`).
    pub(crate) fn was_ready(&self, i: usize) -> bool {
        self.channel(i).was_ready()
    }

    /// How many calls slot `i`'s worker was given.
    pub(crate) fn calls_given(&self, i: usize) -> u64 {
        self.slots[i].calls
    }

    /// Whether slot `i`'s worker should retire at `now`: idle and past its limits, or past
    /// the per-worker error limits. Without `now`, the age limit is not looked at. The memory
    /// threshold is looked at as of the last [`Pool::check_memory`].
    #[inline]
    pub(crate) fn is_worn(&self, i: usize, now: Option<Instant>) -> bool {
        let s = &self.slots[i];
        s.is_idle()
            && (s.retire_after_calls.is_some_and(|n| s.calls >= n)
                || s.retire_at.zip(now).is_some_and(|(t, now)| now >= t)
                || s.over_memory
                || s.errors.reached(&ErrorCounts::WORKER_LIMITS))
    }

    /// With [`Recycle::above_memory`]: reads the memory of slot `i`'s worker, if it is idle
    /// and was not read in the last [`Recycle::MEMORY_CHECK`], for [`Pool::is_worn`].
    #[inline]
    pub(crate) fn check_memory(&mut self, i: usize) {
        if let Some(max) = self.recycle.max_memory {
            self.check_memory_against(i, max);
        }
    }

    #[inline(never)]
    fn check_memory_against(&mut self, i: usize, max: u64) {
        let now = self.clock.now_ns();
        let s = &mut self.slots[i];
        if !s.is_idle() || now < s.next_memory_check {
            return;
        }
        s.next_memory_check = now.saturating_add(Recycle::MEMORY_CHECK.as_nanos() as u64);
        if let Some(pid) = s.pid()
            && let Some(bytes) = crate::stats::anon_rss_bytes(pid)
        {
            s.over_memory = bytes > max;
        }
    }

    /// How the workers' memory limit is enforced, if one is set.
    pub(crate) fn memory_mechanism(&self) -> Option<LimitMechanism> {
        self.memory.as_ref().map(MemoryLimit::mechanism)
    }

    /// How the death of a worker that was running a call is reported, given how it ended,
    /// what its cgroup said ([`Pool::memory_verdict`]) and its stderr tail, if known.
    pub(crate) fn classify_death(
        &self,
        cause: ExitCause,
        verdict: Verdict,
        tail: Option<&str>,
    ) -> Death {
        let in_force = InForce {
            memory: self.memory.as_ref().map(|m| (m.mechanism(), m.bytes())),
            cpu: self.limits.cpu,
        };
        limits::classify(cause, verdict, tail, in_force)
    }

    /// What the cgroup of slot `i`'s worker says about its death; read before
    /// [`Pool::kill`] removes the group.
    pub(crate) fn memory_verdict(&self, i: usize) -> Verdict {
        match (&self.memory, self.slots[i].pid()) {
            (Some(m), Some(pid)) => m.verdict(pid),
            _ => Verdict::Unknown,
        }
    }

    /// Asks slot `i`'s worker to exit and forks its replacement into the slot.
    ///
    /// The replacement gets the same channel, so the old worker must be done with it first: it
    /// acknowledges the exit request before its `teardown`, and one that does not within
    /// [`EXIT_LIMIT`] is killed.
    pub(crate) fn retire<W: Worker>(&mut self, i: usize, value: &mut W) -> Result<i32, SpawnError> {
        self.dismiss(i);
        self.spawn(i, value)
    }

    /// Asks slot `i`'s worker, idle, to exit, and leaves the slot empty (the pool was made
    /// smaller, or [`Pool::retire`] forks a replacement into it). A worker that does not
    /// acknowledge within [`EXIT_LIMIT`] is killed; it is reaped with the retired workers.
    pub(crate) fn dismiss(&mut self, i: usize) {
        if let Some(mut child) = self.slots[i].child.take() {
            let seq = self.post_exit(i);
            let channel = self.channel(i);
            let deadline = Instant::now() + EXIT_LIMIT;
            if !self.wake.spin_until(|| channel.answered(seq)) {
                while !channel.answered(seq) && child.try_reap().is_none() {
                    if Instant::now() >= deadline {
                        child.kill();
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            self.retiring.push(child);
        }
    }

    /// Whether any busy worker has answered.
    #[inline]
    pub(crate) fn any_answer(&self) -> bool {
        self.any_answer_but(None)
    }

    /// Whether any busy worker other than slot `but`'s, if given, has answered.
    #[inline]
    pub(crate) fn any_answer_but(&self, but: Option<usize>) -> bool {
        self.slots.iter().enumerate().any(|(i, s)| {
            Some(i) != but
                && s.busy
                    .is_some_and(|b| !b.awaiting_room && self.channel(i).answered(b.seq))
        })
    }

    /// The nearest deadline of a running call.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.busy.and_then(|b| b.deadline))
            .min()
    }

    /// Before sleeping: announces it to the workers, so that they ring the eventfd when they
    /// answer (see `wake::ParentWake::begin_sleep`), and adds the descriptors to wait on to
    /// `fds`: the eventfd and the workers' pidfds. Returns false, having announced nothing, if
    /// an answer is already there.
    pub(crate) fn begin_sleep(&mut self, fds: &mut Vec<RawFd>) -> bool {
        let flags = self.areas.iter().map(Area::parent_sleeping);
        if !self.wake.begin_sleep(flags, || self.any_answer(), fds) {
            return false;
        }
        fds.extend(self.live_pidfds().map(|fd| fd.as_raw_fd()));
        fds.push(self.logs.as_raw_fd());
        true
    }

    /// After sleeping: withdraws the announcement, empties the eventfd, and makes the next
    /// collection look for dead workers (a pidfd may have woken us).
    pub(crate) fn end_sleep(&mut self) {
        self.wake
            .end_sleep(self.areas.iter().map(Area::parent_sleeping));
        self.next_death_check = Instant::now();
    }

    /// Sleeps until an answer arrives, a worker dies, or the nearest deadline (`until`, or a
    /// running call's timeout) passes.
    pub(crate) fn sleep(&mut self, until: Option<Instant>) {
        self.sleep_with(|| until)
    }

    /// [`Pool::sleep`], with the deadline worked out only if the spin before sleeping sees no
    /// answer (most waits end in the spin).
    pub(crate) fn sleep_with(&mut self, until: impl FnOnce() -> Option<Instant>) {
        let mut fds = Vec::new();
        if self.begin_sleep(&mut fds) {
            process::poll_raw(
                &fds,
                time_left(self.next_deadline().into_iter().chain(until()).min()),
            );
            self.end_sleep();
        }
    }

    fn live_pidfds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.slots
            .iter()
            .filter_map(|s| s.child.as_ref())
            .chain(&self.retiring)
            .filter(|c| !c.is_reaped())
            .map(Child::pidfd)
    }

    /// Asks every worker to exit, waits up to a second for them, then kills the rest and
    /// reaps all. Busy workers must have been dealt with before.
    pub(crate) fn stop_workers(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].child.is_some() {
                self.post_exit(i);
            }
        }
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            for child in self
                .slots
                .iter_mut()
                .filter_map(|s| s.child.as_mut())
                .chain(self.retiring.iter_mut())
            {
                child.try_reap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let live: Vec<BorrowedFd<'_>> = self.live_pidfds().collect();
            if live.is_empty() || left.is_zero() {
                break;
            }
            process::poll_readable(&live, left.as_millis().max(1) as i32);
        }
        // Dropping a child kills it if it did not exit in time, and reaps it.
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                let pid = child.pid();
                drop(child);
                if let Some(m) = &self.memory {
                    m.release(pid);
                }
            }
        }
        for child in self.retiring.drain(..) {
            let pid = child.pid();
            drop(child);
            if let Some(m) = &self.memory {
                m.release(pid);
            }
        }
        self.retiring.clear();
        this_worker::relay(self.logs.as_fd(), &self.alias);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_workers();
        // The fork server goes last (it reaps the workers it forked, and kills what is left of
        // their trees); the region after it.
        self.server = None;
        process::unregister_own_fd(self.logs.as_raw_fd());
        process::unregister_own_fd(self.log_end.as_raw_fd());
    }
}
