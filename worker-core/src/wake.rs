//! The sleep/wake protocol between the parent and its workers: who spins, for how long, who
//! sleeps, and how each side wakes the other. This module owns the words involved; the
//! channel (`channel`), the pool (`pool`) and the worker loop (`worker_loop`) call it and
//! touch none of them.
//!
//! # The words
//!
//! | word | written by | read by | meaning |
//! |---|---|---|---|
//! | a request's sequence number (`RequestHalf::seq`) | the parent | the worker | a new request is in the line; the worker's futex word |
//! | the worker's [`SleepFlag`] (`ResponseHalf::sleeping`) | the worker | the parent | the worker sleeps (or is about to) on that futex |
//! | an answer's sequence number (`ResponseHalf::seq`) | the worker | the parent | the answer is in the line |
//! | the parent's [`SleepFlag`] (`Header::parent_sleeping`) | the parent | every worker | the parent sleeps (or is about to) in `poll(2)` on the [`ParentWake`]'s eventfd |
//!
//! The channel writes the rest of a line with relaxed stores before its sequence number; this
//! module publishes the sequence number and decides about the wake-up.
//!
//! # The protocol
//!
//! A side that waits for a word to change:
//! 1. spins on it for a while (see below), and returns if it changed;
//! 2. sets its own flag (`SeqCst`);
//! 3. looks at the word again (`SeqCst`) and sleeps only if it still has not changed: the
//!    worker in `FUTEX_WAIT` on the request's word, the parent in `poll` on the eventfd;
//! 4. clears its flag when it wakes, and starts over at 2 if the word did not change.
//!
//! A side that publishes:
//! 1. stores the word (`SeqCst`), after the relaxed stores of the rest of the line;
//! 2. loads the peer's flag (`SeqCst`) and pays for a wake-up (`FUTEX_WAKE`, or an eventfd
//!    write) only if it is set.
//!
//! **No wake-up is lost.** Each side stores one word and then loads the other's, all
//! `SeqCst`: in the single order of those four operations, either the waiter's second look
//! (3) comes after the publication (1) and sees it, so it does not sleep, or the
//! publisher's load (2) comes after the waiter's flag (2) and sees it, so it wakes it. A wake
//! that lands between the waiter's second look and its sleep is not lost either: `FUTEX_WAIT`
//! compares the word again inside the kernel, and an eventfd stays readable until it is
//! drained, so the parent's `poll` then returns at once. A wake-up may be spurious (a flag
//! set for a sleep that did not happen): the sleeper's loop looks at its word again.
//!
//! A dead peer never publishes: the parent also polls the workers' pidfds, and a worker dies
//! with the parent (parent-death signal).
//!
//! # The spin
//!
//! A wait that really sleeps costs tens of microseconds on a VM, whatever the mechanism; a
//! spin that sees the word change costs a cache line's crossing. So each side spins first,
//! timing the spin with the tick counter (`clock`), but only when more than one CPU is
//! available: on one CPU, spinning only delays the peer that would answer. The spin is long
//! ([`SPIN_NS`]): longer than a wake-up takes, so that one late answer does not start a chain
//! in which both sides sleep on every call. A worker spins less after a request posted while
//! the pool was crowded (more busy workers, with the parent, than CPUs: see
//! [`ParentWake::crowded`]), since its spin then takes the CPU the parent or another worker
//! needs to make the next call.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::clock;

/// A side's announcement that it sleeps, or is about to: written by that side alone.
///
/// All-zero bytes are a valid flag (not set), as in a fresh segment.
#[repr(transparent)]
pub(crate) struct SleepFlag(AtomicU32);

impl SleepFlag {
    /// Step 2 of a wait.
    fn announce(&self) {
        self.0.store(1, Ordering::SeqCst);
    }

    /// Step 4 of a wait.
    fn withdraw(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Step 2 of a publication.
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }

    /// Parent: clears the flag of a slot about to get a newly forked worker (a killed worker
    /// may have left it set).
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// How long a side spins before sleeping, when more than one CPU is available: longer than a
/// wake-up takes on a VM, so that one late answer does not start a chain in which both sides
/// sleep on every call (the measurements behind it: benches/README.md).
pub(crate) const SPIN_NS: u64 = 50_000;

/// A worker's spin after a request posted while the pool was crowded: long enough for a
/// parent that answers at once, short enough not to hold a CPU the others need.
pub(crate) const SHORT_SPIN_NS: u64 = 2_000;

/// How many CPUs this process may use, looked up once (`available_parallelism` reads cgroup
/// files: tens of microseconds).
pub(crate) fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether a side spins before sleeping: not on a single CPU, where spinning only delays the
/// peer that would answer.
pub(crate) fn spin_allowed() -> bool {
    cpus() > 1
}

/// How long a worker spins for its next request, in nanoseconds, after a request posted while
/// the pool was `crowded` or not: [`SPIN_NS`] when every busy process could have a CPU of its
/// own, [`SHORT_SPIN_NS`] when not, and none on a single CPU.
fn worker_spin_ns(crowded: bool) -> u64 {
    match cpus() {
        1 => 0,
        _ if crowded => SHORT_SPIN_NS,
        _ => SPIN_NS,
    }
}

/// Spins until `done()` or `ns` nanoseconds passed, looking at the tick counter (not the
/// slower clock, see `clock`) every 64 checks. Returns whether `done()`.
pub(crate) fn spin_for(ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = clock::ticks();
    let budget = clock::ticks_in(ns);
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if clock::ticks().wrapping_sub(start) >= budget {
            return false;
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in a shared mapping (not PRIVATE: the waker
    // is another process). Returns at once if the word no longer holds `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32; wakes at most one waiter.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// Adds one to an eventfd, waking a parent that sleeps in `poll` on it.
fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd. A full counter (EAGAIN) is
    // harmless: the parent is then certainly awake.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Empties an eventfd (non-blocking).
fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reading 8 bytes into a valid u64 from a non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// Parent: publishes request `seq` in `word` (its line written before) and wakes the worker
/// if its flag says it sleeps.
#[inline]
pub(crate) fn publish_request(word: &AtomicU32, seq: u32, worker: &SleepFlag) {
    word.store(seq, Ordering::SeqCst);
    if worker.is_set() {
        futex_wake(word);
    }
}

/// Worker: publishes answer `seq` in `word` (its line written before); the caller then rings
/// the parent with [`WorkerWake::answered`].
#[inline]
pub(crate) fn publish_answer(word: &AtomicU32, seq: u32) {
    word.store(seq, Ordering::SeqCst);
}

/// The parent's side of the protocol for one pool: the eventfd its workers ring, and whether
/// it spins.
pub(crate) struct ParentWake {
    bell: OwnedFd,
    spin: bool,
    cpus: usize,
}

impl ParentWake {
    /// Creates the eventfd (non-blocking, not inherited by programs a worker executes).
    pub(crate) fn new() -> Result<ParentWake, String> {
        // SAFETY: plain eventfd creation; the fd is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(format!(
                "eventfd failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(ParentWake {
            // SAFETY: a fresh fd that nothing else owns.
            bell: unsafe { OwnedFd::from_raw_fd(fd) },
            spin: spin_allowed(),
            cpus: cpus(),
        })
    }

    /// The eventfd, for the workers.
    pub(crate) fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// Whether a pool of `slots` workers, `busy` of them busy, is crowded when one more call
    /// is posted: as many busy workers, with the parent, as CPUs or more. The request carries
    /// it to the worker, which then spins less (see [`WorkerWake::posted`]).
    #[inline]
    pub(crate) fn crowded(&self, slots: usize, busy: usize) -> bool {
        slots + 1 > self.cpus && busy + 2 > self.cpus
    }

    /// Spins until `done()` or [`SPIN_NS`] passed; false at once where the parent does not
    /// spin (one CPU).
    pub(crate) fn spin_until(&self, done: impl FnMut() -> bool) -> bool {
        self.spin && spin_for(SPIN_NS, done)
    }

    /// Before the parent sleeps in `poll`: spins for an answer, then announces the sleep in
    /// `flag` (the segment's `Header::parent_sleeping`) and looks again. Returns false, with
    /// nothing announced, if `answered()`; otherwise adds the eventfd to `fds` and returns true:
    /// the caller polls, then calls [`ParentWake::end_sleep`].
    pub(crate) fn begin_sleep(
        &self,
        flag: &SleepFlag,
        answered: impl Fn() -> bool,
        fds: &mut Vec<RawFd>,
    ) -> bool {
        if self.spin_until(&answered) {
            return false;
        }
        flag.announce();
        if answered() {
            flag.withdraw();
            return false;
        }
        fds.push(self.bell.as_raw_fd());
        true
    }

    /// After the parent's `poll`: withdraws the announcement and empties the eventfd.
    pub(crate) fn end_sleep(&self, flag: &SleepFlag) {
        flag.withdraw();
        eventfd_drain(self.bell.as_fd());
    }
}

/// A worker's side of the protocol: its spin, and the parent's flag and eventfd.
pub(crate) struct WorkerWake<'a> {
    parent: Option<(&'a SleepFlag, BorrowedFd<'a>)>,
    /// The spin after a calm request and after a crowded one, worked out once.
    calm_ns: u64,
    crowded_ns: u64,
    /// The spin before the next sleep.
    spin_ns: u64,
}

impl<'a> WorkerWake<'a> {
    /// The worker side for a parent whose flag is `parent` and whose eventfd is `bell`.
    pub(crate) fn new(parent: &'a SleepFlag, bell: BorrowedFd<'a>) -> WorkerWake<'a> {
        let calm_ns = worker_spin_ns(false);
        WorkerWake {
            parent: Some((parent, bell)),
            calm_ns,
            crowded_ns: worker_spin_ns(true),
            spin_ns: calm_ns,
        }
    }

    /// A side with no parent to ring and no spin (unit tests of the channel).
    #[cfg(test)]
    pub(crate) fn detached() -> WorkerWake<'static> {
        WorkerWake {
            parent: None,
            calm_ns: 0,
            crowded_ns: 0,
            spin_ns: 0,
        }
    }

    /// Waits until `word` (the request's sequence number) differs from `last`, announcing a
    /// sleep in `mine` (the worker's flag). Returns whether the spin saw it change (the
    /// request was then posted a moment ago).
    pub(crate) fn wait(&mut self, word: &AtomicU32, last: u32, mine: &SleepFlag) -> bool {
        let prompt = self.spin_ns > 0
            && word.load(Ordering::Acquire) == last
            && spin_for(self.spin_ns, || word.load(Ordering::Acquire) != last);
        while word.load(Ordering::Acquire) == last {
            mine.announce();
            if word.load(Ordering::SeqCst) == last {
                futex_wait(word, last);
            }
            mine.withdraw();
        }
        prompt
    }

    /// A request arrived that was posted while the pool was `crowded` or not: sets the next
    /// spin.
    #[inline]
    pub(crate) fn posted(&mut self, crowded: bool) {
        self.spin_ns = if crowded {
            self.crowded_ns
        } else {
            self.calm_ns
        };
    }

    /// After [`publish_answer`]: rings the parent's eventfd if its flag says it sleeps.
    #[inline]
    pub(crate) fn answered(&self) {
        if let Some((flag, bell)) = self.parent
            && flag.is_set()
        {
            eventfd_signal(bell);
        }
    }
}
