//! [`Host`]: takes calls of one pool from Redis and runs them in a local shared pool.
//!
//! Two threads, each with its own connection:
//! - the **reader** reads as many calls as there are free workers (`XREADGROUP` on the
//!   calls stream, with the host's control stream in the same blocking read), claims the
//!   calls of hosts that stopped answering (`XAUTOCLAIM` after the visibility time), refuses
//!   what it must not run (another build, a passed deadline, a call whose hosts kept dying),
//!   and hands the rest to the local pool;
//! - the **writer** writes each finished call's result to its caller's stream and
//!   acknowledges and deletes the call in the same transaction, and keeps the claims of the
//!   calls still running fresh, so that no other host takes a live call.
//!
//! A call is acknowledged only after its result is written: a host that dies before leaves
//! it pending, and another host claims it (at least once; the caller keeps the first
//! result).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Value;

use super::entry::{CallEntry, Failure, Unreadable, result_fields};
use super::link::{self, Endpoint, Redis, RedisClock};
use super::{GROUP, Keys, RemoteError};
use crate::error::{CallError, CancelReason};
use crate::shared::{Pending, SharedPool};
use crate::stats::Stats;
use crate::worker::Worker;

/// How long the reader blocks in Redis before it looks at its own state again (a stop).
const READ_BLOCK: Duration = Duration::from_millis(200);
/// How often a saturated host (no free worker) looks for cancels.
const SATURATED_POLL: Duration = Duration::from_millis(50);
/// The longest wait between two tries to reach Redis again.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The settings a host runs with (set on the pool's builder).
#[derive(Debug, Clone)]
pub(crate) struct HostSettings {
    pub(crate) prefix: String,
    pub(crate) visibility: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) payload_limit: usize,
    pub(crate) result_ttl: Duration,
    pub(crate) root_ca: Option<Vec<u8>>,
}

/// A host of a pool across machines: takes the calls of its pool's callers from Redis and
/// runs them in its local forked pool (made by `XPool::builder(..).serve(url)`).
///
/// It reads only as many calls as it has free workers. A call's timeout, crash or panic is
/// reported to its caller as in a local pool (never run again); a host that dies, even by
/// SIGKILL, or stalls longer than the visibility time leaves its calls to the other hosts,
/// which claim them and run them (at least once). While a call runs, its host keeps its
/// claim fresh.
///
/// [`Host::stop`] ends it; dropping it stops it with the pool's grace period.
///
/// A host program's loop, with the seed's signals: SIGUSR1 prints the local pool's
/// statistics table, SIGTERM stops the host.
///
/// ```no_run
/// use std::time::Duration;
/// use forkworker_core::closure::FnPool;
/// use forkworker_core::signals::Signals;
///
/// let host = FnPool::builder("Double", |n: u64| n * 2)
///     .workers(4)
///     .serve("redis://127.0.0.1:6379")?;
/// let signals = Signals::install()?;
/// loop {
///     forkworker_core::sleep_on(&mut [], &[signals.wake_fd()], None);
///     let events = signals.take();
///     if events.stats {
///         eprintln!("{}", host.stats()); // the local pool's table
///     }
///     if events.shutdown {
///         break;
///     }
/// }
/// host.stop(Duration::from_secs(10));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Host {
    shared: Arc<HostShared>,
    pool: Arc<dyn LocalPool>,
    threads: Vec<JoinHandle<()>>,
    grace: Duration,
}

/// The local pool behind a host, whatever its worker type.
trait LocalPool: Send + Sync {
    fn submit(&self, method: u32, args: &[u8]) -> Pending<Vec<u8>>;
    fn stats(&self) -> Stats;
    fn shutdown(&self, grace: Duration);
    fn pids(&self) -> Vec<i32>;
}

impl<W: Worker + Send + 'static> LocalPool for SharedPool<W> {
    fn submit(&self, method: u32, args: &[u8]) -> Pending<Vec<u8>> {
        self.submit_encoded(method, args)
    }

    fn stats(&self) -> Stats {
        SharedPool::stats(self)
    }

    fn shutdown(&self, grace: Duration) {
        SharedPool::shutdown(self, grace);
    }

    fn pids(&self) -> Vec<i32> {
        SharedPool::pids(self)
    }
}

/// What the host's threads share.
///
/// Its lock is taken before the local pool's, never the other way round: the pool wakes
/// handles (here, [`Ended`]) after it released its own lock.
struct HostShared {
    id: String,
    keys: Keys,
    settings: HostSettings,
    fingerprint: u64,
    workers: usize,
    state: Mutex<HostState>,
    /// Signalled when a call ends (the writer writes it; the reader may read another) and at
    /// a stop.
    changed: Condvar,
    /// No more calls are read.
    stopping: AtomicBool,
    /// The writer ends once nothing is left to write.
    finish: AtomicBool,
}

#[derive(Default)]
struct HostState {
    /// Calls taken from Redis and not yet answered, by local call id (or a number of the
    /// host's own for calls answered without running).
    taken: HashMap<u64, Taken>,
    /// Calls whose answer is ready to be written, in order.
    done: VecDeque<u64>,
    /// Numbers for calls answered without running (above every local id).
    next_refusal: u64,
    /// Calls read and running in the local pool.
    running: usize,
}

/// A call taken from Redis.
struct Taken {
    /// The call's entry id in the calls stream.
    entry: String,
    call: CallEntry,
    /// The local pool's handle while it runs.
    pending: Option<Pending<Vec<u8>>>,
    /// The answer, when it is known without the local pool (a refusal, a cancel).
    answer: Option<Answer>,
}

/// What the writer does with a finished call.
enum Answer {
    /// Write this result, then acknowledge and delete the call.
    Result(Result<Vec<u8>, Failure>),
    /// Acknowledge and delete the call, with no result (its deadline passed: its caller
    /// gave up already).
    Drop,
    /// The host stopped before the call ended: put the call back in the stream for another
    /// host (a new entry, so that this does not count as a delivery that died).
    HandBack,
}

impl HostShared {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wakes the writer when a local call ends.
struct Ended {
    shared: Weak<HostShared>,
    local: u64,
}

impl Wake for Ended {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            let mut state = shared.lock();
            if state.taken.contains_key(&self.local) && !state.done.contains(&self.local) {
                state.done.push_back(self.local);
            }
            drop(state);
            shared.changed.notify_all();
        }
    }
}

impl Host {
    /// Starts serving `pool` (just started) at `url`.
    pub(crate) fn start<W: Worker + Send + 'static>(
        pool: SharedPool<W>,
        url: &str,
        settings: HostSettings,
        grace: Duration,
    ) -> Result<Host, RemoteError> {
        let endpoint = Endpoint::new(url, settings.root_ca.as_deref())?;
        let id = format!(
            "{}-{}-{}",
            super::hostname(),
            std::process::id(),
            &super::random_hex()[..8]
        );
        let keys = Keys::new(&settings.prefix, pool.alias());
        let mut reader = Redis::open(endpoint.clone())?;
        let writer = Redis::open(endpoint)?;
        ensure_groups(&mut reader, &keys, &id)?;
        let clock = RedisClock::read(&mut reader)?;
        let shared = Arc::new(HostShared {
            id,
            keys,
            fingerprint: W::fingerprint(),
            workers: pool.configured_workers(),
            settings,
            state: Mutex::new(HostState {
                next_refusal: 1 << 62,
                ..HostState::default()
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            finish: AtomicBool::new(false),
        });
        let pool: Arc<dyn LocalPool> = Arc::new(pool);
        let mut threads = Vec::new();
        let w = shared.clone();
        threads.push(super::spawn("fw-host-write", move || {
            write_loop(&w, writer)
        })?);
        let r = shared.clone();
        let local = pool.clone();
        let spawned = super::spawn("fw-host-read", move || {
            read_loop(&r, reader, clock, &*local)
        });
        let mut host = Host {
            shared,
            pool,
            threads,
            grace,
        };
        match spawned {
            Ok(t) => host.threads.push(t),
            Err(e) => {
                host.stop(Duration::ZERO);
                return Err(e);
            }
        }
        log::info!(
            "forkworker: host {} serves {} through Redis",
            host.id(),
            host.shared.keys.calls()
        );
        Ok(host)
    }

    /// The host's id, as errors and results name it: this machine's name, the process id
    /// and a random part.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The statistics of the host's local pool (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// The process ids of the local pool's live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.pool.pids()
    }

    /// Calls taken from Redis and not answered yet.
    pub fn running(&self) -> usize {
        self.shared.lock().taken.len()
    }

    /// Stops the host: it reads no more calls, lets the calls it runs go on for up to
    /// `grace` and writes their results, then puts the calls still running back in the
    /// stream for other hosts (their workers are killed; the calls run again elsewhere), and
    /// stops its local pool. Blocks until it stopped.
    pub fn stop(mut self, grace: Duration) {
        self.stop_now(grace);
    }

    fn stop_now(&mut self, grace: Duration) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        let deadline = Instant::now() + grace;
        {
            let mut state = self.shared.lock();
            while !state.taken.is_empty() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, left.min(Duration::from_millis(50)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Calls still running are handed back: their handles are cancelled below, and
            // the writer puts the calls back in the stream.
            let still: Vec<u64> = state.taken.keys().copied().collect();
            for local in still {
                let Some(taken) = state.taken.get_mut(&local) else {
                    continue;
                };
                if taken.answer.is_none() {
                    if let Some(pending) = taken.pending.take() {
                        pending.cancel();
                    }
                    taken.answer = Some(Answer::HandBack);
                    if !state.done.contains(&local) {
                        state.done.push_back(local);
                    }
                }
            }
        }
        self.shared.finish.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.pool.shutdown(Duration::ZERO);
        log::info!("forkworker: host {} stopped", self.shared.id);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let grace = self.grace;
        self.stop_now(grace);
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.shared.id)
            .field("calls", &self.shared.keys.calls())
            .finish_non_exhaustive()
    }
}

/// Creates the hosts' group on the calls stream and on this host's control stream (from
/// their first entry, so that calls added before any host started are read too).
fn ensure_groups(redis: &mut Redis, keys: &Keys, host: &str) -> Result<(), RemoteError> {
    for key in [keys.calls(), keys.control(host)] {
        create_group(redis, &key)?;
    }
    Ok(())
}

/// `XGROUP CREATE key hosts 0 MKSTREAM`, which may exist already.
pub(crate) fn create_group(redis: &mut Redis, key: &str) -> Result<(), RemoteError> {
    let created: Result<Value, _> = redis.run("XGROUP CREATE", |con| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(con)
    });
    match created {
        Ok(_) => Ok(()),
        Err(RemoteError::Command { reason, .. }) if reason.contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sleeps `backoff` (or until a stop), doubling it up to [`BACKOFF_MAX`].
fn back_off(shared: &HostShared, backoff: &mut Duration) {
    let state = shared.lock();
    let _ = shared
        .changed
        .wait_timeout(state, *backoff)
        .unwrap_or_else(PoisonError::into_inner);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// The reader's loop: see the module's documentation.
fn read_loop(
    shared: &Arc<HostShared>,
    mut redis: Redis,
    mut clock: RedisClock,
    pool: &dyn LocalPool,
) {
    let calls_key = shared.keys.calls();
    let control_key = shared.keys.control(&shared.id);
    let claim_every = shared.settings.visibility / 4;
    let mut last_claim = Instant::now() - claim_every;
    let mut backoff = Duration::from_millis(50);
    while !shared.stopping.load(Ordering::Acquire) {
        if clock.stale()
            && let Ok(c) = RedisClock::read(&mut redis)
        {
            clock = c;
        }
        let free = {
            let state = shared.lock();
            shared.workers.saturating_sub(state.running)
        };
        let read = if free > 0 && last_claim.elapsed() >= claim_every {
            last_claim = Instant::now();
            claim(shared, &mut redis, &calls_key, free).map(|claimed| {
                let busy = !claimed.is_empty();
                for (entry, fields, deliveries) in claimed {
                    take_call(shared, pool, &clock, entry, &fields, deliveries);
                }
                busy
            })
        } else if free > 0 {
            read_new(
                shared,
                &mut redis,
                &calls_key,
                &control_key,
                free,
                pool,
                &clock,
            )
        } else {
            // Saturated: look for cancels only, then wait for a worker to free up.
            let read = read_new(
                shared,
                &mut redis,
                &calls_key,
                &control_key,
                0,
                pool,
                &clock,
            );
            let state = shared.lock();
            if shared.workers.saturating_sub(state.running) == 0
                && !shared.stopping.load(Ordering::Acquire)
            {
                let _ = shared
                    .changed
                    .wait_timeout(state, SATURATED_POLL)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            read
        };
        match read {
            Ok(_) => backoff = Duration::from_millis(50),
            Err(RemoteError::Command { reason, .. }) if reason.contains("NOGROUP") => {
                // Redis lost the groups (restarted without persistence, or the control
                // stream expired): make them again.
                let _ = ensure_groups(&mut redis, &shared.keys, &shared.id);
            }
            Err(e) => {
                log::warn!("forkworker: host {} cannot read calls: {e}", shared.id);
                back_off(shared, &mut backoff);
            }
        }
    }
}

/// One `XREADGROUP` of up to `free` new calls and of the control stream; hands what it read
/// over. Whether it read anything.
fn read_new(
    shared: &Arc<HostShared>,
    redis: &mut Redis,
    calls_key: &str,
    control_key: &str,
    free: usize,
    pool: &dyn LocalPool,
    clock: &RedisClock,
) -> Result<bool, RemoteError> {
    let block = if free > 0 { Some(READ_BLOCK) } else { None };
    let reply: Value = redis.run_blocking("XREADGROUP", block.unwrap_or_default(), |con| {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&shared.id);
        // Only as many calls as there are free workers (the control stream alone, when none
        // is free, takes a few cancels at a time).
        cmd.arg("COUNT").arg(if free > 0 { free } else { 16 });
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        if free > 0 {
            cmd.arg(calls_key).arg(control_key).arg(">").arg(">");
        } else {
            cmd.arg(control_key).arg(">");
        }
        cmd.query(con)
    })?;
    let streams =
        link::streams_read(&reply).ok_or_else(|| redis.bad_reply("XREADGROUP", "streams"))?;
    let mut any = false;
    for (stream, entries) in streams {
        let entries = link::stream_entries(entries)
            .ok_or_else(|| redis.bad_reply("XREADGROUP", "entries"))?;
        any |= !entries.is_empty();
        if stream == control_key {
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            for (_, fields) in &entries {
                cancel_from(shared, fields);
            }
            if !ids.is_empty() {
                let _: Value = redis.run("XACK", |con| {
                    redis::pipe()
                        .cmd("XACK")
                        .arg(control_key)
                        .arg(GROUP)
                        .arg(&ids)
                        .cmd("XDEL")
                        .arg(control_key)
                        .arg(&ids)
                        .query(con)
                })?;
            }
        } else {
            for (entry, fields) in entries {
                take_call(shared, pool, clock, entry, &fields, 1);
            }
        }
    }
    Ok(any)
}

/// A cancel read from the control stream: the call's worker is killed (its handle
/// cancelled) and the call answered `Cancelled`.
fn cancel_from(shared: &HostShared, fields: &[(&str, &[u8])]) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let (Some(caller), Some(seq)) = (get("caller"), get("cancel").and_then(|s| s.parse().ok()))
    else {
        return;
    };
    let mut state = shared.lock();
    let found = state
        .taken
        .iter()
        .find(|(_, t)| t.call.caller == caller && t.call.seq == seq && t.answer.is_none())
        .map(|(&local, _)| local);
    if let Some(local) = found {
        let taken = state.taken.get_mut(&local).expect("found above");
        if let Some(pending) = taken.pending.take() {
            pending.cancel();
            state.running -= 1;
        }
        let taken = state.taken.get_mut(&local).expect("found above");
        taken.answer = Some(Answer::Result(Err(Failure::Cancelled { by_caller: true })));
        if !state.done.contains(&local) {
            state.done.push_back(local);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// `XAUTOCLAIM` of up to `free` calls whose hosts have not touched them for the visibility
/// time, with how many times each was delivered (counting this claim).
#[allow(clippy::type_complexity)]
fn claim(
    shared: &HostShared,
    redis: &mut Redis,
    calls_key: &str,
    free: usize,
) -> Result<Vec<(String, Vec<(String, Vec<u8>)>, u32)>, RemoteError> {
    let idle = shared.settings.visibility.as_millis() as u64;
    let reply: Value = redis.run("XAUTOCLAIM", |con| {
        redis::cmd("XAUTOCLAIM")
            .arg(calls_key)
            .arg(GROUP)
            .arg(&shared.id)
            .arg(idle)
            .arg("0-0")
            .arg("COUNT")
            .arg(free)
            .query(con)
    })?;
    let parts = link::items(&reply).ok_or_else(|| redis.bad_reply("XAUTOCLAIM", "array"))?;
    let Some(claimed) = parts.get(1) else {
        return Ok(Vec::new());
    };
    let entries =
        link::stream_entries(claimed).ok_or_else(|| redis.bad_reply("XAUTOCLAIM", "entries"))?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // Their delivery counts.
    let reply: Value = redis.run("XPENDING", |con| {
        redis::cmd("XPENDING")
            .arg(calls_key)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .arg(&shared.id)
            .query(con)
    })?;
    let mut counts = HashMap::new();
    for item in link::items(&reply).unwrap_or(&[]) {
        if let Some([id, _, _, Value::Int(n)]) = link::items(item)
            && let Some(id) = link::text(id)
        {
            counts.insert(id.to_owned(), *n as u32);
        }
    }
    Ok(entries
        .into_iter()
        .map(|(id, fields)| {
            let deliveries = counts.get(&id).copied().unwrap_or(2);
            let fields = fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect();
            (id, fields, deliveries)
        })
        .collect())
}

/// Takes one call read from the stream: refuses it, or runs it in the local pool.
fn take_call<K: AsRef<str>, V: AsRef<[u8]>>(
    shared: &Arc<HostShared>,
    pool: &dyn LocalPool,
    clock: &RedisClock,
    entry: String,
    fields: &[(K, V)],
    deliveries: u32,
) {
    let view: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    let call = match CallEntry::parse(&view) {
        Ok(call) => call,
        Err(Unreadable::Version { found, reply }) => {
            log::warn!(
                "forkworker: host {} refused call {entry}: protocol version {found}",
                shared.id
            );
            let Some((reply, seq)) = reply else {
                return answer_now(shared, entry, unreadable(), Answer::Drop);
            };
            let call = CallEntry {
                reply,
                seq,
                ..unreadable()
            };
            let message = format!(
                "the host speaks protocol version {}, the call {found}",
                super::entry::VERSION
            );
            return answer_now(
                shared,
                entry,
                call,
                Answer::Result(Err(Failure::Other { message })),
            );
        }
        Err(Unreadable::Malformed(field)) => {
            log::warn!(
                "forkworker: host {} dropped call {entry}: field {field} missing or malformed",
                shared.id
            );
            return answer_now(shared, entry, unreadable(), Answer::Drop);
        }
    };
    let settings = &shared.settings;
    let refusal = if call.fingerprint != shared.fingerprint {
        Some(Answer::Result(Err(Failure::Incompatible {
            theirs: shared.fingerprint,
        })))
    } else if call.deadline.is_some_and(|d| d <= clock.now_ms()) {
        Some(Answer::Drop)
    } else if deliveries > settings.max_deliveries {
        Some(Answer::Result(Err(Failure::Poisoned {
            deliveries: deliveries - 1,
        })))
    } else if call.args.len() > settings.payload_limit {
        Some(Answer::Result(Err(Failure::PayloadTooLarge {
            size: call.args.len(),
            limit: settings.payload_limit,
        })))
    } else {
        None
    };
    if let Some(answer) = refusal {
        return answer_now(shared, entry, call, answer);
    }
    let pending = pool.submit(call.method, &call.args);
    let local = pending.id().raw();
    let waker = Waker::from(Arc::new(Ended {
        shared: Arc::downgrade(shared),
        local,
    }));
    let mut pending = pending;
    let early = match pending.poll_with(&waker) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => None,
    };
    let mut state = shared.lock();
    match early {
        // Refused by the local pool at once (it holds no call): answered now.
        Some(outcome) => {
            drop(state);
            answer_now(
                shared,
                entry,
                call,
                Answer::Result(outcome.map_err(|e| Failure::of(&e))),
            );
        }
        None => {
            state.running += 1;
            state.taken.insert(
                local,
                Taken {
                    entry,
                    call,
                    pending: Some(pending),
                    answer: None,
                },
            );
            drop(state);
            // It may have ended before it was recorded (its wake found nothing to mark): the
            // writer looks at it once now, and waits for its wake if it still runs.
            waker.wake_by_ref();
        }
    }
}

/// A call entry standing for one that could not be read.
fn unreadable() -> CallEntry {
    CallEntry {
        caller: String::new(),
        seq: 0,
        reply: String::new(),
        fingerprint: 0,
        method: 0,
        deadline: None,
        args: Vec::new(),
    }
}

/// Records an answer known without running the call, for the writer.
fn answer_now(shared: &HostShared, entry: String, call: CallEntry, answer: Answer) {
    let mut state = shared.lock();
    let number = state.next_refusal;
    state.next_refusal += 1;
    state.taken.insert(
        number,
        Taken {
            entry,
            call,
            pending: None,
            answer: Some(answer),
        },
    );
    state.done.push_back(number);
    drop(state);
    shared.changed.notify_all();
}

/// The writer's loop: see the module's documentation.
fn write_loop(shared: &Arc<HostShared>, mut redis: Redis) {
    let refresh_every = shared.settings.visibility / 4;
    let mut last_refresh = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut batch: Vec<(u64, String, CallEntry, Answer)> = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while state.done.is_empty()
                && batch.is_empty()
                && !(shared.finish.load(Ordering::Acquire) && state.taken.is_empty())
                && last_refresh.elapsed() < refresh_every
            {
                let left = refresh_every.saturating_sub(last_refresh.elapsed());
                state = shared
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if shared.finish.load(Ordering::Acquire) && state.taken.is_empty() && batch.is_empty() {
                break;
            }
            while let Some(local) = state.done.pop_front() {
                let Some(taken) = state.taken.get_mut(&local) else {
                    continue;
                };
                let answer = match (taken.answer.take(), taken.pending.as_mut()) {
                    (Some(answer), _) => answer,
                    (None, Some(pending)) => {
                        let waker = Waker::from(Arc::new(Ended {
                            shared: Arc::downgrade(shared),
                            local,
                        }));
                        match pending.poll_with(&waker) {
                            Poll::Ready(outcome) => {
                                let answer = match outcome {
                                    Err(CallError::Cancelled {
                                        reason:
                                            CancelReason::Shutdown | CancelReason::ShutdownGrace { .. },
                                        ..
                                    }) if shared.stopping.load(Ordering::Acquire) => {
                                        Answer::HandBack
                                    }
                                    outcome => Answer::Result(outcome.map_err(|e| Failure::of(&e))),
                                };
                                taken.pending = None;
                                state.running -= 1;
                                answer
                            }
                            // Still running (looked at once after it was taken): its wake
                            // marks it again.
                            Poll::Pending => continue,
                        }
                    }
                    (None, None) => continue,
                };
                let taken = state.taken.remove(&local).expect("looked up above");
                batch.push((local, taken.entry, taken.call, answer));
            }
        }
        // The reader may read more calls now.
        shared.changed.notify_all();
        if !batch.is_empty() {
            match write_answers(shared, &mut redis, &batch) {
                Ok(()) => {
                    batch.clear();
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    log::warn!("forkworker: host {} cannot write results: {e}", shared.id);
                    if shared.finish.load(Ordering::Acquire) && backoff >= BACKOFF_MAX {
                        // Stopping and Redis is gone: the calls stay pending, and another
                        // host claims them after the visibility time.
                        break;
                    }
                    back_off(shared, &mut backoff);
                    continue;
                }
            }
        }
        if last_refresh.elapsed() >= refresh_every {
            last_refresh = Instant::now();
            if let Err(e) = refresh_claims(shared, &mut redis) {
                log::warn!(
                    "forkworker: host {} cannot refresh its claims: {e}",
                    shared.id
                );
            }
        }
    }
    // A host that leaves cleanly leaves no consumer and no control stream behind (unless
    // calls are still pending under its name: those wait for another host's claim).
    let _ = leave(shared, &mut redis);
}

/// Writes the answers of `batch` in one transaction: each result to its caller's stream
/// (which expires if its caller stops reading), then the call acknowledged and deleted.
fn write_answers(
    shared: &HostShared,
    redis: &mut Redis,
    batch: &[(u64, String, CallEntry, Answer)],
) -> Result<(), RemoteError> {
    let calls_key = shared.keys.calls();
    let ttl = shared.settings.result_ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (_, entry, call, answer) in batch {
        match answer {
            Answer::Result(outcome) => {
                let too_large;
                let outcome = match outcome {
                    Ok(bytes) if bytes.len() > shared.settings.payload_limit => {
                        too_large = Failure::PayloadTooLarge {
                            size: bytes.len(),
                            limit: shared.settings.payload_limit,
                        };
                        Err(&too_large)
                    }
                    other => other.as_deref(),
                };
                let cmd = pipe.cmd("XADD").arg(&call.reply).arg("*");
                for (k, v) in result_fields(call.seq, &shared.id, outcome) {
                    cmd.arg(k).arg(v);
                }
                pipe.ignore();
                pipe.cmd("PEXPIRE").arg(&call.reply).arg(ttl).ignore();
            }
            Answer::HandBack => {
                let cmd = pipe.cmd("XADD").arg(&calls_key).arg("*");
                for (k, v) in call.fields() {
                    cmd.arg(k).arg(v);
                }
                pipe.ignore();
            }
            Answer::Drop => {}
        }
        pipe.cmd("XACK")
            .arg(&calls_key)
            .arg(GROUP)
            .arg(entry)
            .ignore();
        pipe.cmd("XDEL").arg(&calls_key).arg(entry).ignore();
    }
    redis.run("MULTI", |con| pipe.query::<()>(con))
}

/// Resets the idle time of the calls this host runs, so that no other host claims them
/// (`XCLAIM ... JUSTID`, which does not count a delivery), for those still pending under
/// this host's name.
fn refresh_claims(shared: &HostShared, redis: &mut Redis) -> Result<(), RemoteError> {
    let entries: Vec<String> = {
        let state = shared.lock();
        state
            .taken
            .values()
            .filter(|t| t.pending.is_some())
            .map(|t| t.entry.clone())
            .collect()
    };
    if entries.is_empty() {
        return Ok(());
    }
    let script = redis::Script::new(REFRESH_SCRIPT);
    redis.run("EVALSHA (refresh claims)", |con| {
        let mut invocation = script.key(shared.keys.calls());
        invocation.arg(GROUP).arg(&shared.id);
        for e in &entries {
            invocation.arg(e);
        }
        invocation.invoke::<Value>(con)
    })?;
    Ok(())
}

/// Claims again, for consumer `ARGV[2]`, the entries `ARGV[3..]` still pending under its
/// own name.
const REFRESH_SCRIPT: &str = r"
local refreshed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    refreshed = refreshed + 1
  end
end
return refreshed
";

/// Removes this host's consumer (if nothing is pending under it) and its control stream.
fn leave(shared: &HostShared, redis: &mut Redis) -> Result<(), RemoteError> {
    let script = redis::Script::new(LEAVE_SCRIPT);
    redis.run("EVALSHA (leave)", |con| {
        script
            .key(shared.keys.calls())
            .key(shared.keys.control(&shared.id))
            .arg(GROUP)
            .arg(&shared.id)
            .invoke::<Value>(con)
    })?;
    Ok(())
}

const LEAVE_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return #p
";
