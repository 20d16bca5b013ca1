//! Supervision: what the parent counts about its workers' health, and the decisions it takes
//! from it. The error counts by kind (the seed's communication, corruption and catch-all),
//! the start-failure breaker (workers that keep dying before they answer anything stop being
//! forked), and whether dead or killed workers are due to be replaced.
//!
//! And the engine's passes over its pool that act on them: forking (within the breaker),
//! reaping the dead ([`Engine::reap_dead`]: a call its worker had not started is requeued, one
//! it was running has crashed), killing the workers whose call ran past its timeout
//! ([`Engine::enforce_timeouts`], through `Pool::kill`), retiring the worn
//! ([`Engine::retire_worn`]) and letting workers idle past `idle_timeout` exit
//! ([`Engine::retire_idle`]).
//!
//! And where a finished call is handed to the face's callbacks, a panic of theirs caught
//! ([`deliver_guarded`]).

use std::time::Instant;

use super::{Engine, MAX_REQUEUES, Sink};
use crate::call::{Call, CallStatus, ExitCause, Log};
use crate::callbacks::{self, On};
use crate::clock;
use crate::config::ForkStrategy;
use crate::error::{CallError, CancelReason, ErrorCounts, ErrorKind, PoolError};
use crate::this_worker;
use crate::worker::Worker;

/// How many workers in a row may die before answering a call before the pool stops forking.
pub(crate) const START_FAILURE_LIMIT: u32 = 5;

/// Hands finished call `call` to `sink`, the face's callbacks, through
/// [`callbacks::guarded`]: a callback that panics is logged (under `alias`, with the call's
/// id and the callback's name), counted as a catch-all error in `health`, and the call counts
/// as delivered, as if the callback had returned, except that a retry it asked for before
/// panicking is dropped (a callback that fails every time would retry forever). Returns
/// whether a callback took the call, as [`Sink::deliver`].
pub(super) fn deliver_guarded<W: Worker>(
    sink: &mut dyn Sink<W>,
    call: &Call<'_, W>,
    alias: &str,
    health: &mut Supervisor,
) -> bool {
    let on = On::of(call.status());
    match callbacks::guarded(alias, call.id(), on, || sink.deliver(call, Log::new(alias))) {
        Some(delivered) => delivered,
        None => {
            call.retry.set(false);
            health.count_logged(ErrorKind::Catchall, 1, alias);
            true
        }
    }
}

/// A mediator's health counts.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    /// Errors counted by kind since the mediator was made.
    errors: ErrorCounts,
    /// Whether the parent error limits were reported.
    limits_reported: bool,
    /// Workers that died in a row before answering any call.
    start_failures: u32,
    /// A worker died or was killed: fork its replacement at the next collection, after the
    /// call's outcome was reported (a report should not wait for a fork).
    refill_due: bool,
    /// Since when each worker has been idle, for `idle_timeout`.
    idle: IdleWatch,
}

/// A worker as a collection sees it, to tell whether it is the same idle worker as at the
/// last look: its pid and how many calls it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    pid: i32,
    calls: u64,
}

/// Since when each slot's worker has been idle, as the collections saw it (for
/// `Mediator::idle_timeout`).
///
/// The parent notes no time when a worker finishes a call (that is the hot path, and a call
/// may finish through `wait`'s short path): a collection that finds a worker idle, with the
/// same pid and number of calls as at its last look, keeps the time it first found it so; any
/// change (a call given since, another worker in the slot, a busy worker) starts the clock
/// again. A worker has been idle at least as long as its mark says, never less.
#[derive(Debug, Default)]
struct IdleWatch {
    marks: Vec<Option<(Seen, Instant)>>,
}

impl IdleWatch {
    /// Slot `i` at `now`: `seen` if its worker is idle (and through its setup), `None`
    /// otherwise. Returns since when it has been idle.
    fn observe(&mut self, i: usize, seen: Option<Seen>, now: Instant) -> Option<Instant> {
        if self.marks.len() <= i {
            self.marks.resize(i + 1, None);
        }
        let mark = &mut self.marks[i];
        match (seen, *mark) {
            (None, _) => {
                *mark = None;
                None
            }
            (Some(seen), Some((was, since))) if was == seen => Some(since),
            (Some(seen), _) => {
                *mark = Some((seen, now));
                Some(now)
            }
        }
    }

    /// Since when slot `i`'s worker, `seen` now, has been idle, if the last collection found
    /// it idle already.
    fn since(&self, i: usize, seen: Seen) -> Option<Instant> {
        match self.marks.get(i).copied().flatten() {
            Some((was, since)) if was == seen => Some(since),
            _ => None,
        }
    }

    /// Slot `i`'s worker is gone.
    fn forget(&mut self, i: usize) {
        if let Some(mark) = self.marks.get_mut(i) {
            *mark = None;
        }
    }
}

impl Supervisor {
    /// Errors counted since the mediator was made.
    pub(crate) fn errors(&self) -> ErrorCounts {
        self.errors
    }

    /// Counts an error of `kind`. True the first time the counts reach
    /// [`ErrorCounts::PARENT_LIMITS`]: the caller reports it.
    pub(crate) fn count(&mut self, kind: ErrorKind, n: u64) -> bool {
        self.errors.add_n(kind, n);
        if !self.limits_reported && self.errors.reached(&ErrorCounts::PARENT_LIMITS) {
            self.limits_reported = true;
            return true;
        }
        false
    }

    /// A worker answered a call: it started fine, whatever the answer.
    #[inline]
    pub(crate) fn answered(&mut self) {
        self.start_failures = 0;
    }

    /// A worker died before answering any call.
    pub(crate) fn died_unanswered(&mut self) {
        self.start_failures = self.start_failures.saturating_add(1);
    }

    /// A new pool starts with a closed breaker, and none of its workers idle yet.
    pub(crate) fn restart(&mut self) {
        self.start_failures = 0;
        self.idle = IdleWatch::default();
    }

    /// Counts `n` errors of `kind` (see [`Supervisor::count`]) and logs under `alias` when
    /// that reaches the limits.
    fn count_logged(&mut self, kind: ErrorKind, n: u64, alias: &str) {
        if self.count(kind, n) {
            log::error!(target: alias,
                "error counts reached their limits: {:?} (limits {:?}); see the warnings above",
                self.errors(), ErrorCounts::PARENT_LIMITS);
        }
    }

    /// Whether a worker may be forked: fewer than [`START_FAILURE_LIMIT`] died in a row
    /// before answering.
    #[inline]
    pub(crate) fn may_fork(&self) -> bool {
        self.start_failures < START_FAILURE_LIMIT
    }

    /// How many workers in a row died before answering, once that stopped the forking.
    pub(crate) fn tripped(&self) -> Option<u32> {
        (!self.may_fork()).then_some(self.start_failures)
    }

    /// A worker died or was killed: replace it at the next collection.
    pub(crate) fn refill_later(&mut self) {
        self.refill_due = true;
    }

    /// Whether a replacement is due.
    #[inline]
    pub(crate) fn refill_due(&self) -> bool {
        self.refill_due
    }

    /// Whether a replacement is due, now taken care of by the caller.
    pub(crate) fn take_refill(&mut self) -> bool {
        std::mem::take(&mut self.refill_due)
    }
}

impl<W: Worker> Engine<W> {
    /// Counts an error against the mediator and, if given, against a slot's worker.
    pub(super) fn count_error(&mut self, kind: ErrorKind, slot: Option<usize>) {
        self.count_errors(kind, 1, slot);
    }

    /// Counts `n` errors of `kind`, against slot `slot`'s worker if given.
    pub(super) fn count_errors(&mut self, kind: ErrorKind, n: u64, slot: Option<usize>) {
        if n == 0 {
            return;
        }
        if let Some(i) = slot {
            self.pool.count_errors(i, kind, n);
        }
        self.base.health.count_logged(kind, n, &self.base.alias);
    }

    /// Forks a worker into slot `i`, unless workers keep dying before answering anything.
    pub(super) fn spawn(&mut self, i: usize) -> bool {
        if !self.base.health.may_fork() {
            return false;
        }
        let pool = &mut self.pool;
        // `recycle()` may have changed since the pool started: it applies to this fork.
        pool.set_recycle(self.base.config.recycle);
        match pool.spawn(i, &mut self.base.value) {
            Ok(pid) => {
                log::debug!(target: &self.base.alias, "forked worker {pid} into slot {i}");
                true
            }
            Err(e) => {
                log::error!(target: &self.base.alias, "cannot fork a worker: {e}");
                self.count_error(ErrorKind::Communication, None);
                // No worker left to run the queued calls: they fail now, saying why, rather
                // than wait for a worker that cannot come (the next call tries again).
                if !(0..self.pool.size()).any(|j| self.pool.has_worker(j)) {
                    self.fail_queue(PoolError::CannotFork(e));
                }
                false
            }
        }
    }

    /// Forks workers into the empty slots up to the configured count.
    pub(super) fn fill_pool(&mut self) {
        let workers = self.base.config.workers;
        let slots = workers.min(self.pool.size());
        // By index, not through a collected list: this runs with every dispatch.
        for i in 0..slots {
            if !self.pool.has_worker(i) {
                self.spawn(i);
            }
        }
    }

    /// Fails every queued call with `error`: no worker can come to run them (workers keep
    /// dying before they answer anything, a `setup` that panics, say, so forking more would
    /// loop forever; or none can be forked).
    pub(super) fn fail_queue(&mut self, error: PoolError) {
        let now = clock::now_ns();
        for id in self.calls.take_queue() {
            self.finish(id, CallStatus::Failed, now, |_| {
                CallError::Pool(error.clone())
            });
        }
    }

    /// Reaps the workers that died and settles the calls they held: a call the worker had
    /// not started goes back to the front of the queue (up to [`MAX_REQUEUES`] times); a call
    /// it was running ends as [`CallStatus::Crashed`].
    pub(super) fn reap_dead(&mut self) {
        let dead = self.pool.dead_slots();
        if dead.is_empty() {
            return;
        }
        // `stderr`: the last lines (at most 4 KiB) the worker wrote to its stderr, kept by the
        // fork server; where a death is classified from what the worker said last.
        for (i, cause, stderr) in dead {
            // A worker can answer and then die: take the answer first.
            self.read_answer(i);
            let pool = &mut self.pool;
            if !pool.has_worker(i) {
                continue; // Its answer (a panic, say) already settled the slot.
            }
            let given = pool.calls_given(i);
            // A worker that got through its setup and died later (killed from outside, say)
            // did not fail to start: it does not count toward the breaker.
            let ready = pool.was_ready(i);
            // Before `kill_worker` removes the worker's cgroup.
            let verdict = pool.memory_verdict(i);
            let (pid, busy) = self.kill_worker(i);
            let Some(b) = busy else {
                if cause == ExitCause::Exited(this_worker::EXIT_FATAL) {
                    log::info!(target: &self.base.alias, "worker {pid} exited after fatal_error(); replacing it");
                } else {
                    log::warn!(target: &self.base.alias, "idle worker {pid} {cause}");
                }
                if given == 0 && !ready {
                    self.base.health.died_unanswered();
                }
                continue;
            };
            // A worker that was lent a larger block for its return value has run the method.
            let started = self.pool.started(i, b.seq).is_some()
                || self
                    .calls
                    .get(b.call)
                    .and_then(|r| r.blocks.as_ref())
                    .is_some_and(|b| b.ret_block.is_some());
            self.count_error(ErrorKind::Communication, None);
            if started {
                self.base.health.answered();
                // The tail tells an allocation failure under RLIMIT_DATA from a crash.
                let death = self
                    .pool
                    .classify_death(cause, verdict, Some(stderr.as_str()));
                log::warn!(target: &self.base.alias, "worker {pid} {cause} while running call {}{death}", b.call);
                self.finish(b.call, CallStatus::Crashed, clock::now_ns(), |method| {
                    death
                        .limit_error(method, pid, cause, &stderr)
                        .unwrap_or(CallError::Crashed {
                            method,
                            pid,
                            cause,
                            stderr,
                        })
                });
            } else {
                if !ready {
                    self.base.health.died_unanswered();
                }
                self.requeue_unstarted(b.call, pid, cause);
            }
        }
        self.base.health.refill_later();
    }

    /// A call whose worker died before starting it goes back to the front of the queue.
    pub(super) fn requeue_unstarted(&mut self, id: u64, pid: i32, cause: ExitCause) {
        let Some(record) = self.calls.get(id) else {
            return;
        };
        if record.retries >= MAX_REQUEUES {
            log::error!(target: &self.base.alias,
                "call {id}: its worker died before starting it {} times (last: {pid} {cause}); cancelled",
                record.retries + 1);
            let retries = record.retries;
            self.finish(id, CallStatus::Cancelled, clock::now_ns(), |method| {
                CallError::Cancelled {
                    method,
                    reason: CancelReason::WorkersDied {
                        attempts: retries + 1,
                        pid,
                        cause,
                    },
                }
            });
            return;
        }
        log::info!(target: &self.base.alias, "call {id}: worker {pid} {cause} before starting it; requeued");
        let Some(record) = self.calls.requeue_unstarted(id, clock::now_ns()) else {
            return;
        };
        if let (Some(journal), Some(args)) = (self.pool.journal(record.entry), record.args()) {
            journal.write_call(id, record.method, record.retries, args);
        }
    }

    /// Keeps the pool at size after a death, unless the strategy is lazy. With an idle
    /// timeout, only up to the minimum: the workers above it are forked when calls come (and
    /// would exit again, idle, otherwise).
    pub(super) fn replace_dead(&mut self) {
        if self.base.config.strategy == ForkStrategy::Lazy {
            return;
        }
        if self.base.config.idle_timeout.is_none() {
            return self.fill_pool();
        }
        let slots = self.base.config.workers.min(self.pool.size());
        let mut live = (0..slots).filter(|&i| self.pool.has_worker(i)).count();
        for i in 0..slots {
            if live >= self.base.config.min_workers {
                break;
            }
            if !self.pool.has_worker(i) && self.spawn(i) {
                live += 1;
            }
        }
    }

    /// Kills the workers whose call ran past its deadline.
    pub(super) fn enforce_timeouts(&mut self) {
        let Some(timeout) = self.base.config.timeout else {
            return;
        };
        let now = Instant::now();
        let pool = &mut self.pool;
        let expired = pool.expired(now);
        if expired.is_empty() {
            return;
        }
        let now_ns = clock::now_ns();
        for i in expired {
            // An answer that arrived in time wins over the deadline.
            self.read_answer(i);
            if self.pool.busy(i).is_none() {
                continue;
            }
            let (pid, busy) = self.kill_worker(i);
            let Some(b) = busy else { continue };
            log::warn!(target: &self.base.alias, "call {} ran past its timeout of {timeout:?}; killed worker {pid}", b.call);
            self.finish(b.call, CallStatus::Timeout, now_ns, |method| {
                CallError::Timeout {
                    method,
                    pid,
                    timeout,
                }
            });
        }
        self.base.health.refill_later();
    }

    /// Retires idle workers past their recycling or error limits; each is replaced first.
    /// Idle workers beyond the configured count (`workers()` was lowered) retire for good:
    /// they get no new call, so a busy one retires once its call is done.
    pub(super) fn retire_worn(&mut self, now: Instant) {
        let slots = self.pool.size();
        // By index, not through a collected list: this runs at every collection, and
        // retiring one worker does not change whether another is worn.
        for i in 0..slots {
            self.retire_if_worn(i, Some(now));
        }
        self.retire_idle(now);
    }

    /// How slot `i`'s worker looks for `idle_timeout`: `Some` if it is idle and through its
    /// setup (a worker still in `setup` cannot acknowledge an exit request).
    fn seen_idle(&self, i: usize) -> Option<Seen> {
        let pool = &self.pool;
        (pool.is_idle(i) && pool.was_ready(i)).then(|| Seen {
            pid: pool.pid(i).unwrap_or(0),
            calls: pool.calls_given(i),
        })
    }

    /// With an idle timeout (`Mediator::idle_timeout`): asks the workers idle for that long
    /// to exit (running `teardown`), the highest slots first (the dispatch prefers the low
    /// ones), as long as more than the minimum (`Mediator::min_workers`) are left. Their slots
    /// stay empty until calls need them (see [`Engine::replace_dead`]). Checked at each
    /// collection; [`Engine::idle_deadline`] says when the next one is due.
    pub(super) fn retire_idle(&mut self, now: Instant) {
        let Some(limit) = self.base.config.idle_timeout else {
            return;
        };
        let slots = self.base.config.workers.min(self.pool.size());
        let keep = self.base.config.min_workers;
        let mut live = (0..slots).filter(|&i| self.pool.has_worker(i)).count();
        for i in (0..slots).rev() {
            let seen = self.seen_idle(i);
            let Some(since) = self.base.health.idle.observe(i, seen, now) else {
                continue;
            };
            let idle = now.saturating_duration_since(since);
            if live <= keep || idle < limit {
                continue;
            }
            let pid = self.pool.pid(i).unwrap_or(0);
            self.pool.dismiss(i);
            self.base.health.idle.forget(i);
            live -= 1;
            log::debug!(target: &self.base.alias,
                "worker {pid} exits: idle for {idle:?} (idle_timeout {limit:?}); {live} left");
        }
    }

    /// When the next idle worker is due to exit (see [`Engine::retire_idle`]), if one would:
    /// `now` for an idle worker the last collection did not see idle yet, whose clock starts
    /// at the next one.
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        let limit = self.base.config.idle_timeout?;
        let slots = self.base.config.workers.min(self.pool.size());
        let live = (0..slots).filter(|&i| self.pool.has_worker(i)).count();
        if live <= self.base.config.min_workers {
            return None;
        }
        (0..slots)
            .filter_map(|i| {
                let seen = self.seen_idle(i)?;
                match self.base.health.idle.since(i, seen) {
                    // An idle timeout too large to add to an `Instant` never expires.
                    Some(since) => since.checked_add(limit),
                    None => Some(Instant::now()),
                }
            })
            .min()
    }

    /// Retires slot `i`'s worker if it is worn at `now` (see [`Pool::is_worn`]), or for good
    /// if it is idle beyond the configured count.
    pub(super) fn retire_if_worn(&mut self, i: usize, now: Option<Instant>) {
        let pool = &mut self.pool;
        let workers = self.base.config.workers;
        if i >= workers && pool.is_idle(i) {
            let pid = pool.pid(i).unwrap_or(0);
            pool.dismiss(i);
            log::debug!(target: &self.base.alias, "worker {pid} retired: the pool has {workers} workers now");
            return;
        }
        pool.check_memory(i);
        if !pool.is_worn(i, now) {
            return;
        }
        let old = pool.pid(i).unwrap_or(0);
        pool.set_recycle(self.base.config.recycle);
        match pool.retire(i, &mut self.base.value) {
            Ok(new) => {
                log::debug!(target: &self.base.alias, "worker {old} retired; {new} took its place")
            }
            Err(e) => {
                log::error!(target: &self.base.alias, "worker {old} retired; cannot fork its replacement: {e}");
                self.count_error(ErrorKind::Communication, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_mark_keeps_its_time_while_the_same_worker_stays_idle() {
        let mut w = IdleWatch::default();
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(10);
        let a = Seen { pid: 10, calls: 1 };
        assert_eq!(w.since(3, a), None, "never seen");
        assert_eq!(w.observe(3, Some(a), t0), Some(t0));
        assert_eq!(w.observe(3, Some(a), t1), Some(t0), "still idle since t0");
        assert_eq!(w.since(3, a), Some(t0));
        // A call was given between two looks: idle again from this look on.
        let b = Seen { pid: 10, calls: 2 };
        assert_eq!(w.since(3, b), None);
        assert_eq!(w.observe(3, Some(b), t1), Some(t1));
        // Busy: no mark.
        assert_eq!(w.observe(3, None, t1), None);
        assert_eq!(w.since(3, b), None);
        // Another worker in the slot, with as many calls.
        w.observe(3, Some(b), t0);
        let c = Seen { pid: 11, calls: 2 };
        assert_eq!(w.observe(3, Some(c), t1), Some(t1));
        w.forget(3);
        w.forget(99);
        assert_eq!(w.since(3, c), None);
        assert_eq!(w.since(0, c), None, "other slots unmarked");
    }

    #[test]
    fn the_breaker_trips_after_workers_die_unanswered_in_a_row() {
        let mut s = Supervisor::default();
        for _ in 0..START_FAILURE_LIMIT - 1 {
            s.died_unanswered();
        }
        assert!(s.may_fork() && s.tripped().is_none());
        // An answer closes it again.
        s.answered();
        for _ in 0..START_FAILURE_LIMIT {
            s.died_unanswered();
        }
        assert_eq!(s.tripped(), Some(START_FAILURE_LIMIT));
        s.restart();
        assert!(s.may_fork());
    }

    #[test]
    fn the_parent_limits_are_reported_once() {
        let mut s = Supervisor::default();
        let limit = ErrorCounts::PARENT_LIMITS.corruption;
        let reports: Vec<bool> = (0..limit + 3)
            .map(|_| s.count(ErrorKind::Corruption, 1))
            .collect();
        assert_eq!(reports.iter().filter(|&&r| r).count(), 1);
        assert!(reports[limit as usize - 1]);
        assert_eq!(s.errors().corruption, limit + 3);
        assert!(!s.take_refill());
        s.refill_later();
        assert!(s.refill_due() && s.take_refill() && !s.refill_due());
    }
}
