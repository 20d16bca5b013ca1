//! The shared pool: a `Send + Sync + Clone` face on one engine, which a thread of the pool's
//! own drives (see `driver`), so that timeouts fire, dead workers are replaced and callbacks
//! run while the program does something else. Calls are [`Pending`] handles: futures on any
//! executor (plain `std::task::Waker`s, no runtime), or waited for from any thread.
//!
//! A call's way: a proxy (or [`submit`]) locks the pool's state, encodes the arguments into
//! the engine (which posts the call to an idle worker or queues it) and returns a handle. The
//! driver sleeps in `poll(2)` on the engine's descriptors and its own eventfd; woken by an
//! answer, a death or a deadline, it collects, runs the callbacks, and wakes the handles of
//! the calls that ended. A handle then takes its result out of the engine and decodes it.

mod builder;
mod driver;
pub(crate) mod pending;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use self::builder::Builder;
#[doc(hidden)]
pub use self::builder::builder;
use self::pending::Link;
pub use self::pending::Pending;
use crate::call::{Call, CallId, CallStatus, Log, Timings};
use crate::callbacks::Callbacks;
use crate::engine::{Configured, Engine, Progress};
use crate::error::{CallError, SubmitError, WireError};
use crate::stats::Stats;
use crate::worker::Worker;

/// A callback of a shared pool: runs on the pool's thread.
pub(crate) type Handler<W> = Box<dyn Fn(&Call<'_, W>, Log<'_>) + Send + Sync>;

/// A pool of worker processes running the methods of `W`, shared by every clone, usable
/// from any thread and any async executor, that drives itself.
///
/// `#[forkworker::worker]` generates an `XPool` beside `XMediator` that wraps this and adds
/// one proxy per method, returning a [`Pending`] handle. Make one with
/// `SharedPool::builder` (or `XPool::builder`).
///
/// # Ownership
/// Clones share one pool. When the last clone is dropped the pool stops as a dropped
/// mediator does (queued calls cancelled, running ones given the grace period, then killed;
/// every worker reaped, shared memory removed), once the calls whose handles are still held
/// or detached have ended. [`SharedPool::shutdown`] stops it at once, [`SharedPool::close`]
/// after the calls already made.
///
/// # Results
/// Callbacks observe calls, they do not consume them: every call's callbacks fire, and its
/// handle still gets the result afterwards. A result is kept until its handle takes it or
/// is dropped.
///
/// # Callbacks
/// Callbacks are `Fn + Send + Sync` and run on the pool's own thread, with the pool's state
/// locked: keep them short, and do not call the pool from them (such a call fails with
/// [`CallError::FromCallback`]; send the work to another thread instead). A callback that
/// panics is logged, and the pool carries on.
pub struct SharedPool<W: Worker> {
    owner: Arc<Owner<W>>,
}

impl<W: Worker> Clone for SharedPool<W> {
    fn clone(&self) -> Self {
        SharedPool {
            owner: self.owner.clone(),
        }
    }
}

/// Held by every clone of a pool (not by its handles): when the last clone goes, the pool
/// winds down.
struct Owner<W: Worker> {
    inner: Arc<Inner<W>>,
}

impl<W: Worker> Drop for Owner<W> {
    fn drop(&mut self) {
        self.inner.orphaned();
    }
}

/// The pool itself, shared by its clones, its handles and its driver.
pub(crate) struct Inner<W: Worker> {
    alias: String,
    state: Mutex<State<W>>,
    /// The driver sleeps on it besides the engine's descriptors: written to wake it.
    nudge: OwnedFd,
    /// The driver's thread, to be joined when the pool stops.
    driver: Mutex<Option<JoinHandle<()>>>,
    driver_id: OnceLock<ThreadId>,
    /// Set by every submit: the driver, spinning without the lock for answers, looks at the
    /// calls again (a call just posted is not among those it watches).
    posted: AtomicBool,
}

/// What the pool's lock guards.
pub(crate) struct State<W: Worker> {
    /// The running engine; `None` once the pool stopped.
    engine: Option<Engine<W>>,
    /// The engine's configuration once it stopped (for `inline`, `stats`, `errors`).
    stopped: Option<Configured<W>>,
    callbacks: Callbacks<Handler<W>>,
    /// The wakers of handles waiting for their calls.
    wakers: HashMap<u64, Waker>,
    /// Results of held calls taken out of the engine when it stopped.
    orphans: HashMap<u64, Result<Vec<u8>, CallError>>,
    life: Life,
    /// While the driver sleeps: until when (`Some(None)`: no deadline).
    asleep_until: Option<Option<Instant>>,
    /// Whether the driver was nudged since it last woke.
    nudged: bool,
    /// Fail at once when shared memory or the call table is full, instead of waiting.
    fail_fast: bool,
    /// Calls that found no room, oldest first, waiting for calls to end (back-pressure).
    backlog: std::collections::VecDeque<Backlogged>,
}

/// Whether no call is in use: none queued, running, waiting for room, or finished with its
/// result held by a handle. A pool whose last clone is gone stops then.
pub(crate) fn nothing_in_use<W: Worker>(
    engine: &Engine<W>,
    backlog: &std::collections::VecDeque<Backlogged>,
) -> bool {
    backlog.is_empty() && engine.in_use() == 0
}

/// A call waiting for room: its reserved id and its encoded arguments.
pub(crate) struct Backlogged {
    id: u64,
    method: u32,
    bytes: Vec<u8>,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Takes calls.
    Open,
    /// `close()`: takes no call, runs those made, then stops.
    Closing,
    /// The last clone was dropped: stops once no call is in use.
    Orphaned,
    /// `shutdown(grace)`: stops now.
    Stopping(Duration),
    /// Stopped.
    Stopped,
}

impl<W: Worker> State<W> {
    /// What outlives the engine (the settings, the workers' value, the history): the running
    /// engine's, or what it left when it stopped.
    fn base(&self) -> &Configured<W> {
        match (&self.engine, &self.stopped) {
            (Some(engine), _) => engine.base(),
            (None, Some(base)) => base,
            (None, None) => unreachable!("a pool's engine is running or stopped"),
        }
    }

    fn base_mut(&mut self) -> &mut Configured<W> {
        match (&mut self.engine, &mut self.stopped) {
            (Some(engine), _) => engine.base_mut(),
            (None, Some(base)) => base,
            (None, None) => unreachable!("a pool's engine is running or stopped"),
        }
    }
}

impl Life {
    fn takes_calls(self) -> bool {
        matches!(self, Life::Open)
    }
}

impl<W: Worker> SharedPool<W> {
    pub(crate) fn from_inner(inner: Arc<Inner<W>>) -> Self {
        SharedPool {
            owner: Arc::new(Owner { inner }),
        }
    }

    fn inner(&self) -> &Arc<Inner<W>> {
        &self.owner.inner
    }

    /// The pool's name.
    pub fn alias(&self) -> &str {
        &self.inner().alias
    }

    /// Stops taking calls, lets every call already made run to its end (their handles still
    /// get their results), then stops the pool. Blocks until it stopped. A call made
    /// afterwards fails with [`CallError::Closed`].
    pub fn close(&self) {
        self.inner().stop(Life::Closing);
    }

    /// Stops the pool now: queued calls end [`CallStatus::Cancelled`], running ones are given
    /// `grace` to finish and then killed (cancelled too); every worker is reaped and the
    /// shared memory removed. Blocks until it stopped. A call made afterwards fails with
    /// [`CallError::Closed`]. Handles still held get their calls' results.
    pub fn shutdown(&self, grace: Duration) {
        self.inner().stop(Life::Stopping(grace));
    }

    /// The value the workers were forked from, for calls in this process, behind the pool's
    /// lock: the pool's thread waits while the guard lives (answers, timeouts and callbacks
    /// wait too), so keep what you do with it short. Workers are copies of the value as it
    /// was when the pool started: what is changed through it later reaches no worker.
    pub fn inline(&self) -> Inline<'_, W> {
        Inline {
            state: self.inner().lock(),
        }
    }

    /// Calls queued or running.
    pub fn pending(&self) -> usize {
        self.inner()
            .lock()
            .engine
            .as_ref()
            .map_or(0, Engine::pending)
    }

    /// The process ids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.inner()
            .lock()
            .engine
            .as_ref()
            .map_or_else(Vec::new, Engine::pids)
    }

    /// A snapshot of the statistics (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        let state = self.inner().lock();
        match &state.engine {
            Some(engine) => engine.stats(),
            None => state.base().stats(),
        }
    }

    /// The status of call `id`: while its handle lives, and afterwards for the most recent
    /// finished calls (see [`Builder::status_history`]); `None` for an unknown call.
    pub fn status<R>(&self, id: CallId<R>) -> Option<CallStatus> {
        let state = self.inner().lock();
        if state.backlog.iter().any(|b| b.id == id.raw()) {
            return Some(CallStatus::Uncalled);
        }
        match &state.engine {
            Some(engine) => engine.status(id),
            None => state.base().past(id.raw()).map(|(status, _, _)| status),
        }
    }

    /// When call `id` entered each status so far (as [`SharedPool::status`], for as long).
    pub fn timings<R>(&self, id: CallId<R>) -> Option<Timings> {
        let state = self.inner().lock();
        match &state.engine {
            Some(engine) => engine.timings(id),
            None => state.base().past(id.raw()).map(|(_, _, t)| t.clone()),
        }
    }

    /// Blocks until every call of `handles` ended or `timeout` passed, and returns their
    /// results in order; a call not finished by then is cancelled (its handle is dropped)
    /// and its result is [`CallError::WaitTimeout`]. Do not call it on an executor's thread:
    /// await `futures::future::join_all` there.
    pub fn wait_all<R>(
        &self,
        handles: impl IntoIterator<Item = Pending<R>>,
        timeout: Duration,
    ) -> Vec<Result<R, CallError>> {
        pending::wait_all(handles, timeout)
    }

    /// Blocks until one of the calls of `handles` ends or `timeout` passes; takes that call's
    /// handle out of `handles` and returns its id and result. `None` when the time is up
    /// first (`handles` is then untouched) or `handles` is empty. On an executor, use
    /// `futures::stream::FuturesUnordered` instead.
    pub fn wait_any<R>(
        &self,
        handles: &mut Vec<Pending<R>>,
        timeout: Duration,
    ) -> Option<(CallId<R>, Result<R, CallError>)> {
        pending::wait_any(handles, timeout)
    }

    /// Whether the pool still takes calls (it was not closed or shut down).
    pub fn is_open(&self) -> bool {
        self.inner().lock().life.takes_calls()
    }
}

impl<W: Worker> std::fmt::Debug for SharedPool<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("alias", &self.alias())
            .finish_non_exhaustive()
    }
}

/// The value a shared pool's workers were forked from, behind the pool's lock (see
/// [`SharedPool::inline`]).
pub struct Inline<'a, W: Worker> {
    state: MutexGuard<'a, State<W>>,
}

impl<W: Worker> std::ops::Deref for Inline<'_, W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.state.base().value
    }
}

impl<W: Worker> std::ops::DerefMut for Inline<'_, W> {
    fn deref_mut(&mut self) -> &mut W {
        &mut self.state.base_mut().value
    }
}

/// The pool behind a generated `XPool`: a local [`SharedPool`], or a connected
/// [`crate::RemotePool`] whose calls run on other machines. Not public API: the generated
/// proxies call it through [`submit`].
#[doc(hidden)]
pub trait Face<W: Worker>: Clone + Send + Sync + 'static {
    /// Queues a call of method `method`, its arguments encoded now, and returns its handle;
    /// `decode` turns the return bytes into `R`.
    fn submit_call<A: Serialize + ?Sized, R: Send + 'static>(
        &self,
        method: u32,
        args: &A,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Pending<R>;
}

impl<W: Worker + Send + 'static> Face<W> for SharedPool<W> {
    fn submit_call<A: Serialize + ?Sized, R: Send + 'static>(
        &self,
        method: u32,
        args: &A,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Pending<R> {
        let inner = self.inner();
        let name = method_name::<W>(method);
        let submitted = inner.submit(method, name, args);
        Pending::submitted(submitted, || inner.clone(), name, decode)
    }
}

impl<W: Worker + Send + 'static> SharedPool<W> {
    /// A call of method `method` whose arguments are already encoded: a host runs the calls
    /// it reads from Redis so. The handle gives the encoded return value.
    pub(crate) fn submit_encoded(&self, method: u32, args: &[u8]) -> Pending<Vec<u8>> {
        let decode: fn(&[u8]) -> Result<Vec<u8>, WireError> = |b| Ok(b.to_vec());
        if W::METHODS.get(method as usize).is_none() {
            return Pending::failed(
                CallError::Wire {
                    method: "<unknown>",
                    source: WireError::UnknownMethod(method),
                },
                "<unknown>",
                decode,
            );
        }
        self.submit_call(method, &crate::wire::Raw(args), decode)
    }

    /// The number of workers the pool was configured with.
    pub(crate) fn configured_workers(&self) -> usize {
        self.inner().lock().base().config.workers
    }
}

/// The name of method `method` of `W`.
pub(crate) fn method_name<W: Worker>(method: u32) -> &'static str {
    W::METHODS
        .get(method as usize)
        .copied()
        .unwrap_or("<unknown>")
}

/// Queues a call of method `method` of a generated `XPool`'s pool (local or connected), its
/// arguments encoded now, and returns its handle. Called by generated proxy methods; `decode`
/// turns the return bytes into `R`.
#[doc(hidden)]
pub fn submit<W: Worker, F: Face<W>, A: Serialize + ?Sized, R: Send + 'static>(
    pool: &F,
    method: u32,
    args: &A,
    decode: fn(&[u8]) -> Result<R, WireError>,
) -> Pending<R> {
    pool.submit_call(method, args, decode)
}

impl<W: Worker> Inner<W> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True on the pool's own thread: there, user code runs only inside callbacks, with the
    /// state locked.
    fn on_driver(&self) -> bool {
        self.driver_id.get() == Some(&std::thread::current().id())
    }

    /// Wakes the driver (once per sleep).
    fn nudge(&self, nudged: &mut bool) {
        if *nudged {
            return;
        }
        *nudged = true;
        crate::wake::eventfd_signal(self.nudge.as_fd());
    }

    fn submit<A: Serialize + ?Sized>(
        &self,
        method: u32,
        name: &'static str,
        args: &A,
    ) -> Result<u64, CallError> {
        if self.on_driver() {
            return Err(CallError::FromCallback { method: name });
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.life.takes_calls() {
            return Err(CallError::Closed { method: name });
        }
        let Some(engine) = state.engine.as_mut() else {
            return Err(CallError::Closed { method: name });
        };
        // Calls waiting for room go first.
        if !state.backlog.is_empty() {
            return backlog(engine, &mut state.backlog, method, name, args);
        }
        // No callback runs here: the sink only matters to a submit that waits for room,
        // which a shared pool's engine never does (`never_wait_for_room`).
        match engine.submit_encoded(method, args, &mut driver::NoSink) {
            Ok(id) => {
                engine.hold(id);
                self.posted.store(true, Ordering::Release);
                // A sleeping driver wakes: to spin for this call's answer (a worker's ring
                // and the driver's wake-up are then off the call's way back), and because a
                // worker may have been forked (its pidfd is not among those the driver sleeps
                // on) or the call's deadline may be nearer than the driver's.
                if state.asleep_until.is_some() {
                    self.nudge(&mut state.nudged);
                }
                Ok(id)
            }
            // Full of calls that run or results their handles have not taken: those free
            // room when they end.
            Err(SubmitError::OutOfMemory { .. } | SubmitError::TooManyCalls { .. })
                if !state.fail_fast && engine.in_use() > 0 =>
            {
                // Back-pressure: the call waits for calls to end and free room.
                backlog(engine, &mut state.backlog, method, name, args)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the pool (`close` or `shutdown`), and waits until it stopped.
    fn stop(&self, how: Life) {
        {
            let mut state = self.lock();
            match state.life {
                Life::Stopped => return,
                Life::Stopping(_) => {}
                // A shutdown overrides a close.
                _ => state.life = how,
            }
            self.nudge(&mut state.nudged);
        }
        self.join();
    }

    /// Waits for the driver to end (unless this is the driver).
    fn join(&self) {
        if self.on_driver() {
            return;
        }
        let handle = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// The last clone is gone: the pool stops once no call is in use; now, if none is.
    fn orphaned(&self) {
        let idle = {
            let mut state = self.lock();
            if state.life == Life::Open {
                state.life = Life::Orphaned;
            }
            self.nudge(&mut state.nudged);
            state
                .engine
                .as_ref()
                .is_none_or(|e| nothing_in_use(e, &state.backlog))
        };
        if idle {
            self.join();
        }
    }
}

impl<W: Worker + Send + 'static> Link for Inner<W> {
    fn poll_take(&self, id: u64, waker: &Waker) -> Poll<Result<Vec<u8>, CallError>> {
        let (taken, last) = self.take(id, waker);
        if last {
            // The last call of a pool whose clones are all gone: it stops now.
            self.join();
        }
        taken
    }

    fn status(&self, id: u64) -> Option<CallStatus> {
        if self.on_driver() {
            return None;
        }
        let state = self.lock();
        if state.backlog.iter().any(|b| b.id == id) {
            return Some(CallStatus::Uncalled);
        }
        match &state.engine {
            Some(engine) => engine.status(crate::call::CallId::<()>::new(id)),
            None => state.orphans.get(&id).map(|r| match r {
                Ok(_) => CallStatus::Returned,
                Err(e) => status_of(e),
            }),
        }
    }

    fn timings(&self, id: u64) -> Option<Timings> {
        if self.on_driver() {
            return None;
        }
        let state = self.lock();
        state
            .engine
            .as_ref()?
            .timings(crate::call::CallId::<()>::new(id))
    }

    fn let_go(&self, id: u64, cancel: bool) {
        if self.on_driver() {
            // Dropped inside a callback (a handle moved into one): the state is locked by
            // this very thread. The driver lets it go when the callback returns.
            driver::let_go_later(id, cancel);
            return;
        }
        let last = {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.wakers.remove(&id);
            state.orphans.remove(&id);
            // Still waiting for room: it never reached the engine.
            state.backlog.retain(|b| b.id != id);
            let Some(engine) = state.engine.as_mut() else {
                return;
            };
            if cancel && engine.cancel(id) {
                // Its callbacks run on the driver.
                self.nudge(&mut state.nudged);
            }
            engine.drop_handle(id);
            let last = state.life == Life::Orphaned && nothing_in_use(engine, &state.backlog);
            if last || !state.backlog.is_empty() {
                self.nudge(&mut state.nudged);
            }
            last
        };
        if last {
            self.join();
        }
    }
}

impl<W: Worker + Send + 'static> Inner<W> {
    /// [`Link::poll_take`], and whether the pool must stop now: its last clone is gone and
    /// this was its last call in use.
    fn take(&self, id: u64, waker: &Waker) -> (Poll<Result<Vec<u8>, CallError>>, bool) {
        let mut guard = self.lock();
        let taken = take_locked(&mut guard, id, waker);
        let state = &mut *guard;
        let last = taken.is_ready()
            && state.life == Life::Orphaned
            && state
                .engine
                .as_ref()
                .is_some_and(|e| nothing_in_use(e, &state.backlog));
        // A taken result freed room that calls waiting for it may take (the driver hands
        // them over).
        if last || (taken.is_ready() && !state.backlog.is_empty()) {
            self.nudge(&mut state.nudged);
        }
        (taken, last)
    }
}

/// The result of call `id` if it is done; else `waker` is kept to be woken when it is.
fn take_locked<W: Worker>(
    state: &mut State<W>,
    id: u64,
    waker: &Waker,
) -> Poll<Result<Vec<u8>, CallError>> {
    let Some(engine) = state.engine.as_mut() else {
        // A result the pool kept when it stopped, or none: the pool stopped before the call
        // ended (its thread panicked). The handle names the method.
        return Poll::Ready(
            state
                .orphans
                .remove(&id)
                .unwrap_or(Err(CallError::Closed { method: "" })),
        );
    };
    if let Some(result) = state.orphans.remove(&id) {
        return Poll::Ready(result);
    }
    let waiting = state.backlog.iter().any(|b| b.id == id);
    match engine.progress(id) {
        Progress::Done => {
            state.wakers.remove(&id);
            Poll::Ready(engine.take_done_bytes(id))
        }
        _ if waiting => {
            state.wakers.insert(id, waker.clone());
            Poll::Pending
        }
        Progress::Pending => {
            match state.wakers.get_mut(&id) {
                Some(w) if w.will_wake(waker) => {}
                Some(w) => w.clone_from(waker),
                None => {
                    state.wakers.insert(id, waker.clone());
                }
            }
            Poll::Pending
        }
        Progress::Gone => Poll::Ready(Err(CallError::UnknownCall(id))),
    }
}

/// Puts a call in the backlog of calls waiting for room, its arguments encoded, under an id
/// reserved now; the driver hands it to the engine when there is room (see
/// `driver::admit_backlog`).
fn backlog<W: Worker, A: Serialize + ?Sized>(
    engine: &mut Engine<W>,
    backlog: &mut std::collections::VecDeque<Backlogged>,
    method: u32,
    name: &'static str,
    args: &A,
) -> Result<u64, CallError> {
    let bytes = crate::wire::encode_call(args, name)?;
    let id = engine.reserve_id();
    backlog.push_back(Backlogged { id, method, bytes });
    Ok(id)
}

/// The final status a call's error stands for (for a result kept after the engine stopped).
pub(crate) fn status_of(error: &CallError) -> CallStatus {
    match error {
        CallError::OnHost { error, .. } => status_of(error),
        CallError::Timeout { .. } => CallStatus::Timeout,
        CallError::Crashed { .. } | CallError::MemoryLimit { .. } | CallError::CpuLimit { .. } => {
            CallStatus::Crashed
        }
        CallError::Panicked { .. } => CallStatus::Panicked,
        CallError::Cancelled { .. } => CallStatus::Cancelled,
        _ => CallStatus::Failed,
    }
}
