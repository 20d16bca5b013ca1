//! The fork server: a small single-threaded process, forked when the pool starts, that forks
//! the workers on request.
//!
//! Forking from a process with several threads copies only the forking thread; a lock held by
//! another thread at that instant (stdout's, a logger's, any `Mutex`) stays locked forever in
//! the child. A program that starts threads after its pools has a safe path: the fork server
//! is forked once, while the program is still single-threaded, and every worker is forked from
//! it, whatever the program's threads do meanwhile.
//!
//! The server is the workers' parent, so it reaps them; it passes the parent a pidfd of each
//! new worker (over a Unix socket, `SCM_RIGHTS`, so there is no pid-reuse race) and relays how
//! each one ended. The parent still watches and kills its workers through those pidfds.
//! Workers start from the state of the object as it was when the server was forked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
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
use crate::process::{self, Child, Reap};

const SPAWN: u32 = 1;
const SPAWNED: u32 = 2;
const FAILED: u32 = 3;
const EXITED: u32 = 4;

/// In a `FAILED` message, which step failed (`b`); `a` is its errno.
const FAILED_FORK: i32 = 0;
const FAILED_PIDFD: i32 = 1;

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

/// A message on the socket: a tag and three numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    tag: u32,
    a: i32,
    b: i32,
}

impl Msg {
    fn encode(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.tag.to_le_bytes());
        out[4..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; 12]) -> Msg {
        let word = |i: usize| [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
        Msg {
            tag: u32::from_le_bytes(word(0)),
            a: i32::from_le_bytes(word(4)),
            b: i32::from_le_bytes(word(8)),
        }
    }
}

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(crate) struct ForkServer {
    /// The server process, our own child.
    process: Child,
    sock: OwnedFd,
    /// Ends relayed by the server and not yet claimed.
    exits: HashMap<i32, ExitCause>,
    /// The socket reached end of file: the server is gone.
    gone: bool,
}

impl ForkServer {
    /// Forks the server. `body(slot, start_seq)` is what each worker runs.
    pub(crate) fn start(
        body: impl FnMut(usize, u32) -> Infallible,
    ) -> Result<ForkServer, SpawnError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SpawnError::Channel(e.into()))?;
        let our_fd = ours.as_raw_fd();
        let process = process::spawn(move || {
            // SAFETY: the server does not use the parent's end.
            unsafe { libc::close(our_fd) };
            serve(theirs, body)
        })?;
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

    /// Asks the server for a worker in slot `slot`; returns its pid and pidfd.
    pub(crate) fn spawn(
        &mut self,
        slot: usize,
        start_seq: u32,
    ) -> Result<(Pid, OwnedFd), SpawnError> {
        let msg = Msg {
            tag: SPAWN,
            a: slot as i32,
            b: start_seq as i32,
        }
        .encode();
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &[],
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
                (Msg { tag: FAILED, a, b }, _) => {
                    let err = std::io::Error::from_raw_os_error(a);
                    return Err(match b {
                        FAILED_PIDFD => SpawnError::pidfd(err),
                        _ => SpawnError::Fork(err.into()),
                    });
                }
                _ => {}
            }
        }
    }

    /// Waits up to `limit` for the server to report how worker `pid` ended. If the server is
    /// gone or does not say, the worker is taken as killed.
    pub(crate) fn wait_exit(&mut self, pid: Pid, limit: Duration) -> ExitCause {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.exits.remove(&pid.as_raw()) {
                return c;
            }
            if self.gone || self.receive(deadline).is_err() {
                return ExitCause::Signaled(libc::SIGKILL);
            }
        }
    }

    /// Receives one message (storing exit reports) or fails at the deadline or end of file.
    fn receive(&mut self, deadline: Instant) -> Result<(Msg, Option<OwnedFd>), ReceiveError> {
        let left = deadline.saturating_duration_since(Instant::now());
        process::poll_readable(&[self.sock.as_fd()], left.as_millis() as i32);
        let mut buf = [0u8; 12];
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
        if bytes != 12 {
            self.gone = true;
            return Err(ReceiveError::Gone(None));
        }
        let msg = Msg::decode(&buf);
        if msg.tag == EXITED {
            let cause = if msg.b >= 0 {
                ExitCause::Exited(msg.b)
            } else {
                ExitCause::Signaled(-msg.b)
            };
            self.exits.insert(msg.a, cause);
        }
        Ok((msg, fd))
    }
}

impl Reap for ForkServer {
    fn wait_exit(&mut self, pid: Pid, limit: Duration) -> ExitCause {
        ForkServer::wait_exit(self, pid, limit)
    }
}

/// The server's loop: fork workers on request, reap them and report how they ended. Leaves
/// when the parent closes its end of the socket (or dies: parent-death signal).
fn serve(sock: OwnedFd, mut body: impl FnMut(usize, u32) -> Infallible) -> Infallible {
    crate::process::in_child();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let code = match (
        mask.thread_block(),
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC),
    ) {
        (Ok(()), Ok(sigfd)) => {
            serve_loop(&sock, &sigfd, &mask, &mut body);
            0
        }
        _ => 1,
    };
    // SAFETY: leaving without destructors, like a worker.
    unsafe { libc::_exit(code) }
}

fn send(sock: &OwnedFd, msg: Msg, fd: Option<RawFd>) -> bool {
    let bytes = msg.encode();
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

fn serve_loop(
    sock: &OwnedFd,
    sigfd: &SignalFd,
    mask: &SigSet,
    body: &mut impl FnMut(usize, u32) -> Infallible,
) {
    loop {
        process::poll_readable(&[sock.as_fd(), sigfd.as_fd()], -1);
        while let Ok(Some(_)) = sigfd.read_signal() {}
        // Reap every ended worker and tell the parent.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    send(
                        sock,
                        Msg {
                            tag: EXITED,
                            a: pid.as_raw(),
                            b: code,
                        },
                        None,
                    );
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let b = -(sig as i32);
                    send(
                        sock,
                        Msg {
                            tag: EXITED,
                            a: pid.as_raw(),
                            b,
                        },
                        None,
                    );
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut buf = [0u8; 12];
        // SAFETY: a non-blocking receive into a valid buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN))
        {
            return; // The parent closed its end or is gone.
        }
        if n != 12 {
            continue;
        }
        let msg = Msg::decode(&buf);
        if msg.tag != SPAWN {
            continue;
        }
        let (sock_fd, sig_fd) = (sock.as_raw_fd(), sigfd.as_fd().as_raw_fd());
        let forked = process::fork_child(|| {
            // SAFETY: the worker needs neither descriptor, and must not keep the socket open
            // (the parent detects the server's end by end of file).
            unsafe {
                libc::close(sock_fd);
                libc::close(sig_fd);
            }
            let _ = mask.thread_unblock();
            body(msg.a as usize, msg.b as u32)
        });
        let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(0);
        // Our own unreaped child: its pid cannot be reused before we reap it.
        let spawned = match forked {
            Err(e) => Err((errno(&e), FAILED_FORK)),
            Ok(pid) => match process::pidfd_open(pid) {
                Ok(fd) => Ok((pid, fd)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    Err((errno(&e), FAILED_PIDFD))
                }
            },
        };
        // Sending passes a copy of the descriptor; ours closes when `fd` drops.
        let (msg, fd) = match &spawned {
            Ok((pid, fd)) => ((SPAWNED, pid.as_raw(), 0), Some(fd.as_raw_fd())),
            Err((errno, step)) => ((FAILED, *errno, *step), None),
        };
        send(
            sock,
            Msg {
                tag: msg.0,
                a: msg.1,
                b: msg.2,
            },
            fd,
        );
    }
}
