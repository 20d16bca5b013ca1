//! The loop a worker process runs after the fork: wait for a request, run the method, answer.
//!
//! A worker never returns into the code that forked it and never unwinds out of [`run`]: it
//! leaves with `_exit`, so it runs no destructor of the parent's objects (which would, for one,
//! unlink the parent's shared-memory segment).

use std::convert::Infallible;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::area::{Area, SpinPage};
use crate::arena::Span;
use crate::channel::{self, INLINE_RET, PostedArgs, RequestKind, Response};
use crate::clock;
use crate::limits::WorkerLimits;
use crate::panics::{self, panic_message};
use crate::sandbox::Sandbox;
use crate::this_worker;
use crate::wake::WorkerWake;
use crate::wire::{ReturnSlot, Written};
use crate::worker::Worker;

/// Exit code of a worker whose `setup` or loop panicked.
pub(crate) const EXIT_PANIC: i32 = 101;
/// Exit code of a worker that saw too many corrupted requests.
pub(crate) const EXIT_CORRUPTION: i32 = 102;
/// Exit code of a worker that could not map the area its parent sent.
pub(crate) const EXIT_NO_AREA: i32 = 107;
/// How many corrupted requests a worker answers before it exits to be replaced (the seed's
/// worker-side threshold).
const CORRUPTION_LIMIT: u32 = 10;

/// Everything a worker needs, captured before the fork.
pub(crate) struct WorkerEnv<'a> {
    pub(crate) alias: &'a str,
    pub(crate) slot: usize,
    /// The request sequence number at fork time: the worker waits for the next one.
    pub(crate) start_seq: u32,
    pub(crate) eventfd: BorrowedFd<'a>,
    /// The memory and CPU limits, applied after `setup`.
    pub(crate) limits: &'a WorkerLimits,
    /// How the worker confines itself after `setup`, if it does.
    pub(crate) sandbox: Option<&'a Sandbox>,
    /// Where `this_worker::log` and `error` forward their records to the parent.
    pub(crate) log: BorrowedFd<'a>,
    /// The descriptors the user asked workers to inherit (`Mediator::inherit_fd`).
    pub(crate) inherit: &'a [RawFd],
    /// The descriptors the parent sent with the spawn request (see `fork_server::SpawnRequest`):
    /// the worker's area, then the pool's spin page.
    pub(crate) received: Vec<OwnedFd>,
}

impl WorkerEnv<'_> {
    /// Every descriptor the worker keeps besides stdin, stdout and stderr.
    fn keep(&self) -> Vec<RawFd> {
        [self.eventfd.as_raw_fd(), self.log.as_raw_fd()]
            .into_iter()
            .chain(self.inherit.iter().copied())
            .chain(self.received.iter().map(|fd| fd.as_raw_fd()))
            .collect()
    }
}

/// Runs the worker until it is asked to exit, then leaves the process.
pub(crate) fn run<W: Worker>(value: &mut W, mut env: WorkerEnv<'_>) -> Infallible {
    // The daemon's handlers would only set flags in this copy: default actions again, and
    // SIGINT ignored (a Ctrl-C reaches the whole process group; the parent decides).
    crate::process::in_child();
    // None of the program's files and sockets, nor the server's or other workers'
    // descriptors, beyond what this worker needs.
    crate::process::sanitize_fds(&env.keep());
    // The only shared memory this worker maps: its own area and the spin page.
    let mut received = std::mem::take(&mut env.received).into_iter();
    let mapped = match (received.next(), received.next()) {
        (Some(area), Some(spin)) => Area::map(area).and_then(|a| Ok((a, SpinPage::map(spin)?))),
        _ => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
    };
    let (area, spin) = match mapped {
        Ok(mapped) => mapped,
        Err(e) => {
            eprintln!("forkworker worker: cannot map its area: {e}");
            // SAFETY: leaving without destructors, as everywhere in a worker.
            unsafe { libc::_exit(EXIT_NO_AREA) }
        }
    };
    let code = match catch_unwind(AssertUnwindSafe(|| serve(value, &env, &area, &spin))) {
        Ok(()) => 0,
        Err(_) => EXIT_PANIC,
    };
    // SAFETY: leaving the process without running any destructor is the point.
    unsafe { libc::_exit(code) }
}

fn serve<W: Worker>(value: &mut W, env: &WorkerEnv<'_>, area: &Area, spin: &SpinPage) {
    let channel = area.channel();
    this_worker::enter(env.alias, channel, env.log.as_raw_fd());
    value.setup();
    // The limits count what the worker does after its setup. The CPU timer, if any, runs
    // only while a method does.
    let cpu = env.limits.apply(env.alias);
    // After `setup`, so that a hook it installs still runs.
    panics::record_locations();
    // Last: confining forbids what the steps above need (opening files, setrlimit).
    if let Some(sandbox) = env.sandbox {
        crate::sandbox::confine(sandbox, &channel.running.stopped_at, env.alias);
    }
    channel.mark_ready();
    let mut last = env.start_seq;
    let mut corrupted = 0;
    let mut wake = WorkerWake::new(area.parent_sleeping(), env.eventfd, spin.places(), env.slot);
    // Worked out once, not per request.
    let short_run = channel::short_run_ticks();
    loop {
        let req = channel.next_request(last, &mut wake);
        wake.posted(req.crowded);
        last = req.seq;
        let kind = if req.valid { req.kind } else { None };
        let mut started_ns = 0;
        let mut start_ticks = None;
        let answer = match kind {
            Some(RequestKind::Call) => {
                started_ns = channel.mark_running(req.seq, req.prompt);
                start_ticks = Some(clock::ticks());
                // The parent lent us our area's payload with the request, until we answer.
                let room = Span::new(req.ret_off, req.ret_cap);
                let lent = match &req.args {
                    PostedArgs::Inline { len, bytes } => {
                        area.lent(None, room).map(|(_, ret)| (&bytes[..*len], ret))
                    }
                    PostedArgs::Block(off, len) => area
                        .lent(Some(Span::new(*off, *len)), room)
                        .and_then(|(args, ret)| Some((args?, ret))),
                };
                match lent {
                    Some((args, ret)) => {
                        if let Some(t) = &cpu {
                            t.arm();
                        }
                        let reply = call(value, req.method, args, ret);
                        if let Some(t) = &cpu {
                            t.disarm();
                        }
                        Some(reply)
                    }
                    None => Some(Reply::block(Response::WireError, 0)),
                }
            }
            Some(RequestKind::Exit) => {
                // Acknowledge first: from here on this worker never touches the channel, so
                // the parent may hand the slot to a replacement while we tear down.
                channel.respond(req.seq, Response::Exiting, 0, None, 0, None, false);
                wake.leave();
                value.teardown();
                return;
            }
            None => {
                corrupted += 1;
                if corrupted >= CORRUPTION_LIMIT {
                    // SAFETY: leaving without destructors, as everywhere in a worker.
                    unsafe { libc::_exit(EXIT_CORRUPTION) };
                }
                Some(Reply::block(Response::Corrupted, 0))
            }
        };
        if let Some(reply) = answer {
            let inline = reply.inline.as_ref().map(|b| &b[..reply.len]);
            let run_ticks = start_ticks
                .map(|t| clock::ticks().wrapping_sub(t))
                .filter(|&t| t < short_run);
            // After `fatal_error`, the call's answer is the last: it says so, so that the
            // parent gives this worker no other call.
            let exits = this_worker::fatal_requested();
            if exits {
                wake.leave();
            }
            channel.respond(
                req.seq, reply.kind, reply.len, inline, started_ns, run_ticks, exits,
            );
            wake.answered();
            if exits {
                value.teardown();
                // SAFETY: leaving without destructors, as everywhere in a worker.
                unsafe { libc::_exit(this_worker::EXIT_FATAL) };
            }
        }
    }
}

/// A worker's answer, before it is written to the channel.
struct Reply {
    kind: Response,
    /// Bytes written: at the start of the return block, or of `inline` if it is set.
    len: usize,
    inline: Option<[u8; INLINE_RET]>,
}

impl Reply {
    fn block(kind: Response, len: usize) -> Reply {
        Reply {
            kind,
            len,
            inline: None,
        }
    }
}

/// Runs one method and says where its return value (or error message) was written.
fn call<W: Worker>(value: &mut W, method: u32, args: &[u8], ret: &mut [u8]) -> Reply {
    let mut slot = ReturnSlot::new(&mut *ret);
    // A panic the method caught itself is not this call's.
    panics::take_location();
    let outcome = catch_unwind(AssertUnwindSafe(|| value.dispatch(method, args, &mut slot)));
    let (written, inline) = slot.into_written();
    let (kind, message) = match outcome {
        Ok(Ok(())) => match written {
            Written::Inline(n) => {
                return Reply {
                    kind: Response::Returned,
                    len: n,
                    inline: Some(inline),
                };
            }
            Written::InSlot(n) => return Reply::block(Response::Returned, n),
            // More than the area has room for: the parent fails the call with its size.
            Written::Spilled(bytes) => return Reply::block(Response::NeedSpace, bytes.len()),
            Written::Nothing => (
                Response::WireError,
                "the method wrote no return value".to_owned(),
            ),
        },
        Ok(Err(e)) => (Response::WireError, e.to_string()),
        Err(payload) => (
            Response::Panicked,
            panics::with_location(panic_message(payload.as_ref()), panics::take_location()),
        ),
    };
    Reply::block(kind, write_truncated(ret, &message))
}

/// Writes as much of `text` as fits, cut at a character boundary.
fn write_truncated(buf: &mut [u8], text: &str) -> usize {
    let mut n = text.len().min(buf.len());
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    buf[..n].copy_from_slice(&text.as_bytes()[..n]);
    n
}
