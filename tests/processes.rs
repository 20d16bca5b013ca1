//! What a worker process holds and leaves behind, with real processes: a worker's whole process
//! tree (a double-forked `setsid` helper included) goes when the worker goes, whatever the way
//! (timeout, crash, recycling, cancellation, the mediator dropped, the parent SIGKILLed); a
//! worker sees none of the program's descriptors but those given on purpose; its stderr tail
//! comes with its crash, its stderr never blocks it, and its `this_worker` log records reach the
//! parent's logger. Each test runs alone in its own process (see `support`).

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use support::{eventually, process_exists};

const LONG: Duration = Duration::from_secs(30);
/// How soon a helper must be gone after its worker.
const GONE: Duration = Duration::from_secs(2);

pub struct Procs;

/// Double-forks a helper that leaves the worker's session (`setsid`) and sleeps forever, the
/// way a daemon detaches; returns its pid.
fn spawn_helper() -> i32 {
    let (read, write) = support::pipe();
    // SAFETY: the worker is single-threaded; the children only call async-signal-safe
    // functions and never return.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::setsid();
            if libc::fork() == 0 {
                let pid = libc::getpid().to_le_bytes();
                libc::write(write.as_raw_fd(), pid.as_ptr().cast(), pid.len());
                loop {
                    libc::pause();
                }
            }
            libc::_exit(0)
        },
        first => {
            drop(write);
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(first, std::ptr::null_mut(), 0) };
            let mut pid = [0u8; 4];
            std::fs::File::from(read).read_exact(&mut pid).unwrap();
            i32::from_le_bytes(pid)
        }
    }
}

/// Starts a chain of `depth` processes below the worker, each the child of the one before, in
/// a session of its own, all sleeping forever; returns their pids.
fn spawn_chain(depth: u32) -> Vec<i32> {
    let (read, write) = support::pipe();
    // SAFETY: as in `spawn_helper`.
    match unsafe { libc::fork() } {
        0 => unsafe {
            for level in 0..depth {
                libc::setsid();
                let pid = libc::getpid().to_le_bytes();
                libc::write(write.as_raw_fd(), pid.as_ptr().cast(), pid.len());
                if level + 1 == depth || libc::fork() != 0 {
                    loop {
                        libc::pause();
                    }
                }
            }
            libc::_exit(0)
        },
        _ => {
            drop(write);
            let mut bytes = vec![0u8; 4 * depth as usize];
            std::fs::File::from(read).read_exact(&mut bytes).unwrap();
            bytes
                .chunks(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        }
    }
}

#[forkworker::worker]
impl Procs {
    /// Starts a chain of `depth` processes; returns their pids.
    pub fn chain(&self, depth: u32) -> Vec<i32> {
        spawn_chain(depth)
    }

    /// Starts a detached helper; returns its pid.
    pub fn helper(&self) -> i32 {
        spawn_helper()
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// Starts a detached helper, writes its pid to `path`, and crashes.
    pub fn helper_then_abort(&self, path: String) -> u8 {
        std::fs::write(&path, spawn_helper().to_string()).unwrap();
        std::process::abort()
    }

    /// This process's descriptors and where each points.
    pub fn fds(&self) -> Vec<(i32, String)> {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.into_iter()
            .filter_map(|fd| {
                let to = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
                Some((fd, to.to_string_lossy().into_owned()))
            })
            .collect()
    }

    /// Writes `lines` lines to stderr, then aborts.
    pub fn say_then_abort(&self, lines: u32) -> u8 {
        let mut err = std::io::stderr().lock();
        for i in 0..lines {
            writeln!(err, "line {i} of what the worker said before it died").unwrap();
        }
        drop(err);
        std::process::abort()
    }

    /// Overflows its stack.
    pub fn overflow(&self, depth: u64) -> u64 {
        let frame = std::hint::black_box([depth; 512]);
        if depth == u64::MAX {
            return frame[1];
        }
        self.overflow(depth + 1) + frame[0]
    }

    /// Writes `bytes` bytes to stderr.
    pub fn flood(&self, bytes: u64) -> u64 {
        let chunk = vec![b'#'; 64 << 10];
        let mut left = bytes as usize;
        let mut err = std::io::stderr().lock();
        while left > 0 {
            let n = left.min(chunk.len());
            err.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        bytes
    }

    pub fn log_twice(&self, text: String) -> u8 {
        this_worker::log(format_args!("{text} (log)"));
        this_worker::error(format_args!("{text} (error)"));
        0
    }
}

/// Kills a helper that is still there when the test ends, passed or failed (it left the
/// test's process group, so the runner's check would not find it).
struct Helper(i32);

impl Drop for Helper {
    fn drop(&mut self) {
        if self.0 > 0 && process_exists(self.0) {
            // SAFETY: SIGKILL to the helper this test made.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

fn helper_of(m: &mut ProcsMediator) -> Helper {
    let id = m.helper().unwrap();
    let pid = m.wait(id, LONG).unwrap();
    assert!(pid > 0 && process_exists(pid), "the helper {pid} runs");
    Helper(pid)
}

fn assert_gone(helper: &Helper, after: &str) {
    assert!(
        eventually(GONE, || !process_exists(helper.0)),
        "the helper {} is still alive {GONE:?} after {after}",
        helper.0
    );
}

fn a_helper_goes_when_its_worker_times_out() {
    let mut m = ProcsMediator::new("Timeout", Procs);
    m.workers(1).timeout(Duration::from_millis(500));
    let helper = helper_of(&mut m);
    let id = m.sleep_ms(60_000).unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Timeout { .. })));
    assert_gone(&helper, "the timeout");
    // The pool goes on.
    let id = m.sleep_ms(1).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(1));
}

fn a_chain_of_five_goes_when_its_worker_times_out() {
    let mut m = ProcsMediator::new("Chain", Procs);
    m.workers(1).timeout(Duration::from_millis(500));
    let id = m.chain(5).unwrap();
    let chain: Vec<Helper> = m.wait(id, LONG).unwrap().into_iter().map(Helper).collect();
    assert_eq!(chain.len(), 5);
    assert!(chain.iter().all(|h| process_exists(h.0)));
    let id = m.sleep_ms(60_000).unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Timeout { .. })));
    for link in &chain {
        assert_gone(link, "the timeout");
    }
}

fn a_helper_goes_when_its_worker_is_recycled() {
    let mut m = ProcsMediator::new("Recycled", Procs);
    m.workers(1)
        .recycle(Recycle::after_calls(1).with_jitter(0.0));
    let helper = helper_of(&mut m);
    assert!(
        eventually(GONE, || {
            m.poll();
            !process_exists(helper.0)
        }),
        "the helper {} outlived its recycled worker",
        helper.0
    );
}

fn a_helper_goes_when_its_worker_crashes() {
    let path = std::env::temp_dir().join(format!("fw-helper-{}", std::process::id()));
    let mut m = ProcsMediator::new("Crash", Procs);
    let id = m
        .helper_then_abort(path.to_string_lossy().into_owned())
        .unwrap();
    let outcome = m.wait(id, LONG);
    let pid = std::fs::read_to_string(&path).map(|s| s.parse().unwrap_or(0));
    let _ = std::fs::remove_file(&path);
    let helper = Helper(pid.expect("the worker wrote its helper's pid"));
    assert!(
        matches!(outcome, Err(CallError::Crashed { .. })),
        "{outcome:?}"
    );
    assert_gone(&helper, "the crash");
}

fn a_helper_goes_when_its_call_is_cancelled_at_shutdown() {
    let mut m = ProcsMediator::new("Cancel", Procs);
    m.workers(1).grace(Duration::from_millis(100));
    let helper = helper_of(&mut m);
    let id = m.sleep_ms(60_000).unwrap();
    assert!(eventually(LONG, || m.status(id.id()) == Some(CallStatus::Running)));
    m.shutdown();
    assert_gone(&helper, "the shutdown's grace");
}

fn a_helper_goes_when_the_mediator_drops() {
    let mut m = ProcsMediator::new("Dropped", Procs);
    m.workers(2);
    let helpers = [helper_of(&mut m), helper_of(&mut m)];
    drop(m);
    for helper in &helpers {
        assert_gone(helper, "the mediator was dropped");
    }
}

fn a_helper_goes_when_the_parent_is_sigkilled() {
    // The fork server is re-parented to us when its parent dies, so that we can reap it.
    // SAFETY: prctl with valid arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (parent, mut lines) = support::fork_reporting(|mut out| {
        let mut m = ProcsMediator::new("Orphans", Procs);
        let id = m.helper().unwrap();
        let helper = m.wait(id, LONG).unwrap();
        let me = std::process::id();
        let server = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
        writeln!(out, "{helper} {}", server.trim()).unwrap();
        drop(out);
        let _running = m.sleep_ms(60_000).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: never reached in the test; leave without destructors.
        unsafe { libc::_exit(0) }
    });
    let line = lines.next().expect("a line").unwrap();
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let helper = Helper(pids[0]);
    let server = pids[1];
    assert!(process_exists(helper.0) && process_exists(server));
    support::kill_and_reap(parent);
    let gone = eventually(GONE, || {
        // Reap what was re-parented to us (the fork server, once it is done).
        // SAFETY: non-blocking reaping of our adopted children.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        !process_exists(helper.0) && !process_exists(server)
    });
    // Its memory was memfds: nothing of it is left anywhere.
    assert!(support::segments_of(parent as u32).is_empty());
    assert!(
        gone,
        "helper alive: {}, fork server alive: {}",
        process_exists(helper.0),
        process_exists(server)
    );
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    support::assert_no_children();
}

fn a_worker_holds_none_of_the_programs_descriptors_but_the_inherited_one() {
    let dir = std::env::temp_dir();
    let secret_path = dir.join(format!("fw-secret-{}", std::process::id()));
    let shared_path = dir.join(format!("fw-shared-{}", std::process::id()));
    let secret = std::fs::File::create(&secret_path).unwrap();
    let shared = std::fs::File::create(&shared_path).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cleanup = || {
        let _ = std::fs::remove_file(&secret_path);
        let _ = std::fs::remove_file(&shared_path);
    };
    // Another mediator, running: its segment, eventfd, pidfds and socket are open here.
    let mut other = ProcsMediator::new("Other", Procs);
    let id = other.sleep_ms(1).unwrap();
    other.wait(id, LONG).unwrap();
    log::set_logger(&Recorder).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut m = ProcsMediator::new("Fds", Procs);
    m.inherit_fd(shared.as_raw_fd());
    let id = m.fds().unwrap();
    let fds = m.wait(id, LONG);
    cleanup();
    let fds = fds.unwrap();
    let target = |fd: i32| fds.iter().find(|(f, _)| *f == fd).map(|(_, t)| t.as_str());
    assert_eq!(target(secret.as_raw_fd()), Some("/dev/null"), "{fds:?}");
    assert_eq!(target(listener.as_raw_fd()), Some("/dev/null"), "{fds:?}");
    assert_eq!(
        target(shared.as_raw_fd()),
        Some(shared_path.to_str().unwrap()),
        "the inherited file: {fds:?}"
    );
    assert!(
        target(2).is_some_and(|t| t.starts_with("pipe:")),
        "stderr: {fds:?}"
    );
    // Besides stdin, stdout, stderr, the inherited file and /dev/null: the worker's own
    // eventfd and log socket, and the directory it listed.
    let others: Vec<&(i32, String)> = fds
        .iter()
        .filter(|(fd, to)| {
            *fd > 2 && *fd != shared.as_raw_fd() && to != "/dev/null" && !to.starts_with("/proc/")
        })
        .collect();
    let eventfds = others
        .iter()
        .filter(|(_, t)| t == "anon_inode:[eventfd]")
        .count();
    let sockets = others
        .iter()
        .filter(|(_, t)| t.starts_with("socket:"))
        .count();
    // And its own area and the pool's spin page, the memory it maps.
    let memfds = others
        .iter()
        .filter(|(_, t)| t.starts_with("/memfd:fw.") && t.contains(".Fds."))
        .count();
    assert!(
        eventfds == 1 && sockets == 1 && memfds == 2 && others.len() == 4,
        "the worker holds more than its own eventfd, log socket, area and spin page: {others:?}"
    );
    assert!(
        !fds.iter()
            .any(|(_, t)| t == &socket || t.contains("/dev/shm/") || t.contains("pidfd")),
        "{fds:?}"
    );
    // One warning, naming the replaced descriptors of the program's, not forkworker's own
    // (the other mediator's) nor the inherited one.
    let records = RECORDS.lock().unwrap();
    let warnings: Vec<&String> = records
        .iter()
        .filter(|(l, target, msg)| {
            *l == log::Level::Warn && target == "Fds" && msg.contains("/dev/null in place of")
        })
        .map(|(_, _, msg)| msg)
        .collect();
    assert_eq!(warnings.len(), 1, "{records:?}");
    let secret_fd = format!("{} ({})", secret.as_raw_fd(), secret_path.display());
    let socket_fd = format!("{} ({socket})", listener.as_raw_fd());
    assert!(
        warnings[0].contains(&secret_fd) && warnings[0].contains(&socket_fd),
        "{}",
        warnings[0]
    );
    assert!(
        !warnings[0].contains("/dev/shm/")
            && !warnings[0].contains("pidfd")
            && !warnings[0].contains(shared_path.to_str().unwrap()),
        "{}",
        warnings[0]
    );
}

fn a_crash_carries_the_end_of_the_workers_stderr() {
    let mut m = ProcsMediator::new("Tail", Procs);
    let id = m.say_then_abort(3).unwrap();
    match m.wait(id, LONG) {
        Err(e @ CallError::Crashed { .. }) => {
            let CallError::Crashed { ref stderr, .. } = e else {
                unreachable!()
            };
            assert!(
                stderr.starts_with("line 0 of")
                    && stderr.ends_with("line 2 of what the worker said before it died"),
                "{stderr:?}"
            );
            assert!(e.to_string().contains("line 2 of what"), "{e}");
        }
        other => panic!("expected Crashed, got {other:?}"),
    }
    // Much more than 4 KiB: the last 4 KiB, from the start of a line.
    let id = m.say_then_abort(1000).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Crashed { stderr, .. }) => {
            assert!(
                stderr.len() <= 4096 && stderr.len() > 3000,
                "{} bytes",
                stderr.len()
            );
            assert!(
                stderr.starts_with("line ")
                    && stderr.ends_with("line 999 of what the worker said before it died"),
                "{stderr:?}"
            );
        }
        other => panic!("expected Crashed, got {other:?}"),
    }
    let id = m.overflow(0).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Crashed { stderr, .. }) => {
            assert!(stderr.contains("has overflowed its stack"), "{stderr:?}")
        }
        other => panic!("expected Crashed, got {other:?}"),
    }
}

/// Makes this process's stderr a pipe nobody reads, until dropped.
struct DeafStderr {
    saved: OwnedFd,
    _read: OwnedFd,
}

impl DeafStderr {
    fn new() -> DeafStderr {
        let (read, write) = support::pipe();
        // SAFETY: duplicating our stderr, then replacing it with the pipe's write end.
        unsafe {
            let saved = OwnedFd::from_raw_fd(libc::dup(2));
            libc::dup2(write.as_raw_fd(), 2);
            DeafStderr { saved, _read: read }
        }
    }
}

impl Drop for DeafStderr {
    fn drop(&mut self) {
        // SAFETY: putting our stderr back.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 2) };
    }
}

fn a_worker_flooding_stderr_is_not_blocked() {
    let deaf = DeafStderr::new();
    let mut m = ProcsMediator::new("Flood", Procs);
    m.timeout(Duration::from_secs(60));
    let t = Instant::now();
    let id = m.flood(100 << 20).unwrap();
    let outcome = m.wait(id, LONG);
    let took = t.elapsed();
    let id = m.sleep_ms(1).unwrap();
    let next = m.wait(id, LONG);
    drop(m);
    drop(deaf);
    assert_eq!(outcome, Ok(100 << 20), "after {took:?}");
    assert_eq!(next, Ok(1));
    println!("100 MiB of stderr with nobody reading it: {took:?}");
}

/// The records this process's logger received: level, target, message.
static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS.lock().unwrap().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

fn a_workers_log_records_reach_the_parents_logger() {
    log::set_logger(&Recorder).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut m = ProcsMediator::new("Logs", Procs);
    let id = m.log_twice("hello from the worker".into()).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(0));
    let worker = m.pids()[0];
    // Shown with the sender's pid, as the kernel gives it.
    let prefix = format!("[worker {worker}] ");
    let seen = |level: log::Level, text: &str| {
        RECORDS.lock().unwrap().iter().any(|(l, target, msg)| {
            *l == level && target == "Logs" && msg.starts_with(&prefix) && msg.contains(text)
        })
    };
    assert!(
        eventually(LONG, || {
            m.poll();
            seen(log::Level::Info, "hello from the worker (log)")
                && seen(log::Level::Error, "hello from the worker (error)")
        }),
        "{:?}",
        RECORDS.lock().unwrap()
    );
    assert_eq!(m.errors().catchall, 1);
}

fn a_killed_fork_server_is_replaced() {
    let mut m = ProcsMediator::new("Server", Procs);
    let id = m.sleep_ms(1).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(1));
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
    let server: i32 = children.trim().parse().expect("one child: the fork server");
    // SAFETY: SIGKILL to our own child, the fork server; the pool reaps it.
    unsafe { libc::kill(server, libc::SIGKILL) };
    let mut result = None;
    assert!(
        eventually(LONG, || {
            let id = m.sleep_ms(1).unwrap();
            result = Some(m.wait(id, LONG));
            result == Some(Ok(1))
        }),
        "{result:?}"
    );
}

/// The fork server's parent-death signal is SIGTERM, which a service manager also sends to a
/// whole group: while its parent lives, the server takes no notice of it.
fn a_sigterm_does_not_stop_the_fork_server_while_its_parent_lives() {
    let mut m = ProcsMediator::new("Term", Procs);
    let helper = helper_of(&mut m);
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
    let server: i32 = children.trim().parse().expect("one child: the fork server");
    // SAFETY: SIGTERM to our own child, the fork server.
    unsafe { libc::kill(server, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        process_exists(helper.0),
        "the helper's worker lives: so does the helper"
    );
    let id = m.sleep_ms(1).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(1));
    let after = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
    assert_eq!(after.trim(), server.to_string(), "the same fork server");
    drop(m);
    assert_gone(&helper, "the mediator was dropped");
}

tests![
    a_sigterm_does_not_stop_the_fork_server_while_its_parent_lives,
    a_helper_goes_when_its_worker_times_out,
    a_chain_of_five_goes_when_its_worker_times_out,
    a_helper_goes_when_its_worker_is_recycled,
    a_helper_goes_when_its_worker_crashes,
    a_helper_goes_when_its_call_is_cancelled_at_shutdown,
    a_helper_goes_when_the_mediator_drops,
    a_helper_goes_when_the_parent_is_sigkilled,
    a_worker_holds_none_of_the_programs_descriptors_but_the_inherited_one,
    a_crash_carries_the_end_of_the_workers_stderr,
    a_worker_flooding_stderr_is_not_blocked,
    a_workers_log_records_reach_the_parents_logger,
    a_killed_fork_server_is_replaced,
];
