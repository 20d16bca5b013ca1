//! The fork server: a small single-threaded process, forked when the pool starts, that forks
//! every worker on request, reaps them, drains their stderr, and takes their process trees
//! down with them.
//!
//! **Why every worker comes from it.** Forking from a process with several threads copies only
//! the forking thread; a lock held by another thread at that instant (stdout's, a logger's, any
//! `Mutex`) stays locked forever in the child. The server is forked once, when the pool starts,
//! and every worker is forked from it, whatever the program's threads do meanwhile. Workers
//! start from the state of the object as it was when the server was forked. The server holds
//! none of the program's descriptors (see `process::sanitize_fds`), so neither do its workers;
//! descriptors the program opens later never reach them.
//!
//! **Forked from a threaded program** (a pool started inside a tokio runtime). The thread that
//! forks the server holds the program's stdout and stderr locks and forkworker's own across
//! the fork (the atfork pattern, `process::fork_child`), so the server, and every worker
//! forked from it, finds them free whatever the other threads were printing at that instant.
//! Between the fork and its loop, and in it, the server makes system calls, reads /proc and
//! allocates (glibc's malloc is fork-safe: its own atfork handlers reset its locks; a global
//! allocator of the program's must be fork-safe too), and takes no lock of Rust's or of the
//! program's: it neither logs nor prints, and forwards the workers' stderr with `write(2)`.
//! forkworker's code in a worker does the same until the user's `setup`, and sends its
//! warnings to the parent through the log socket (`this_worker`), not through the program's
//! logger.
//!
//! Out of reach, and so the rule: a mutex of the program's own (its logger's included) that
//! another thread holds at the instant of the server's fork stays held in every worker, and a
//! worker that takes it deadlocks (its call times out). So do std's locks that cannot be held
//! from outside: stdin's (a thread waiting for input holds it), the environment's (`set_var`)
//! and the panic hook's (`set_hook` while another thread panics). A worker's only thread is a
//! copy of the thread that forked the server, with its stack (its size) and its thread-locals:
//! a runtime's context on that thread (tokio's) is a copy of a runtime whose threads are not
//! there. Workers should use neither.
//!
//! **The forking thread.** The parent-death signal comes when the *thread* that forked exits,
//! not only the process. When that thread exits and the process lives on (a runtime's
//! blocking thread that idled out, a mediator leaked on a thread that ended), the kernel
//! re-parents the server to another thread of the same process and sends the signal: the
//! server acts on it only once `getppid()` changed, which it has not, and lives on; the
//! signal stays set and comes again at each re-parenting, the last one (the process died)
//! with a new parent. Whatever happens to the signal, the parent's end of the socket closes
//! when the process dies, and the end of file ends the server too. Fork it from a thread that
//! lives as long as the pool all the same: the pool face forks from a thread it owns; a
//! mediator, which cannot leave its thread, forks from the thread it is used on.
//!
//! **Talking to the parent.** A `SOCK_SEQPACKET` socket pair, one message per packet: a
//! 12-byte header (a tag and two numbers) and, for some tags, a payload and descriptors
//! (`SCM_RIGHTS`). `SPAWN` (parent to server) may carry descriptors for the new worker, which
//! it receives in [`SpawnRequest::fds`]; `SPAWNED` carries the new worker's pidfd (so there is
//! no pid-reuse race), `EXITED` how a worker ended and the last [`STDERR_TAIL`] bytes it wrote
//! to stderr. The server never blocks on the socket: its answers wait in an outbox until the
//! socket takes them.
//!
//! **Stderr.** Each worker's stderr is a pipe that the server drains as the bytes come; it
//! forwards them to the program's stderr without ever blocking (bytes the program's stderr does
//! not take at once are dropped, see [`StderrSink`]) and keeps the last 4 KiB, reported with the
//! worker's death. A worker writing to stderr is never held up by the parent.
//!
//! **Process trees.** The server and every worker are child subreapers
//! (`PR_SET_CHILD_SUBREAPER`): a worker's descendants, a double-forked `setsid` helper
//! included, are re-parented to the worker while it lives and to the server once it is gone.
//! The server kills (SIGKILL) every child of its own that is not a live worker it forked,
//! again each time another is re-parented to it, so a worker's whole tree goes when the worker
//! goes (killed on timeout, cancelled, retired, crashed). When the parent closes the socket
//! (the mediator is dropped) or dies (its end of the socket closes; the server's parent-death
//! signal is a catchable SIGTERM, read through its signalfd, not SIGKILL), the server kills its
//! whole tree, workers included, waits for it to go, and exits.
//!
//! A worker does not reap the orphans re-parented to it while it lives (the program's own
//! `waitpid` calls must find their children): a grandchild that exits before its worker
//! stays a zombie below it until the worker goes.
//!
//! Not covered: a process of the same user that kills the server itself with SIGKILL leaves
//! the orphans of its workers to the next subreaper above (init) — that is a deliberate
//! attack, stopped by the sandbox; a descendant that escapes into a new PID namespace's init is
//! still killed, but a process that is not a descendant (started through a system service,
//! say) is out of reach.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::call::ExitCause;
use crate::error::{OsError, SpawnError};
use crate::process::{self, Child, Ended, Reap, STDERR_TAIL};

const SPAWN: u32 = 1;
const SPAWNED: u32 = 2;
const FAILED: u32 = 3;
const EXITED: u32 = 4;

/// In a `FAILED` message, which step failed (`b`); `a` is its errno.
const FAILED_FORK: i32 = 0;
const FAILED_PIDFD: i32 = 1;
const FAILED_PIPE: i32 = 2;

/// The header of every message.
const HEADER: usize = 12;
/// The longest message: an `EXITED` with a full stderr tail.
const MAX_MESSAGE: usize = HEADER + STDERR_TAIL;
/// How many descriptors a `SPAWN` may carry.
pub(crate) const MAX_SPAWN_FDS: usize = 8;

/// The server's parent-death signal: catchable (it is blocked and read through the signalfd),
/// so that the server takes its tree down before it goes. Since the signal can come from
/// elsewhere too (a `kill` to the whole group), the server acts on it only once its parent
/// really changed.
const DEATH_SIGNAL: Signal = Signal::SIGTERM;

/// How long the server keeps killing its tree when it stops, and how long the parent waits for
/// it to exit before killing it.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);
/// How much of one worker's stderr the server reads at one wake-up, so that a flooding worker
/// does not starve the others.
const DRAIN_PER_WAKE: usize = 1 << 20;
/// How soon the server looks for re-parented orphans again after it killed some.
const SWEEP_AGAIN: Duration = Duration::from_millis(10);

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
enum ReceiveError {
    /// Nothing came before the deadline.
    #[error("no answer in time")]
    Silent,
    /// The socket failed or reached end of file: the server is gone.
    #[error("the fork server is gone")]
    Gone(Option<nix::errno::Errno>),
}

/// How long the parent waits for the server to answer a spawn request.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// A message's header: a tag and two numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    tag: u32,
    a: i32,
    b: i32,
}

impl Msg {
    fn encode(self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[..4].copy_from_slice(&self.tag.to_le_bytes());
        out[4..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Msg> {
        let word = |i: usize| -> Option<[u8; 4]> { bytes.get(i..i + 4)?.try_into().ok() };
        Some(Msg {
            tag: u32::from_le_bytes(word(0)?),
            a: i32::from_le_bytes(word(4)?),
            b: i32::from_le_bytes(word(8)?),
        })
    }

    /// The header followed by `payload`.
    fn packet(self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(&self.encode());
        out.extend_from_slice(payload);
        out
    }
}

/// What a worker is given when the server forks it.
#[derive(Debug)]
pub(crate) struct SpawnRequest {
    /// Its slot in the pool.
    pub(crate) slot: usize,
    /// The request sequence number at fork time.
    pub(crate) start_seq: u32,
    /// The descriptors the parent sent with the request, in the order given; the worker owns
    /// them (the server closed its copies).
    pub(crate) fds: Vec<OwnedFd>,
}

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(crate) struct ForkServer {
    /// The server process, our own child.
    process: Child,
    sock: OwnedFd,
    /// Ends relayed by the server and not yet claimed.
    exits: HashMap<i32, Ended>,
    /// The socket reached end of file: the server is gone.
    gone: bool,
}

impl ForkServer {
    /// Forks the server. It keeps the descriptors in `keep` (besides stdin, stdout and stderr)
    /// and replaces every other one it inherited with /dev/null; `body` is what each worker
    /// runs.
    ///
    /// May be called from any thread of a threaded program (see the module's doc), best one
    /// that outlives the server: the server's parent-death signal follows it.
    pub(crate) fn start(
        keep: &[RawFd],
        body: impl FnMut(SpawnRequest) -> Infallible,
    ) -> Result<ForkServer, SpawnError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SpawnError::Channel(e.into()))?;
        let our_fd = ours.as_raw_fd();
        let process = process::spawn_with(DEATH_SIGNAL as libc::c_int, move || {
            // SAFETY: the server does not use the parent's end.
            unsafe { libc::close(our_fd) };
            serve(theirs, keep, body)
        })?;
        process::register_own_fd(our_fd);
        Ok(ForkServer {
            process,
            sock: ours,
            exits: HashMap::new(),
            gone: false,
        })
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Asks the server for a worker in slot `slot`, handing it `fds` (the worker receives
    /// copies, at most [`MAX_SPAWN_FDS`], in [`SpawnRequest::fds`]); returns its pid and pidfd.
    pub(crate) fn spawn(
        &mut self,
        slot: usize,
        start_seq: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Pid, OwnedFd), SpawnError> {
        let msg = Msg {
            tag: SPAWN,
            a: slot as i32,
            b: start_seq as i32,
        }
        .encode();
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        debug_assert!(raw.len() <= MAX_SPAWN_FDS);
        let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| SpawnError::ForkServerGone(Some(e.into())))?;
        let deadline = Instant::now() + ANSWER_LIMIT;
        loop {
            let received = self.receive(deadline).map_err(|e| match e {
                ReceiveError::Silent => SpawnError::ForkServerSilent(ANSWER_LIMIT),
                ReceiveError::Gone(errno) => SpawnError::ForkServerGone(errno.map(OsError::from)),
            })?;
            match received {
                (
                    Msg {
                        tag: SPAWNED, a, ..
                    },
                    Some(fd),
                ) => return Ok((Pid::from_raw(a), fd)),
                (
                    Msg {
                        tag: SPAWNED, a, ..
                    },
                    None,
                ) => {
                    // The worker's pidfd did not reach us: this process has no descriptor
                    // left (the kernel drops what does not fit). Without it the worker cannot
                    // be watched: it goes (the server's child, not yet reaped: its pid is
                    // still its own).
                    let _ = nix::sys::signal::kill(Pid::from_raw(a), Signal::SIGKILL);
                    return Err(SpawnError::TooManyFiles(
                        std::io::Error::from_raw_os_error(libc::EMFILE).into(),
                    ));
                }
                (Msg { tag: FAILED, a, b }, _) => {
                    let err = std::io::Error::from_raw_os_error(a);
                    return Err(match b {
                        FAILED_PIDFD => SpawnError::pidfd(err),
                        FAILED_PIPE => SpawnError::Channel(err.into()),
                        _ => SpawnError::Fork(err.into()),
                    });
                }
                _ => {}
            }
        }
    }

    /// Waits up to `limit` for the server to report how worker `pid` ended. If the server is
    /// gone or does not say, the worker is taken as killed.
    pub(crate) fn wait_exit(&mut self, pid: Pid, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.exits.remove(&pid.as_raw()) {
                return c;
            }
            if self.gone || self.receive(deadline).is_err() {
                return Ended::killed();
            }
        }
    }

    /// Receives one message (storing exit reports) or fails at the deadline or end of file.
    fn receive(&mut self, deadline: Instant) -> Result<(Msg, Option<OwnedFd>), ReceiveError> {
        let left = deadline.saturating_duration_since(Instant::now());
        process::poll_readable(&[self.sock.as_fd()], left.as_millis() as i32);
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (bytes, fd) = match recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(r) => {
                let fd = r.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                        _ => None,
                    })
                });
                (r.bytes, fd)
            }
            Err(nix::errno::Errno::EAGAIN) => return Err(ReceiveError::Silent),
            Err(e) => {
                self.gone = true;
                return Err(ReceiveError::Gone(Some(e)));
            }
        };
        // SAFETY: a descriptor the kernel just gave us; nothing else owns it.
        let fd = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        let Some(msg) = (bytes >= HEADER).then(|| Msg::decode(&buf)).flatten() else {
            self.gone = true;
            return Err(ReceiveError::Gone(None));
        };
        if msg.tag == EXITED {
            let cause = if msg.b >= 0 {
                ExitCause::Exited(msg.b)
            } else {
                ExitCause::Signaled(msg.b.checked_neg().unwrap_or(0))
            };
            let tail = &buf[HEADER..bytes.min(MAX_MESSAGE)];
            let stderr = String::from_utf8_lossy(tail).into_owned();
            self.exits.insert(msg.a, Ended { cause, stderr });
        }
        Ok((msg, fd))
    }
}

impl Reap for ForkServer {
    fn wait_exit(&mut self, pid: Pid, limit: Duration) -> Ended {
        ForkServer::wait_exit(self, pid, limit)
    }
}

impl Drop for ForkServer {
    /// Closes the socket, which asks the server to kill what is left of its tree and exit, and
    /// waits for that (up to [`SHUTDOWN_LIMIT`]); the server is killed if it did not exit.
    fn drop(&mut self) {
        process::unregister_own_fd(self.sock.as_raw_fd());
        // SAFETY: shutting down our own socket; it is closed when the field drops.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let end = Instant::now() + SHUTDOWN_LIMIT;
        while self.process.try_reap().is_none() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            process::poll_readable(&[self.process.pidfd()], left.as_millis().max(1) as i32);
        }
        // Dropping `process` kills and reaps the server if it is still there.
    }
}

/// Where the server forwards its workers' stderr: the program's stderr, written without ever
/// blocking. A pipe, FIFO or terminal is reopened (through /proc/self/fd/2) in non-blocking
/// mode, which leaves the program's own descriptor as it is; a socket is written with
/// `MSG_DONTWAIT`; a regular file, which does not make writers wait for a reader, is written
/// as it is. Bytes that the program's stderr does not take at once are dropped (a worker's
/// stderr tail is kept all the same).
#[derive(Debug)]
enum StderrSink {
    /// `write(2)` to this descriptor (fd 2, or its non-blocking reopening).
    Write(RawFd),
    /// `send(2)` with `MSG_DONTWAIT` to fd 2, a socket.
    Send,
    /// The program has no stderr.
    Nowhere,
}

impl StderrSink {
    fn open() -> StderrSink {
        // SAFETY: fstat into a zeroed, valid struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(2, &mut st) } != 0 {
            return StderrSink::Nowhere;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => StderrSink::Send,
            libc::S_IFIFO | libc::S_IFCHR => {
                // SAFETY: opening a constant path.
                let fd = unsafe {
                    libc::open(
                        c"/proc/self/fd/2".as_ptr(),
                        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                    )
                };
                StderrSink::Write(if fd >= 0 { fd } else { 2 })
            }
            _ => StderrSink::Write(2),
        }
    }

    /// Writes as much of `bytes` as the program's stderr takes now.
    fn forward(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: writing from a valid buffer to our descriptor.
            let n = unsafe {
                match self {
                    StderrSink::Write(fd) => libc::write(*fd, bytes.as_ptr().cast(), bytes.len()),
                    StderrSink::Send => libc::send(
                        2,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    StderrSink::Nowhere => return,
                }
            };
            if n > 0 {
                bytes = &bytes[n as usize..];
            } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                return; // Full (EAGAIN) or failed: the rest is dropped.
            }
        }
    }
}

/// A live worker, as the server sees it.
#[derive(Debug)]
struct Live {
    /// The read end of its stderr pipe, until end of file.
    stderr: Option<OwnedFd>,
    /// The last bytes it wrote to stderr, at most [`STDERR_TAIL`].
    tail: Vec<u8>,
    /// Whether earlier bytes were dropped from `tail`.
    cut: bool,
}

impl Live {
    fn keep_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= STDERR_TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - STDERR_TAIL..]);
            self.cut = true;
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > STDERR_TAIL {
                let extra = self.tail.len() - STDERR_TAIL;
                self.tail.drain(..extra);
                self.cut = true;
            }
        }
    }

    /// Reads what the worker wrote to stderr (up to `limit` bytes), forwards it to `sink` and
    /// keeps its end.
    fn drain(&mut self, sink: &StderrSink, limit: usize) {
        let Some(fd) = self.stderr.as_ref().map(|fd| fd.as_raw_fd()) else {
            return;
        };
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        while total < limit {
            // SAFETY: reading into a valid buffer from our non-blocking pipe.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let got = &buf[..n as usize];
                sink.forward(got);
                self.keep_tail(got);
                total += got.len();
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error();
            if n < 0 && errno == Some(libc::EINTR) {
                continue;
            }
            if n == 0 || errno != Some(libc::EAGAIN) {
                self.stderr = None; // End of file: no process holds the write end any more.
            }
            return;
        }
    }

    /// The tail as text: from the start of a line if earlier bytes were dropped, without its
    /// final newline, at most [`STDERR_TAIL`] bytes.
    fn tail_text(&self) -> Vec<u8> {
        let mut bytes = &self.tail[..];
        if self.cut
            && let Some(nl) = bytes.iter().position(|&b| b == b'\n')
            && nl + 1 < bytes.len()
        {
            bytes = &bytes[nl + 1..];
        }
        let text = String::from_utf8_lossy(bytes);
        let mut text = text.trim_end_matches(['\n', '\r']);
        let mut n = text.len().min(STDERR_TAIL);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        text = &text[..n];
        text.as_bytes().to_vec()
    }
}

/// The server process's state.
struct Server<'a, B> {
    sock: &'a OwnedFd,
    sigfd: SignalFd,
    mask: SigSet,
    /// The parent the server was forked from: once `getppid()` differs, it is dead.
    parent: libc::pid_t,
    live: HashMap<i32, Live>,
    /// Messages for the parent that the socket did not take yet.
    outbox: VecDeque<(Vec<u8>, Option<OwnedFd>)>,
    sink: StderrSink,
    /// Orphans were killed: look again soon, for their own re-parented children.
    sweep_again: bool,
    body: B,
}

/// The server's body: forks workers on request, reaps them and reports how they ended, drains
/// their stderr, and kills the orphans they leave. Leaves, having killed its whole tree, when
/// the parent closes its end of the socket or dies.
fn serve(
    sock: OwnedFd,
    keep: &[RawFd],
    body: impl FnMut(SpawnRequest) -> Infallible,
) -> Infallible {
    crate::process::in_child();
    // SAFETY: getppid cannot fail; prctl and signal with valid arguments.
    let parent = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // A program that ignores SIGCHLD would have its children reaped by the kernel, and
        // the server would never learn how its workers ended.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::getppid()
    };
    let mut kept = keep.to_vec();
    kept.push(sock.as_raw_fd());
    process::sanitize_fds(&kept);
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(DEATH_SIGNAL);
    // Exactly these blocked, whatever the forking thread had blocked (a thread of a runtime
    // may block signals the main thread takes): the workers unblock them and so start with
    // none blocked.
    let code = match (
        mask.thread_set_mask(),
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC),
    ) {
        (Ok(()), Ok(sigfd)) => {
            let mut server = Server {
                sock: &sock,
                sigfd,
                mask,
                parent,
                live: HashMap::new(),
                outbox: VecDeque::new(),
                sink: StderrSink::open(),
                sweep_again: false,
                body,
            };
            server.run();
            0
        }
        _ => 1,
    };
    // SAFETY: leaving without destructors, like a worker.
    unsafe { libc::_exit(code) }
}

impl<B: FnMut(SpawnRequest) -> Infallible> Server<'_, B> {
    fn run(&mut self) {
        loop {
            let mut pfds = vec![
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN
                        | if self.outbox.is_empty() {
                            0
                        } else {
                            libc::POLLOUT
                        },
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sigfd.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let pipes: Vec<i32> = self
                .live
                .iter()
                .filter_map(|(&pid, l)| {
                    pfds.push(libc::pollfd {
                        fd: l.stderr.as_ref()?.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    Some(pid)
                })
                .collect();
            process::ppoll(&mut pfds, self.sweep_again.then_some(SWEEP_AGAIN));
            while let Ok(Some(_)) = self.sigfd.read_signal() {}
            // SAFETY: getppid cannot fail.
            let parent_gone = unsafe { libc::getppid() } != self.parent;
            for (pid, pfd) in pipes.iter().zip(&pfds[2..]) {
                if pfd.revents != 0
                    && let Some(l) = self.live.get_mut(pid)
                {
                    l.drain(&self.sink, DRAIN_PER_WAKE);
                }
            }
            self.reap();
            self.sweep();
            if !self.flush() || parent_gone || !self.requests() {
                return self.shutdown();
            }
        }
    }

    /// Reaps every ended child; a worker's end is queued for the parent with its stderr tail.
    fn reap(&mut self) {
        loop {
            let (pid, b) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, -(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            // An orphan the server killed needs no report.
            let Some(mut l) = self.live.remove(&pid.as_raw()) else {
                continue;
            };
            // What it wrote before dying is still in the pipe.
            l.drain(&self.sink, DRAIN_PER_WAKE);
            let msg = Msg {
                tag: EXITED,
                a: pid.as_raw(),
                b,
            };
            self.outbox.push_back((msg.packet(&l.tail_text()), None));
        }
    }

    /// Kills every child of the server that is not a live worker: the orphans of dead workers'
    /// trees, re-parented here.
    fn sweep(&mut self) {
        let mut killed = false;
        for pid in process::children() {
            if !self.live.contains_key(&pid) {
                // SAFETY: a signal to our own child, which we have not reaped (no reuse).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
        }
        self.sweep_again = killed;
    }

    /// Sends what the outbox holds, as far as the socket takes it now. False if the parent is
    /// gone.
    fn flush(&mut self) -> bool {
        while let Some((bytes, fd)) = self.outbox.front() {
            let fds: Vec<RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
            let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
                Vec::new()
            } else {
                vec![ControlMessage::ScmRights(&fds)]
            };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(bytes)],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                // Sending passed a copy of the descriptor; ours closes here.
                Ok(_) => drop(self.outbox.pop_front()),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Handles the parent's requests. False once the parent closed its end.
    fn requests(&mut self) -> bool {
        loop {
            let mut buf = [0u8; HEADER];
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_SPAWN_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (bytes, fds) = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(r) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = r.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                // SAFETY: descriptors the kernel just gave us.
                                fds.extend(
                                    raw.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    (r.bytes, fds)
                }
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            };
            if bytes == 0 {
                return false; // The parent closed its end or is gone.
            }
            match Msg::decode(&buf[..bytes.min(HEADER)]) {
                Some(Msg { tag: SPAWN, a, b }) => self.spawn(a as usize, b as u32, fds),
                _ => continue,
            }
        }
    }

    /// Forks a worker with a fresh stderr pipe, and queues the answer for the parent.
    fn spawn(&mut self, slot: usize, start_seq: u32, fds: Vec<OwnedFd>) {
        let (sock_fd, sig_fd) = (self.sock.as_raw_fd(), self.sigfd.as_fd().as_raw_fd());
        let answer = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Err(e) => Err((e as i32, FAILED_PIPE)),
            Ok((read, write)) => {
                let (read_fd, write_fd) = (read.as_raw_fd(), write.as_raw_fd());
                let (mask, body) = (&self.mask, &mut self.body);
                let forked = process::fork_child(libc::SIGKILL, move || {
                    // SAFETY: the worker needs neither of the server's descriptors and must
                    // not keep the socket open (the parent detects the server's end by end of
                    // file); its stderr becomes the pipe's write end.
                    unsafe {
                        libc::close(sock_fd);
                        libc::close(sig_fd);
                        libc::dup2(write_fd, 2);
                        libc::close(write_fd);
                        libc::close(read_fd);
                        // Its descendants stay below it while it lives.
                        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                    }
                    let _ = mask.thread_unblock();
                    body(SpawnRequest {
                        slot,
                        start_seq,
                        fds,
                    })
                });
                drop(write);
                let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(0);
                match forked {
                    Err(e) => Err((errno(&e), FAILED_FORK)),
                    // Our own unreaped child: its pid cannot be reused before we reap it.
                    Ok(pid) => match process::pidfd_open(pid) {
                        Ok(pidfd) => {
                            // SAFETY: making our pipe end non-blocking.
                            unsafe {
                                let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
                                libc::fcntl(
                                    read.as_raw_fd(),
                                    libc::F_SETFL,
                                    flags | libc::O_NONBLOCK,
                                );
                            }
                            self.live.insert(
                                pid.as_raw(),
                                Live {
                                    stderr: Some(read),
                                    tail: Vec::with_capacity(STDERR_TAIL),
                                    cut: false,
                                },
                            );
                            Ok((pid, pidfd))
                        }
                        Err(e) => {
                            // Not a live worker: the next sweep would kill it anyway.
                            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                            Err((errno(&e), FAILED_PIDFD))
                        }
                    },
                }
            }
        };
        self.outbox.push_back(match answer {
            Ok((pid, pidfd)) => (
                Msg {
                    tag: SPAWNED,
                    a: pid.as_raw(),
                    b: 0,
                }
                .packet(&[]),
                Some(pidfd),
            ),
            Err((errno, step)) => (
                Msg {
                    tag: FAILED,
                    a: errno,
                    b: step,
                }
                .packet(&[]),
                None,
            ),
        });
        self.flush();
    }

    /// Kills the whole tree (workers and orphans) until nothing is left or
    /// [`SHUTDOWN_LIMIT`] passes.
    fn shutdown(&mut self) {
        let end = Instant::now() + SHUTDOWN_LIMIT;
        loop {
            self.reap();
            let children = process::children();
            if children.is_empty() || Instant::now() >= end {
                break;
            }
            for pid in children {
                // SAFETY: a signal to our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            process::poll_readable(&[self.sigfd.as_fd()], 10);
            while let Ok(Some(_)) = self.sigfd.read_signal() {}
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Live {
            stderr: None,
            tail: Vec::new(),
            cut: false,
        }
    }

    #[test]
    fn the_tail_keeps_the_last_4_kib_from_a_line_start() {
        let mut l = live();
        for i in 0..1000 {
            l.keep_tail(format!("line {i}\n").as_bytes());
        }
        let text = String::from_utf8(l.tail_text()).unwrap();
        assert!(text.len() <= STDERR_TAIL);
        assert!(
            text.starts_with("line ") && text.ends_with("line 999"),
            "{text}"
        );
        let mut l = live();
        l.keep_tail(&vec![b'x'; 3 * STDERR_TAIL]);
        l.keep_tail("é".repeat(10).as_bytes());
        let text = l.tail_text();
        assert!(text.len() <= STDERR_TAIL && std::str::from_utf8(&text).is_ok());
        let mut l = live();
        l.keep_tail(b"short\n");
        assert_eq!(l.tail_text(), b"short");
    }

    #[test]
    fn a_message_decodes_from_its_header_only() {
        let m = Msg {
            tag: EXITED,
            a: 42,
            b: -9,
        };
        assert_eq!(Msg::decode(&m.packet(b"tail")), Some(m));
        assert_eq!(Msg::decode(&[0u8; 11]), None);
    }
}
