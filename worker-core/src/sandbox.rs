//! Confining workers that handle hostile input: [`Sandbox`], set with
//! [`crate::Mediator::sandbox`].
//!
//! A sandboxed worker runs its `setup` unconfined (to open its files, load its tables, connect
//! to what it needs), then confines itself with the kernel's own mechanisms before it takes its
//! first call, for the rest of its life:
//!
//! - `prctl(PR_SET_NO_NEW_PRIVS)`: nothing it runs can gain privileges;
//! - landlock, where the kernel has it: no access to any file by path (no rule is granted),
//!   no TCP bind or connect, no signal to a process outside the sandbox;
//! - a seccomp-bpf filter, an allow-list of the system calls Rust's std, the allocator and
//!   threads need (memory, futexes, threads, signals to itself, time, `read`/`write` on
//!   descriptors it holds, ...). Any other system call fails with `EPERM`: opening files
//!   (`open`, `openat`, `creat`, ...), creating sockets, truncating or allocating a descriptor
//!   (`ftruncate`, `fallocate`), forking. A system call that attacks another process kills
//!   the worker instead: signalling any process but itself (`kill`, `tgkill`,
//!   `rt_sigqueueinfo`, ... with another pid; `tkill`, `pidfd_send_signal`), tracing or
//!   reading another process (`ptrace`, `process_vm_readv`/`writev`) and `execve`/`execveat`.
//!   Its call ends with [`crate::CallError::Crashed`] whose cause,
//!   [`crate::ExitCause::Sandbox`], names the system call; the pool replaces the worker.
//!
//! ```
//! use forkworker_core::{closure::FnMediator, CallError, ExitCause, Sandbox};
//! use std::time::Duration;
//!
//! let mut m = FnMediator::new("Hostile", |pid: i32| {
//!     // SAFETY: an attack on the parent: the sandbox kills the worker before it lands.
//!     unsafe { libc::kill(pid, libc::SIGKILL) }
//! });
//! m.sandbox(Sandbox::strict());
//! let id = m.call(std::process::id() as i32)?;
//! match m.wait(id, Duration::from_secs(10)) {
//!     Err(CallError::Crashed { cause: ExitCause::Sandbox { syscall, .. }, .. }) => {
//!         assert_eq!(syscall, Some(libc::SYS_kill));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), CallError>(())
//! ```
//!
//! A method that needs more gets it through the allow-list of the builder:
//! [`Sandbox::allow_syscalls`] lets named system calls through the seccomp filter as they
//! are (landlock still denies files), and [`Sandbox::allow_read`] grants reading the files
//! and directories beneath a path.
//!
//! What `strict` leaves: `read`/`write` on descriptors the worker already holds (so open in
//! `setup` what the calls need; the level-1 containment decides which descriptors a worker
//! inherits), `mmap` and threads, and the metadata of files by path (`stat`, which std's and
//! glibc's `fstat` use; never a file's contents). Threads that `setup` started get the seccomp
//! filter too (it is installed on every thread) but not landlock, which applies to the
//! thread that runs the calls and the threads it starts later; seccomp alone denies them any
//! open.
//!
//! Cost: confining takes 0.3 to 0.6 ms at each worker's start (measured in a release build,
//! most of it the kernel installing the filters), on top of the fork. The calls on a call's
//! path (`futex`, the `write` that wakes the parent) are allowed whatever their arguments by
//! every filter, so the kernel's seccomp action cache lets them through without running a
//! filter.
//!
//! If the kernel cannot confine the worker (no seccomp), the worker exits before taking any
//! call, with a message on its stderr: no call runs unconfined, and the pool stops forking
//! after repeated failures ([`crate::PoolError::WorkersDying`]). Without landlock the worker
//! runs under seccomp alone (which denies opening files all the same) and logs a warning;
//! [`Sandbox::allow_read`] then grants nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use libc::c_long;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::call::ExitCause;

/// Exit code of a worker stopped by the sandbox at a system call it may not make: the
/// `SIGSYS` handler leaves with it after storing the call's number in the channel.
pub(crate) const EXIT_SANDBOX: i32 = 104;
/// Exit code of a worker that could not confine itself: it takes no call.
pub(crate) const EXIT_UNCONFINED: i32 = 105;

/// The newest landlock ABI whose rights this module asks for (the kernel grants what it has).
const LANDLOCK_ABI: ABI = ABI::V7;

/// How a sandboxed worker is confined after `setup`; see the [module](self) documentation.
///
/// Built with [`Sandbox::strict`] and widened with the allow-list methods:
///
/// ```
/// use forkworker_core::Sandbox;
///
/// // A parser that reads its grammar files at call time and reports through a socket it
/// // connected in `setup`.
/// let sandbox = Sandbox::strict()
///     .allow_read("/usr/share/my-parser")
///     .allow_syscalls(&[libc::SYS_sendto]);
/// # let _ = sandbox;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// System calls let through as they are, on top of the strict allow-list.
    syscalls: Vec<c_long>,
    /// Paths beneath which files and directories may be read.
    read: Vec<PathBuf>,
}

impl Sandbox {
    /// The strictest confinement: no file, no socket, no process but itself, no exec; what
    /// std, the allocator and threads need keeps working (see the [module](self)
    /// documentation).
    pub fn strict() -> Sandbox {
        Sandbox {
            syscalls: Vec::new(),
            read: Vec::new(),
        }
    }

    /// These confinements, with `syscalls` (numbers from `libc::SYS_*`) let through the
    /// seccomp filter whatever their arguments, and no longer killing the worker if they were
    /// among those that do. Landlock still applies: letting `openat` through opens nothing
    /// by path (use [`Sandbox::allow_read`] for that).
    ///
    /// ```
    /// use forkworker_core::Sandbox;
    ///
    /// // A method that creates a socketpair to talk to a thread of its own.
    /// let sandbox = Sandbox::strict().allow_syscalls(&[libc::SYS_socketpair]);
    /// # let _ = sandbox;
    /// ```
    pub fn allow_syscalls(mut self, syscalls: &[c_long]) -> Sandbox {
        self.syscalls.extend_from_slice(syscalls);
        self.syscalls.sort_unstable();
        self.syscalls.dedup();
        self
    }

    /// These confinements, and reading the files and directories beneath `path` (a
    /// directory, or a single file), opened read-only by path at call time: landlock grants
    /// reading beneath it, and the seccomp filter lets `open`/`openat` and directory listing
    /// through. The path must exist when the worker confines itself (else the worker exits
    /// before taking a call, saying so on its stderr). Where the kernel has no landlock this grants nothing
    /// (opening stays denied), since seccomp cannot tell one path from another.
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read.push(path.into());
        self
    }
}

/// Why a worker could not confine itself.
#[derive(Debug, thiserror::Error)]
enum ConfineError {
    #[error("this architecture has no seccomp filter here")]
    Arch,
    #[error("building the seccomp filter: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("allow_read({0:?}): {1}")]
    Path(PathBuf, landlock::PathFdError),
    #[error("installing the SIGSYS handler: {0}")]
    Signal(std::io::Error),
}

/// Where the `SIGSYS` handler stores the number of the system call that stopped the worker
/// (plus one; 0: none): a word of the worker's channel, which the parent reads after the
/// death (see [`exit_cause`]).
static STOPPED_AT: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());

/// Worker: confines this process as `sandbox` says, or leaves it (with
/// [`EXIT_UNCONFINED`]) if that fails; `stopped_at` is the channel's word for the number of
/// a system call that stops the worker. Called once, right after `setup`.
pub(crate) fn confine(sandbox: &Sandbox, stopped_at: &AtomicU32, alias: &str) {
    if let Err(e) = try_confine(sandbox, stopped_at, alias) {
        eprintln!(
            "forkworker: worker {} of {alias}: the sandbox could not be applied ({e}); it exits without taking a call",
            std::process::id()
        );
        // SAFETY: leaving without destructors, as everywhere in a worker.
        unsafe { libc::_exit(EXIT_UNCONFINED) };
    }
}

fn try_confine(sandbox: &Sandbox, stopped_at: &AtomicU32, alias: &str) -> Result<(), ConfineError> {
    let arch = target_arch()?;
    install_sigsys_handler(stopped_at)?;
    // Opening by path is let through only where landlock confines it to the allowed paths.
    let read = landlock(sandbox, alias)? && !sandbox.read.is_empty();
    for filter in &filters(sandbox, std::process::id(), arch, read)? {
        seccompiler::apply_filter_all_threads(filter)?;
    }
    Ok(())
}

fn target_arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| ConfineError::Arch)
}

/// Applies the landlock part; returns whether landlock is enforced.
fn landlock(sandbox: &Sandbox, alias: &str) -> Result<bool, ConfineError> {
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?;
    for path in &sandbox.read {
        let fd = PathFd::new(path).map_err(|e| ConfineError::Path(path.clone(), e))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::from_read(LANDLOCK_ABI)))?;
    }
    let status = ruleset.restrict_self()?;
    match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(true),
        _ => {
            crate::this_worker::warn(
                alias,
                format_args!(
                    "the kernel has no landlock: confined by seccomp alone{}",
                    if sandbox.read.is_empty() {
                        ""
                    } else {
                        "; allow_read() grants nothing"
                    }
                ),
            );
            Ok(false)
        }
    }
}

/// The seccomp filters, in the order they are installed. The kernel runs every filter and
/// takes the most severe answer (a trap before an error before allowing), so three filters
/// with two outcomes each make one policy:
///
/// 1. `clone3` fails with `ENOSYS`, so that threads are made with `clone`, whose flags the
///    allow-list can read (no new namespaces, no new process);
/// 2. the attacks: signalling another process, tracing, exec trap (`SIGSYS`: the worker
///    leaves, naming the call);
/// 3. the allow-list: listed calls are allowed, every other one fails with `EPERM`. Last,
///    since it denies the `prctl` and `seccomp` calls that install a filter.
///
/// With `read`, opening files and listing directories are allowed (landlock confines them).
fn filters(
    sandbox: &Sandbox,
    pid: u32,
    arch: TargetArch,
    read: bool,
) -> Result<Vec<BpfProgram>, ConfineError> {
    let extra = &sandbox.syscalls;
    let mut allowed = allow_list(read)?;
    for &nr in extra {
        allowed.insert(nr, Vec::new());
    }
    let mut attacks = attacks(pid)?;
    attacks.retain(|nr, _| !extra.contains(nr));
    let mut out = Vec::new();
    if !extra.contains(&libc::SYS_clone3) {
        let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        out.push(compile(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?);
    }
    out.push(compile(
        attacks,
        SeccompAction::Allow,
        SeccompAction::Trap,
        arch,
    )?);
    out.push(compile(
        allowed,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?);
    Ok(out)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, ConfineError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch)?;
    Ok(filter.try_into()?)
}

/// A rule: argument `arg` (its low 32 bits with `Dword`) compared with `value`.
fn when(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, ConfineError> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        arg, len, op, value,
    )?])?)
}

/// A rule for each value `arg` may be equal to.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, ConfineError> {
    values
        .iter()
        .map(|&v| when(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v))
        .collect()
}

/// What std, the allocator, threads and the worker loop need. Not in it, so `EPERM`, among
/// others: every way to open or create a file, socket or namespace; `io_uring_setup` (whose
/// operations no seccomp filter sees), `bpf`, `userfaultfd`, `perf_event_open`, `keyctl`,
/// `mount`, `seccomp` and landlock's own calls.
fn allow_list(read: bool) -> Result<Rules, ConfineError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let mut rules = Rules::new();
    let free: &[c_long] = &[
        // Descriptors already held: the channel's eventfd, stdout and stderr, what setup opened.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_ppoll,
        // Memory.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
        // Threads; clone is below, with its flags; clone3 is turned into ENOSYS.
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_set_tid_address,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_restart_syscall,
        // Signals; those aimed at another process trap in the second filter.
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        // Time, randomness, facts about the system.
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_uname,
        libc::SYS_getrusage,
        libc::SYS_getrlimit,
        // The worker's own CPU timer (`cpu_limit`), armed and disarmed around each call.
        libc::SYS_timer_settime,
        libc::SYS_timer_gettime,
    ];
    for &nr in free.iter().chain(arch_free()) {
        rules.insert(nr, Vec::new());
    }
    // Threads, not processes, and no new namespaces.
    let ns = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![when(0, Qword, SeccompCmpOp::MaskedEq(ns | thread), thread)?],
    );
    // Any handler but the sandbox's own SIGSYS one, which reports the stopping call.
    rules.insert(
        libc::SYS_rt_sigaction,
        vec![when(0, Dword, SeccompCmpOp::Ne, libc::SIGSYS as u64)?],
    );
    // Reading limits, not raising them.
    rules.insert(
        libc::SYS_prlimit64,
        vec![when(2, Qword, SeccompCmpOp::Eq, 0)?],
    );
    // Terminal queries and descriptor flags (std's is_terminal, set_nonblocking), not
    // TIOCSTI and the like. (The request constants' type differs between libc targets.)
    #[allow(clippy::unnecessary_cast)]
    rules.insert(
        libc::SYS_ioctl,
        one_of(
            1,
            &[
                libc::TCGETS as u64,
                libc::TIOCGWINSZ as u64,
                libc::FIONBIO as u64,
                libc::FIOCLEX as u64,
                libc::FIONCLEX as u64,
                libc::FIONREAD as u64,
            ],
        )?,
    );
    // Thread names, names of anonymous mappings (glibc names its stacks).
    rules.insert(
        libc::SYS_prctl,
        one_of(
            0,
            &[
                libc::PR_SET_NAME as u64,
                libc::PR_GET_NAME as u64,
                libc::PR_SET_VMA as u64,
            ],
        )?,
    );
    if read {
        // Landlock confines them to the allowed paths, read-only.
        for &nr in [libc::SYS_openat, libc::SYS_getdents64]
            .iter()
            .chain(arch_open())
        {
            rules.insert(nr, Vec::new());
        }
    }
    Ok(rules)
}

/// Calls of the allow-list that only some architectures have.
fn arch_free() -> &'static [c_long] {
    #[cfg(target_arch = "x86_64")]
    {
        &[
            libc::SYS_poll,
            libc::SYS_dup2,
            libc::SYS_time,
            libc::SYS_arch_prctl,
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        &[]
    }
}

/// `open` where the architecture has it.
fn arch_open() -> &'static [c_long] {
    #[cfg(target_arch = "x86_64")]
    {
        &[libc::SYS_open]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        &[]
    }
}

/// The calls that attack another process, for the process `pid`.
fn attacks(pid: u32) -> Result<Rules, ConfineError> {
    let other = || when(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, pid as u64);
    let mut rules = Rules::new();
    for nr in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.insert(nr, vec![other()?]);
    }
    for nr in [
        // A thread id of its own cannot be told from another process's.
        libc::SYS_tkill,
        libc::SYS_pidfd_send_signal,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_execve,
        libc::SYS_execveat,
    ] {
        rules.insert(nr, Vec::new());
    }
    Ok(rules)
}

/// Offset of `si_syscall` in a `siginfo_t` of a `SIGSYS` sent by seccomp (after `si_signo`,
/// `si_errno`, `si_code` and padding, and `si_call_addr`), on 64-bit Linux.
const SI_SYSCALL: usize = 24;

/// The handler of the `SIGSYS` a trapped call raises: stores the call's number and leaves.
/// Async-signal-safe: an atomic store and `_exit`.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t; for a seccomp SIGSYS `si_syscall` is at
    // this offset.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL)
            .cast::<i32>()
            .read_unaligned()
    };
    let word = STOPPED_AT.load(Ordering::Relaxed);
    if !word.is_null() {
        // SAFETY: set by `install_sigsys_handler` to a word of the channel, mapped for the
        // life of the process.
        unsafe { &*word }.store((nr as u32).wrapping_add(1), Ordering::Relaxed);
    }
    // SAFETY: leaving without destructors, as everywhere in a worker.
    unsafe { libc::_exit(EXIT_SANDBOX) }
}

fn install_sigsys_handler(stopped_at: &AtomicU32) -> Result<(), ConfineError> {
    stopped_at.store(0, Ordering::Relaxed);
    STOPPED_AT.store(
        stopped_at as *const AtomicU32 as *mut AtomicU32,
        Ordering::Relaxed,
    );
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(ConfineError::Signal(std::io::Error::last_os_error()));
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// Parent: how a worker ended, with the sandbox's stops told apart: an exit with
/// [`EXIT_SANDBOX`] after the worker stored a call's number in `stopped_at` (its channel's
/// word), or, with a sandbox configured, death by `SIGSYS` (a trap the handler could not
/// catch: the worker blocked the signal). The number is the worker's word: a number for a
/// message, nothing more.
pub(crate) fn exit_cause(cause: ExitCause, stopped_at: &AtomicU32, sandboxed: bool) -> ExitCause {
    match cause {
        ExitCause::Exited(EXIT_SANDBOX) => match stopped_at.load(Ordering::Relaxed) {
            0 => cause,
            word => ExitCause::Sandbox {
                syscall: Some(c_long::from(word.wrapping_sub(1) as i32)),
            },
        },
        ExitCause::Signaled(libc::SIGSYS) if sandboxed => ExitCause::Sandbox { syscall: None },
        _ => cause,
    }
}

/// The name of system call `nr` on this architecture, if it is one this module knows (those
/// the sandbox stops or denies, mostly).
pub(crate) fn syscall_name(nr: c_long) -> Option<&'static str> {
    const COMMON: &[(c_long, &str)] = &[
        (libc::SYS_kill, "kill"),
        (libc::SYS_tgkill, "tgkill"),
        (libc::SYS_tkill, "tkill"),
        (libc::SYS_rt_sigqueueinfo, "rt_sigqueueinfo"),
        (libc::SYS_rt_tgsigqueueinfo, "rt_tgsigqueueinfo"),
        (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
        (libc::SYS_pidfd_open, "pidfd_open"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_openat2, "openat2"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_socketpair, "socketpair"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_ftruncate, "ftruncate"),
        (libc::SYS_truncate, "truncate"),
        (libc::SYS_fallocate, "fallocate"),
        (libc::SYS_memfd_create, "memfd_create"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setns, "setns"),
    ];
    #[cfg(target_arch = "x86_64")]
    const ARCH: &[(c_long, &str)] = &[
        (libc::SYS_open, "open"),
        (libc::SYS_creat, "creat"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ARCH: &[(c_long, &str)] = &[];
    COMMON
        .iter()
        .chain(ARCH)
        .find(|(n, _)| *n == nr)
        .map(|&(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let arch = target_arch().unwrap();
        let strict = filters(&Sandbox::strict(), 1234, arch, false).unwrap();
        assert_eq!(strict.len(), 3);
        let wide = Sandbox::strict()
            .allow_syscalls(&[libc::SYS_clone3, libc::SYS_kill, libc::SYS_kill])
            .allow_read("/usr");
        assert_eq!(wide.syscalls, [libc::SYS_kill, libc::SYS_clone3]);
        assert_eq!(filters(&wide, 1234, arch, true).unwrap().len(), 2);
    }

    #[test]
    fn stops_are_told_apart_and_the_word_is_only_a_number() {
        let word = AtomicU32::new(0);
        let exited = ExitCause::Exited(EXIT_SANDBOX);
        assert_eq!(exit_cause(exited, &word, true), exited, "no number stored");
        word.store(libc::SYS_kill as u32 + 1, Ordering::Relaxed);
        assert_eq!(
            exit_cause(exited, &word, false),
            ExitCause::Sandbox {
                syscall: Some(libc::SYS_kill)
            }
        );
        word.store(u32::MAX, Ordering::Relaxed);
        let odd = exit_cause(exited, &word, true);
        assert_eq!(odd, ExitCause::Sandbox { syscall: Some(-2) });
        assert_eq!(odd.to_string(), "stopped by the sandbox at syscall -2");
        let sigsys = ExitCause::Signaled(libc::SIGSYS);
        assert_eq!(exit_cause(sigsys, &word, false), sigsys);
        assert_eq!(
            exit_cause(sigsys, &word, true),
            ExitCause::Sandbox { syscall: None }
        );
        assert_eq!(
            ExitCause::Sandbox {
                syscall: Some(libc::SYS_kill)
            }
            .to_string(),
            format!(
                "stopped by the sandbox at syscall kill ({})",
                libc::SYS_kill
            )
        );
    }
}
