//! One request/response channel per worker slot, in shared memory: the two cache lines a
//! call crosses, and their checksums.
//!
//! Every word has a single writer. The parent writes the request half and bumps `req_seq`;
//! the worker writes the response half and sets `resp_seq` to the request's sequence number.
//! Each half is one cache line, and small arguments and returns travel inside it, so that a
//! small call crosses one line each way. How each side waits for the other's sequence number,
//! and wakes it, is the protocol of `wake`: this module writes the lines and hands their
//! sequence numbers to it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arena::Span;
use crate::checksum::checksum;
use crate::clock::{self, now_ns};
use crate::wake::{self, SleepFlag, WorkerWake};

/// What the parent asks of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum RequestKind {
    /// Run method `method` on the arguments that `args_at` and `args` locate (in the line, or
    /// the worker's area), reply into `ret_off`.
    Call = 1,
    /// Run `teardown` and exit. (2 was a request for room, which an area makes needless.)
    Exit = 3,
}

impl RequestKind {
    fn from_u32(v: u32) -> Option<RequestKind> {
        [RequestKind::Call, RequestKind::Exit]
            .into_iter()
            .find(|r| *r as u32 == v)
    }
}

/// Where a call was posted: the worker slot and the request's sequence number on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PostedAt {
    pub(crate) slot: usize,
    pub(crate) seq: u32,
}

/// A request as the parent posts it: the one value that travels from the engine through the
/// pool to the channel's request line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) kind: RequestKind,
    pub(crate) method: u32,
    pub(crate) args: ArgsAt<'a>,
    /// Where the worker writes what it answers with (a return value, a message).
    pub(crate) ret: Span,
}

impl<'a> Request<'a> {
    /// Run `method` on `args`, answering into `ret` (the call's return reservation).
    pub(crate) fn call(method: u32, args: ArgsAt<'a>, ret: Span) -> Request<'a> {
        Request {
            kind: RequestKind::Call,
            method,
            args,
            ret,
        }
    }

    /// Run `teardown` and exit.
    pub(crate) fn exit() -> Request<'static> {
        Request {
            kind: RequestKind::Exit,
            method: 0,
            args: ArgsAt::Block(0, 0),
            ret: Span::default(),
        }
    }
}

/// What a worker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Response {
    /// The return value is at `ret_off`, `ret_len` bytes.
    Returned = 1,
    /// The return value needs `ret_len` bytes, more than `ret_cap`: it does not fit the area.
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
    fn from_u32(v: u32) -> Option<Response> {
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

/// How many argument bytes travel inside the request's cache line instead of in a block of
/// the payload area.
pub(crate) const INLINE_ARGS: usize = 24;
/// How many return bytes travel inside the response's cache line.
pub(crate) const INLINE_RET: usize = 16;
/// Set in `ResponseHalf::kind` when the return value is in `ResponseHalf::ret`.
const RET_INLINE: u32 = 1 << 16;
/// Set in `ResponseHalf::kind` when `ResponseHalf::finished_ns` holds the call's run time in
/// ticks of the counter (see `clock`) rather than a time of day: the parent converts it, so
/// that the worker's answer does no floating-point work.
const RUN_SPAN: u32 = 1 << 17;
/// Set in `ResponseHalf::kind` when the worker exits after this answer (it called
/// `this_worker::fatal_error`): the parent gives it no other request.
const EXITS: u32 = 1 << 18;
/// A call that ran for less than this is timed with the tick counter alone (see `clock`);
/// a longer one reads the clock when it ends, a cost that is then negligible beside its run.
const SHORT_RUN_NS: u64 = 100_000;

/// [`SHORT_RUN_NS`] in ticks of the counter: a worker works it out once.
pub(crate) fn short_run_ticks() -> u64 {
    clock::ticks_in(SHORT_RUN_NS)
}

/// The request half, written by the parent: one cache line.
///
/// Small arguments ride in the line itself (`args_at` = 1 + their length), so that a small
/// call moves one line to the worker and one back, as the futex floor does, instead of also
/// pulling the payload block's line across (a crossing as costly as the line's own: see
/// benches/README.md).
#[repr(C, align(64))]
pub(crate) struct RequestHalf {
    /// Bumped by the parent for each request; the worker's futex word.
    pub(crate) seq: AtomicU32,
    pub(crate) kind: AtomicU32,
    pub(crate) method: AtomicU32,
    /// 0: the arguments are in the payload area, at offset `args[0]`, `args[1]` bytes long;
    /// 1 + n: they are the first n bytes of `args`.
    pub(crate) args_at: AtomicU32,
    pub(crate) ret_off: AtomicU64,
    pub(crate) ret_cap: AtomicU64,
    /// A checksum of every other word of the line, written before `seq`.
    pub(crate) check: AtomicU64,
    pub(crate) args: [AtomicU64; 3],
}

/// The response half, written by the worker: one cache line.
///
/// The offsets of `seq` (8), `kind` (12), `ret_len` (16) and `check` (40) are relied on by
/// the forged-answer test in tests/faults.rs.
#[repr(C, align(64))]
pub(crate) struct ResponseHalf {
    /// Set by the worker before it sleeps on `RequestHalf::seq` (see `wake`).
    pub(crate) sleeping: SleepFlag,
    /// Errors the worker reported with `this_worker::error`, ever.
    pub(crate) errors: AtomicU32,
    /// The sequence number of the request answered; written last.
    pub(crate) seq: AtomicU32,
    /// A `Response`, with `RET_INLINE` set when the return value is in `ret` and `RUN_SPAN`
    /// when `finished_ns` is a run time.
    pub(crate) kind: AtomicU32,
    pub(crate) ret_len: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds when the worker started the request answered; 0 when it
    /// started it as it was posted (see `Channel::mark_running`) or did not start one with it
    /// (an answer to `Exit` or a corrupted request).
    pub(crate) started_ns: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds when the answer was written; with `RUN_SPAN` set in
    /// `kind`, counter ticks since the call started instead.
    pub(crate) finished_ns: AtomicU64,
    /// A checksum of `seq`, `kind` and `ret_len`, written before `seq`.
    pub(crate) check: AtomicU64,
    /// A return value of at most `INLINE_RET` bytes.
    pub(crate) ret: [AtomicU64; 2],
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
    /// Written by a sandboxed worker's `SIGSYS` handler as it dies: the number of the system
    /// call the sandbox stopped it at, plus one (0: none). Worker-written: the parent reads it
    /// only for a worker that exited with the sandbox's code, as a number for a message (see
    /// `sandbox::exit_cause`). It fills the padding before `started_ns`.
    pub(crate) stopped_at: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds when it started, or 0 when it started it as it was posted.
    pub(crate) started_ns: AtomicU64,
    /// Set by the worker once its `setup` (and its limits and sandbox) are done, as it starts
    /// waiting for requests: a worker that dies after this did not fail to start (it was
    /// killed, say), and does not count toward the start-failure breaker. Worker-written: it
    /// only decides that count.
    pub(crate) ready: AtomicU32,
}

// Each half is one cache line, and the forged-answer test in tests/faults.rs writes at these
// offsets.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<RequestHalf>() == 64 && size_of::<ResponseHalf>() == 64);
    assert!(offset_of!(ResponseHalf, seq) == 8 && offset_of!(ResponseHalf, kind) == 12);
    assert!(offset_of!(ResponseHalf, ret_len) == 16 && offset_of!(ResponseHalf, check) == 40);
};

/// One worker slot's channel.
#[repr(C)]
pub(crate) struct Channel {
    pub(crate) req: RequestHalf,
    pub(crate) resp: ResponseHalf,
    pub(crate) running: RunningMark,
}

/// Where a request's arguments are, as the parent posts them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ArgsAt<'a> {
    /// In the payload area: (offset, length).
    Block(usize, usize),
    /// These bytes, at most `INLINE_ARGS`, copied into the request's line.
    Inline(&'a [u8]),
}

/// Where a request's arguments are, as the worker reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PostedArgs {
    /// In the payload area: (offset, length).
    Block(usize, usize),
    /// The first `len` bytes of `bytes`.
    Inline {
        len: usize,
        bytes: [u8; INLINE_ARGS],
    },
}

/// A request as the worker reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posted {
    pub(crate) seq: u32,
    /// Whether the worker, spinning, saw the request arrive (rather than finding it when it
    /// came back from other work, or waking up for it).
    pub(crate) prompt: bool,
    /// Whether the pool was crowded when the request was posted (see
    /// `wake::ParentWake::crowded`).
    pub(crate) crowded: bool,
    /// Whether the request's checksum matched its fields.
    pub(crate) valid: bool,
    pub(crate) kind: Option<RequestKind>,
    pub(crate) method: u32,
    pub(crate) args: PostedArgs,
    pub(crate) ret_off: usize,
    pub(crate) ret_cap: usize,
}

/// Packs up to `N * 8` bytes into little-endian words.
fn pack<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut words = [0u64; N];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

/// The bytes of little-endian words.
fn unpack<const N: usize, const B: usize>(words: [u64; N]) -> [u8; B] {
    let mut bytes = [0u8; B];
    for (chunk, w) in bytes.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
    bytes
}

/// An answer as the parent reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// The kind word as the worker wrote it, flags removed: a [`Response`] unless the worker
    /// is broken (see [`Answer::kind`]).
    pub(crate) raw_kind: u32,
    pub(crate) ret_len: usize,
    /// The return value's bytes when they came inside the answer's line (`ret_len` of them),
    /// rather than in the payload area.
    pub(crate) inline: Option<[u8; INLINE_RET]>,
    /// When the worker ran what it answered.
    pub(crate) ran: Ran,
    /// Whether the answer's checksum matched its fields.
    pub(crate) valid: bool,
}

impl Answer {
    /// What the worker answered, if the answer passed validation and names a response.
    #[inline]
    pub(crate) fn kind(&self) -> Option<Response> {
        if self.valid {
            Response::from_u32(self.raw_kind)
        } else {
            None
        }
    }
}

/// When a worker ran what it answered: all the parent keeps of an answer to time the call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ran {
    /// When the worker started the request answered, if it started one with it.
    pub(crate) started_ns: Option<u64>,
    pub(crate) finished: Finished,
}

/// When a worker finished what it answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Finished {
    /// At this CLOCK_MONOTONIC time.
    At(u64),
    /// This many ticks of the counter (see `clock`) after it started.
    AfterTicks(u64),
}

impl Ran {
    /// When the call answered started running, for a call handed over at `called`: the
    /// worker's stamp, or `called` itself when the worker picked it up as it was posted (and
    /// never earlier than `called`).
    pub(crate) fn running_ns(&self, called: u64) -> u64 {
        self.started_ns.map_or(called, |ns| ns.max(called))
    }

    /// When the answer was written, for a call that started running at `running`.
    pub(crate) fn finished_ns(&self, running: u64) -> u64 {
        match self.finished {
            Finished::At(ns) => ns.max(running),
            // The ticks are the worker's to write: no sum may overflow.
            Finished::AfterTicks(ticks) => running.saturating_add(clock::span_ns(ticks)),
        }
    }
}

impl Channel {
    /// Worker: its setup is done; it waits for requests (see `RunningMark::ready`).
    pub(crate) fn mark_ready(&self) {
        self.running.ready.store(1, Ordering::Release);
    }

    /// Parent: whether the worker got through its setup.
    pub(crate) fn was_ready(&self) -> bool {
        self.running.ready.load(Ordering::Acquire) != 0
    }

    /// Parent: clears the channel for a newly forked worker.
    pub(crate) fn reset(&self) {
        let seq = self.req.seq.load(Ordering::Relaxed);
        self.resp.seq.store(seq, Ordering::Relaxed);
        self.running.seq.store(seq, Ordering::Relaxed);
        self.running.stopped_at.store(0, Ordering::Relaxed);
        self.running.ready.store(0, Ordering::Relaxed);
        self.resp.sleeping.reset();
        self.resp.errors.store(0, Ordering::Relaxed);
    }

    /// Parent: posts request number `seq` (one more than the last, which the caller keeps: a
    /// read of the request line here would fetch it back from the worker spinning on it, one
    /// more line crossing per call) and wakes the worker if it sleeps.
    pub(crate) fn post(&self, seq: u32, request: Request<'_>, crowded: bool) {
        let r = &self.req;
        let Request {
            kind,
            method,
            args,
            ret,
        } = request;
        let ret = (ret.offset, ret.len);
        let kind = kind as u32 | if crowded { CROWDED } else { 0 };
        let (args_at, words) = match args {
            ArgsAt::Block(off, len) => (0, [off as u64, len as u64, 0]),
            ArgsAt::Inline(bytes) => {
                debug_assert!(bytes.len() <= INLINE_ARGS);
                (1 + bytes.len() as u32, pack::<3>(bytes))
            }
        };
        r.kind.store(kind, Ordering::Relaxed);
        r.method.store(method, Ordering::Relaxed);
        r.args_at.store(args_at, Ordering::Relaxed);
        r.ret_off.store(ret.0 as u64, Ordering::Relaxed);
        r.ret_cap.store(ret.1 as u64, Ordering::Relaxed);
        for (slot, w) in r.args.iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        r.check.store(
            request_check(
                seq,
                kind,
                method,
                args_at,
                ret.0 as u64,
                ret.1 as u64,
                words,
            ),
            Ordering::Relaxed,
        );
        wake::publish_request(&r.seq, seq, &self.resp.sleeping);
    }

    /// Parent: whether the worker answered request `seq`.
    #[inline]
    pub(crate) fn answered(&self, seq: u32) -> bool {
        self.resp.seq.load(Ordering::Acquire) == seq
    }

    /// Parent: the answer to request `seq`, if the worker wrote it.
    #[inline]
    pub(crate) fn answer(&self, seq: u32) -> Option<Answer> {
        self.answered(seq).then(|| {
            let r = &self.resp;
            let kind = r.kind.load(Ordering::Relaxed);
            let ret_len = r.ret_len.load(Ordering::Relaxed);
            let started_ns = r.started_ns.load(Ordering::Relaxed);
            let valid = r.check.load(Ordering::Relaxed) == answer_check(seq, kind, ret_len);
            let inline =
                (valid && kind & RET_INLINE != 0 && ret_len as usize <= INLINE_RET).then(|| {
                    unpack([
                        r.ret[0].load(Ordering::Relaxed),
                        r.ret[1].load(Ordering::Relaxed),
                    ])
                });
            let finished_ns = r.finished_ns.load(Ordering::Relaxed);
            Answer {
                raw_kind: kind & !(RET_INLINE | RUN_SPAN | EXITS),
                ret_len: ret_len as usize,
                inline,
                ran: Ran {
                    started_ns: (started_ns != 0).then_some(started_ns),
                    finished: if kind & RUN_SPAN != 0 {
                        Finished::AfterTicks(finished_ns)
                    } else {
                        Finished::At(finished_ns)
                    },
                },
                valid: valid && (kind & RET_INLINE == 0 || inline.is_some()),
            }
        })
    }

    /// Parent: whether the worker said, with its answer to request `seq`, that it exits after
    /// it (see [`Channel::respond`]). A worker that says so wrongly only gets itself replaced.
    #[inline]
    pub(crate) fn exits_after(&self, seq: u32) -> bool {
        self.answered(seq) && self.resp.kind.load(Ordering::Relaxed) & EXITS != 0
    }

    /// Parent: when the worker started request `seq`, if it did.
    pub(crate) fn started(&self, seq: u32) -> Option<u64> {
        (self.running.seq.load(Ordering::Acquire) == seq)
            .then(|| self.running.started_ns.load(Ordering::Relaxed))
    }

    /// Worker: waits for the request after `last` (spinning, then sleeping, as `wake`
    /// decides), and reads it.
    pub(crate) fn next_request(&self, last: u32, wake: &mut WorkerWake<'_>) -> Posted {
        // Prompt: the spin saw the request arrive, so it was posted a moment ago.
        let prompt = wake.wait(&self.req.seq, last, &self.resp.sleeping);
        let r = &self.req;
        let seq = r.seq.load(Ordering::Acquire);
        let kind = r.kind.load(Ordering::Relaxed);
        let method = r.method.load(Ordering::Relaxed);
        let args_at = r.args_at.load(Ordering::Relaxed);
        let ret_off = r.ret_off.load(Ordering::Relaxed);
        let ret_cap = r.ret_cap.load(Ordering::Relaxed);
        let words = [
            r.args[0].load(Ordering::Relaxed),
            r.args[1].load(Ordering::Relaxed),
            r.args[2].load(Ordering::Relaxed),
        ];
        let valid = r.check.load(Ordering::Relaxed)
            == request_check(seq, kind, method, args_at, ret_off, ret_cap, words)
            && args_at as usize <= 1 + INLINE_ARGS;
        let args = match args_at {
            0 => PostedArgs::Block(words[0] as usize, words[1] as usize),
            n => PostedArgs::Inline {
                len: (n as usize - 1).min(INLINE_ARGS),
                bytes: unpack(words),
            },
        };
        Posted {
            seq,
            prompt,
            crowded: kind & CROWDED != 0,
            valid,
            kind: RequestKind::from_u32(kind & !CROWDED),
            method,
            args,
            ret_off: ret_off as usize,
            ret_cap: ret_cap as usize,
        }
    }

    /// Worker: announces that it started request `seq`; returns the time, for the answer.
    ///
    /// A request picked up `prompt`ly started when the parent posted it, to within a cache
    /// line's crossing, so the time is left 0 and the parent uses its own time of posting:
    /// a clock read right after the request's line arrived is a large share of the empty
    /// call's time (measured in benches/README.md).
    #[inline]
    pub(crate) fn mark_running(&self, seq: u32, prompt: bool) -> u64 {
        let now = if prompt { 0 } else { now_ns() };
        self.running.started_ns.store(now, Ordering::Relaxed);
        self.running.seq.store(seq, Ordering::Release);
        now
    }

    /// Worker: answers request `seq`, which it started at `started_ns` (0 if it started it
    /// as it was posted or started nothing with it) and, for a run shorter than
    /// [`short_run_ticks`] (the caller checks), `run_ticks` ago (see `clock`), with
    /// a return value of `ret_len` bytes in the payload area, or with `inline` bytes (at most
    /// `INLINE_RET`) carried in the answer itself; the caller then wakes the parent if it
    /// sleeps. With `exits`, the worker says it exits after this answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond(
        &self,
        seq: u32,
        kind: Response,
        ret_len: usize,
        inline: Option<&[u8]>,
        started_ns: u64,
        run_ticks: Option<u64>,
        exits: bool,
    ) {
        let r = &self.resp;
        let (mut kind, ret_len) = match inline {
            Some(bytes) => {
                debug_assert!(bytes.len() <= INLINE_RET);
                for (slot, w) in r.ret.iter().zip(pack::<2>(bytes)) {
                    slot.store(w, Ordering::Relaxed);
                }
                (kind as u32 | RET_INLINE, bytes.len())
            }
            None => (kind as u32, ret_len),
        };
        // A short run is timed with the counter: a clock read here would cost as much as a
        // cache line's crossing (see `clock`).
        let finished = match run_ticks {
            Some(ticks) => {
                kind |= RUN_SPAN;
                ticks
            }
            None => now_ns(),
        };
        if exits {
            kind |= EXITS;
        }
        r.started_ns.store(started_ns, Ordering::Relaxed);
        r.kind.store(kind, Ordering::Relaxed);
        r.ret_len.store(ret_len as u64, Ordering::Relaxed);
        r.finished_ns.store(finished, Ordering::Relaxed);
        r.check
            .store(answer_check(seq, kind, ret_len as u64), Ordering::Relaxed);
        wake::publish_answer(&r.seq, seq);
    }
}

/// The checksum of an answer line's control words.
fn answer_check(seq: u32, kind: u32, ret_len: u64) -> u64 {
    checksum(&[seq as u64, kind as u64, ret_len])
}

/// The checksum of a request line's words.
fn request_check(
    seq: u32,
    kind: u32,
    method: u32,
    args_at: u32,
    ret_off: u64,
    ret_cap: u64,
    args: [u64; 3],
) -> u64 {
    checksum(&[
        seq as u64 | (kind as u64) << 32,
        method as u64 | (args_at as u64) << 32,
        ret_off,
        ret_cap,
        args[0],
        args[1],
        args[2],
    ])
}

/// Set in `RequestHalf::kind` when the pool was crowded as the request was posted (see
/// `wake::ParentWake::crowded`).
const CROWDED: u32 = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Box<Channel> {
        // SAFETY: all-zero bytes are a valid Channel (atomics only).
        Box::new(unsafe { std::mem::zeroed() })
    }

    #[test]
    fn a_request_and_its_answer_cross_with_their_flags() {
        let c = channel();
        let seq = 1;
        c.post(
            seq,
            Request::call(3, ArgsAt::Inline(&[1, 2, 3]), Span::new(640, 256)),
            true,
        );
        let r = c.next_request(seq - 1, &mut WorkerWake::detached());
        assert!(r.valid && r.crowded && !r.prompt);
        assert_eq!((r.seq, r.kind, r.method), (seq, Some(RequestKind::Call), 3));
        assert!(matches!(r.args, PostedArgs::Inline { len: 3, bytes } if bytes[..3] == [1, 2, 3]));
        assert_eq!((r.ret_off, r.ret_cap), (640, 256));
        assert!(c.answer(seq).is_none(), "not answered yet");
        c.respond(
            seq,
            Response::Returned,
            0,
            Some(&[9, 8]),
            0,
            Some(10),
            false,
        );
        let a = c.answer(seq).unwrap();
        assert!(a.kind() == Some(Response::Returned) && a.ret_len == 2);
        assert!(!c.exits_after(seq));
        assert_eq!(&a.inline.unwrap()[..2], &[9, 8]);
        assert!(a.ran.started_ns.is_none());
        assert!(matches!(a.ran.finished, Finished::AfterTicks(10)));

        let seq = 2;
        c.post(
            seq,
            Request::call(1, ArgsAt::Block(4096, 100), Span::new(4196, 300)),
            false,
        );
        // A scribbled word fails the checksum.
        c.req.ret_cap.store(1 << 40, Ordering::Relaxed);
        let r = c.next_request(seq - 1, &mut WorkerWake::detached());
        assert!(!r.valid && !r.crowded);
        assert!(matches!(r.args, PostedArgs::Block(4096, 100)));
        // A worker that exits after its answer says so, and the answer still reads.
        assert!(!c.exits_after(seq), "not answered yet");
        c.respond(seq, Response::Returned, 7, None, 0, None, true);
        assert!(c.exits_after(seq));
        let a = c.answer(seq).unwrap();
        assert!(a.kind() == Some(Response::Returned) && a.ret_len == 7);
    }

    #[test]
    fn inline_bytes_survive_packing() {
        for len in 0..=INLINE_ARGS {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) ^ 0xA5).collect();
            let back: [u8; INLINE_ARGS] = unpack(pack::<3>(&bytes));
            assert_eq!(&back[..len], &bytes[..]);
            assert!(back[len..].iter().all(|&b| b == 0));
        }
    }
}
