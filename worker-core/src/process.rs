//! Worker processes: forking, watching (pidfd), killing and reaping.
//!
//! Every worker is a direct child of the mediator's process. The parent holds a pidfd for each,
//! which becomes readable the moment the process dies, so a crash wakes the parent's `poll`
//! within a millisecond instead of waiting for a timeout. A worker is reaped exactly once, by
//! [`Child::try_reap`] or [`Child::kill`]; dropping a [`Child`] kills and reaps it.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::call::ExitCause;

/// A forked worker process, owned by the parent until reaped.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    reaped: Option<ExitCause>,
}

/// Forks a worker that runs `body`, which never returns.
///
/// In the child, the parent-death signal is set to SIGKILL and the parent is checked to still
/// be `parent`, so a worker never outlives the program even if the parent died during the fork.
pub(crate) fn spawn(body: impl FnOnce() -> std::convert::Infallible) -> Result<Child, String> {
    let parent = nix::unistd::getpid();
    // SAFETY: the child only runs `body`, which leaves with `_exit` (see worker_loop), and
    // touches no lock another thread of the parent could hold, except through user code in
    // the worker's methods; threaded parents are warned about in `Mediator::start`.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork failed: {e}")),
        Ok(ForkResult::Child) => {
            // SAFETY: prctl with valid arguments; getppid cannot fail.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(0);
                }
            }
            #[allow(unreachable_code)]
            match body() {}
        }
        Ok(ForkResult::Parent { child }) => {
            // SAFETY: pidfd_open on our own unreaped child: the pid cannot be reused before we
            // reap it, so the fd refers to this child.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
            if fd < 0 {
                let err = std::io::Error::last_os_error();
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(format!(
                    "pidfd_open failed (Linux 5.3 or later is needed): {err}"
                ));
            }
            // SAFETY: a fresh fd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            Ok(Child {
                pid: child,
                pidfd,
                reaped: None,
            })
        }
    }
}

fn cause(status: WaitStatus) -> Option<ExitCause> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitCause::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitCause::Signaled(sig as i32)),
        _ => None,
    }
}

impl Child {
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The pidfd: readable once the process has died.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether the process was reaped.
    pub(crate) fn is_reaped(&self) -> bool {
        self.reaped.is_some()
    }

    /// Reaps the process if it has died, without blocking.
    pub(crate) fn try_reap(&mut self) -> Option<ExitCause> {
        if self.reaped.is_none() {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => self.reaped = cause(status),
                // Already reaped by someone else (a SIGCHLD handler of the program's, say).
                Err(nix::errno::Errno::ECHILD) => self.reaped = Some(ExitCause::Exited(-1)),
                Err(_) => {}
            }
        }
        self.reaped
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) -> ExitCause {
        if let Some(c) = self.reaped {
            return c;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        let c = loop {
            match waitpid(self.pid, None) {
                Ok(status) => {
                    if let Some(c) = cause(status) {
                        break c;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break ExitCause::Signaled(libc::SIGKILL),
            }
        };
        self.reaped = Some(c);
        c
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1: no limit). Interrupted
/// waits return early; the caller re-checks its state either way.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) {
    use std::os::fd::AsRawFd;
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfd of the given length.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
}

/// How many threads this process has (from /proc/self/status), if known.
pub(crate) fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}
