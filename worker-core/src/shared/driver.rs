//! The thread a shared pool owns: it started the engine (so the fork server's parent-death
//! signal follows a thread that lives as long as the pool), and it drives it: sleeps until
//! an answer, a worker's death, the nearest deadline or a nudge, then collects, runs the
//! callbacks, hands waiting calls to the engine, and wakes the handles of calls that ended.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;

use super::{Backlogged, Handler, Inner, Life, State};
use crate::call::{Call, Log};
use crate::callbacks::{Callbacks, On};
use crate::clock::time_left;
use crate::engine::{Engine, Sink};
use crate::error::{CallError, CancelReason, SubmitError};
use crate::process;
use crate::worker::Worker;

thread_local! {
    /// Handles dropped inside a callback, on the driver's thread: let go once it returns.
    static LET_GO: RefCell<Vec<(u64, bool)>> = const { RefCell::new(Vec::new()) };
}

/// A handle was dropped on the driver's thread (inside a callback): see [`LET_GO`].
pub(super) fn let_go_later(id: u64, cancel: bool) {
    LET_GO.with(|l| l.borrow_mut().push((id, cancel)));
}

/// The sink of a submit, which never waits for room (see `Engine::never_wait_for_room`)
/// and so never delivers anything.
pub(super) struct NoSink;

impl<W: Worker> Sink<W> for NoSink {
    fn takes_returns(&self) -> bool {
        true
    }

    fn deliver(&mut self, _: &Call<'_, W>, _: Log<'_>) -> bool {
        false
    }
}

/// Where the driver's collections hand finished calls: the pool's callbacks, then the
/// waker of the call's handle.
struct PoolSink<'a, W: Worker> {
    alias: &'a str,
    callbacks: &'a Callbacks<Handler<W>>,
    wakers: &'a mut HashMap<u64, Waker>,
    woken: &'a mut Vec<Waker>,
}

impl<W: Worker> Sink<W> for PoolSink<'_, W> {
    fn takes_returns(&self) -> bool {
        true
    }

    fn deliver(&mut self, call: &Call<'_, W>, log: Log<'_>) -> bool {
        let id = call.id();
        let on = On::of(call.status());
        let ran = match self.callbacks.get(on) {
            Some(handler) => {
                // Caught here, not only around the whole delivery: the handle is woken
                // either way.
                crate::callbacks::guarded(self.alias, id, on, || handler(call, log));
                true
            }
            None => false,
        };
        if let Some(waker) = self.wakers.remove(&id) {
            self.woken.push(waker);
        }
        // Without a callback the engine logs a failure; a held call stays for its handle
        // either way.
        ran
    }
}

/// [`run`]; if the driver panics (a bug of forkworker's: user code runs only in callbacks,
/// which are guarded), the pool stops there and then, and every waiting handle is woken, so
/// that no caller waits forever: its call ends with [`CallError::Closed`].
pub(super) fn run_guarded<W: Worker + Send + 'static>(inner: Arc<Inner<W>>) {
    let driven = inner.clone();
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(driven))) {
        log::error!(target: &inner.alias,
            "the pool's thread panicked ({}); the pool stops, and its calls end with CallError::Closed",
            crate::panics::panic_message(panic.as_ref()));
        let wakers: Vec<Waker> = {
            let mut state = inner.lock();
            state.life = Life::Stopped;
            state.backlog.clear();
            // Stopping the engine reaps the workers and removes the shared memory; under the
            // lock, so that the pool is never seen with neither engine nor what it left.
            if let Some(engine) = state.engine.take() {
                state.stopped = Some(engine.stop());
            }
            state.wakers.drain().map(|(_, w)| w).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The driver's loop, until the pool stops.
pub(super) fn run<W: Worker + Send + 'static>(inner: Arc<Inner<W>>) {
    let mut fds = Vec::new();
    let mut woken: Vec<Waker> = Vec::new();
    let mut slept = false;
    // Whether the last spin ran out with nothing seen: then sleep.
    let mut spun_out = false;
    let spins = crate::wake::spin_allowed();
    loop {
        let mut guard = inner.lock();
        let state = &mut *guard;
        state.asleep_until = None;
        state.nudged = false;
        crate::wake::eventfd_drain(inner.nudge.as_fd());
        let Some(engine) = state.engine.as_mut() else {
            break;
        };
        if slept {
            engine.end_sleep();
            slept = false;
        }
        let mut sink = PoolSink {
            alias: &inner.alias,
            callbacks: &state.callbacks,
            wakers: &mut state.wakers,
            woken: &mut woken,
        };
        engine.collect(&mut sink);
        // Handles dropped inside the callbacks just run.
        let dropped = LET_GO.with(|l| std::mem::take(&mut *l.borrow_mut()));
        if !dropped.is_empty() {
            for &(id, cancel) in &dropped {
                sink.wakers.remove(&id);
                if cancel {
                    engine.cancel(id);
                }
                engine.drop_handle(id);
            }
            engine.fire_callbacks(&mut sink);
        }
        admit_backlog(
            engine,
            &mut state.backlog,
            &mut state.orphans,
            sink.wakers,
            sink.woken,
        );
        let stop = match state.life {
            Life::Open => false,
            Life::Closing => engine.pending() == 0 && state.backlog.is_empty(),
            Life::Orphaned => super::nothing_in_use(engine, &state.backlog),
            Life::Stopping(_) | Life::Stopped => true,
        };
        if stop {
            stop_engine(&inner.alias, state, &mut woken);
            drop(guard);
            woken.drain(..).for_each(Waker::wake);
            break;
        }
        // Calls are running: spin for their answers without the lock, so that the callers
        // (submitting, taking results) never wait for it while the driver spins.
        if spins && !spun_out {
            let watch = engine.watch();
            if !watch.is_empty() {
                inner.posted.store(false, Ordering::Relaxed);
                drop(guard);
                woken.drain(..).for_each(Waker::wake);
                let seen = crate::wake::spin_for(crate::wake::SPIN_NS, || {
                    watch.answered() || inner.posted.load(Ordering::Acquire)
                });
                drop(watch);
                spun_out = !seen;
                continue;
            }
        }
        spun_out = false;
        fds.clear();
        fds.push(inner.nudge.as_raw_fd());
        let deadline = engine.next_deadline();
        if !engine.begin_sleep(&mut fds) {
            // An answer came meanwhile: collect again.
            drop(guard);
            woken.drain(..).for_each(Waker::wake);
            continue;
        }
        slept = true;
        state.asleep_until = Some(deadline);
        drop(guard);
        woken.drain(..).for_each(Waker::wake);
        process::poll_raw(&fds, time_left(deadline));
    }
}

/// Hands the calls that waited for room to the engine, oldest first, while they fit.
fn admit_backlog<W: Worker>(
    engine: &mut Engine<W>,
    backlog: &mut std::collections::VecDeque<Backlogged>,
    orphans: &mut HashMap<u64, Result<Vec<u8>, CallError>>,
    wakers: &mut HashMap<u64, Waker>,
    woken: &mut Vec<Waker>,
) {
    while let Some(next) = backlog.front() {
        let raw = crate::wire::Raw(&next.bytes);
        match engine.submit_encoded_as(next.method, &raw, &mut NoSink, Some(next.id)) {
            Ok(id) => {
                engine.hold(id);
                backlog.pop_front();
            }
            Err(SubmitError::OutOfMemory { .. } | SubmitError::TooManyCalls { .. })
                if engine.in_use() > 0 =>
            {
                return;
            }
            Err(e) => {
                let id = next.id;
                backlog.pop_front();
                orphans.insert(id, Err(e.into()));
                if let Some(waker) = wakers.remove(&id) {
                    woken.push(waker);
                }
            }
        }
    }
}

/// Stops the engine (see `SharedPool::shutdown`): calls that waited for room are
/// cancelled, the engine shuts down (a close or a last drop leaves it nothing to cancel),
/// the results of held calls move out of it for their handles, and every handle is woken.
fn stop_engine<W: Worker + Send + 'static>(
    alias: &str,
    state: &mut State<W>,
    woken: &mut Vec<Waker>,
) {
    let Some(mut engine) = state.engine.take() else {
        return;
    };
    for b in state.backlog.drain(..) {
        let method = W::METHODS
            .get(b.method as usize)
            .copied()
            .unwrap_or("<unknown>");
        state.orphans.insert(
            b.id,
            Err(CallError::Cancelled {
                method,
                reason: CancelReason::Shutdown,
            }),
        );
    }
    if let Life::Stopping(grace) = state.life {
        engine.base_mut().config.grace = grace;
    }
    let mut sink = PoolSink {
        alias,
        callbacks: &state.callbacks,
        wakers: &mut state.wakers,
        woken,
    };
    engine.shutdown(&mut sink);
    for id in engine.held_done() {
        state.orphans.insert(id, engine.take_done_bytes(id));
    }
    woken.extend(state.wakers.drain().map(|(_, w)| w));
    state.stopped = Some(engine.stop());
    state.life = Life::Stopped;
}
