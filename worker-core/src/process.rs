//! Worker processes: forking, watching (pidfd), killing and reaping.
//!
//! The parent holds a pidfd for each worker, which becomes readable the moment the process
//! dies, so a crash wakes the parent's `poll` within a millisecond instead of waiting for a
//! timeout. A worker is reaped exactly once, by [`Child::try_reap`] or [`Child::kill`];
//! dropping a [`Child`] kills and reaps it.
//!
//! A worker is either the parent's own child, reaped with `waitpid`, or the child of another
//! process that reaps it and relays how it ended (the fork server). That other reaper is seen
//! here only through the [`Reap`] trait, so this module does not depend on who forked the
//! child (as tokio's `pidfd_reaper` reaps through its `Wait` and `Kill` traits).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::call::ExitCause;
use crate::error::SpawnError;

/// A process that reaps workers it forked on the parent's behalf and reports how they ended
/// (the fork server).
pub(crate) trait Reap: std::fmt::Debug + Send {
    /// Waits up to `limit` for the report of how `pid` ended; without one, the worker is
    /// taken as killed.
    fn wait_exit(&mut self, pid: Pid, limit: Duration) -> ExitCause;
}

/// Who reaps a worker.
#[derive(Debug)]
enum Reaper {
    /// The worker is our child.
    Own,
    /// The worker is another process's child, which relays its end. Shared by every worker
    /// that reaper forked; the lock is never contended (one thread drives a pool) and is
    /// there so that a pool can move to another thread.
    Other(Arc<Mutex<dyn Reap>>),
}

/// A worker process, owned by the parent until reaped.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    reaper: Reaper,
    reaped: Option<ExitCause>,
}

/// Forks a process that runs `body`, which never returns. Returns the child's pid.
///
/// In the child, the parent-death signal is set to SIGKILL and the parent is checked to still
/// be this process, so a child never outlives its parent, even one that died during the fork.
pub(crate) fn fork_child(body: impl FnOnce() -> std::convert::Infallible) -> io::Result<Pid> {
    let parent = nix::unistd::getpid();
    // SAFETY: the child only runs `body`, which leaves with `_exit` (see worker_loop and
    // fork_server). What a fork from a threaded process risks is documented on
    // `Mediator::fork_server`, and warned about when it happens.
    match unsafe { fork() } {
        Err(e) => Err(e.into()),
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
        Ok(ForkResult::Parent { child }) => Ok(child),
    }
}

/// A pidfd for `pid`: readable once the process has ended.
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Forks a worker that is our own child.
pub(crate) fn spawn(body: impl FnOnce() -> std::convert::Infallible) -> Result<Child, SpawnError> {
    let pid = fork_child(body).map_err(|e| SpawnError::Fork(e.into()))?;
    // Our own unreaped child: its pid cannot be reused before we reap it.
    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            reaper: Reaper::Own,
            reaped: None,
        }),
        Err(err) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            Err(SpawnError::pidfd(err))
        }
    }
}

/// Takes charge of a worker that `reaper` forked (the fork server), given the pidfd it opened
/// for it.
pub(crate) fn adopt(pid: Pid, pidfd: OwnedFd, reaper: Arc<Mutex<dyn Reap>>) -> Child {
    Child {
        pid,
        pidfd,
        reaper: Reaper::Other(reaper),
        reaped: None,
    }
}

pub(crate) fn cause(status: WaitStatus) -> Option<ExitCause> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitCause::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitCause::Signaled(sig as i32)),
        _ => None,
    }
}

/// Whether a pidfd reports its process as ended, without blocking.
fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
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
            self.reaped = match &self.reaper {
                Reaper::Own => match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) => cause(status),
                    // Reaped by someone else (a SIGCHLD handler of the program's, say).
                    Err(nix::errno::Errno::ECHILD) => Some(ExitCause::Exited(-1)),
                    Err(_) => None,
                },
                Reaper::Other(reaper) => {
                    if has_exited(self.pidfd.as_fd()) {
                        Some(
                            reaper
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .wait_exit(self.pid, Duration::from_secs(2)),
                        )
                    } else {
                        None
                    }
                }
            };
        }
        self.reaped
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) -> ExitCause {
        if let Some(c) = self.reaped {
            return c;
        }
        // SAFETY: pidfd_send_signal on our pidfd: the signal cannot reach a reused pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let c = match &self.reaper {
            Reaper::Own => loop {
                match waitpid(self.pid, None) {
                    Ok(status) => {
                        if let Some(c) = cause(status) {
                            break c;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break ExitCause::Signaled(libc::SIGKILL),
                }
            },
            Reaper::Other(reaper) => reaper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .wait_exit(self.pid, Duration::from_secs(2)),
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
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    poll_raw(&raw, timeout);
}

/// What every forked child (worker, fork server, task) does first: give the signals the
/// daemon handles their default actions again (SIGINT ignored) and close its copy of the
/// daemon's instance lock.
pub(crate) fn in_child() {
    crate::signals::reset_in_child();
    crate::instance::close_in_child();
}

/// Waits until one of the raw descriptors `fds` is readable or `timeout` passes (`None`: no
/// limit), to the nanosecond (`ppoll`), so that a deadline is met without rounding to
/// milliseconds.
pub(crate) fn poll_raw(fds: &[std::os::fd::RawFd], timeout: Option<Duration>) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: a valid array of pollfd of the given length; a valid or null timespec; no
    // signal mask change.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
}

/// How many threads this process has (from /proc/self/status), if known.
pub(crate) fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}
