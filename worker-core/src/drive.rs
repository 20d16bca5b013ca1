//! Driving several mediators (and any other descriptors to wait on) from one loop: the
//! daemon's view of a mediator.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use crate::process;
use crate::stats::Stats;

/// A pool an event loop can drive: poll it, sleep on its events, read its statistics.
///
/// Implemented by [`crate::Mediator`]; pass `&mut *mediator` (a generated `{Type}Mediator`
/// dereferences to one).
///
/// The trait is sealed: only the runtime implements it. Sleeping is a protocol between a pool
/// and [`sleep_on`] (the pool tells its workers that the parent sleeps, so that they wake it,
/// and takes that back when the parent wakes); its two halves are in a supertrait that users
/// can neither name nor call, so that a sleep cannot be begun without being ended, and the
/// protocol can change without breaking users.
pub trait Drive: Sleep {
    /// The mediator's alias.
    fn alias(&self) -> &str;
    /// Processes every event that arrived and runs callbacks, without blocking. Returns how
    /// many calls finished.
    fn poll(&mut self) -> usize;
    /// A snapshot of its statistics.
    fn stats(&self) -> Stats;
    /// Calls queued or running.
    fn pending(&self) -> usize;
    /// The nearest deadline it must be polled at: a running call's timeout, an idle worker's
    /// exit.
    fn next_deadline(&self) -> Option<Instant>;
    /// Stops the pool (see [`crate::Mediator::shutdown`]).
    fn shutdown(&mut self);
    /// Stops the pool keeping unfinished calls (see [`crate::Mediator::suspend`]); returns
    /// how many were kept.
    fn suspend(&mut self) -> usize;
    /// Sets whether the pool recovers an earlier run's calls when it starts (see
    /// [`crate::Mediator::recover`]).
    fn set_recover(&mut self, recover: bool);
    /// Starts the pool now (see [`crate::Mediator::start`]).
    fn start_pool(&mut self) -> Result<(), crate::error::StartError>;
}

pub(crate) use sealed::{Sleep, Token};

mod sealed {
    use std::os::fd::RawFd;

    /// The halves of a sleep in [`super::sleep_on`]. Public in a private module: a supertrait
    /// of [`super::Drive`] that nobody outside the crate can name or implement. A `dyn Drive`
    /// still offers its supertraits' methods to anyone, so each takes a [`Token`], which only
    /// this crate can make.
    pub trait Sleep {
        /// Prepares to sleep: adds the descriptors whose readiness means an event to `fds`.
        /// Returns false if an event is already there (then do not sleep, and do not call
        /// [`Sleep::end_sleep`]).
        fn begin_sleep(&mut self, fds: &mut Vec<RawFd>, _: Token) -> bool;
        /// Ends a sleep begun with [`Sleep::begin_sleep`].
        fn end_sleep(&mut self, _: Token);
    }

    /// Proof that the caller is this crate: the field is private to it.
    #[derive(Debug, Clone, Copy)]
    pub struct Token(pub(crate) ());
}

/// Sleeps until one of `drives` has an event, one of `extra` is readable, or the nearest
/// deadline (`until`, or a call's timeout) passes. Does not poll: call [`Drive::poll`] after.
pub fn sleep_on(drives: &mut [&mut dyn Drive], extra: &[BorrowedFd<'_>], until: Option<Instant>) {
    let mut fds: Vec<RawFd> = extra.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut asleep = Vec::with_capacity(drives.len());
    let mut ready = false;
    for (i, d) in drives.iter_mut().enumerate() {
        if d.begin_sleep(&mut fds, Token(())) {
            asleep.push(i);
        } else {
            ready = true;
            break;
        }
    }
    if !ready {
        let wake = drives
            .iter()
            .filter_map(|d| d.next_deadline())
            .chain(until)
            .min();
        process::poll_raw(&fds, crate::clock::time_left(wake));
    }
    for i in asleep {
        drives[i].end_sleep(Token(()));
    }
}
