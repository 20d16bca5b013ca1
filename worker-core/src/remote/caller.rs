//! [`RemotePool`]: a pool whose calls run on hosts on other machines, through Redis.
//!
//! Two threads, each with its own connection:
//! - the **sender** appends the calls the proxies queued to the calls stream (many in one
//!   round trip), and sends cancels: a call still queued is deleted, a running one's host is
//!   told through its control stream;
//! - the **receiver** reads the caller's results stream, hands each result to its call's
//!   handle once (a result written twice, by a host that died before acknowledging and by
//!   the host that ran the call again, reaches the caller once), deletes what it read, and
//!   ends the calls whose deadline passed or whose Redis stayed away too long.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Value;
use serde::Serialize;

use super::entry::{CallEntry, ResultEntry};
use super::link::{self, Endpoint, Redis, RedisClock};
use super::{GROUP, Keys, RemoteError};
use crate::call::{CallId, CallStatus, Timings};
use crate::callbacks::{Callbacks, On};
use crate::error::{CallError, CancelReason, WireError};
use crate::shared::{Face, Pending, method_name, pending::Link, status_of};
use crate::stats::{Outcomes, Recorder, Summary};
use crate::worker::Worker;

/// How long the receiver blocks in Redis before it looks at deadlines again.
const READ_BLOCK: Duration = Duration::from_millis(100);
/// How many calls the sender appends in one round trip, at most.
const BATCH: usize = 512;
/// The longest wait between two tries to reach Redis again.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How many released calls' statuses are kept.
const HISTORY: usize = 1024;

/// The settings of a connected pool before it connects (see `XPool::remote`).
///
/// ```no_run
/// # use forkworker_core::closure::FnPool;
/// use std::time::Duration;
/// // On the hosts: FnPool::builder("Double", |n: u64| n * 2).workers(4).serve(url)?;
/// let pool = FnPool::<fn(u64) -> u64, u64, u64>::remote("Double")
///     .timeout(Duration::from_secs(5))
///     .connect("redis://127.0.0.1:6379")?;
/// assert_eq!(pool.call(21).wait()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until connect()"]
pub struct RemoteBuilder<W: Worker, P> {
    alias: String,
    settings: CallerSettings,
    callbacks: Callbacks<Handler>,
    wrap: fn(RemotePool<W>) -> P,
}

/// A callback of a connected pool, whatever the worker type.
type Handler = Box<dyn Fn(&Finished<'_>) + Send + Sync>;

#[derive(Debug, Clone)]
struct CallerSettings {
    prefix: String,
    timeout: Option<Duration>,
    payload_limit: usize,
    redis_retry: Option<Duration>,
    root_ca: Option<Vec<u8>>,
}

/// A builder whose `connect` returns `wrap(pool)`: how a generated `XPool::remote` makes
/// one.
#[doc(hidden)]
pub fn remote_builder<W: Worker, P>(
    alias: impl Into<String>,
    wrap: fn(RemotePool<W>) -> P,
) -> RemoteBuilder<W, P> {
    RemoteBuilder {
        alias: alias.into(),
        settings: CallerSettings {
            prefix: super::DEFAULT_PREFIX.to_owned(),
            timeout: None,
            payload_limit: super::DEFAULT_PAYLOAD_LIMIT,
            redis_retry: Some(super::DEFAULT_REDIS_RETRY),
            root_ca: None,
        },
        callbacks: Callbacks::default(),
        wrap,
    }
}

impl<W: Worker + 'static, P> RemoteBuilder<W, P> {
    /// The caller's deadline for each call: written into the call (in Redis's clock, so the
    /// machines' clock skew does not matter), so that a host does not start a call whose
    /// deadline passed, and kept by the caller, so that a call ends
    /// [`CallError::Timeout`] (with `pid` 0) on time even if no host is up; its host, if
    /// one runs it, is told to kill its worker. No deadline by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// The prefix of the pool's stream names (default `forkworker`): the calls of pool
    /// `alias` go to `{prefix}:{alias}:calls`. Hosts and callers must agree on it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// The largest encoded arguments a call may carry through Redis (default 16 MiB,
    /// [`super::DEFAULT_PAYLOAD_LIMIT`]); a larger call fails at once with
    /// [`CallError::PayloadTooLarge`]. Hosts have their own limit for return values.
    pub fn payload_limit(mut self, bytes: usize) -> Self {
        self.settings.payload_limit = bytes;
        self
    }

    /// How long calls wait for an unreachable Redis before they fail with
    /// [`CallError::Remote`] (default 10 s); `None`: they wait for it as long as their own
    /// deadline lets them. A call's deadline ([`RemoteBuilder::timeout`]) holds either way.
    pub fn redis_retry(mut self, retry: Option<Duration>) -> Self {
        self.settings.redis_retry = retry;
        self
    }

    /// The callback for calls that returned: runs once per call (a result written twice by
    /// two hosts fires it once), before the call's handle gets the result, without the pool's
    /// lock, on one of the pool's threads (for a call cancelled by its caller: on the thread
    /// that cancelled it). Keep it short; it may make calls (they are queued), but must not
    /// wait for one: the pool's thread would wait for itself. A callback that panics is
    /// logged, and the pool carries on.
    pub fn on_return(
        mut self,
        handler: impl Fn(&RemoteCall<'_, W>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Return, erase(handler));
        self
    }

    /// The callback for calls whose deadline passed, at the caller (no host answered in
    /// time) or on their host (its local timeout killed the worker).
    pub fn on_timeout(
        mut self,
        handler: impl Fn(&RemoteCall<'_, W>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Timeout, erase(handler));
        self
    }

    /// The callback for calls that failed otherwise: crashed, panicked or refused on their
    /// host, poisoned, cancelled, or failed for want of Redis.
    pub fn on_error(
        mut self,
        handler: impl Fn(&RemoteCall<'_, W>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Error, erase(handler));
        self
    }

    /// For `rediss://` URLs: trust this certificate authority (PEM) instead of the system's.
    ///
    /// It replaces the system's roots (it does not add to them): only servers whose
    /// certificate it signed are accepted. Without it a `rediss://` URL trusts the system's
    /// roots, which `SSL_CERT_FILE` (a PEM file) or `SSL_CERT_DIR` can name, as for OpenSSL.
    /// With a `redis://` URL, or a `pem` that holds no certificate, [`RemoteBuilder::connect`]
    /// fails with [`RemoteError::Url`].
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.root_ca = Some(pem.into());
        self
    }

    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`, or `rediss://...`
    /// for TLS) and starts the pool's two threads.
    ///
    /// The password (with a user name for Redis's ACLs: `redis://user:password@...`) is sent
    /// as `AUTH` on each connection; percent-encode characters such as `@`, `:` or `/` in it.
    /// Errors and logs show the URL with the password as `***`. TLS (`rediss://`) checks the
    /// server's certificate against the system's roots or [`RemoteBuilder::tls_root_ca`], and
    /// its name against the URL's host.
    ///
    /// Arguments and results travel through Redis as they are: in the clear on the network
    /// unless the URL is `rediss://`, and readable by whoever may read the Redis keys.
    ///
    /// # Errors
    /// [`RemoteError::Url`] for a URL the client does not understand (or a `tls_root_ca`
    /// that holds no certificate), [`RemoteError::Unreachable`] if Redis cannot be reached
    /// now or refuses the connection: a wrong or missing password, a certificate it does not
    /// trust, plain `redis://` to a TLS port.
    pub fn connect(self, url: &str) -> Result<P, RemoteError> {
        let RemoteBuilder {
            alias,
            settings,
            callbacks,
            wrap,
        } = self;
        let endpoint = Endpoint::new(url, settings.root_ca.as_deref())?;
        let mut sender = Redis::open(endpoint.clone())?;
        let receiver = Redis::open(endpoint)?;
        let keys = Keys::new(&settings.prefix, &alias);
        // Calls made before any host started are read by the first one.
        super::host::create_group(&mut sender, &keys.calls())?;
        let clock = RedisClock::read(&mut sender)?;
        let id = super::random_hex();
        let caller = Arc::new(Caller {
            reply: keys.results(&id),
            id,
            keys,
            alias,
            methods: W::METHODS,
            fingerprint: W::fingerprint(),
            settings,
            callbacks,
            started: Instant::now(),
            state: Mutex::new(CallerState::default()),
            outbox: Condvar::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let c = caller.clone();
        let send = super::spawn("fw-remote-send", move || send_loop(&c, sender, clock));
        let c = caller.clone();
        let receive = super::spawn("fw-remote-recv", move || receive_loop(&c, receiver));
        let mut threads = Vec::new();
        let mut failed = None;
        for t in [send, receive] {
            match t {
                Ok(t) => threads.push(t),
                Err(e) => failed = Some(e),
            }
        }
        *caller
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = threads;
        if let Some(e) = failed {
            caller.finish();
            return Err(e);
        }
        Ok(wrap(RemotePool {
            owner: Arc::new(Owner { caller }),
            worker: PhantomData,
        }))
    }
}

/// A pool whose calls run on hosts on other machines (`XPool::builder(..).serve(url)`),
/// through Redis Streams: the same typed proxies, [`Pending`] handles and errors as a local
/// [`crate::SharedPool`], with no worker and no value of its own. Made by
/// `XPool::remote(alias).connect(url)`.
///
/// Unlike a local pool it has no `inline()` (the generated `XPool` over a `RemotePool` does
/// not offer it: a compile error), no callbacks and no worker statistics; [`RemotePool::stats`]
/// counts its calls by outcome and round-trip time.
///
/// # Guarantees
/// - **At least once**: a host that dies or stalls leaves its calls to the other hosts;
///   a call whose hosts die running it too often ends [`CallError::Poisoned`].
/// - **Delivered once**: a result written twice reaches the handle once.
/// - **Deadlines** ([`RemoteBuilder::timeout`]) hold with no host up and with Redis away.
/// - Dropping a handle cancels its call: a queued call is deleted from the stream, a running
///   one's host is told to kill its worker (best effort: a host that does not hear of it in
///   time finishes the call, and the result is dropped).
pub struct RemotePool<W: Worker> {
    owner: Arc<Owner>,
    worker: PhantomData<fn() -> W>,
}

impl<W: Worker> Clone for RemotePool<W> {
    fn clone(&self) -> Self {
        RemotePool {
            owner: self.owner.clone(),
            worker: PhantomData,
        }
    }
}

/// Held by every clone (not by handles): when the last goes, the pool stops once no call is
/// in use.
struct Owner {
    caller: Arc<Caller>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let idle = {
            let mut state = self.caller.lock();
            state.orphaned = true;
            state.calls.is_empty()
        };
        if idle {
            self.caller.finish();
        }
    }
}

/// What the pool's clones, handles and threads share.
struct Caller {
    alias: String,
    keys: Keys,
    /// This caller's id (random), with a call's number unique across callers.
    id: String,
    /// This caller's results stream.
    reply: String,
    methods: &'static [&'static str],
    fingerprint: u64,
    settings: CallerSettings,
    callbacks: Callbacks<Handler>,
    started: Instant,
    state: Mutex<CallerState>,
    /// Signalled when the sender has work (and at a stop).
    outbox: Condvar,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct CallerState {
    next_seq: u64,
    calls: HashMap<u64, Remote>,
    outbox: VecDeque<Out>,
    /// Since when Redis has been unreachable (by either thread), if it is.
    down_since: Option<(Instant, RemoteError)>,
    orphaned: bool,
    closed: bool,
    history: VecDeque<(u64, CallStatus, Timings)>,
    stats: HashMap<u32, (Recorder, Outcomes)>,
    /// Calls that ended, waiting for their callbacks (see `Caller::fire`).
    ending: Vec<Ending>,
}

/// A call in flight, or finished with its result not yet taken.
struct Remote {
    method: u32,
    /// Its encoded arguments until they were sent.
    args: Option<Vec<u8>>,
    /// Its entry in the calls stream, once added.
    entry: Option<String>,
    deadline: Option<Instant>,
    outcome: Option<Result<Vec<u8>, CallError>>,
    waker: Option<Waker>,
    /// A handle waits for it (else it was detached: its result is dropped when it comes).
    held: bool,
    /// It ended and its callback is about to run: a second result is ignored.
    ending: bool,
    timings: Timings,
}

impl Remote {
    /// Not ended yet (no outcome, no callback about to run).
    fn in_flight(&self) -> bool {
        self.outcome.is_none() && !self.ending
    }
}

/// Work for the sender.
enum Out {
    Submit(u64),
    Cancel { seq: u64, entry: String },
}

impl Caller {
    fn lock(&self) -> MutexGuard<'_, CallerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn method(&self, method: u32) -> &'static str {
        self.methods
            .get(method as usize)
            .copied()
            .unwrap_or("<unknown>")
    }

    /// Stops the threads and waits for them (unless called on one of them), and deletes the
    /// caller's results stream.
    fn finish(&self) {
        self.stop.store(true, Ordering::Release);
        self.outbox.notify_all();
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    /// Records the end of call `seq` (its outcome, once: a second is ignored, as is a result
    /// for a call that ended already). With no callback for it, the handle gets it now;
    /// otherwise it waits for [`Caller::fire`], which the thread that ended it calls once it
    /// released the lock.
    fn end(
        &self,
        state: &mut CallerState,
        seq: u64,
        outcome: Result<Vec<u8>, CallError>,
        host: Option<String>,
    ) {
        let Some(call) = state.calls.get_mut(&seq) else {
            return;
        };
        if call.outcome.is_some() || call.ending {
            return;
        }
        let status = match &outcome {
            Ok(_) => CallStatus::Returned,
            Err(e) => status_of(e),
        };
        let now = crate::clock::now_ns();
        call.timings.enter(status, now);
        call.args = None;
        let started = call.timings.entered_ns(CallStatus::Uncalled).unwrap_or(now);
        let method = call.method;
        let round_trip = Duration::from_nanos(now.saturating_sub(started));
        let (recorder, outcomes) = state.stats.entry(method).or_default();
        recorder.record_ns(round_trip.as_nanos() as u64);
        outcomes.count(status);
        if self.callbacks.get(On::of(status)).is_none() {
            commit(state, seq, outcome);
            return;
        }
        state.calls.get_mut(&seq).expect("looked up above").ending = true;
        state.ending.push(Ending {
            seq,
            method,
            status,
            host,
            outcome,
            round_trip,
        });
    }

    /// Runs the callbacks of the calls that ended (see [`Caller::end`]), without the lock,
    /// then hands their results to their handles. Called after the lock is released by the
    /// thread that ended calls.
    fn fire(&self) {
        loop {
            let ended = std::mem::take(&mut self.lock().ending);
            if ended.is_empty() {
                return;
            }
            for e in &ended {
                if let Some(handler) = self.callbacks.get(On::of(e.status)) {
                    let finished = Finished {
                        seq: e.seq,
                        method: e.method,
                        name: self.method(e.method),
                        status: e.status,
                        host: e.host.as_deref(),
                        outcome: &e.outcome,
                        round_trip: e.round_trip,
                    };
                    let on = On::of(e.status);
                    crate::callbacks::guarded(&self.alias, e.seq, on, || handler(&finished));
                }
            }
            let mut state = self.lock();
            for e in ended {
                commit(&mut state, e.seq, e.outcome);
            }
        }
    }
}

/// Hands call `seq`'s outcome to its handle (and wakes it), or lets the call go if nobody
/// waits for it.
fn commit(state: &mut CallerState, seq: u64, outcome: Result<Vec<u8>, CallError>) {
    let Some(call) = state.calls.get_mut(&seq) else {
        return;
    };
    call.ending = false;
    call.outcome = Some(outcome);
    if let Some(waker) = call.waker.take() {
        waker.wake();
    }
    if !call.held {
        let _ = release(state, seq);
    }
}

/// A call that ended, waiting for its callback.
struct Ending {
    seq: u64,
    method: u32,
    status: CallStatus,
    host: Option<String>,
    outcome: Result<Vec<u8>, CallError>,
    round_trip: Duration,
}

/// Forgets call `seq`, keeping its status for [`RemotePool::status`]; returns it.
fn release(state: &mut CallerState, seq: u64) -> Option<Remote> {
    let mut call = state.calls.remove(&seq)?;
    let status = match &call.outcome {
        Some(Ok(_)) => CallStatus::Returned,
        Some(Err(e)) => status_of(e),
        None => CallStatus::Cancelled,
    };
    if state.history.len() >= HISTORY {
        state.history.pop_front();
    }
    state
        .history
        .push_back((seq, status, std::mem::take(&mut call.timings)));
    Some(call)
}

impl<W: Worker + 'static> Face<W> for RemotePool<W> {
    fn submit_call<A: Serialize + ?Sized, R: Send + 'static>(
        &self,
        method: u32,
        args: &A,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Pending<R> {
        let name = method_name::<W>(method);
        let caller = &self.owner.caller;
        let submitted = caller.submit(method, name, args);
        Pending::submitted(submitted, || caller.clone(), name, decode)
    }
}

impl Caller {
    fn submit<A: Serialize + ?Sized>(
        &self,
        method: u32,
        name: &'static str,
        args: &A,
    ) -> Result<u64, CallError> {
        let bytes = crate::wire::encode_call(args, name)?;
        let limit = self.settings.payload_limit;
        if bytes.len() > limit {
            return Err(CallError::PayloadTooLarge {
                method: name,
                size: bytes.len(),
                limit,
            });
        }
        let mut state = self.lock();
        if state.closed || self.stop.load(Ordering::Acquire) {
            return Err(CallError::Closed { method: name });
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        let mut timings = Timings::default();
        timings.enter(CallStatus::Uncalled, crate::clock::now_ns());
        state.calls.insert(
            seq,
            Remote {
                method,
                args: Some(bytes),
                entry: None,
                deadline: self.settings.timeout.map(|t| Instant::now() + t),
                outcome: None,
                waker: None,
                held: true,
                ending: false,
                timings,
            },
        );
        state.outbox.push_back(Out::Submit(seq));
        drop(state);
        self.outbox.notify_one();
        Ok(seq)
    }

    /// Whether nothing is in use and no clone is left: the pool stops.
    fn idle_orphan(state: &CallerState) -> bool {
        state.orphaned && state.calls.is_empty()
    }
}

impl Link for Caller {
    fn poll_take(&self, id: u64, waker: &Waker) -> Poll<Result<Vec<u8>, CallError>> {
        let (taken, last) = {
            let mut state = self.lock();
            let Some(call) = state.calls.get_mut(&id) else {
                return Poll::Ready(Err(CallError::UnknownCall(id)));
            };
            if call.outcome.is_none() {
                match &mut call.waker {
                    Some(w) if w.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
                return Poll::Pending;
            }
            let outcome = release(&mut state, id)
                .and_then(|call| call.outcome)
                .expect("a finished call has its outcome");
            (outcome, Caller::idle_orphan(&state))
        };
        if last {
            self.finish();
        }
        Poll::Ready(taken)
    }

    fn status(&self, id: u64) -> Option<CallStatus> {
        let state = self.lock();
        status_in(&state, id)
    }

    fn timings(&self, id: u64) -> Option<Timings> {
        let state = self.lock();
        match state.calls.get(&id) {
            Some(call) => Some(call.timings.clone()),
            None => state
                .history
                .iter()
                .find(|(s, _, _)| *s == id)
                .map(|(_, _, t)| t.clone()),
        }
    }

    fn let_go(&self, id: u64, cancel: bool) {
        let last = {
            let mut state = self.lock();
            let Some(call) = state.calls.get_mut(&id) else {
                return;
            };
            if !call.in_flight() {
                let _ = release(&mut state, id);
            } else if cancel {
                let method = self.method(call.method);
                let entry = call.entry.clone();
                self.end(
                    &mut state,
                    id,
                    Err(CallError::Cancelled {
                        method,
                        reason: CancelReason::ByCaller,
                    }),
                    None,
                );
                let _ = release(&mut state, id);
                match entry {
                    Some(entry) => {
                        state.outbox.push_back(Out::Cancel { seq: id, entry });
                        self.outbox.notify_one();
                    }
                    // Not sent yet: it never will be.
                    None => state
                        .outbox
                        .retain(|o| !matches!(o, Out::Submit(s) if *s == id)),
                }
            } else {
                call.held = false;
            }
            Caller::idle_orphan(&state)
        };
        self.fire();
        if last {
            self.finish();
        }
    }
}

/// The status of call `id`: in flight, finished, or one of the most recent released.
fn status_in(state: &CallerState, id: u64) -> Option<CallStatus> {
    match state.calls.get(&id) {
        Some(Remote {
            outcome: Some(Ok(_)),
            ..
        }) => Some(CallStatus::Returned),
        Some(Remote {
            outcome: Some(Err(e)),
            ..
        }) => Some(status_of(e)),
        // Queued in Redis or running on a host: the caller does not see which.
        Some(_) => Some(CallStatus::Uncalled),
        None => state
            .history
            .iter()
            .find(|(s, _, _)| *s == id)
            .map(|(_, status, _)| *status),
    }
}

impl<W: Worker> RemotePool<W> {
    fn caller(&self) -> &Arc<Caller> {
        &self.owner.caller
    }

    /// The pool's name.
    pub fn alias(&self) -> &str {
        &self.caller().alias
    }

    /// This caller's id in Redis (random; its results stream is named after it).
    pub fn caller_id(&self) -> &str {
        &self.caller().id
    }

    /// Calls in flight: queued in Redis, running on a host, or finished with their result
    /// not yet taken.
    pub fn pending(&self) -> usize {
        self.caller()
            .lock()
            .calls
            .values()
            .filter(|c| c.in_flight())
            .count()
    }

    /// The status of call `id`: [`CallStatus::Uncalled`] while it is in Redis or on a host
    /// (the caller does not see which), then its final status, also after its handle is
    /// gone (for the most recent 1,024 calls).
    pub fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        status_in(&self.caller().lock(), id.raw())
    }

    /// Whether the pool still takes calls.
    pub fn is_open(&self) -> bool {
        let caller = self.caller();
        !caller.lock().closed && !caller.stop.load(Ordering::Acquire)
    }

    /// Stops taking calls, waits for the calls in flight to end (each within its own
    /// deadline, if it has one), then stops the pool's threads. A call made afterwards
    /// fails with [`CallError::Closed`].
    pub fn close(&self) {
        let caller = self.caller();
        caller.lock().closed = true;
        loop {
            let busy = caller.lock().calls.values().any(Remote::in_flight);
            if !busy || caller.stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        caller.finish();
    }

    /// Stops now: every call in flight is cancelled (ends [`CallError::Cancelled`]; those
    /// queued are deleted from Redis and the hosts of those running are told, as far as the
    /// pool can reach Redis within `grace`), then the threads stop.
    pub fn shutdown(&self, grace: Duration) {
        let caller = self.caller();
        {
            let mut state = caller.lock();
            state.closed = true;
            let open: Vec<u64> = state
                .calls
                .iter()
                .filter(|(_, c)| c.in_flight())
                .map(|(&s, _)| s)
                .collect();
            for seq in open {
                let call = &state.calls[&seq];
                let method = caller.method(call.method);
                if let Some(entry) = call.entry.clone() {
                    state.outbox.push_back(Out::Cancel { seq, entry });
                }
                caller.end(
                    &mut state,
                    seq,
                    Err(CallError::Cancelled {
                        method,
                        reason: CancelReason::Shutdown,
                    }),
                    None,
                );
            }
            state.outbox.retain(|o| matches!(o, Out::Cancel { .. }));
        }
        caller.fire();
        caller.outbox.notify_all();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !caller.lock().outbox.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        caller.finish();
    }

    /// The caller's statistics: its calls by method, by outcome and round-trip time (from
    /// the call to its result reaching this process).
    pub fn stats(&self) -> RemoteStats {
        let caller = self.caller();
        let state = caller.lock();
        let mut methods: Vec<RemoteMethodStats> = state
            .stats
            .iter()
            .map(|(&m, (recorder, outcomes))| RemoteMethodStats {
                method: caller.method(m),
                round_trip: recorder.summary(),
                outcomes: *outcomes,
            })
            .collect();
        methods.sort_by_key(|m| m.method);
        RemoteStats {
            alias: caller.alias.clone(),
            uptime: caller.started.elapsed(),
            in_flight: state.calls.values().filter(|c| c.in_flight()).count(),
            methods,
        }
    }

    /// Blocks until every call of `handles` ended or `timeout` passed; see
    /// [`crate::SharedPool::wait_all`].
    pub fn wait_all<R>(
        &self,
        handles: impl IntoIterator<Item = Pending<R>>,
        timeout: Duration,
    ) -> Vec<Result<R, CallError>> {
        crate::shared::pending::wait_all(handles, timeout)
    }

    /// Blocks until one of `handles` ends or `timeout` passes; see
    /// [`crate::SharedPool::wait_any`].
    pub fn wait_any<R>(
        &self,
        handles: &mut Vec<Pending<R>>,
        timeout: Duration,
    ) -> Option<(CallId<R>, Result<R, CallError>)> {
        crate::shared::pending::wait_any(handles, timeout)
    }
}

impl<W: Worker> fmt::Debug for RemotePool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemotePool")
            .field("alias", &self.alias())
            .field("caller", &self.caller_id())
            .finish_non_exhaustive()
    }
}

/// A connected pool's statistics: [`RemotePool::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// The pool's name.
    pub alias: String,
    /// Since it connected.
    pub uptime: Duration,
    /// Calls in flight now.
    pub in_flight: usize,
    /// By method, those called at least once.
    pub methods: Vec<RemoteMethodStats>,
}

/// The figures of one method of a connected pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteMethodStats {
    /// The method's name.
    pub method: &'static str,
    /// From the call to its result reaching the caller.
    pub round_trip: Summary,
    /// How the calls ended.
    pub outcomes: Outcomes,
}

impl fmt::Display for RemoteStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Remote calls of {} (up {:.1?}, {} in flight)",
            self.alias, self.uptime, self.in_flight
        )?;
        writeln!(
            f,
            "   {:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "Method", "Mean", "Median", "P99", "Count", "Returned", "Timeout", "Failed"
        )?;
        for m in &self.methods {
            let o = &m.outcomes;
            writeln!(
                f,
                "   {:<20} {:>10.3?} {:>10.3?} {:>10.3?} {:>8} {:>8} {:>8} {:>8}",
                m.method,
                m.round_trip.mean,
                m.round_trip.p50,
                m.round_trip.p99,
                m.round_trip.count,
                o.returned,
                o.timeout,
                o.total() - o.returned - o.timeout
            )?;
        }
        Ok(())
    }
}

/// Records that Redis could not be reached (the first failure's time is kept).
fn redis_down(caller: &Caller, error: RemoteError) {
    let mut state = caller.lock();
    if state.down_since.is_none() {
        log::warn!("forkworker: pool {} lost Redis: {error}", caller.alias);
        state.down_since = Some((Instant::now(), error));
    } else if let Some((_, last)) = state.down_since.as_mut() {
        *last = error;
    }
}

fn redis_up(caller: &Caller) {
    let mut state = caller.lock();
    if state.down_since.take().is_some() {
        log::info!("forkworker: pool {} reached Redis again", caller.alias);
    }
}

/// The sender's loop: see the module's documentation.
fn send_loop(caller: &Arc<Caller>, mut redis: Redis, mut clock: RedisClock) {
    let calls_key = caller.keys.calls();
    let control_prefix = caller.keys.control("");
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut batch: Vec<(Out, Option<CallEntry>)> = Vec::new();
        {
            let mut state = caller.lock();
            while state.outbox.is_empty() && !caller.stop.load(Ordering::Acquire) {
                state = caller
                    .outbox
                    .wait_timeout(state, Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if caller.stop.load(Ordering::Acquire) && state.outbox.is_empty() {
                break;
            }
            while batch.len() < BATCH {
                let Some(out) = state.outbox.pop_front() else {
                    break;
                };
                let entry = match &out {
                    Out::Submit(seq) => {
                        let Some(call) = state.calls.get_mut(seq) else {
                            continue;
                        };
                        // Taken, not copied: put back if the append fails.
                        let Some(args) = call.args.take() else {
                            continue;
                        };
                        let deadline = call.deadline.map(|d| {
                            clock.now_ms()
                                + d.saturating_duration_since(Instant::now()).as_millis() as u64
                        });
                        Some(CallEntry {
                            caller: caller.id.clone(),
                            seq: *seq,
                            reply: caller.reply.clone(),
                            fingerprint: caller.fingerprint,
                            method: call.method,
                            deadline,
                            args,
                        })
                    }
                    Out::Cancel { .. } => None,
                };
                batch.push((out, entry));
            }
        }
        if batch.is_empty() {
            continue;
        }
        if clock.stale()
            && let Ok(c) = RedisClock::read(&mut redis)
        {
            clock = c;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (out, entry) in &batch {
            match (out, entry) {
                (Out::Submit(_), Some(entry)) => {
                    let cmd = pipe.cmd("XADD").arg(&calls_key).arg("*");
                    for (k, v) in entry.fields() {
                        cmd.arg(k).arg(v);
                    }
                }
                (Out::Cancel { seq, entry }, _) => {
                    pipe.cmd("EVAL")
                        .arg(CANCEL_SCRIPT)
                        .arg(1)
                        .arg(&calls_key)
                        .arg(GROUP)
                        .arg(entry)
                        .arg(&control_prefix)
                        .arg(&caller.id)
                        .arg(*seq);
                }
                (Out::Submit(_), None) => unreachable!("a submit carries its entry"),
            }
        }
        match redis.run("XADD", |con| pipe.query::<Vec<Value>>(con)) {
            Ok(replies) => {
                backoff = Duration::from_millis(20);
                redis_up(caller);
                let mut state = caller.lock();
                for ((out, _), reply) in batch.iter().zip(&replies) {
                    let Out::Submit(seq) = out else { continue };
                    let Some(id) = link::text(reply) else {
                        // Redis refused the entry (out of memory, say): the call fails.
                        let method = state
                            .calls
                            .get(seq)
                            .map_or("<unknown>", |c| caller.method(c.method));
                        let reason = format!("{reply:?}");
                        caller.end(
                            &mut state,
                            *seq,
                            Err(CallError::Remote {
                                method,
                                source: Box::new(RemoteError::Command {
                                    url: redis.shown().to_owned(),
                                    command: "XADD",
                                    reason,
                                }),
                            }),
                            None,
                        );
                        continue;
                    };
                    match state.calls.get_mut(seq) {
                        Some(call) if call.in_flight() => {
                            call.entry = Some(id.to_owned());
                            call.args = None;
                            call.timings
                                .enter(CallStatus::Called, crate::clock::now_ns());
                        }
                        // Cancelled or timed out while it was being sent: take it back.
                        _ => state.outbox.push_back(Out::Cancel {
                            seq: *seq,
                            entry: id.to_owned(),
                        }),
                    }
                }
                drop(state);
                caller.fire();
            }
            Err(e) => {
                // Try again, in order, once Redis is back (an entry Redis added before the
                // connection broke is added twice: the caller keeps the first result).
                redis_down(caller, e);
                let mut state = caller.lock();
                for (out, entry) in batch.into_iter().rev() {
                    if let (Out::Submit(seq), Some(entry)) = (&out, entry)
                        && let Some(call) = state.calls.get_mut(seq)
                        && call.in_flight()
                    {
                        call.args = Some(entry.args);
                    }
                    state.outbox.push_front(out);
                }
                let _ = caller
                    .outbox
                    .wait_timeout(state, backoff)
                    .unwrap_or_else(PoisonError::into_inner);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Cancels a call: deletes its entry if no host took it (`1`), else tells the host that has
/// it (`-1`), unless that host is gone (`-2`: its control stream does not exist; the call
/// is claimed by another host, which drops it when its deadline passed or runs it).
const CANCEL_SCRIPT: &str = r"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(p) ~= 'table' or p.err then
  return redis.call('XDEL', KEYS[1], ARGV[2])
end
if #p == 0 then
  return redis.call('XDEL', KEYS[1], ARGV[2])
end
local control = ARGV[3] .. p[1][2]
if redis.call('EXISTS', control) == 0 then
  return -2
end
redis.call('XADD', control, '*', 'cancel', ARGV[5], 'caller', ARGV[4])
return -1
";

/// The receiver's loop: see the module's documentation.
fn receive_loop(caller: &Arc<Caller>, mut redis: Redis) {
    let mut last = "0-0".to_owned();
    let mut backoff = Duration::from_millis(20);
    // The nearest deadline of a call in flight, as the last sweep left them (a call made
    // since has a later one: every call has the pool's timeout).
    let mut next: Option<Instant> = None;
    while !caller.stop.load(Ordering::Acquire) {
        let block = next
            .map_or(READ_BLOCK, |d| d.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_millis(1), READ_BLOCK);
        let read: Result<Value, RemoteError> = redis.run_blocking("XREAD", block, |con| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&caller.reply)
                .arg(&last)
                .query(con)
        });
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(20);
                redis_up(caller);
                let read = deliver(caller, &reply, &mut last);
                if !read.is_empty() {
                    let deleted: Result<Value, _> = redis.run("XDEL", |con| {
                        redis::cmd("XDEL").arg(&caller.reply).arg(&read).query(con)
                    });
                    if let Err(e) = deleted {
                        log::debug!(
                            "forkworker: pool {} could not delete results: {e}",
                            caller.alias
                        );
                    }
                }
            }
            Err(e) => {
                redis_down(caller, e);
                let pause = next
                    .map_or(backoff, |d| d.saturating_duration_since(Instant::now()))
                    .clamp(Duration::from_millis(1), backoff);
                std::thread::sleep(pause);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        next = sweep(caller);
    }
    // A caller that leaves deletes its results stream.
    let _: Result<Value, _> =
        redis.run("DEL", |con| redis::cmd("DEL").arg(&caller.reply).query(con));
}

/// Hands the results in `reply` to their calls (each once), and returns the ids of the
/// entries read.
fn deliver(caller: &Caller, reply: &Value, last: &mut String) -> Vec<String> {
    let mut read = Vec::new();
    let Some(streams) = link::streams_read(reply) else {
        return read;
    };
    let mut state = caller.lock();
    for (_, entries) in streams {
        for (id, fields) in link::stream_entries(entries).unwrap_or_default() {
            *last = id.clone();
            read.push(id);
            let Some(result) = ResultEntry::parse(&fields) else {
                continue;
            };
            let Some(call) = state.calls.get(&result.seq) else {
                // Delivered already (a result written twice), or cancelled.
                continue;
            };
            let method = caller.method(call.method);
            let outcome = result
                .outcome
                .map_err(|f| f.into_error(method, result.host.clone(), caller.fingerprint));
            caller.end(&mut state, result.seq, outcome, Some(result.host));
        }
    }
    drop(state);
    caller.fire();
    if Caller::idle_orphan(&caller.lock()) {
        caller.stop.store(true, Ordering::Release);
        caller.outbox.notify_all();
    }
    read
}

/// Ends the calls whose deadline passed (their hosts are told), and, when Redis has been
/// away longer than the retry time, every call in flight. Returns the nearest deadline of
/// the calls still in flight.
fn sweep(caller: &Caller) -> Option<Instant> {
    let now = Instant::now();
    let mut state = caller.lock();
    let gone = match (&state.down_since, caller.settings.redis_retry) {
        (Some((since, error)), Some(retry)) if since.elapsed() > retry => {
            Some((since.elapsed(), error.clone()))
        }
        _ => None,
    };
    let mut next: Option<Instant> = None;
    let ended: Vec<(u64, CallError, Option<String>)> = state
        .calls
        .iter()
        .filter(|(_, c)| c.in_flight())
        .filter_map(|(&seq, c)| {
            let method = caller.method(c.method);
            if c.deadline.is_some_and(|d| d <= now) {
                let timeout = caller.settings.timeout.unwrap_or_default();
                Some((
                    seq,
                    CallError::Timeout {
                        method,
                        pid: 0,
                        timeout,
                    },
                    c.entry.clone(),
                ))
            } else {
                if gone.is_none()
                    && let Some(d) = c.deadline
                {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
                gone.as_ref().map(|(waited, error)| {
                    let reason = match error {
                        RemoteError::Unreachable { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    (
                        seq,
                        CallError::Remote {
                            method,
                            source: Box::new(RemoteError::Gone {
                                url: match error {
                                    RemoteError::Unreachable { url, .. } => url.clone(),
                                    _ => String::new(),
                                },
                                waited: *waited,
                                reason,
                            }),
                        },
                        c.entry.clone(),
                    )
                })
            }
        })
        .collect();
    if ended.is_empty() {
        return next;
    }
    for (seq, error, entry) in ended {
        caller.end(&mut state, seq, Err(error), None);
        match entry {
            Some(entry) => state.outbox.push_back(Out::Cancel { seq, entry }),
            None => state
                .outbox
                .retain(|o| !matches!(o, Out::Submit(s) if *s == seq)),
        }
    }
    drop(state);
    caller.outbox.notify_one();
    caller.fire();
    if Caller::idle_orphan(&caller.lock()) {
        caller.stop.store(true, Ordering::Release);
        caller.outbox.notify_all();
    }
    next
}

/// A user's callback, typed for `W`, as the pool (which is not generic) keeps it.
fn erase<W: Worker>(handler: impl Fn(&RemoteCall<'_, W>) + Send + Sync + 'static) -> Handler {
    Box::new(move |finished: &Finished<'_>| {
        handler(&RemoteCall {
            finished,
            worker: PhantomData,
        })
    })
}

/// What a callback of a connected pool is handed, whatever the worker type.
pub(crate) struct Finished<'a> {
    seq: u64,
    method: u32,
    name: &'static str,
    status: CallStatus,
    host: Option<&'a str>,
    outcome: &'a Result<Vec<u8>, CallError>,
    round_trip: Duration,
}

/// A finished call of a connected pool, as its callbacks see it (see
/// [`RemoteBuilder::on_return`]).
pub struct RemoteCall<'a, W: Worker> {
    finished: &'a Finished<'a>,
    worker: PhantomData<fn() -> W>,
}

impl<W: Worker> RemoteCall<'_, W> {
    /// The call's id (as its handle's `id()`).
    pub fn id(&self) -> u64 {
        self.finished.seq
    }

    /// The name of the method called.
    pub fn method(&self) -> &'static str {
        self.finished.name
    }

    /// The call's final status.
    pub fn status(&self) -> CallStatus {
        self.finished.status
    }

    /// The id of the host whose answer this is; `None` for a call that ended at the caller
    /// (its deadline passed, it was cancelled, Redis stayed away).
    pub fn host(&self) -> Option<&str> {
        self.finished.host
    }

    /// From the call to its answer reaching this process.
    pub fn round_trip(&self) -> Duration {
        self.finished.round_trip
    }

    /// Why it failed, if it did.
    pub fn error(&self) -> Option<&CallError> {
        self.finished.outcome.as_ref().err()
    }

    /// The return value, decoded, if the call returned.
    pub fn return_value(&self) -> Option<Result<W::Return, WireError>> {
        let bytes = self.finished.outcome.as_ref().ok()?;
        Some(W::decode_return(self.finished.method, bytes))
    }
}

impl<W: Worker> fmt::Debug for RemoteCall<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteCall")
            .field("id", &self.id())
            .field("method", &self.method())
            .field("status", &self.status())
            .field("host", &self.host())
            .finish_non_exhaustive()
    }
}
