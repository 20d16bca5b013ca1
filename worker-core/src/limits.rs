//! Limits the user sets on a worker: its memory ([`crate::Mediator::memory_limit`]) and the CPU
//! time of one call ([`crate::Mediator::cpu_limit`]), and how a death under them is told from
//! a plain crash ([`classify`]).
//!
//! # Memory
//! The parent picks one mechanism when the pool starts ([`MemoryLimit::new`]), in this order:
//! - **cgroup v2**: a group per worker under the program's own cgroup (from /proc/self/cgroup),
//!   with `memory.max` (and `memory.swap.max` 0). The program's cgroup must let its children
//!   use the memory controller (`memory` in its `cgroup.subtree_control`, or writable there):
//!   a delegated cgroup, as systemd gives with `Delegate=yes`.
//! - **cgroup v1**: a group per worker under the program's own group of the memory hierarchy,
//!   with `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where swap is accounted).
//! - **`RLIMIT_DATA`**, where no cgroup can be made: set in the worker to its data size
//!   (`VmData`) plus the limit. `RLIMIT_AS` is not usable: it counts the shared segments and
//!   every mapping inherited from the parent.
//!
//! The groups of one pool live in `fw-<program pid>-<n>` under the program's own cgroup, one
//! group per worker named by the worker's pid. A worker makes its group and moves itself in
//! after `setup`, so with every mechanism the limit counts what the worker allocates after its
//! `setup` (pages it shares with the parent count once it writes to them). The parent removes a
//! worker's group once it has reaped the worker (killing any process of the worker's still in
//! it), the pool's group when the pool stops, and at start the empty groups of programs that
//! are no longer running. The environment variable `FORKWORKER_MEMORY_LIMIT_MECHANISM`
//! (`cgroup_v2`, `cgroup_v1` or `rlimit_data`) restricts the choice to one mechanism, for
//! tests and for programs that must not make cgroups; an unavailable one falls back to
//! `RLIMIT_DATA` with a warning.
//!
//! How a worker ends when it passes the limit: in a cgroup, the kernel's OOM killer kills it
//! (SIGKILL) and the group's counters say so (`oom_kill` in `memory.events` or
//! `memory.oom_control`); under `RLIMIT_DATA`, an allocation fails, and Rust's default handler
//! writes "memory allocation of N bytes failed" to stderr and aborts (SIGABRT). The first is
//! recognised from the counters alone; the second only from the last lines the worker wrote
//! to stderr, which [`classify`] takes.
//!
//! The limit holds against a worker that leaks or blows up, not against a hostile one: a
//! worker can write to its own group's files (they are its user's), and a worker running as
//! root can raise its `RLIMIT_DATA`; a worker confined after `setup` can do neither.
//!
//! # CPU time
//! [`CpuTimer`]: a timer on the worker's CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, all its
//! threads), armed for each call and disarmed after it, so the limit is per call and precise to
//! the kernel's tick (a few milliseconds), not to the second as `RLIMIT_CPU` would be. When it
//! fires, the worker exits with [`EXIT_CPU_LIMIT`] from a signal handler (SIGXCPU).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::call::ExitCause;
use crate::error::CallError;

/// Exit code of a worker whose call used up its CPU time limit.
pub(crate) const EXIT_CPU_LIMIT: i32 = 106;
/// The environment variable that restricts the memory limit to one mechanism.
pub(crate) const MECHANISM_VAR: &str = "FORKWORKER_MEMORY_LIMIT_MECHANISM";
/// How long removing a worker's group may wait for its last processes to go.
const REMOVE_TRIES: u32 = 100;

/// How a worker's memory limit ([`crate::Mediator::memory_limit`]) is enforced, as
/// [`crate::Stats::memory_limit`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitMechanism {
    /// A cgroup v2 per worker (`memory.max`); passing it gets the worker OOM-killed.
    CgroupV2,
    /// A cgroup v1 per worker (`memory.limit_in_bytes`); passing it gets the worker
    /// OOM-killed.
    CgroupV1,
    /// `RLIMIT_DATA` in the worker: its data size after `setup` plus the limit; passing it
    /// makes an allocation fail, and the worker aborts. Told from a plain crash by the
    /// "memory allocation of N bytes failed" line it writes to stderr.
    RlimitData,
}

impl LimitMechanism {
    fn name(self) -> &'static str {
        match self {
            LimitMechanism::CgroupV2 => "cgroup_v2",
            LimitMechanism::CgroupV1 => "cgroup_v1",
            LimitMechanism::RlimitData => "rlimit_data",
        }
    }

    fn from_name(name: &str) -> Option<LimitMechanism> {
        [
            LimitMechanism::CgroupV2,
            LimitMechanism::CgroupV1,
            LimitMechanism::RlimitData,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    fn is_cgroup(self) -> bool {
        matches!(self, LimitMechanism::CgroupV2 | LimitMechanism::CgroupV1)
    }
}

impl fmt::Display for LimitMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitMechanism::CgroupV2 => "cgroup v2 memory.max",
            LimitMechanism::CgroupV1 => "cgroup v1 memory.limit_in_bytes",
            LimitMechanism::RlimitData => "RLIMIT_DATA",
        })
    }
}

/// What a worker's cgroup says about its death, read by the parent before removing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No cgroup (no memory limit, or `RLIMIT_DATA`), or its counters could not be read.
    Unknown,
    /// The OOM killer killed a process of the group.
    OomKilled,
    /// The group reached its limit (`memory.failcnt`), on a kernel that does not count OOM
    /// kills per group.
    LimitHit,
    /// Neither.
    Clean,
}

/// How a worker that died while running a call is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Death {
    /// A plain crash ([`CallError::Crashed`]).
    Crashed,
    /// It passed its memory limit ([`CallError::MemoryLimit`]).
    MemoryLimit {
        limit: u64,
        mechanism: LimitMechanism,
    },
    /// Its call used up its CPU time ([`CallError::CpuLimit`]).
    CpuLimit { limit: Duration },
}

impl Death {
    /// The error of a call whose worker died under a limit; `None` for a plain crash.
    pub(crate) fn limit_error(
        self,
        method: &'static str,
        pid: i32,
        cause: ExitCause,
        stderr: &str,
    ) -> Option<CallError> {
        match self {
            Death::Crashed => None,
            Death::MemoryLimit { limit, mechanism } => Some(CallError::MemoryLimit {
                method,
                pid,
                limit,
                mechanism,
                cause,
                stderr: stderr.to_owned(),
            }),
            Death::CpuLimit { limit } => Some(CallError::CpuLimit { method, pid, limit }),
        }
    }
}

/// What follows "worker N died ... while running call M" in a log line: nothing for a plain
/// crash.
impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Death::Crashed => Ok(()),
            Death::MemoryLimit { limit, mechanism } => {
                write!(f, ": past its memory limit of {limit} bytes ({mechanism})")
            }
            Death::CpuLimit { limit } => write!(f, ": past its CPU time limit of {limit:?}"),
        }
    }
}

/// The limits in force for a pool's workers, as far as telling deaths apart goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct InForce {
    /// The memory limit's mechanism and bytes.
    pub(crate) memory: Option<(LimitMechanism, u64)>,
    /// The CPU time limit of a call.
    pub(crate) cpu: Option<Duration>,
}

/// Tells how a worker that died while running a call is reported, from how it ended
/// (`cause`), what its cgroup says (`verdict`) and the last lines it wrote to stderr (`tail`,
/// if known), given the limits `in_force`.
///
/// - OOM-killed in its cgroup (or, where the kernel does not count OOM kills, SIGKILLed after
///   reaching the group's limit): [`Death::MemoryLimit`].
/// - Exited with [`EXIT_CPU_LIMIT`], or killed by SIGXCPU, under a CPU limit:
///   [`Death::CpuLimit`].
/// - Aborted (SIGABRT) under `RLIMIT_DATA` (also a worker of a cgroup pool that has no group:
///   it fell back to it) after writing Rust's "memory allocation of N bytes failed":
///   [`Death::MemoryLimit`]. Without the tail such a death is a plain crash.
/// - Anything else: [`Death::Crashed`].
pub(crate) fn classify(
    cause: ExitCause,
    verdict: Verdict,
    tail: Option<&str>,
    in_force: InForce,
) -> Death {
    if let Some((mechanism, limit)) = in_force.memory {
        let killed = mechanism.is_cgroup()
            && (verdict == Verdict::OomKilled
                || (verdict == Verdict::LimitHit && cause == ExitCause::Signaled(libc::SIGKILL)));
        // Under RLIMIT_DATA, or in a cgroup pool by a worker that has no group (it could not
        // join one and set RLIMIT_DATA instead).
        let rlimit = !mechanism.is_cgroup() || verdict == Verdict::Unknown;
        let aborted = rlimit
            && cause == ExitCause::Signaled(libc::SIGABRT)
            && tail.is_some_and(allocation_failed);
        let over = killed || aborted;
        if over {
            return Death::MemoryLimit { limit, mechanism };
        }
    }
    if let Some(limit) = in_force.cpu
        && matches!(
            cause,
            ExitCause::Exited(EXIT_CPU_LIMIT) | ExitCause::Signaled(libc::SIGXCPU)
        )
    {
        return Death::CpuLimit { limit };
    }
    Death::Crashed
}

/// Whether `tail` ends with Rust's report of a failed allocation (the line its default
/// allocation error handler writes before aborting), possibly followed by a few more lines.
fn allocation_failed(tail: &str) -> bool {
    tail.lines().rev().take(8).any(|line| {
        line.trim_start()
            .strip_prefix("memory allocation of ")
            .and_then(|rest| rest.strip_suffix(" bytes failed"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What a worker applies after its `setup`: its memory limit and the CPU limit of its calls.
/// Captured before the fork (also by the fork server).
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerLimits {
    /// The memory limit in bytes, how, and the pool's cgroup directory for a cgroup.
    memory: Option<(u64, LimitMechanism, Option<PathBuf>)>,
    /// The CPU time one call may use.
    pub(crate) cpu: Option<Duration>,
}

impl WorkerLimits {
    /// Applies the memory limit to this process, the worker, after its `setup`: joins a new
    /// group of the pool's named by this pid, or sets `RLIMIT_DATA`. A worker that cannot join
    /// its group falls back to `RLIMIT_DATA`, with a warning. Then makes the CPU timer, if a
    /// CPU limit is set (`None` if it cannot be made, with a warning).
    pub(crate) fn apply(&self, alias: &str) -> Option<CpuTimer> {
        if let Some((bytes, mechanism, group)) = &self.memory {
            let joined = match (mechanism, group) {
                (LimitMechanism::RlimitData, _) | (_, None) => Ok(false),
                (m, Some(group)) => join_group(group, *m, *bytes).map(|()| true),
            };
            match joined {
                Ok(true) => {}
                Ok(false) => set_rlimit_data(alias, *bytes),
                Err(e) => {
                    crate::this_worker::warn(
                        alias,
                        format_args!(
                            "cannot join its cgroup under {} ({e}); limiting its memory with RLIMIT_DATA instead",
                            group.as_deref().unwrap_or(Path::new("?")).display()
                        ),
                    );
                    set_rlimit_data(alias, *bytes);
                }
            }
        }
        let limit = self.cpu?;
        match CpuTimer::new(limit) {
            Ok(t) => Some(t),
            Err(e) => {
                crate::this_worker::warn(
                    alias,
                    format_args!(
                        "cannot make the CPU timer for cpu_limit({limit:?}): {e}; calls run without it"
                    ),
                );
                None
            }
        }
    }
}

/// Makes this process's group under `group`, sets its limit and moves this process in.
fn join_group(group: &Path, mechanism: LimitMechanism, bytes: u64) -> io::Result<()> {
    let pid = std::process::id();
    let dir = group.join(pid.to_string());
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    match mechanism {
        LimitMechanism::CgroupV2 => {
            std::fs::write(dir.join("memory.max"), bytes.to_string())?;
            // Passing the limit must end in the OOM killer, not in swapping.
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        _ => {
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, bytes.to_string())?;
            }
        }
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Sets `RLIMIT_DATA` of this process to its data size now plus `bytes`.
fn set_rlimit_data(alias: &str, bytes: u64) {
    let data = vm_data_bytes().unwrap_or(0);
    let limit = data.saturating_add(bytes);
    let rlim = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &rlim) } != 0 {
        crate::this_worker::warn(
            alias,
            format_args!("cannot set RLIMIT_DATA: {}", io::Error::last_os_error()),
        );
    }
}

/// This process's data size (`VmData`: private writable mappings, what `RLIMIT_DATA` counts).
fn vm_data_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The timer on the worker's CPU clock that ends a call past its CPU time limit.
#[derive(Debug)]
pub(crate) struct CpuTimer {
    id: libc::timer_t,
    limit: Duration,
}

/// What the worker does when its CPU timer fires: leave at once.
extern "C" fn cpu_limit_reached(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe; leaving without destructors, as everywhere in a
    // worker.
    unsafe { libc::_exit(EXIT_CPU_LIMIT) }
}

impl CpuTimer {
    /// A timer on this process's CPU clock that raises SIGXCPU, handled by exiting with
    /// [`EXIT_CPU_LIMIT`] (no core dump), and `limit` per call.
    fn new(limit: Duration) -> io::Result<CpuTimer> {
        // SAFETY: plain syscalls with valid, initialised arguments; the handler only calls
        // _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = cpu_limit_reached as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGXCPU, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGXCPU);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_SIGNAL;
            event.sigev_signo = libc::SIGXCPU;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_PROCESS_CPUTIME_ID, &mut event, &mut id) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(CpuTimer { id, limit })
        }
    }

    fn set(&self, value: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: value.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a timer this process made; a valid itimerspec.
        unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
    }

    /// Starts the call's CPU time: the timer fires once the process has used `limit` more.
    #[inline]
    pub(crate) fn arm(&self) {
        // A zero value would disarm it: the smallest limit is a nanosecond.
        self.set(self.limit.max(Duration::from_nanos(1)));
    }

    /// The call is over: the timer stops.
    #[inline]
    pub(crate) fn disarm(&self) {
        self.set(Duration::ZERO);
    }
}

/// The parent's side of a pool's memory limit: the mechanism, and for a cgroup the pool's
/// group, which holds one group per worker.
#[derive(Debug)]
pub(crate) struct MemoryLimit {
    bytes: u64,
    mechanism: LimitMechanism,
    /// The pool's group (`fw-<pid>-<n>`), for a cgroup.
    group: Option<PathBuf>,
}

/// Pools made by this process, for the names of their groups.
static POOLS: AtomicU32 = AtomicU32::new(0);

impl MemoryLimit {
    /// Picks the mechanism for a limit of `bytes` per worker (see the module's documentation)
    /// and makes the pool's group if it is a cgroup; removes the groups of programs that are
    /// gone. Never fails: `RLIMIT_DATA` is the last resort.
    pub(crate) fn new(alias: &str, bytes: u64) -> MemoryLimit {
        let only = std::env::var(MECHANISM_VAR).ok();
        let only = match only.as_deref().map(|n| (n, LimitMechanism::from_name(n))) {
            None => None,
            Some((_, Some(m))) => Some(m),
            Some((name, None)) => {
                log::warn!(target: alias, "{MECHANISM_VAR}={name} is not one of cgroup_v2, cgroup_v1, rlimit_data; ignored");
                None
            }
        };
        let mut why = Vec::new();
        for mechanism in [LimitMechanism::CgroupV2, LimitMechanism::CgroupV1] {
            if only.is_some_and(|m| m != mechanism) {
                continue;
            }
            match make_pool_group(mechanism) {
                Ok(group) => {
                    log::debug!(target: alias, "memory limit of {bytes} bytes per worker: {mechanism} under {}", group.display());
                    return MemoryLimit {
                        bytes,
                        mechanism,
                        group: Some(group),
                    };
                }
                Err(e) => why.push(format!("{}: {e}", mechanism.name())),
            }
        }
        if only.is_some_and(LimitMechanism::is_cgroup) {
            log::warn!(target: alias, "{MECHANISM_VAR} asks for a cgroup, which cannot be made ({}); using RLIMIT_DATA", why.join("; "));
        } else {
            log::debug!(target: alias, "memory limit of {bytes} bytes per worker: RLIMIT_DATA (no cgroup: {})", why.join("; "));
        }
        MemoryLimit {
            bytes,
            mechanism: LimitMechanism::RlimitData,
            group: None,
        }
    }

    /// The mechanism in force.
    pub(crate) fn mechanism(&self) -> LimitMechanism {
        self.mechanism
    }

    /// The limit in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the workers apply after their `setup`, with a CPU limit of `cpu`.
    pub(crate) fn for_workers(this: Option<&MemoryLimit>, cpu: Option<Duration>) -> WorkerLimits {
        WorkerLimits {
            memory: this.map(|m| (m.bytes, m.mechanism, m.group.clone())),
            cpu,
        }
    }

    /// What the group of worker `pid` says about its death (read before [`MemoryLimit::release`]).
    pub(crate) fn verdict(&self, pid: i32) -> Verdict {
        let Some(group) = &self.group else {
            return Verdict::Unknown;
        };
        let dir = group.join(pid.to_string());
        let (file, failcnt) = match self.mechanism {
            LimitMechanism::CgroupV2 => ("memory.events", None),
            _ => ("memory.oom_control", Some("memory.failcnt")),
        };
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            return Verdict::Unknown;
        };
        match counter(&text, "oom_kill") {
            Some(0) => {}
            Some(_) => return Verdict::OomKilled,
            // v2 always counts; v1 since Linux 4.13.
            None if self.mechanism == LimitMechanism::CgroupV2 => return Verdict::Unknown,
            None => {
                return match failcnt
                    .and_then(|f| std::fs::read_to_string(dir.join(f)).ok())
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    Some(0) => Verdict::Clean,
                    Some(_) => Verdict::LimitHit,
                    None => Verdict::Unknown,
                };
            }
        }
        Verdict::Clean
    }

    /// Removes the group of worker `pid`, which was reaped (killing what is left in it: the
    /// worker's own children).
    pub(crate) fn release(&self, pid: i32) {
        if let Some(group) = &self.group {
            remove_group(&group.join(pid.to_string()));
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            remove_group(group);
        }
    }
}

/// The value of `name` in a cgroup key-value file (`oom_kill 3`).
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The program's own cgroup directory for `mechanism`: the mount point of its hierarchy (from
/// /proc/self/mountinfo) joined with its path in it (from /proc/self/cgroup).
fn own_cgroup(mechanism: LimitMechanism) -> io::Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    own_cgroup_in(mechanism, &cgroups, &mountinfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            match mechanism {
                LimitMechanism::CgroupV2 => "no cgroup2 hierarchy",
                _ => "no cgroup v1 memory hierarchy",
            },
        )
    })
}

/// [`own_cgroup`] from the texts of /proc/self/cgroup and /proc/self/mountinfo.
fn own_cgroup_in(mechanism: LimitMechanism, cgroups: &str, mountinfo: &str) -> Option<PathBuf> {
    let v2 = mechanism == LimitMechanism::CgroupV2;
    // "4:memory:/a/b" (v1) or "0::/a/b" (v2).
    let path = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        ours.then_some(path)
    })?;
    // "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
    let (root, mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        let ours = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "memory")
        };
        let mut left = left.split(' ');
        let (root, mount) = (left.nth(3)?, left.next()?);
        ours.then_some((root, mount))
    })?;
    let inside = path.strip_prefix(root).unwrap_or(path);
    let inside = inside.trim_start_matches('/');
    Some(if inside.is_empty() {
        PathBuf::from(mount)
    } else {
        Path::new(mount).join(inside)
    })
}

/// Makes a new group for a pool under the program's own cgroup, able to hold groups with a
/// memory limit; removes the groups of programs that are gone first.
fn make_pool_group(mechanism: LimitMechanism) -> io::Result<PathBuf> {
    let own = own_cgroup(mechanism)?;
    if mechanism == LimitMechanism::CgroupV2 {
        let controllers = std::fs::read_to_string(own.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the memory controller is not available in {}",
                    own.display()
                ),
            ));
        }
        enable_memory(&own)?;
    }
    remove_stale(&own);
    let pid = std::process::id();
    let n = POOLS.fetch_add(1, Ordering::Relaxed);
    let group = own.join(format!("fw-{pid}-{n}"));
    std::fs::create_dir(&group)?;
    let limit_file = match mechanism {
        LimitMechanism::CgroupV2 => {
            if let Err(e) = enable_memory(&group) {
                remove_group(&group);
                return Err(e);
            }
            "memory.max"
        }
        _ => "memory.limit_in_bytes",
    };
    if !group.join(limit_file).exists() {
        remove_group(&group);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} has no {limit_file}", group.display()),
        ));
    }
    Ok(group)
}

/// Lets the children of cgroup v2 group `dir` use the memory controller.
fn enable_memory(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control)?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(&control, "+memory").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot enable the memory controller in {} ({e}): the program's cgroup must be delegated to it",
                control.display()
            ),
        )
    })
}

/// Removes the pool groups (`fw-<pid>-<n>`) under `own` whose program is no longer running,
/// if they are empty: a process still in one is left alone (its pid may be of another PID
/// namespace's).
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(pid) = stale_owner(&entry.file_name())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            remove_tree(&entry.path(), false);
        }
    }
}

/// The program pid in a pool group's name `fw-<pid>-<n>`.
fn stale_owner(name: &OsStr) -> Option<u32> {
    let (pid, n) = name.to_str()?.strip_prefix("fw-")?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes cgroup `dir` of this program's and the groups inside it, killing the processes
/// still in them (a worker's own children), and waiting a little for them to go. Errors are
/// ignored: what cannot be removed now is removed as stale by the next program that limits
/// memory here.
fn remove_group(dir: &Path) {
    remove_tree(dir, true);
}

/// Removes cgroup `dir` and the groups inside it; with `kill`, kills what is still in them
/// first. Without it (the groups of another program), only empty groups go.
fn remove_tree(dir: &Path, kill: bool) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), kill);
            }
        }
    }
    for _ in 0..REMOVE_TRIES {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if kill && e.raw_os_error() == Some(libc::EBUSY) => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory arguments; the process is in a group of ours.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOC: &str = "memory allocation of 67108864 bytes failed\n";
    const ABRT: ExitCause = ExitCause::Signaled(libc::SIGABRT);
    const KILL: ExitCause = ExitCause::Signaled(libc::SIGKILL);
    const LIMIT: u64 = 1 << 26;

    fn memory(m: LimitMechanism) -> InForce {
        InForce {
            memory: Some((m, LIMIT)),
            cpu: None,
        }
    }

    fn over(mechanism: LimitMechanism) -> Death {
        Death::MemoryLimit {
            limit: LIMIT,
            mechanism,
        }
    }

    #[test]
    fn a_cgroup_oom_kill_is_a_memory_limit() {
        let v1 = memory(LimitMechanism::CgroupV1);
        let over_v1 = over(LimitMechanism::CgroupV1);
        assert_eq!(classify(KILL, Verdict::OomKilled, None, v1), over_v1);
        let v2 = memory(LimitMechanism::CgroupV2);
        let over_v2 = over(LimitMechanism::CgroupV2);
        assert_eq!(classify(KILL, Verdict::OomKilled, None, v2), over_v2);
        // Reaching the limit without a count of OOM kills: only a SIGKILL is the OOM killer's.
        assert_eq!(classify(KILL, Verdict::LimitHit, None, v1), over_v1);
        let segv = ExitCause::Signaled(libc::SIGSEGV);
        assert_eq!(classify(segv, Verdict::LimitHit, None, v1), Death::Crashed);
        // A SIGKILL from elsewhere is a crash.
        assert_eq!(classify(KILL, Verdict::Clean, None, v1), Death::Crashed);
        assert_eq!(classify(KILL, Verdict::Unknown, None, v1), Death::Crashed);
        // No limit, no memory verdict.
        let none = InForce::default();
        assert_eq!(
            classify(KILL, Verdict::OomKilled, None, none),
            Death::Crashed
        );
    }

    #[test]
    fn a_failed_allocation_under_rlimit_data_needs_the_tail() {
        let rl = memory(LimitMechanism::RlimitData);
        let over_rl = over(LimitMechanism::RlimitData);
        assert_eq!(classify(ABRT, Verdict::Unknown, Some(ALLOC), rl), over_rl);
        // As Rust 1.95 writes it, a note after it.
        let later = format!(
            "noise\n{ALLOC}note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
        );
        assert_eq!(classify(ABRT, Verdict::Unknown, Some(&later), rl), over_rl);
        // Without the tail, or with another abort, it is a crash.
        assert_eq!(classify(ABRT, Verdict::Unknown, None, rl), Death::Crashed);
        let other = "thread 'main' has overflowed its stack\nfatal runtime error: stack overflow\n";
        assert_eq!(
            classify(ABRT, Verdict::Unknown, Some(other), rl),
            Death::Crashed
        );
        let lots = "memory allocation of lots bytes failed";
        assert_eq!(
            classify(ABRT, Verdict::Unknown, Some(lots), rl),
            Death::Crashed
        );
        // The message without an abort, or without a limit, is not enough.
        let exit = ExitCause::Exited(1);
        assert_eq!(
            classify(exit, Verdict::Unknown, Some(ALLOC), rl),
            Death::Crashed
        );
        let none = InForce::default();
        assert_eq!(
            classify(ABRT, Verdict::Unknown, Some(ALLOC), none),
            Death::Crashed
        );
        // In a cgroup allocations do not fail at the limit: the message is some other failure.
        let v1 = memory(LimitMechanism::CgroupV1);
        assert_eq!(
            classify(ABRT, Verdict::Clean, Some(ALLOC), v1),
            Death::Crashed
        );
        // Unless the worker has no group: it fell back to RLIMIT_DATA.
        let over_v1 = over(LimitMechanism::CgroupV1);
        assert_eq!(classify(ABRT, Verdict::Unknown, Some(ALLOC), v1), over_v1);
    }

    #[test]
    fn the_cpu_timer_exit_is_a_cpu_limit_only_under_one() {
        let limit = Duration::from_millis(300);
        let cpu = InForce {
            memory: None,
            cpu: Some(limit),
        };
        let exit = ExitCause::Exited(EXIT_CPU_LIMIT);
        assert_eq!(
            classify(exit, Verdict::Unknown, None, cpu),
            Death::CpuLimit { limit }
        );
        let xcpu = ExitCause::Signaled(libc::SIGXCPU);
        assert_eq!(
            classify(xcpu, Verdict::Unknown, None, cpu),
            Death::CpuLimit { limit }
        );
        let none = InForce::default();
        assert_eq!(classify(exit, Verdict::Unknown, None, none), Death::Crashed);
        assert_eq!(classify(ABRT, Verdict::Unknown, None, cpu), Death::Crashed);
    }

    #[test]
    fn a_death_under_a_limit_has_its_error() {
        let d = over(LimitMechanism::CgroupV1);
        let expected = CallError::MemoryLimit {
            method: "f",
            pid: 7,
            limit: LIMIT,
            mechanism: LimitMechanism::CgroupV1,
            cause: KILL,
            stderr: "oom".into(),
        };
        assert_eq!(d.limit_error("f", 7, KILL, "oom"), Some(expected));
        assert_eq!(
            d.to_string(),
            ": past its memory limit of 67108864 bytes (cgroup v1 memory.limit_in_bytes)"
        );
        let limit = Duration::from_secs(1);
        let expected = CallError::CpuLimit {
            method: "f",
            pid: 7,
            limit,
        };
        let d = Death::CpuLimit { limit };
        assert_eq!(d.limit_error("f", 7, KILL, ""), Some(expected));
        assert_eq!(Death::Crashed.limit_error("f", 7, KILL, ""), None);
        assert_eq!(Death::Crashed.to_string(), "");
    }

    #[test]
    fn the_own_cgroup_is_found_in_proc() {
        let cgroups = "9:name=systemd:/\n4:memory:/process_api/df7e\n0::/user.slice/app\n";
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            own_cgroup_in(LimitMechanism::CgroupV1, cgroups, mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/df7e"))
        );
        assert_eq!(
            own_cgroup_in(LimitMechanism::CgroupV2, cgroups, mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/app"))
        );
        // A mount of part of the hierarchy (a cgroup namespace's view).
        let ns = "41 31 0:38 /user.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_in(LimitMechanism::CgroupV2, "0::/user.slice/app\n", ns),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            own_cgroup_in(
                LimitMechanism::CgroupV2,
                "0::/\n",
                ns.replace("/user.slice", "/").as_str()
            ),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            own_cgroup_in(LimitMechanism::CgroupV1, "0::/\n", mountinfo),
            None
        );
    }

    #[test]
    fn counters_and_stale_names() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(oom, "oom_kill"), Some(2));
        assert_eq!(counter(oom, "oom"), None);
        assert_eq!(stale_owner(OsStr::new("fw-1234-0")), Some(1234));
        assert_eq!(stale_owner(OsStr::new("fw-1234")), None);
        assert_eq!(stale_owner(OsStr::new("fw-x-0")), None);
        assert_eq!(stale_owner(OsStr::new("other")), None);
        assert_eq!(
            LimitMechanism::from_name("cgroup_v1"),
            Some(LimitMechanism::CgroupV1)
        );
        assert_eq!(LimitMechanism::from_name("v1"), None);
    }
}
