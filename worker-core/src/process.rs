//! Worker processes: forking, watching (pidfd), killing and reaping.
//!
//! The parent holds a pidfd for each worker, which becomes readable the moment the process
//! dies, so a crash wakes the parent's `poll` within a millisecond instead of waiting for a
//! timeout. A worker is reaped exactly once, by [`Child::try_reap`] or [`Child::kill`];
//! dropping a [`Child`] kills and reaps it.
//!
//! Every fork here is made with the locks a child may take held by the forking thread
//! ([`ForkLocks`]), so that forking from a threaded program (the fork server's fork from a
//! pool started in a tokio runtime) leaves them free in the child.
//!
//! A worker is either the parent's own child, reaped with `waitpid`, or the child of another
//! process that reaps it and relays how it ended (the fork server). That other reaper is seen
//! here only through the [`Reap`] trait, so this module does not depend on who forked the
//! child (as tokio's `pidfd_reaper` reaps through its `Wait` and `Kill` traits).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::call::ExitCause;
use crate::error::SpawnError;

/// How a process ended, as its reaper saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) cause: ExitCause,
    /// The last lines it wrote to its stderr (at most [`STDERR_TAIL`] bytes), if its reaper
    /// kept them (the fork server does for workers); empty otherwise.
    pub(crate) stderr: String,
}

impl Ended {
    /// Killed, with nothing known of its stderr.
    pub(crate) fn killed() -> Ended {
        Ended {
            cause: ExitCause::Signaled(libc::SIGKILL),
            stderr: String::new(),
        }
    }
}

/// How much of the end of a worker's stderr is kept and reported with its death: 4 KiB.
pub(crate) const STDERR_TAIL: usize = 4096;

/// A process that reaps workers it forked on the parent's behalf and reports how they ended
/// (the fork server).
pub(crate) trait Reap: std::fmt::Debug + Send {
    /// Waits up to `limit` for the report of how `pid` ended; without one, the worker is
    /// taken as killed.
    fn wait_exit(&mut self, pid: Pid, limit: Duration) -> Ended;
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
    /// The end of its stderr, as its reaper reported it with its death.
    stderr: String,
}

/// The locks a forked child may take, held by the forking thread across the fork (the
/// atfork pattern): the program's stdout and stderr (flushed first) and forkworker's own.
///
/// A fork copies only the forking thread: a lock another thread holds at that instant stays
/// held in the child forever, and the child deadlocks on its first `println!`. Taken here, in
/// a fixed order (stdout, stderr, forkworker's own [`OWN_FDS`]), each waits for the thread
/// holding it to finish its print, and the child gets them free: the forking thread's copy
/// holds them and releases them ([`ForkLocks::release`]), as the parent does.
///
/// The one-time initializations a child may run (the tick calibration, the clock's anchor,
/// the CPU count: `OnceLock`s, which a child would wait on forever if another thread was
/// running them at the fork) are completed before the locks are taken.
///
/// Not held, because they cannot be: std's own internal locks (the environment's, taken by
/// `set_var`; the panic hook's, taken by `set_hook` while another thread panics; stdin's,
/// held by a thread waiting for input, which would hold up the fork for as long), and the
/// program's own mutexes, a logger's included. See `fork_server` for what that means for
/// workers.
struct ForkLocks {
    stdout: std::io::StdoutLock<'static>,
    stderr: std::io::StderrLock<'static>,
    own_fds: std::sync::MutexGuard<'static, Vec<RawFd>>,
}

impl ForkLocks {
    /// Completes the one-time initializations, then takes the locks, in their fixed order.
    fn take() -> ForkLocks {
        crate::clock::calibrate();
        crate::clock::to_instant(crate::clock::now_ns());
        crate::wake::cpus();
        let mut stdout = std::io::stdout().lock();
        // What a `print!` left in the buffer would otherwise be written again by every child
        // that prints.
        let _ = io::Write::flush(&mut stdout);
        ForkLocks {
            stdout,
            stderr: std::io::stderr().lock(),
            own_fds: OWN_FDS.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Releases the locks: in the parent and in the child after the fork, so that both have
    /// them free. Touches only the locks' own words (atomic operations, a futex wake).
    fn release(self) {
        let ForkLocks {
            stdout,
            stderr,
            own_fds,
        } = self;
        drop(own_fds);
        drop(stderr);
        drop(stdout);
    }
}

/// Forks a process that runs `body`, which never returns. Returns the child's pid.
///
/// The forking thread holds stdout's, stderr's and forkworker's own locks across the fork
/// (see [`ForkLocks`]), so that a child forked while other threads print finds them free.
///
/// In the child, the parent-death signal is set to `death_signal` (SIGKILL for workers and
/// tasks; the fork server takes a catchable one, so that it can take its process tree down
/// first) and the parent is checked to still be this process, so a child never outlives its
/// parent, even one that died during the fork. That signal comes when the *thread* that
/// forked exits, not only when the process does (see `fork_server` for how the server tells
/// one from the other).
pub(crate) fn fork_child(
    death_signal: libc::c_int,
    body: impl FnOnce() -> std::convert::Infallible,
) -> io::Result<Pid> {
    let parent = nix::unistd::getpid();
    let locks = ForkLocks::take();
    // SAFETY: the child only runs `body`, which leaves with `_exit` (see worker_loop and
    // fork_server). The locks it could need are held across the fork (`ForkLocks`); what a
    // fork from a threaded process still risks is documented in `fork_server`.
    let forked = unsafe { fork() };
    locks.release();
    match forked {
        Err(e) => Err(e.into()),
        Ok(ForkResult::Child) => {
            // SAFETY: prctl with valid arguments; getppid cannot fail.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0);
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

/// Forks a process that is our own child (a task), with SIGKILL as its parent-death signal.
pub(crate) fn spawn(body: impl FnOnce() -> std::convert::Infallible) -> Result<Child, SpawnError> {
    spawn_with(libc::SIGKILL, body)
}

/// Forks a process that is our own child, with `death_signal` as its parent-death signal.
pub(crate) fn spawn_with(
    death_signal: libc::c_int,
    body: impl FnOnce() -> std::convert::Infallible,
) -> Result<Child, SpawnError> {
    let pid = fork_child(death_signal, body).map_err(|e| SpawnError::Fork(e.into()))?;
    // Our own unreaped child: its pid cannot be reused before we reap it.
    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            reaper: Reaper::Own,
            reaped: None,
            stderr: String::new(),
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
        stderr: String::new(),
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
                        let ended = reaper
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .wait_exit(self.pid, Duration::from_secs(2));
                        self.stderr = ended.stderr;
                        Some(ended.cause)
                    } else {
                        None
                    }
                }
            };
        }
        self.reaped
    }

    /// The last lines the process wrote to its stderr before it ended, as its reaper kept them
    /// (empty if none, or not known); taken once.
    pub(crate) fn take_stderr(&mut self) -> String {
        std::mem::take(&mut self.stderr)
    }

    /// Kills the process with SIGKILL and reaps it. A worker's descendants go with it: they
    /// were kept below it (it is a child subreaper), and the fork server, the subreaper above
    /// it, kills each one as it is re-parented there (see `fork_server`).
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
            Reaper::Other(reaper) => {
                let ended = reaper
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .wait_exit(self.pid, Duration::from_secs(2));
                self.stderr = ended.stderr;
                ended.cause
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
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    poll_raw(&raw, timeout);
}

/// What every forked child (worker, fork server, task) does first: give the signals the
/// daemon handles their default actions again (SIGINT ignored), close its copy of the
/// daemon's instance lock, and make itself not dumpable.
///
/// Not dumpable: a crash writes no core file (which would hold the call's data, and whose
/// writing delays the report of the crash by as long as it takes), and processes of the
/// same user without `CAP_SYS_PTRACE` (another worker, say) can neither trace it nor read
/// its memory (`ptrace`, `process_vm_readv`, `/proc/<pid>/mem`).
pub(crate) fn in_child() {
    crate::signals::reset_in_child();
    crate::instance::close_in_child();
    // SAFETY: prctl with valid arguments; it cannot fail for these.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
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
    ppoll(&mut pfds, timeout);
}

/// `ppoll(2)` on `pfds` (their `revents` filled in), for at most `timeout` (`None`: no limit),
/// to the nanosecond.
pub(crate) fn ppoll(pfds: &mut [libc::pollfd], timeout: Option<Duration>) {
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

/// The descriptors open in this process, in increasing order, from /proc/self/fd (or, without
/// /proc, by probing every number below the descriptor limit, at most 65536).
fn open_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => {
            // SAFETY: sysconf has no memory arguments.
            let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
            (0..max.clamp(0, 1 << 16) as RawFd).collect()
        }
    };
    // The directory's own descriptor was in the listing and is closed by now: keep only the
    // numbers still open.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    fds
}

/// Where descriptor `fd` of this process points (`readlink /proc/self/fd/<fd>`).
pub(crate) fn fd_target(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The descriptors a forked child of this process would see replaced by [`sanitize_fds`]
/// with `keep`, with where each points; forkworker's own (see [`is_own_fd`]) are left out.
pub(crate) fn foreign_fds(keep: &[RawFd]) -> Vec<(RawFd, String)> {
    open_fds()
        .into_iter()
        .filter(|fd| *fd > 2 && !keep.contains(fd) && !is_own_fd(*fd))
        .map(|fd| (fd, fd_target(fd)))
        .filter(|(_, target)| !is_own_target(target))
        .collect()
}

/// Descriptors forkworker holds in this process that no forked process needs (the parent's
/// ends of fork-server and log sockets): left out of the warning about replaced descriptors.
static OWN_FDS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Marks `fd` as one of forkworker's own descriptors (see [`foreign_fds`]).
pub(crate) fn register_own_fd(fd: RawFd) {
    OWN_FDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(fd);
}

/// `fd` is closed, or no longer forkworker's.
pub(crate) fn unregister_own_fd(fd: RawFd) {
    OWN_FDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|&f| f != fd);
}

fn is_own_fd(fd: RawFd) -> bool {
    OWN_FDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&fd)
}

/// Whether a descriptor pointing at `target` is forkworker's own by its name: a segment
/// (`/dev/shm/fw.*`, or a memfd named `fw.*`), a pidfd, an eventfd; or /dev/null already,
/// which replacing changes nothing for.
fn is_own_target(target: &str) -> bool {
    target == "/dev/null"
        || target.starts_with("/dev/shm/fw.")
        || target.starts_with("/memfd:fw.")
        || target == "anon_inode:[pidfd]"
        || target == "anon_inode:[eventfd]"
}

/// Replaces every descriptor of this process except stdin, stdout, stderr and `keep` with
/// /dev/null, keeping its number (each becomes a close-on-exec copy of one /dev/null
/// descriptor).
///
/// Called in a freshly forked fork server and worker, so that they hold none of the program's
/// files and sockets nor other mediators' descriptors. Replacing rather than closing means that
/// a library still holding a number (a file logger, say) writes into /dev/null, not into
/// whatever the number would be reused for. `keep` is every descriptor forkworker needs in
/// that process and the ones the user passed with `inherit_fd`.
pub(crate) fn sanitize_fds(keep: &[RawFd]) {
    // SAFETY: a plain open of a constant path.
    let null = unsafe {
        libc::open(
            c"/dev/null".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    for fd in open_fds() {
        if fd <= 2 || fd == null || keep.contains(&fd) {
            continue;
        }
        if null >= 0 {
            // SAFETY: dup3 onto a descriptor number of ours; the old one is closed by it.
            unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
        } else {
            // Without /dev/null, closing is the next best thing.
            // SAFETY: closing a descriptor of ours that nothing in this process needs.
            unsafe { libc::close(fd) };
        }
    }
    if null >= 0 && !keep.contains(&null) {
        // SAFETY: our own /dev/null descriptor.
        unsafe { libc::close(null) };
    }
}

/// The children of this process (from /proc/self/task/*/children, or, where the kernel does
/// not have that file, by scanning /proc for processes whose parent is this one).
pub(crate) fn children() -> Vec<i32> {
    let mut found = Vec::new();
    let mut have_file = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                have_file = true;
                found.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !have_file {
        let me = std::process::id() as i32;
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // The name in parentheses may hold anything; the fields after its last ')'
                // are: state, ppid, ...
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                if ppid == Some(me) {
                    found.push(pid);
                }
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_sees_dev_null_in_place_of_an_open_file_but_keeps_what_it_keeps() {
        let path = std::env::temp_dir().join(format!("fw-sanitize-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let kept = std::fs::File::open("/proc/self/status").unwrap();
        let (fd, keep) = (file.as_raw_fd(), kept.as_raw_fd());
        assert!(
            foreign_fds(&[keep])
                .iter()
                .any(|(f, t)| *f == fd && t.ends_with(path.to_str().unwrap()))
        );
        let (read, write) = nix::unistd::pipe().unwrap();
        let write_fd = write.as_raw_fd();
        // SAFETY: the child only sanitizes, reads links and writes one byte before `_exit`.
        let pid = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                sanitize_fds(&[keep, write_fd]);
                let ok = fd_target(fd) == "/dev/null" && fd_target(keep).ends_with("/status");
                let byte = [u8::from(ok)];
                // SAFETY: writing one byte to our pipe, then leaving without destructors.
                unsafe {
                    libc::write(write_fd, byte.as_ptr().cast(), 1);
                    libc::_exit(0)
                }
            }
            ForkResult::Parent { child } => child,
        };
        drop(write);
        let mut byte = [0u8; 1];
        let n = nix::unistd::read(&read, &mut byte).unwrap();
        waitpid(pid, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            (n, byte[0]),
            (1, 1),
            "the file became /dev/null, the kept one stayed"
        );
    }
}
