//! Supervision: what the parent counts about its workers' health, and the decisions it takes
//! from it. The error counts by kind (the seed's communication, corruption and catch-all),
//! the start-failure breaker (workers that keep dying before they answer anything stop being
//! forked), and whether dead or killed workers are due to be replaced.
//!
//! The passes that act on a pool (reaping the dead, killing the timed-out, retiring the worn)
//! are `Mediator::reap_dead`, `Mediator::enforce_timeouts` and `Mediator::retire_worn`; they
//! report here.

use crate::error::{ErrorCounts, ErrorKind};

/// How many workers in a row may die before answering a call before the pool stops forking.
pub(crate) const START_FAILURE_LIMIT: u32 = 5;

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
}

impl Supervisor {
    /// Errors counted since the mediator was made.
    pub(crate) fn errors(&self) -> ErrorCounts {
        self.errors
    }

    /// Counts an error of `kind`. True the first time the counts reach
    /// [`ErrorCounts::PARENT_LIMITS`]: the caller reports it.
    pub(crate) fn count(&mut self, kind: ErrorKind) -> bool {
        self.errors.add(kind);
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

    /// A new pool starts with a closed breaker.
    pub(crate) fn restart(&mut self) {
        self.start_failures = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            .map(|_| s.count(ErrorKind::Corruption))
            .collect();
        assert_eq!(reports.iter().filter(|&&r| r).count(), 1);
        assert!(reports[limit as usize - 1]);
        assert_eq!(s.errors().corruption, limit + 3);
        assert!(!s.take_refill());
        s.refill_later();
        assert!(s.refill_due() && s.take_refill() && !s.refill_due());
    }
}
