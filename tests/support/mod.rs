//! A test runner for tests that fork: every test runs alone in a fresh, single-threaded
//! process of this binary, so a fork inside a test is a fork from a single-threaded parent.
//!
//! The runner (the binary started by `cargo test`) starts one process per test, in a process
//! group of its own, and after it ends checks what it left behind:
//! - a process still alive in the test's process group (an orphaned worker) fails the test
//!   and is killed;
//! - a shared-memory segment of the test process under /dev/shm fails the test and is removed.
//!
//! Inside the test process, [`assert_no_children`] checks that every child was reaped
//! (no zombie). It prints libtest's summary line, so `cargo test` reads it as usual.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod host_process;
pub mod netns;
pub mod redis;

/// One test: a name and a function that panics on failure.
pub struct Test {
    pub name: &'static str,
    pub run: fn(),
}

/// Declares the test list: `tests![a, b, c]` builds `main`.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        fn main() {
            support::main(&[$(support::Test { name: stringify!($name), run: $name }),*]);
        }
    };
}

const CASE_VAR: &str = "FORKWORKER_TEST_CASE";
/// Longest a single test may run before it is killed and failed.
const TEST_LIMIT: Duration = Duration::from_secs(180);

pub fn main(tests: &[Test]) {
    if let Ok(name) = std::env::var(CASE_VAR) {
        let test = tests
            .iter()
            .find(|t| t.name == name)
            .expect("unknown test case");
        (test.run)();
        assert_no_children();
        assert_no_segments(std::process::id());
        std::process::exit(0);
    }
    // Orphaned workers of a failed test are re-parented to the runner, which reaps them.
    // SAFETY: prctl with valid arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for t in tests {
            println!("{}: test", t.name);
        }
        return;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let nocapture = args.iter().any(|a| a == "--nocapture");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|t| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        t.name == f.as_str()
                    } else {
                        t.name.contains(f.as_str())
                    }
                })
        })
        .collect();
    let started = Instant::now();
    println!("\nrunning {} tests (one process each)", selected.len());
    let mut failed = Vec::new();
    for test in &selected {
        let t0 = Instant::now();
        match run_isolated(test.name) {
            Ok(output) => {
                let took = t0.elapsed().as_secs_f64();
                println!("test {} ... ok ({took:.2}s)", test.name);
                if nocapture && !output.trim().is_empty() {
                    println!("{}", output.trim_end());
                }
            }
            Err(output) => {
                println!(
                    "test {} ... FAILED ({:.2}s)",
                    test.name,
                    t0.elapsed().as_secs_f64()
                );
                failed.push((test.name, output));
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, output) in &failed {
            println!("\n---- {name} ----\n{output}");
        }
        println!("\nfailures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        tests.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// Run as root, re-runs the current test case as `uid`/`gid` with no supplementary groups
/// (through `setpriv`), fails if that run fails, and returns true: the caller then returns.
/// Run as any other user, returns false: the caller is that run, and does the test.
pub fn rerun_as(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let case = std::env::var(CASE_VAR).expect("inside a test case");
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(std::env::current_exe().expect("own path"))
        .env(CASE_VAR, &case)
        .status()
        .expect("run setpriv (util-linux)");
    assert!(status.success(), "{case} as uid {uid}: {status}");
    true
}

/// Runs one test in a child process; returns its output, as the error if it failed.
fn run_isolated(name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env(CASE_VAR, name)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn test process");
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TEST_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            kill_group(pid);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The pipes close when every process holding them (the test and its workers) is gone:
    // kill leftovers first so that the readers finish.
    let leftovers = group_alive(pid);
    if leftovers {
        kill_group(pid);
    }
    let mut output = reader.join().unwrap_or_default();
    output.push_str(&err_reader.join().unwrap_or_default());
    let mut problems = Vec::new();
    match status {
        None => problems.push(format!("timed out after {TEST_LIMIT:?}")),
        Some(s) if !s.success() => problems.push(format!("test process ended with {s}")),
        Some(_) => {}
    }
    if leftovers {
        problems.push("processes of the test were still running after it ended".into());
    }
    let segments = segments_of(pid);
    if !segments.is_empty() {
        for s in &segments {
            let _ = std::fs::remove_file(format!("/dev/shm/{s}"));
        }
        problems.push(format!("shared-memory segments left behind: {segments:?}"));
    }
    if problems.is_empty() {
        Ok(output)
    } else {
        Err(format!("{output}\n{}", problems.join("\n")))
    }
}

fn group_alive(pgid: u32) -> bool {
    // Give exiting workers a moment to disappear.
    for _ in 0..100 {
        // SAFETY: reaping adopted children of the group without blocking.
        while unsafe { libc::waitpid(-(pgid as i32), std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(-(pgid as i32), 0) } != 0 {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn kill_group(pgid: u32) {
    // SAFETY: SIGKILL to the test's own process group, then reaping what was adopted.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
        while libc::waitpid(-(pgid as i32), std::ptr::null_mut(), libc::WNOHANG) > 0 {}
    }
}

/// The application name persistent mediators of test process `pid` use: their stores are
/// `<app>.<alias>.store` in the runtime directory, found by [`segments_of`] too.
pub fn app_name(pid: u32) -> String {
    format!("t{pid}")
}

/// forkworker's private runtime directory for this user (see worker-core/src/private_fs.rs):
/// `$XDG_RUNTIME_DIR/forkworker` when that variable is set, else `forkworker-<uid>` in the temp
/// directory.
pub fn runtime_dir() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(xdg) if std::path::Path::new(&xdg).is_dir() => {
            std::path::Path::new(&xdg).join("forkworker")
        }
        // SAFETY: geteuid cannot fail.
        _ => std::env::temp_dir().join(format!("forkworker-{}", unsafe { libc::geteuid() })),
    }
}

/// What process `pid` left of forkworker's: segments under /dev/shm named after it
/// (`fw.<pid>.*`: none since stores are memfds, but a regression would show), and the
/// persistent stores of [`app_name`] in the runtime directory (`t<pid>.<alias>.store`).
pub fn segments_of(pid: u32) -> Vec<String> {
    let prefix = format!("fw.{pid}.");
    let persistent = format!("{}.", app_name(pid));
    let list = |dir: &std::path::Path, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| keep(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = list(std::path::Path::new("/dev/shm"), &|n| {
        n.starts_with(&prefix)
    });
    found.extend(list(&runtime_dir(), &|n| {
        n.starts_with(&persistent) && n.ends_with(".store")
    }));
    found
}

/// This process's mappings of forkworker's (memfd) segments whose name contains `part`:
/// start address and length, from /proc/self/maps (`/memfd:fw.<pid>.<alias>.<n> (deleted)`).
/// A worker sees its mediator's segment there too.
pub fn memfd_mappings(part: &str) -> Vec<(usize, usize)> {
    let prefix = "/memfd:fw.";
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(prefix) && l.contains(part))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end - start))
        })
        .collect()
}

/// This process's mapping of the area of worker slot `slot` of the mediator `alias` (see
/// worker-core/src/area.rs: `/memfd:fw.<pid>.<alias>.<n>.area<slot>`): start and length.
/// The parent maps every area of its pools; a worker maps its own alone.
pub fn area_of(alias: &str, slot: usize) -> Option<(usize, usize)> {
    let tail = format!(".area{slot} (deleted)");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/memfd:fw.") && l.contains(alias) && l.ends_with(&tail))
        .find_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end - start))
        })
}

/// Panics if this process has a child, alive or zombie.
pub fn assert_no_children() {
    // SAFETY: WNOHANG never blocks; status is a valid out-pointer.
    let mut status = 0;
    let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        r == -1 && errno == Some(libc::ECHILD),
        "a child process is left: waitpid returned {r} (0 = alive, >0 = a zombie was left unreaped)"
    );
}

/// Panics if this process left a segment under /dev/shm or a persistent store.
pub fn assert_no_segments(pid: u32) {
    let left = segments_of(pid);
    assert!(left.is_empty(), "shared-memory segments left: {left:?}");
}

/// Kills process `pid`, which is not this process's child (a worker: the fork server's), and
/// waits up to 5 s for it to be gone.
pub fn kill_and_reap_foreign(pid: i32) {
    // SAFETY: signalling a process by pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    });
}

/// Whether process `pid` exists (alive or zombie).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits up to `limit` for `cond`, checking every few milliseconds.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Forks a child of this single-threaded test process that runs `body` with the write end of
/// a pipe (and leaves, without destructors, if `body` returns); returns the child's pid and
/// the lines it writes.
pub fn fork_reporting(
    body: impl FnOnce(std::fs::File),
) -> (i32, std::io::Lines<std::io::BufReader<std::fs::File>>) {
    use std::io::BufRead;
    let (read, write) = pipe();
    // SAFETY: the test process is single-threaded (see the module's doc), so the child may
    // run anything; it never returns into the test.
    match unsafe { libc::fork() } {
        0 => {
            drop(read);
            body(std::fs::File::from(write));
            // SAFETY: leaving the child without running the test's destructors.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            drop(write);
            (
                pid,
                std::io::BufReader::new(std::fs::File::from(read)).lines(),
            )
        }
        _ => panic!("fork failed"),
    }
}

/// A pipe: its read end and its write end.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid array for pipe's two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the pipe's descriptors, owned from here on.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Kills our child `pid` with SIGKILL and reaps it.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: killing and reaping our own child.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGKILL), 0, "kill({pid})");
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Sleeps in `poll(2)` until one of `fds` is readable or `until` passes.
pub fn sleep_on(fds: &[BorrowedFd<'_>], until: Option<Instant>) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = until.map_or(-1, |u| {
        u.saturating_duration_since(Instant::now())
            .as_millis()
            .min(60_000) as i32
            + 1
    });
    // SAFETY: a valid array of pollfd of the given length.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}
