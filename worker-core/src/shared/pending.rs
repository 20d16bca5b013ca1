//! [`Pending`]: the handle of one call of a shared pool, a future that can also be waited for
//! from any thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::call::{CallId, CallStatus, Timings};
use crate::error::{CallError, WireError};

/// What a handle asks of its pool, whatever the worker type (a handle's type names only the
/// return type).
pub(crate) trait Link: Send + Sync {
    /// The encoded result of call `id` once it is done (its callbacks ran), taken out of the
    /// pool; until then `Pending`, and `waker` is woken when it is done.
    fn poll_take(&self, id: u64, waker: &Waker) -> Poll<Result<Vec<u8>, CallError>>;
    /// The call's status, as `status` gives it.
    fn status(&self, id: u64) -> Option<CallStatus>;
    /// The call's timings.
    fn timings(&self, id: u64) -> Option<Timings>;
    /// The handle is gone without taking the result: cancel the call if `cancel` and it has
    /// not finished; in any case the pool may release it once its callbacks ran.
    fn let_go(&self, id: u64, cancel: bool);
}

/// A call of a shared pool (made by a proxy method of an `XPool`): a [`Future`] of its result
/// that works on any executor, and a handle that can wait for it from any thread, cancel it,
/// or let it run on alone.
///
/// **Dropping it cancels the call** if it has not finished, as dropping a Rust future
/// cancels its work: a queued call leaves the queue, a running one's worker is killed (and
/// replaced); the call ends [`CallStatus::Cancelled`] and `on_error` fires.
/// So `tokio::time::timeout(d, pool.parse(x))` leaves no work running. Use
/// [`Pending::detach`] to let a call run on with nobody waiting (its callbacks still fire).
///
/// A call that already finished is never cancelled after the fact, and the handle resolves
/// only after the call's callbacks returned. The handle keeps its pool alive (its workers
/// run) until the call ends, even after every clone of the pool was dropped.
///
/// ```no_run
/// # async fn demo(pool: forkworker_core::closure::FnPool<fn(u64) -> u64, u64, u64>) -> Result<(), forkworker_core::CallError> {
/// let doubled = pool.call(21).await?;                  // await it...
/// let same = pool.call(21).wait()?;                     // ...or block on it, from any thread
/// let call = pool.call(21);
/// println!("{:?} is {:?}", call.id(), call.status());
/// call.cancel();                                        // or drop it
/// # Ok(()) }
/// ```
#[must_use = "dropping it cancels the call; use .detach()"]
pub struct Pending<R> {
    /// `None` once the result was taken or the call failed before it existed.
    link: Option<Arc<dyn Link>>,
    id: u64,
    /// Why the call never started (refused at submission), until it is reported.
    early: Option<CallError>,
    decode: fn(&[u8]) -> Result<R, WireError>,
    method: &'static str,
}

impl<R> Pending<R> {
    /// A handle on call `id` of the pool behind `link`.
    pub(crate) fn new(
        link: Arc<dyn Link>,
        id: u64,
        method: &'static str,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Self {
        Pending {
            link: Some(link),
            id,
            early: None,
            decode,
            method,
        }
    }

    /// The handle of a submission: on call `id` of the pool behind `link`, or on a call
    /// refused before it existed.
    pub(crate) fn submitted(
        submitted: Result<u64, CallError>,
        link: impl FnOnce() -> Arc<dyn Link>,
        method: &'static str,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Self {
        match submitted {
            Ok(id) => Pending::new(link(), id, method, decode),
            Err(error) => Pending::failed(error, method, decode),
        }
    }

    /// A handle on a call refused before it existed: it resolves to `error` at once.
    pub(crate) fn failed(
        error: CallError,
        method: &'static str,
        decode: fn(&[u8]) -> Result<R, WireError>,
    ) -> Self {
        Pending {
            link: None,
            id: 0,
            early: Some(error),
            decode,
            method,
        }
    }

    /// The call's id: cheap to copy, unique in its pool. A call refused before it existed
    /// (the error is in the result) has id 0.
    pub fn id(&self) -> CallId<R> {
        CallId::new(self.id)
    }

    /// The call's status now: queued ([`CallStatus::Uncalled`]), handed to a worker, running,
    /// or the final status once it finished. `None` for a call refused before it existed
    /// (its error is in the result).
    pub fn status(&self) -> Option<CallStatus> {
        self.link.as_ref()?.status(self.id)
    }

    /// When the call entered each status so far.
    pub fn timings(&self) -> Option<Timings> {
        self.link.as_ref()?.timings(self.id)
    }

    /// Cancels the call (as dropping the handle does): a queued call never runs, a running
    /// one's worker is killed and replaced. The call ends [`CallStatus::Cancelled`] and its
    /// `on_error` fires; a call that already finished is left as it is.
    pub fn cancel(mut self) {
        if let Some(link) = self.link.take() {
            link.let_go(self.id, true);
        }
    }

    /// Lets the call run on with nobody waiting for it: its callbacks still fire, then its
    /// result is released. The pool stays up until it ends.
    pub fn detach(mut self) {
        if let Some(link) = self.link.take() {
            link.let_go(self.id, false);
        }
    }

    /// Blocks the calling thread until the call ends, and returns its result. The call's own
    /// timeout bounds it, if the pool has one. Do not call it on an async executor's thread:
    /// `.await` the handle there.
    pub fn wait(mut self) -> Result<R, CallError> {
        let parker = Parker::new();
        let waker = Waker::from(parker.clone());
        loop {
            match self.poll_with(&waker) {
                Poll::Ready(result) => return result,
                Poll::Pending => parker.park(None),
            }
        }
    }

    /// [`Pending::wait`] for at most `timeout`: the result if the call ended by then, else
    /// the handle back (the call goes on), to wait again, await, cancel or detach.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<R, CallError>, Self> {
        let deadline = Instant::now() + timeout;
        let parker = Parker::new();
        let waker = Waker::from(parker.clone());
        loop {
            if let Poll::Ready(result) = self.poll_with(&waker) {
                return Ok(result);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self);
            }
            parker.park(Some(left));
        }
    }

    pub(crate) fn poll_with(&mut self, waker: &Waker) -> Poll<Result<R, CallError>> {
        if let Some(error) = self.early.take() {
            return Poll::Ready(Err(error));
        }
        let Some(link) = self.link.as_ref() else {
            return Poll::Ready(Err(CallError::UnknownCall(self.id)));
        };
        let taken = match link.poll_take(self.id, waker) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(taken) => taken,
        };
        // Taken: nothing left for the drop to let go.
        self.link = None;
        let taken = taken.map_err(|e| match e {
            CallError::Closed { .. } => CallError::Closed {
                method: self.method,
            },
            e => e,
        });
        Poll::Ready(taken.and_then(|bytes| {
            (self.decode)(&bytes).map_err(|source| CallError::Wire {
                method: self.method,
                source,
            })
        }))
    }
}

impl<R> Future for Pending<R> {
    type Output = Result<R, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_with(cx.waker())
    }
}

// The handle holds no `R`: only a decoder of one.
impl<R> Unpin for Pending<R> {}

impl<R> Drop for Pending<R> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.let_go(self.id, true);
        }
    }
}

impl<R> fmt::Debug for Pending<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("status", &self.status())
            .finish()
    }
}

/// See `SharedPool::wait_all`: the handles' pool does not matter.
pub(crate) fn wait_all<R>(
    handles: impl IntoIterator<Item = Pending<R>>,
    timeout: Duration,
) -> Vec<Result<R, CallError>> {
    let start = Instant::now();
    handles
        .into_iter()
        .map(|handle| {
            let id = handle.id().raw();
            handle
                .wait_timeout(timeout.saturating_sub(start.elapsed()))
                .unwrap_or_else(|_| {
                    Err(CallError::WaitTimeout {
                        id,
                        waited: start.elapsed(),
                    })
                })
        })
        .collect()
}

/// See `SharedPool::wait_any`.
pub(crate) fn wait_any<R>(
    handles: &mut Vec<Pending<R>>,
    timeout: Duration,
) -> Option<(CallId<R>, Result<R, CallError>)> {
    if handles.is_empty() {
        return None;
    }
    let deadline = Instant::now() + timeout;
    let parker = Parker::new();
    let waker = Waker::from(parker.clone());
    loop {
        for k in 0..handles.len() {
            if let Poll::Ready(result) = handles[k].poll_with(&waker) {
                let handle = handles.remove(k);
                return Some((handle.id(), result));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        parker.park(Some(left));
    }
}

/// Wakes a thread blocked in [`Pending::wait`]. The thread parks at once: the pool's thread
/// spins for the answer already, and a waiter spinning too would take a CPU from the worker
/// (measured: 54 us for an empty call on two CPUs, against 11 us parked; benches/README.md).
pub(crate) struct Parker {
    thread: Thread,
}

impl Parker {
    pub(crate) fn new() -> Arc<Parker> {
        Arc::new(Parker {
            thread: std::thread::current(),
        })
    }

    /// Returns once woken (or spuriously), or after `timeout`.
    pub(crate) fn park(&self, timeout: Option<Duration>) {
        match timeout {
            Some(t) => std::thread::park_timeout(t),
            None => std::thread::park(),
        }
    }
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.thread.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.thread.unpark();
    }
}
