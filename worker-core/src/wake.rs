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
//! | the parent's [`SleepFlag`]s (`Area::parent_sleeping`, one in each worker's area) | the parent | that area's worker | the parent sleeps (or is about to) in `poll(2)` on the [`ParentWake`]'s eventfd |
//! | the [`SpinPlaces`] (on the pool's `SpinPage`, the one page its workers share) | the workers (take, give back); the parent (a dead worker's, a new pool's) | the workers | which workers may spin (see below); no wake-up depends on it |
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
//! available: on one CPU, spinning only delays the peer that would answer. How long, and who
//! may, adapts to the CPUs that are actually free, with nothing on the hot path but a few
//! instructions on memory each side owns:
//!
//! - **A budget per side** ([`Budget`]), at most [`SPIN_NS`] (longer than a wake-up takes, so
//!   that one late answer does not start a chain in which both sides sleep on every call). A
//!   spin that sees its word doubles it; a wait that slept longer than the longest spin
//!   halves it, and a shorter one sets it to twice its length (a longer spin would have seen
//!   the word). A side whose peer answers at once keeps its longest spin; one that is kept
//!   waiting soon sleeps almost at once and leaves its CPU to others.
//! - **Spin places for workers** ([`SpinPlaces`], on the spin page): one fewer than
//!   CPUs, held by the workers that are awake, so that awake workers and the parent never want
//!   more CPUs than there are. A worker without a place sleeps at once.
//! - **A shorter budget after a crowded request** (more busy workers, with the parent, than
//!   CPUs: see [`ParentWake::crowded`]), since a spin then takes a CPU another process needs
//!   to make the next call.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::clock;
use crate::error::{OsError, PoolError};

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

/// Which worker slots hold a spin place: one bit per slot (slot modulo 64). There is one
/// place fewer than CPUs (one CPU is the parent's): a worker spins only while it holds one,
/// so that awake workers and the parent never want more CPUs than there are (on two CPUs,
/// two workers spinning for a working parent took turns on them with it: a pipeline of small
/// calls on two workers ran at a fraction of its speed on one).
///
/// A worker takes its place when it starts waiting and keeps it while it is awake: while its
/// spins see their requests and while it runs them, since a running call uses a CPU too. It
/// gives the place back when it goes to sleep. A worker that finds no place sleeps at once
/// (the parent's post then wakes it). So a worker of a pipeline that keeps its place takes
/// the calls at a spin's speed, and no word is written per call.
///
/// Written by the workers (take, give back) and by the parent (a dead worker's place, a new
/// pool's). Its own cache line: the workers' sleep flags and the parent's are read on every
/// call; this is read at the start of a wait without a place, and written only when a worker
/// wakes or sleeps.
#[repr(C, align(64))]
pub(crate) struct SpinPlaces(AtomicU64);

impl SpinPlaces {
    fn bit(slot: usize) -> u64 {
        1 << (slot % 64)
    }

    /// Takes slot `slot`'s place if fewer than `places` are taken.
    fn take(&self, slot: usize, places: u32) -> bool {
        let bit = Self::bit(slot);
        let mut now = self.0.load(Ordering::Relaxed);
        loop {
            if now & bit != 0 || now.count_ones() >= places {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(now, now | bit, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Gives slot `slot`'s place back. Parent: a worker that died may have held one.
    pub(crate) fn give_back(&self, slot: usize) {
        self.0.fetch_and(!Self::bit(slot), Ordering::Relaxed);
    }

    /// No worker holds a place.
    #[cfg(test)]
    fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The shortest spin a side's adaptive budget falls to (see [`Budget`]).
const MIN_SPIN_NS: u64 = 1_000;

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

/// Spins until `done()` or `ns` nanoseconds passed. Returns whether `done()`.
pub(crate) fn spin_for(ns: u64, done: impl FnMut() -> bool) -> bool {
    spin_since(clock::ticks(), ns, done)
}

/// Spins until `done()` or `ns` nanoseconds passed since the counter read `start`, looking at
/// the tick counter (not the slower clock, see `clock`) every 64 checks. Returns whether
/// `done()`.
fn spin_since(start: u64, ns: u64, mut done: impl FnMut() -> bool) -> bool {
    // Worked out after the first checks, which are all a short wait needs.
    let mut budget = None;
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        let budget = *budget.get_or_insert_with(|| clock::ticks_in(ns));
        if clock::ticks().wrapping_sub(start) >= budget {
            return false;
        }
    }
}

/// A side's spin budget, adapted to how its waits end, in its own memory (no shared word, no
/// system call).
///
/// - A spin that saw the word change doubles it, up to the side's longest spin: spinning
///   pays.
/// - A wait that had to sleep halves it, down to [`MIN_SPIN_NS`], when the wait as a whole
///   was longer than the longest spin: spinning bought nothing and held a CPU. A shorter one
///   sets it to twice the wait: a longer spin would have seen it.
///
/// So a side that waits for a peer that answers at once keeps its longest spin, and one whose
/// peer keeps it waiting (long calls, an idle parent) soon sleeps almost at once, leaving its
/// CPU to others, and spins again as soon as a wait is short.
#[derive(Debug)]
struct Budget {
    ns: Cell<u64>,
    max: u64,
}

impl Budget {
    fn new(max: u64) -> Budget {
        Budget {
            ns: Cell::new(max),
            max,
        }
    }

    fn get(&self) -> u64 {
        self.ns.get()
    }

    /// The spin saw the word change.
    #[inline]
    fn seen(&self) {
        self.ns.set(self.ns.get().saturating_mul(2).min(self.max));
    }

    /// The wait slept; it lasted `waited_ns` in all.
    fn slept(&self, waited_ns: u64) {
        let ns = self.ns.get();
        self.ns.set(if waited_ns < self.max {
            ns.max(waited_ns.saturating_mul(2)).min(self.max)
        } else {
            (ns / 2).max(MIN_SPIN_NS.min(self.max))
        });
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

/// A new eventfd: non-blocking, not inherited by programs a worker executes.
pub(crate) fn eventfd() -> Result<OwnedFd, OsError> {
    // SAFETY: plain eventfd creation; the fd is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(OsError::last());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd, waking whoever sleeps in `poll` on it.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd. A full counter (EAGAIN) is
    // harmless: the parent is then certainly awake.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Empties an eventfd (non-blocking).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
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
    /// The spin before a sleep; none on one CPU.
    budget: Budget,
    cpus: usize,
    /// When the last wait that went past its spin began (a counter reading).
    waiting: Cell<u64>,
}

impl ParentWake {
    /// Creates the eventfd (see [`eventfd`]).
    pub(crate) fn new() -> Result<ParentWake, PoolError> {
        Ok(ParentWake {
            bell: eventfd().map_err(PoolError::EventFd)?,
            budget: Budget::new(if spin_allowed() { SPIN_NS } else { 0 }),
            cpus: cpus(),
            waiting: Cell::new(0),
        })
    }

    /// Sleeps without spinning first: for a parent that spins elsewhere (the shared pool's
    /// driver spins without its lock, see `Watch`).
    pub(crate) fn no_spin(&mut self) {
        self.budget = Budget::new(0);
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
    /// spin (one CPU). For rare waits (a worker's exit): the budget does not adapt to it.
    pub(crate) fn spin_until(&self, done: impl FnMut() -> bool) -> bool {
        self.budget.max > 0 && spin_for(SPIN_NS, done)
    }

    /// Before the parent sleeps in `poll`: spins for an answer, then announces the sleep in
    /// `flags` (one in each worker's area: `Area::parent_sleeping`) and looks again. Returns
    /// false, with nothing announced, if `answered()`; otherwise adds the eventfd to `fds` and
    /// returns true: the caller polls, then calls [`ParentWake::end_sleep`].
    pub(crate) fn begin_sleep<'f>(
        &self,
        flags: impl Iterator<Item = &'f SleepFlag> + Clone,
        answered: impl Fn() -> bool,
        fds: &mut Vec<RawFd>,
    ) -> bool {
        let start = clock::ticks();
        let ns = self.budget.get();
        if ns > 0 && spin_since(start, ns, &answered) {
            self.budget.seen();
            return false;
        }
        self.waiting.set(start);
        // Every flag is stored before the look (all `SeqCst`): each worker's publication then
        // pairs with its own flag as in the protocol above.
        for flag in flags.clone() {
            flag.announce();
        }
        if answered() {
            for flag in flags {
                flag.withdraw();
            }
            self.end_wait();
            return false;
        }
        fds.push(self.bell.as_raw_fd());
        true
    }

    /// After the parent's `poll`: withdraws the announcement and empties the eventfd.
    pub(crate) fn end_sleep<'f>(&self, flags: impl Iterator<Item = &'f SleepFlag>) {
        for flag in flags {
            flag.withdraw();
        }
        eventfd_drain(self.bell.as_fd());
        self.end_wait();
    }

    /// A wait that went past its spin ended: adapts the budget to it.
    fn end_wait(&self) {
        let start = self.waiting.get();
        self.budget
            .slept(clock::span_ns(clock::ticks().wrapping_sub(start)));
    }
}

/// A worker's side of the protocol: its spin, and the parent's flag and eventfd.
pub(crate) struct WorkerWake<'a> {
    parent: Option<(&'a SleepFlag, BorrowedFd<'a>)>,
    /// The segment's spin places, this worker's slot, and how many places there are.
    places: Option<&'a SpinPlaces>,
    slot: usize,
    max_places: u32,
    /// Whether this worker holds its spin place.
    placed: bool,
    /// The spin before a sleep: after a calm request and after a crowded one (see
    /// [`ParentWake::crowded`]).
    calm: Budget,
    crowded: Budget,
    /// Whether the last request was posted while the pool was crowded.
    was_crowded: bool,
}

impl<'a> WorkerWake<'a> {
    /// The worker side of slot `slot`, for a parent whose flag is `parent` and whose eventfd
    /// is `bell`, with the segment's spin places.
    pub(crate) fn new(
        parent: &'a SleepFlag,
        bell: BorrowedFd<'a>,
        places: &'a SpinPlaces,
        slot: usize,
    ) -> WorkerWake<'a> {
        WorkerWake {
            parent: Some((parent, bell)),
            places: Some(places),
            slot,
            max_places: cpus().saturating_sub(1) as u32,
            placed: false,
            calm: Budget::new(worker_spin_ns(false)),
            crowded: Budget::new(worker_spin_ns(true)),
            was_crowded: false,
        }
    }

    /// A side with no parent to ring and no spin (unit tests of the channel).
    #[cfg(test)]
    pub(crate) fn detached() -> WorkerWake<'static> {
        WorkerWake {
            parent: None,
            places: None,
            slot: 0,
            max_places: 0,
            placed: false,
            calm: Budget::new(0),
            crowded: Budget::new(0),
            was_crowded: false,
        }
    }

    fn budget(&self) -> &Budget {
        if self.was_crowded {
            &self.crowded
        } else {
            &self.calm
        }
    }

    /// Waits until `word` (the request's sequence number) differs from `last`, announcing a
    /// sleep in `mine` (the worker's flag). Returns whether the spin saw it change (the
    /// request was then posted a moment ago).
    pub(crate) fn wait(&mut self, word: &AtomicU32, last: u32, mine: &SleepFlag) -> bool {
        let changed = || word.load(Ordering::Acquire) != last;
        if changed() {
            return false;
        }
        let start = clock::ticks();
        let ns = self.budget().get();
        let spun = (ns > 0 && self.take_place()).then(|| spin_since(start, ns, changed));
        if spun == Some(true) {
            self.budget().seen();
            return true;
        }
        self.give_back_place();
        while !changed() {
            mine.announce();
            if word.load(Ordering::SeqCst) == last {
                futex_wait(word, last);
            }
            mine.withdraw();
        }
        // A wait without a spin (no place was free) says nothing about the budget.
        if spun.is_some() {
            self.budget()
                .slept(clock::span_ns(clock::ticks().wrapping_sub(start)));
        }
        false
    }

    /// Whether this worker holds its spin place, taking it if one is free.
    #[inline]
    fn take_place(&mut self) -> bool {
        if !self.placed
            && let Some(places) = self.places
        {
            self.placed = places.take(self.slot, self.max_places);
        }
        self.placed
    }

    /// Gives this worker's spin place back, if it holds it.
    fn give_back_place(&mut self) {
        if self.placed
            && let Some(places) = self.places
        {
            places.give_back(self.slot);
            self.placed = false;
        }
    }

    /// Before the worker exits: gives its spin place back.
    pub(crate) fn leave(&mut self) {
        self.give_back_place();
    }

    /// A request arrived that was posted while the pool was `crowded` or not: chooses the
    /// next spin's budget.
    #[inline]
    pub(crate) fn posted(&mut self, crowded: bool) {
        self.was_crowded = crowded;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_doubles_when_spinning_pays_and_halves_when_it_does_not() {
        let b = Budget::new(SPIN_NS);
        b.slept(10 * SPIN_NS);
        assert_eq!(b.get(), SPIN_NS / 2, "a long wait halves it");
        b.slept(SPIN_NS);
        assert_eq!(
            b.get(),
            SPIN_NS / 4,
            "as long as the longest spin: halves it"
        );
        (0..20).for_each(|_| b.slept(10 * SPIN_NS));
        assert_eq!(b.get(), MIN_SPIN_NS, "down to the shortest spin");
        b.slept(3_000);
        assert_eq!(
            b.get(),
            6_000,
            "a short wait: twice it would have been seen"
        );
        b.seen();
        assert_eq!(b.get(), 12_000);
        (0..10).for_each(|_| b.seen());
        assert_eq!(b.get(), SPIN_NS, "up to the longest spin");
        let none = Budget::new(0);
        none.slept(1_000);
        none.seen();
        assert_eq!(none.get(), 0, "no spin on one CPU stays none");
    }

    #[test]
    fn a_worker_keeps_its_spin_place_while_it_is_awake() {
        // SAFETY: all-zero bytes are valid places and a valid flag (atomics).
        let (places, flag): (SpinPlaces, SleepFlag) = unsafe { std::mem::zeroed() };
        let word = AtomicU32::new(1);
        let mut w = WorkerWake::detached();
        (w.places, w.max_places, w.calm) = (Some(&places), 1, Budget::new(SPIN_NS));
        assert!(!w.wait(&word, 0, &flag), "already there: no spin");
        assert!(!w.placed, "and no place taken");
        // Another process posts while this one spins.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_micros(5));
                word.store(2, Ordering::SeqCst);
                futex_wake(&word);
            });
            w.wait(&word, 1, &flag);
        });
        if w.placed {
            assert!(!places.take(1, 1), "held while awake");
        }
        // A wait that sleeps gives the place back.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                word.store(3, Ordering::SeqCst);
                futex_wake(&word);
            });
            assert!(!w.wait(&word, 2, &flag), "the spin ran out");
        });
        assert!(!w.placed && places.take(1, 1), "given back before sleeping");
    }

    #[test]
    fn no_more_workers_hold_spin_places_than_there_are() {
        // SAFETY: all-zero bytes are valid places (an atomic).
        let places: SpinPlaces = unsafe { std::mem::zeroed() };
        assert!(places.take(0, 1));
        assert!(!places.take(1, 1), "one place, taken");
        assert!(!places.take(0, 2), "a slot holds one place at most");
        assert!(places.take(1, 2));
        places.give_back(0);
        assert!(places.take(2, 2));
        places.clear();
        assert!(places.take(3, 1));
    }
}
