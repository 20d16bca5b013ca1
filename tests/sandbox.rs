//! The sandbox (`sandbox(Sandbox::strict())`), attacked for real: each hostile system call is
//! made from inside a worker method, against the real parent, and what std needs is exercised
//! under the same filter. The same calls without the sandbox go through, so that these tests
//! can fail. A kernel without seccomp filters or landlock fails the tests, with the reason.

mod support;

use std::ffi::CString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use forkworker::prelude::*;
use forkworker::{CancelReason, PoolError, Sandbox};
use support::eventually;

const LONG: Duration = Duration::from_secs(30);

/// The errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A system call's result: its return value, or `Err(errno)`.
fn sys(ret: i64) -> Result<i64, i32> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

pub struct Hostile {
    /// A file opened in `setup`, before the sandbox, for `ftruncate`.
    path: PathBuf,
    fd: i32,
}

#[forkworker::worker]
impl Hostile {
    pub fn setup(&mut self) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("opening the test file in setup");
        self.fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn kill_parent(&self, signal: i32) -> Result<i64, i32> {
        // SAFETY: an attack on the parent, on purpose.
        sys(unsafe { libc::kill(libc::getppid(), signal) } as i64)
    }

    /// `PTRACE_ATTACH` to the parent (would stop it), or `PTRACE_SEIZE` to `pid` (does not).
    pub fn ptrace(&self, attach_parent: bool, pid: i32) -> Result<i64, i32> {
        // SAFETY: an attack, on purpose; null addr and data are valid for both requests.
        sys(unsafe {
            if attach_parent {
                libc::ptrace(libc::PTRACE_ATTACH, libc::getppid(), 0, 0)
            } else {
                libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0)
            }
        })
    }

    pub fn exec_true(&self) -> Result<i64, i32> {
        let path = CString::new("/bin/true").unwrap();
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: valid, null-terminated argument and environment lists.
        sys(unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) } as i64)
    }

    pub fn open(&self, path: String, flags: i32) -> Result<i64, i32> {
        let path = CString::new(path).unwrap();
        // SAFETY: a valid path; the descriptor is closed at once.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600) };
        if fd >= 0 {
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        }
        sys(fd as i64)
    }

    pub fn socket(&self) -> Result<i64, i32> {
        // SAFETY: plain socket creation; closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        }
        sys(fd as i64)
    }

    pub fn ftruncate(&self) -> Result<i64, i32> {
        // SAFETY: the descriptor opened in setup.
        sys(unsafe { libc::ftruncate(self.fd, 0) } as i64)
    }

    /// Tries to take the sandbox's `SIGSYS` handler away, then blocks `SIGSYS` and attacks.
    pub fn dodge_then_kill_parent(&self) -> Result<i64, i32> {
        // SAFETY: plain signal-mask and handler calls; the attack is on purpose.
        unsafe {
            if libc::signal(libc::SIGSYS, libc::SIG_IGN) != libc::SIG_ERR || errno() != libc::EPERM
            {
                return Err(-1);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSYS);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            sys(libc::kill(libc::getppid(), libc::SIGKILL) as i64)
        }
    }

    pub fn fallocate(&self) -> Result<i64, i32> {
        // SAFETY: the descriptor opened in setup.
        sys(unsafe { libc::fallocate(self.fd, 0, 0, 1 << 20) } as i64)
    }

    /// `io_uring_setup`: its operations would bypass the seccomp filter.
    pub fn io_uring(&self) -> Result<i64, i32> {
        let mut params = [0u8; 120];
        // SAFETY: a zeroed io_uring_params of the right size.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
        if fd >= 0 {
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd as i32) };
        }
        sys(fd)
    }

    /// Burns CPU time until `ms` milliseconds of it are used.
    pub fn spin(&self, ms: u64) -> u64 {
        let cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime into a valid timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let start = cpu();
        let mut n = 0u64;
        while cpu() - start < Duration::from_millis(ms) {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        n
    }

    pub fn thread(&self) -> u64 {
        std::thread::Builder::new()
            .name("helper".into())
            .spawn(|| (1..=10u64).sum())
            .expect("spawning a thread")
            .join()
            .expect("joining it")
    }

    /// Allocates 100 MiB and touches every page.
    pub fn allocate(&self) -> u64 {
        let mut v = vec![0u8; 100 << 20];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&v)
            .iter()
            .step_by(4096)
            .map(|&b| b as u64)
            .sum()
    }

    pub fn panic(&self) -> u8 {
        panic!("parsing went wrong")
    }

    pub fn overflow(&self) -> u64 {
        recurse(1)
    }

    /// Logs through `this_worker::log`, whose record is forwarded to the parent's logger.
    pub fn log(&self) -> bool {
        this_worker::log(SANDBOXED_RECORD);
        true
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 512]);
    recurse(n + 1) + buf[7]
}

static LOG_WRITTEN: AtomicBool = AtomicBool::new(false);
/// The text of the record a sandboxed worker logs.
const SANDBOXED_RECORD: &str = "hello from a sandboxed worker";

/// A logger that writes to stderr and records whether the write of the sandboxed worker's
/// record succeeded (in the parent, where forwarded records arrive).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let ok = writeln!(std::io::stderr(), "{}: {text}", record.target()).is_ok();
        if text.contains(SANDBOXED_RECORD) {
            LOG_WRITTEN.store(ok, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// A file for `ftruncate`, removed when dropped (also when a test fails).
struct TestFile(PathBuf);

impl TestFile {
    fn new() -> TestFile {
        let path = std::env::temp_dir().join(format!("fw-sandbox-{}", std::process::id()));
        std::fs::write(&path, b"twelve bytes").expect("writing the test file");
        TestFile(path)
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.0).expect("the test file").len()
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fails, saying why, unless the kernel has seccomp filters and landlock: the sandbox's tests
/// must not pass on a kernel that cannot confine.
fn require_kernel() {
    // SAFETY: probing calls with valid arguments.
    let seccomp = unsafe {
        let action = libc::SECCOMP_RET_TRAP;
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    assert!(
        seccomp == 0,
        "this kernel cannot run seccomp filters with SECCOMP_RET_TRAP (errno {}): the sandbox cannot confine here",
        errno()
    );
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attribute only reports the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0,
            1u32,
        )
    };
    assert!(
        abi >= 1,
        "this kernel has no landlock (errno {}): the sandbox would confine by seccomp alone",
        errno()
    );
}

/// A strict pool of 2 (or an unconfined one), warmed up so that both workers have confined
/// themselves.
fn pool(file: &TestFile, strict: bool) -> HostileMediator {
    if strict {
        require_kernel();
    }
    let mut m = HostileMediator::new(
        "Hostile",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    m.workers(2).timeout(LONG);
    if strict {
        m.sandbox(Sandbox::strict());
    }
    let warm: Vec<_> = (0..2).map(|_| m.pid().unwrap()).collect();
    for id in warm {
        m.wait(id, LONG).expect("a worker answers");
    }
    m
}

/// Checks that `call` killed its worker with a report naming the sandbox and `syscall`, and
/// that the parent carries on: the next calls run on a replacement.
fn stopped_at<R: std::fmt::Debug + 'static>(
    m: &mut HostileMediator,
    call: Handle<R>,
    syscall: libc::c_long,
    name: &str,
) {
    let pids = m.pids();
    match m.wait(call, LONG) {
        Err(e @ CallError::Crashed { .. }) => {
            let CallError::Crashed { cause, pid, .. } = &e else {
                unreachable!()
            };
            assert!(
                matches!(cause, ExitCause::Sandbox { syscall: Some(n), .. } if *n == syscall),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!(
                    "stopped by the sandbox at syscall {name} ({syscall})"
                )),
                "{text}"
            );
            assert!(pids.contains(pid));
        }
        other => panic!("expected a crash naming the sandbox and {name}, got {other:?}"),
    }
    assert!(
        eventually(LONG, || {
            m.poll();
            m.pids().len() == 2
        }),
        "the pool is back to 2 workers"
    );
    let ids: Vec<_> = (0..4).map(|_| m.pid().unwrap()).collect();
    for id in ids {
        m.wait(id, LONG).expect("the parent carries on");
    }
    assert_eq!(m.errors().communication, 1);
}

fn kill_of_the_parent_kills_the_worker() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.kill_parent(libc::SIGKILL).unwrap();
    stopped_at(&mut m, id, libc::SYS_kill, "kill");
}

fn ptrace_of_the_parent_kills_the_worker() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.ptrace(true, 0).unwrap();
    stopped_at(&mut m, id, libc::SYS_ptrace, "ptrace");
}

fn execve_kills_the_worker() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.exec_true().unwrap();
    stopped_at(&mut m, id, libc::SYS_execve, "execve");
}

fn the_sandbox_holds_for_workers_of_a_fork_server() {
    require_kernel();
    let file = TestFile::new();
    let mut m = HostileMediator::new(
        "Hostile",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    m.workers(2).timeout(LONG).sandbox(Sandbox::strict());
    // The worker's parent is the fork server here; it is attacked all the same.
    let id = m.kill_parent(libc::SIGKILL).unwrap();
    stopped_at(&mut m, id, libc::SYS_kill, "kill");
}

fn a_worker_that_blocks_sigsys_is_still_stopped() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.dodge_then_kill_parent().unwrap();
    match m.wait(id, LONG) {
        Err(e @ CallError::Crashed { .. }) => {
            assert!(
                matches!(
                    e,
                    CallError::Crashed {
                        cause: ExitCause::Sandbox { syscall: None, .. },
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("stopped by the sandbox"), "{e}");
        }
        other => panic!("expected a sandbox stop, got {other:?}"),
    }
    let id = m.pid().unwrap();
    m.wait(id, LONG).expect("the parent carries on");
}

fn open_socket_ftruncate_and_the_like_fail_with_eperm() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.open("/etc/passwd".into(), libc::O_RDONLY).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EPERM)), "open");
    let id = m.open(file.0.display().to_string(), libc::O_RDWR).unwrap();
    assert_eq!(
        m.wait(id, LONG),
        Ok(Err(libc::EPERM)),
        "open of a file the parent made"
    );
    let id = m.socket().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EPERM)), "socket");
    let id = m.ftruncate().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EPERM)), "ftruncate");
    let id = m.fallocate().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EPERM)), "fallocate");
    assert_eq!(file.len(), 12, "the file keeps its bytes");
    let id = m.io_uring().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EPERM)), "io_uring_setup");
    // Denied calls fail; they do not kill.
    let id = m.pid().unwrap();
    m.wait(id, LONG).unwrap();
    assert_eq!(m.errors().communication, 0);
}

fn signals_to_itself_still_work() {
    let file = TestFile::new();
    let mut m = pool(&file, true);
    // A signal the worker sends itself goes through: SIGABRT (what `abort` raises) ends it
    // as a plain crash, not as a sandbox stop.
    let mut m2 = FaultMediator::new("Fault", Fault);
    m2.sandbox(Sandbox::strict()).timeout(LONG);
    let id = m2.abort().unwrap();
    match m2.wait(id, LONG) {
        Err(CallError::Crashed { cause, .. }) => {
            assert_eq!(cause, ExitCause::Signaled(libc::SIGABRT))
        }
        other => panic!("expected a SIGABRT crash, got {other:?}"),
    }
    let id = m.pid().unwrap();
    m.wait(id, LONG).unwrap();
}

pub struct Fault;

#[forkworker::worker]
impl Fault {
    pub fn abort(&self) -> u8 {
        std::process::abort()
    }
}

fn what_std_needs_works_under_strict() {
    log::set_logger(&StderrLogger).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    // SAFETY: the test process is single-threaded; workers inherit the variable.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let file = TestFile::new();
    let mut m = pool(&file, true);
    let id = m.thread().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(55), "a thread spawned and joined");
    let id = m.allocate().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(25600), "100 MiB allocated and touched");
    LOG_WRITTEN.store(false, Ordering::Relaxed);
    let id = m.log().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(true), "this_worker::log returned");
    assert!(
        eventually(LONG, || {
            m.poll();
            LOG_WRITTEN.load(Ordering::Relaxed)
        }),
        "this_worker::log's record reached the parent's logger"
    );
    let id = m.panic().unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Panicked { message, .. }) => {
            assert!(message.contains("parsing went wrong"), "{message}")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let id = m.overflow().unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Crashed {
            cause: ExitCause::Signaled(sig),
            ..
        }) if sig == libc::SIGSEGV || sig == libc::SIGABRT => {}
        other => panic!("expected a crash by SIGSEGV or SIGABRT, got {other:?}"),
    }
    let id = m.thread().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(55), "the pool carries on");
}

fn landlock_denies_files_even_when_open_is_let_through() {
    require_kernel();
    let file = TestFile::new();
    let mut m = HostileMediator::new(
        "Hostile",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    m.sandbox(Sandbox::strict().allow_syscalls(&[libc::SYS_open, libc::SYS_openat]))
        .timeout(LONG);
    // seccomp lets open through; landlock refuses (EACCES, not seccomp's EPERM).
    let id = m.open("/etc/passwd".into(), libc::O_RDONLY).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EACCES)));
    let id = m.open(file.0.display().to_string(), libc::O_RDWR).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EACCES)));
}

fn allow_read_grants_reading_beneath_a_path_only() {
    require_kernel();
    let file = TestFile::new();
    let mut m = HostileMediator::new(
        "Hostile",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    let exe = std::env::current_exe().unwrap();
    m.sandbox(Sandbox::strict().allow_read("/etc").allow_read(&exe))
        .timeout(LONG);
    let id = m.open(exe.display().to_string(), libc::O_RDONLY).unwrap();
    assert!(
        matches!(m.wait(id, LONG), Ok(Ok(_))),
        "reading a file allowed by name"
    );
    let id = m.open("/etc/passwd".into(), libc::O_RDONLY).unwrap();
    assert!(
        matches!(m.wait(id, LONG), Ok(Ok(_))),
        "reading beneath /etc"
    );
    let id = m.open("/etc/passwd".into(), libc::O_RDWR).unwrap();
    assert_eq!(
        m.wait(id, LONG),
        Ok(Err(libc::EACCES)),
        "writing beneath /etc"
    );
    let id = m
        .open(file.0.display().to_string(), libc::O_RDONLY)
        .unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Err(libc::EACCES)), "reading elsewhere");
}

/// A worker that cannot confine itself (here: a path to allow that does not exist) takes no
/// call: nothing runs unconfined.
fn a_worker_that_cannot_confine_itself_takes_no_call() {
    require_kernel();
    let file = TestFile::new();
    let mut m = HostileMediator::new(
        "Hostile",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    m.sandbox(Sandbox::strict().allow_read("/nonexistent/forkworker"))
        .timeout(LONG);
    let id = m.kill_parent(0).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Pool(PoolError::WorkersDying { .. }))
        | Err(CallError::Cancelled {
            reason: CancelReason::WorkersDied { .. },
            ..
        }) => {}
        other => panic!("expected the call to fail without running, got {other:?}"),
    }
}

/// Without the sandbox, the same system calls go through: the tests above can fail.
fn without_the_sandbox_the_same_calls_go_through() {
    let file = TestFile::new();
    let mut m = pool(&file, false);
    let id = m.kill_parent(0).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Ok(0)), "kill(getppid(), 0)");
    let id = m.open("/etc/passwd".into(), libc::O_RDONLY).unwrap();
    assert!(matches!(m.wait(id, LONG), Ok(Ok(_))), "open");
    let id = m.socket().unwrap();
    assert!(matches!(m.wait(id, LONG), Ok(Ok(_))), "socket");
    let id = m.ftruncate().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Ok(0)), "ftruncate");
    assert_eq!(file.len(), 0, "the file was truncated");
    let id = m.fallocate().unwrap();
    assert_eq!(m.wait(id, LONG), Ok(Ok(0)), "fallocate");
    assert_eq!(file.len(), 1 << 20, "the file was allocated");
    // ptrace: seize a sleeping child of the test (seizing does not stop it), then end it.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawning sleep");
    let id = m.ptrace(false, sleeper.id() as i32).unwrap();
    let seized = m.wait(id, LONG);
    sleeper.kill().unwrap();
    // Its tracer, the worker, is told of its death first: shut the pool down to release it.
    m.shutdown();
    sleeper.wait().unwrap();
    assert_eq!(seized, Ok(Ok(0)), "ptrace(PTRACE_SEIZE)");
    // exec replaces the worker with /bin/true, which exits 0.
    let mut m = pool(&file, false);
    let id = m.exec_true().unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Crashed { cause, .. }) => assert_eq!(cause, ExitCause::Exited(0)),
        other => panic!("expected the exec to end the worker with exit 0, got {other:?}"),
    }
}

/// The limits are set up before the worker confines itself, and the CPU timer is armed per
/// call under the sandbox too.
fn the_cpu_limit_holds_under_strict() {
    require_kernel();
    let file = TestFile::new();
    let mut m = HostileMediator::new(
        "StrictCpu",
        Hostile {
            path: file.0.clone(),
            fd: -1,
        },
    );
    let limit = Duration::from_millis(300);
    m.sandbox(Sandbox::strict()).cpu_limit(limit).timeout(LONG);
    let id = m.spin(50).unwrap();
    m.wait(id, LONG).expect("a short spin returns");
    let id = m.spin(20_000).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::CpuLimit { limit: l, .. }) => assert_eq!(l, limit),
        other => panic!("expected CpuLimit, got {other:?}"),
    }
}

tests![
    the_cpu_limit_holds_under_strict,
    kill_of_the_parent_kills_the_worker,
    ptrace_of_the_parent_kills_the_worker,
    execve_kills_the_worker,
    the_sandbox_holds_for_workers_of_a_fork_server,
    a_worker_that_blocks_sigsys_is_still_stopped,
    open_socket_ftruncate_and_the_like_fail_with_eperm,
    signals_to_itself_still_work,
    what_std_needs_works_under_strict,
    landlock_denies_files_even_when_open_is_let_through,
    allow_read_grants_reading_beneath_a_path_only,
    a_worker_that_cannot_confine_itself_takes_no_call,
    without_the_sandbox_the_same_calls_go_through,
];
