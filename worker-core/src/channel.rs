//! One request/response channel per worker slot, in shared memory, and the wake-ups between
//! the two sides.
//!
//! Every word has a single writer. The parent writes the request half and bumps `req_seq`;
//! the worker writes the response half and sets `resp_seq` to the request's sequence number.
//! A sleeping worker waits on `req_seq` with a futex; a sleeping parent waits in `poll` on an
//! eventfd (and on the workers' pidfds, so that a death wakes it too). Each side first spins
//! briefly when more than one CPU is available (see FACTS.md: about 0.4 us instead of 10 us),
//! and only pays for a wake-up syscall when the other side announced that it sleeps.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What the parent asks of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Request {
    /// Run method `method` on the arguments at `args_off`, reply into `ret_off`.
    Call = 1,
    /// The room asked for by `Response::NeedSpace` is at `ret_off`: copy the return there.
    Space = 2,
    /// Run `teardown` and exit.
    Exit = 3,
}

impl Request {
    fn from_u32(v: u32) -> Option<Request> {
        [Request::Call, Request::Space, Request::Exit]
            .into_iter()
            .find(|r| *r as u32 == v)
    }
}

/// What a worker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Response {
    /// The return value is at `ret_off`, `ret_len` bytes.
    Returned = 1,
    /// The return value needs `ret_len` bytes, more than `ret_cap`.
    NeedSpace = 2,
    /// The method panicked; the message (UTF-8, maybe truncated) is at `ret_off`.
    Panicked = 3,
    /// Decoding the arguments or encoding the return failed; the message is at `ret_off`.
    WireError = 4,
    /// The request failed validation (checksum, bounds); the message is at `ret_off` if
    /// `ret_off` itself could be trusted, else the length is 0.
    Corrupted = 5,
    /// The worker got `Exit` and will not touch the channel again.
    Exiting = 6,
}

impl Response {
    pub(crate) fn from_u32(v: u32) -> Option<Response> {
        [
            Response::Returned,
            Response::NeedSpace,
            Response::Panicked,
            Response::WireError,
            Response::Corrupted,
            Response::Exiting,
        ]
        .into_iter()
        .find(|r| *r as u32 == v)
    }
}

/// The request half, written by the parent.
#[repr(C, align(64))]
pub(crate) struct RequestHalf {
    /// Bumped by the parent for each request; the worker's futex word.
    pub(crate) seq: AtomicU32,
    pub(crate) kind: AtomicU32,
    pub(crate) method: AtomicU32,
    pub(crate) call_id: AtomicU64,
    pub(crate) args_off: AtomicU64,
    pub(crate) args_len: AtomicU64,
    pub(crate) ret_off: AtomicU64,
    pub(crate) ret_cap: AtomicU64,
    /// A checksum of the fields above and of `seq`, written before `seq`.
    pub(crate) check: AtomicU64,
}

/// The response half, written by the worker.
///
/// The offsets of `seq` (16), `kind` (20), `ret_len` (24) and `check` (40) are relied on by
/// the forged-answer test in tests/faults.rs.
#[repr(C, align(64))]
pub(crate) struct ResponseHalf {
    /// Set by the worker before it sleeps on `RequestHalf::seq`.
    pub(crate) sleeping: AtomicU32,
    _unused: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds when the worker started the request answered, or 0 when it
    /// did not start one with it (an answer to `Space`, `Exit` or a corrupted request).
    pub(crate) started_ns: AtomicU64,
    /// The sequence number of the request answered; written last.
    pub(crate) seq: AtomicU32,
    pub(crate) kind: AtomicU32,
    pub(crate) ret_len: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds when the answer was written.
    pub(crate) finished_ns: AtomicU64,
    /// A checksum of `seq`, `kind` and `ret_len`, written before `seq`.
    pub(crate) check: AtomicU64,
    /// Errors the worker reported with `this_worker::error`, ever.
    pub(crate) errors: AtomicU32,
}

/// The worker's running mark, written by the worker when it starts a call.
///
/// It has a cache line of its own: the parent spins on the response half while a call runs,
/// and a write there would take that line away from it once more per call. The parent reads
/// the mark only when asked for a running call's status, when a worker died, and at recovery;
/// the answer carries its own copy of the start time.
#[repr(C, align(64))]
pub(crate) struct RunningMark {
    /// The sequence number of the request the worker started running.
    pub(crate) seq: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds when it started.
    pub(crate) started_ns: AtomicU64,
}

/// One worker slot's channel.
#[repr(C)]
pub(crate) struct Channel {
    pub(crate) req: RequestHalf,
    pub(crate) resp: ResponseHalf,
    pub(crate) running: RunningMark,
}

/// A request as the worker reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posted {
    pub(crate) seq: u32,
    /// Whether the request's checksum matched its fields.
    pub(crate) valid: bool,
    pub(crate) kind: Option<Request>,
    pub(crate) method: u32,
    pub(crate) args_off: usize,
    pub(crate) args_len: usize,
    pub(crate) ret_off: usize,
    pub(crate) ret_cap: usize,
}

/// A checksum of a record's words, so that a scribbled or torn record is told apart from a
/// real one. It protects the control words, not the payload, whose structure postcard
/// validates when decoding.
///
/// Word by word (FNV-1a's start and shape, a 64-bit odd multiplier, then a xor-shift that
/// carries high bits down): each step is a bijection, so a change to any one word always
/// changes the result, at about a sixth of the instructions of FNV-1a over bytes (the parent
/// computes five per call). The journal's entries outlive the program: changing this function
/// changes the segment layout version (`shm::VERSION`). `const` so that the checksums of fixed
/// records are computed at compile time.
pub(crate) const fn checksum(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        i += 1;
    }
    h
}

/// An answer as the parent reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    pub(crate) kind: u32,
    /// When the worker started the request answered, if it started one with it.
    pub(crate) started_ns: Option<u64>,
    pub(crate) ret_len: usize,
    pub(crate) finished_ns: u64,
    /// Whether the answer's checksum matched its fields.
    pub(crate) valid: bool,
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between the parent and its workers.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

impl Channel {
    /// Parent: clears the channel for a newly forked worker.
    pub(crate) fn reset(&self) {
        let seq = self.req.seq.load(Ordering::Relaxed);
        self.resp.seq.store(seq, Ordering::Relaxed);
        self.running.seq.store(seq, Ordering::Relaxed);
        self.resp.sleeping.store(0, Ordering::Relaxed);
        self.resp.errors.store(0, Ordering::Relaxed);
    }

    /// Parent: posts a request and wakes the worker if it sleeps. Returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post(
        &self,
        kind: Request,
        method: u32,
        call_id: u64,
        args: (usize, usize),
        ret: (usize, usize),
    ) -> u32 {
        let r = &self.req;
        r.kind.store(kind as u32, Ordering::Relaxed);
        r.method.store(method, Ordering::Relaxed);
        r.call_id.store(call_id, Ordering::Relaxed);
        r.args_off.store(args.0 as u64, Ordering::Relaxed);
        r.args_len.store(args.1 as u64, Ordering::Relaxed);
        r.ret_off.store(ret.0 as u64, Ordering::Relaxed);
        r.ret_cap.store(ret.1 as u64, Ordering::Relaxed);
        let seq = r.seq.load(Ordering::Relaxed).wrapping_add(1);
        r.check.store(
            checksum(&[
                seq as u64,
                kind as u64,
                method as u64,
                call_id,
                args.0 as u64,
                args.1 as u64,
                ret.0 as u64,
                ret.1 as u64,
            ]),
            Ordering::Relaxed,
        );
        r.seq.store(seq, Ordering::SeqCst);
        if self.resp.sleeping.load(Ordering::SeqCst) != 0 {
            futex_wake(&r.seq);
        }
        seq
    }

    /// Parent: whether the worker answered request `seq`.
    pub(crate) fn answered(&self, seq: u32) -> bool {
        self.resp.seq.load(Ordering::Acquire) == seq
    }

    /// Parent: the answer to request `seq`, if the worker wrote it.
    pub(crate) fn answer(&self, seq: u32) -> Option<Answer> {
        self.answered(seq).then(|| {
            let kind = self.resp.kind.load(Ordering::Relaxed);
            let ret_len = self.resp.ret_len.load(Ordering::Relaxed);
            let started_ns = self.resp.started_ns.load(Ordering::Relaxed);
            Answer {
                kind,
                started_ns: (started_ns != 0).then_some(started_ns),
                ret_len: ret_len as usize,
                finished_ns: self.resp.finished_ns.load(Ordering::Relaxed),
                valid: self.resp.check.load(Ordering::Relaxed)
                    == checksum(&[seq as u64, kind as u64, ret_len]),
            }
        })
    }

    /// Parent: when the worker started request `seq`, if it did.
    pub(crate) fn started(&self, seq: u32) -> Option<u64> {
        (self.running.seq.load(Ordering::Acquire) == seq)
            .then(|| self.running.started_ns.load(Ordering::Relaxed))
    }

    /// Worker: waits for the request after `last`, spinning first if `spin`, then sleeping.
    pub(crate) fn next_request(&self, last: u32, spin: bool) -> Posted {
        let seq = &self.req.seq;
        if spin {
            spin_until(|| seq.load(Ordering::Acquire) != last);
        }
        loop {
            let now = seq.load(Ordering::Acquire);
            if now != last {
                break;
            }
            self.resp.sleeping.store(1, Ordering::SeqCst);
            if seq.load(Ordering::SeqCst) == last {
                futex_wait(seq, last);
            }
            self.resp.sleeping.store(0, Ordering::Relaxed);
        }
        let r = &self.req;
        let seq = seq.load(Ordering::Acquire);
        let kind = r.kind.load(Ordering::Relaxed);
        let method = r.method.load(Ordering::Relaxed);
        let call_id = r.call_id.load(Ordering::Relaxed);
        let words = [
            r.args_off.load(Ordering::Relaxed),
            r.args_len.load(Ordering::Relaxed),
            r.ret_off.load(Ordering::Relaxed),
            r.ret_cap.load(Ordering::Relaxed),
        ];
        let valid = r.check.load(Ordering::Relaxed)
            == checksum(&[
                seq as u64,
                kind as u64,
                method as u64,
                call_id,
                words[0],
                words[1],
                words[2],
                words[3],
            ]);
        Posted {
            seq,
            valid,
            kind: Request::from_u32(kind),
            method,
            args_off: words[0] as usize,
            args_len: words[1] as usize,
            ret_off: words[2] as usize,
            ret_cap: words[3] as usize,
        }
    }

    /// Worker: announces that it started request `seq`; returns the time, for the answer.
    pub(crate) fn mark_running(&self, seq: u32) -> u64 {
        let now = now_ns();
        self.running.started_ns.store(now, Ordering::Relaxed);
        self.running.seq.store(seq, Ordering::Release);
        now
    }

    /// Worker: answers request `seq`, which it started at `started_ns` (0 if it started
    /// nothing with it); the caller then wakes the parent if it sleeps.
    pub(crate) fn respond(&self, seq: u32, kind: Response, ret_len: usize, started_ns: u64) {
        self.resp.started_ns.store(started_ns, Ordering::Relaxed);
        self.resp.kind.store(kind as u32, Ordering::Relaxed);
        self.resp.ret_len.store(ret_len as u64, Ordering::Relaxed);
        self.resp.finished_ns.store(now_ns(), Ordering::Relaxed);
        self.resp.check.store(
            checksum(&[seq as u64, kind as u64, ret_len as u64]),
            Ordering::Relaxed,
        );
        self.resp.seq.store(seq, Ordering::SeqCst);
    }
}

/// How many re-checks before sleeping: none on a single CPU, where spinning only delays the
/// peer that would answer.
pub(crate) fn spin_allowed() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
}

/// How long a side spins before sleeping, when more than one CPU is available: longer than a
/// wake-up takes on a VM (about 30 us measured here), so that one late answer does not start a
/// chain in which both sides sleep on every call. Measured by `cargo bench --bench compare`:
/// a 200-iteration spin (about 5 us) gave 8.7-19.9 us per empty call, this one 1.1-3.7 us.
pub(crate) const SPIN_NS: u64 = 50_000;

/// Spins until `done()` or `SPIN_NS` passed, reading the clock every 64 checks.
pub(crate) fn spin_until(mut done: impl FnMut() -> bool) -> bool {
    let start = now_ns();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if now_ns().saturating_sub(start) >= SPIN_NS {
            return false;
        }
    }
}
