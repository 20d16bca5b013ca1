//! Pools started inside a threaded program: fork servers forked from the threads of a
//! multi-threaded tokio runtime while other threads print to stdout and stderr and log without
//! pause; a fork server whose forking thread exits before it; a forking thread that blocks
//! signals; forkworker's own warnings in a worker, which must not go through the program's
//! logger. Each test runs alone in its own process (see `support`), which also checks what it
//! left behind.

mod support;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use forkworker::this_worker;

/// How many mediators the threaded test starts, and how many of its workers it replaces.
const STARTS: usize = 20;
const REPLACEMENTS: usize = 100;
/// How many mediators are started at once, each on a thread of the runtime.
const STARTERS: usize = 4;
/// How long a call may take before it counts as deadlocked: a worker that inherited a lock
/// held forever hangs at its first print; a healthy one answers in milliseconds.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// The whole threaded test, well under the harness's 180 s.
const TEST_LIMIT: Duration = Duration::from_secs(25);

pub struct Echo;

#[forkworker::worker]
impl Echo {
    /// Prints to stdout and stderr and logs through forkworker (all of which take locks the
    /// parent's threads hold most of the time), then says who it is: its pid and its parent's
    /// (the fork server).
    pub fn who(&self, n: u64) -> (u32, i32) {
        println!("worker {} call {n}", std::process::id());
        eprintln!("worker {} call {n}", std::process::id());
        this_worker::log(format_args!("call {n}"));
        // SAFETY: getppid cannot fail.
        (std::process::id(), unsafe { libc::getppid() })
    }

    /// The signals this worker has blocked (`SigBlk` of /proc/self/status).
    pub fn blocked(&self) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .unwrap_or(u64::MAX)
    }
}

/// A logger that takes a lock of its own, then stderr's, for every record: the pattern of
/// common loggers.
struct LockingLogger {
    records: Mutex<u64>,
}

impl log::Log for LockingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut n = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        *n += 1;
        let _ = writeln!(std::io::stderr().lock(), "{n} {}", record.args());
    }

    fn flush(&self) {}
}

static LOGGER: LockingLogger = LockingLogger {
    records: Mutex::new(0),
};

/// Points the process's stdout and stderr at /dev/null until dropped (then back): the noise
/// threads write hundreds of megabytes, which the harness would otherwise keep.
struct Silenced {
    out: OwnedFd,
    err: OwnedFd,
}

impl Silenced {
    fn new() -> Silenced {
        // SAFETY: dup, open and dup2 of our own descriptors; the copies are owned below.
        unsafe {
            let out = OwnedFd::from_raw_fd(libc::dup(1));
            let err = OwnedFd::from_raw_fd(libc::dup(2));
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            assert!(null >= 0, "open /dev/null");
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
            Silenced { out, err }
        }
    }
}

impl Drop for Silenced {
    fn drop(&mut self) {
        // SAFETY: putting our saved descriptors back in place.
        unsafe {
            libc::dup2(self.out.as_raw_fd(), 1);
            libc::dup2(self.err.as_raw_fd(), 2);
        }
    }
}

/// What one starter did, or how it failed.
type Outcome = Result<(usize, usize), String>;

/// Starts `starts` mediators one after the other on the calling thread (a thread of the
/// runtime) and replaces `kills` workers of each by killing them with SIGKILL from outside;
/// every call must be answered within [`CALL_LIMIT`]. Returns the starts and replacements
/// made.
fn start_and_replace(starter: usize, starts: usize, kills: usize) -> Outcome {
    let mut replaced = 0;
    for s in 0..starts {
        let mut m = EchoMediator::new(format!("Echo{starter}"), Echo);
        m.workers(2).timeout(CALL_LIMIT);
        m.start()
            .map_err(|e| format!("starter {starter}, start {s}: {e}"))?;
        let mut call = |n: u64| -> Result<(u32, i32), String> {
            let id = m
                .who(n)
                .map_err(|e| format!("starter {starter}, start {s}: submit: {e}"))?;
            m.wait(id, CALL_LIMIT * 2).map_err(|e| {
                format!(
                    "starter {starter}, start {s}, call {n}: {e} (a worker deadlocked: it \
                     inherited a lock held at the fork)"
                )
            })
        };
        let (mut pid, server) = call(0)?;
        for k in 0..kills {
            // SAFETY: someone else's SIGKILL, as far as the mediator knows.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let end = Instant::now() + CALL_LIMIT;
            let mut n = 1;
            let next = loop {
                let (p, from) = call(n)?;
                if from != server {
                    return Err(format!(
                        "starter {starter}, start {s}: a worker came from {from}, not from the \
                         fork server {server}"
                    ));
                }
                if p != pid && !support::process_exists(pid as i32) {
                    break p;
                }
                if Instant::now() > end {
                    return Err(format!(
                        "starter {starter}, start {s}, kill {k}: worker {pid} was not replaced"
                    ));
                }
                n += 1;
            };
            pid = next;
            replaced += 1;
        }
        drop(m);
    }
    Ok((starts, replaced))
}

/// [`start_and_replace`] on the shared face, from an async task: each pool is started inside
/// the runtime (its own thread forks the fork server) and its calls are awaited.
async fn start_and_replace_pools(starter: usize, starts: usize, kills: usize) -> Outcome {
    let mut replaced = 0;
    for s in 0..starts {
        let pool = EchoPool::builder(format!("Pool{starter}"), Echo)
            .workers(2)
            .timeout(CALL_LIMIT)
            .start()
            .map_err(|e| format!("pool starter {starter}, start {s}: {e}"))?;
        let call = |n: u64| {
            let call = pool.who(n);
            async move {
                match tokio::time::timeout(CALL_LIMIT * 2, call).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(format!("pool starter {starter}, start {s}, call {n}: {e}")),
                    Err(_) => Err(format!(
                        "pool starter {starter}, start {s}, call {n}: no answer (a deadlock)"
                    )),
                }
            }
        };
        let (mut pid, _) = call(0).await?;
        for k in 0..kills {
            // SAFETY: someone else's SIGKILL, as far as the pool knows.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let end = Instant::now() + CALL_LIMIT;
            let mut n = 1;
            pid = loop {
                let (p, _) = call(n).await?;
                if p != pid && !support::process_exists(pid as i32) {
                    break p;
                }
                if Instant::now() > end {
                    return Err(format!(
                        "pool starter {starter}, start {s}, kill {k}: worker {pid} was not replaced"
                    ));
                }
                n += 1;
            };
            replaced += 1;
        }
        drop(pool);
    }
    Ok((starts, replaced))
}

/// Runs `f` on a thread of its own until `stop`, as fast as it goes.
fn noise(stop: Arc<AtomicBool>, mut f: impl FnMut(u64) + Send + 'static) -> impl FnOnce() {
    move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            f(i);
            i = i.wrapping_add(1);
        }
    }
}

fn starts_and_replacements_inside_a_tokio_runtime_never_deadlock() {
    log::set_logger(&LOGGER).expect("the first logger");
    log::set_max_level(log::LevelFilter::Info);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        // Blocking threads exit soon after their closure: each start may come from a new one.
        .thread_keep_alive(Duration::from_millis(20))
        .enable_time()
        .build()
        .expect("a runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let printed = Arc::new(AtomicU64::new(0));
    let silenced = Silenced::new();
    let t0 = Instant::now();
    let result: Result<(usize, usize), String> = runtime.block_on(async {
        // Other threads: stdout, stderr and the logger's lock taken without pause, on
        // blocking threads and on the runtime's own worker threads.
        let count = printed.clone();
        let mut noisy = vec![
            tokio::task::spawn_blocking(noise(stop.clone(), move |i| {
                println!("stdout noise {i}");
                count.fetch_add(1, Ordering::Relaxed);
            })),
            tokio::task::spawn_blocking(noise(stop.clone(), |i| eprintln!("stderr noise {i}"))),
            tokio::task::spawn_blocking(noise(stop.clone(), |i| log::info!("log noise {i}"))),
        ];
        for t in 0..2 {
            let stop = stop.clone();
            noisy.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    log::info!("task {t} logs {i}");
                    println!("task {t} prints {i}");
                    i += 1;
                    if i.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        // Mediators started and driven inside the runtime's threads: blocking threads, and
        // one of the runtime's worker threads (through block_in_place).
        let per = STARTS / STARTERS;
        let kills = REPLACEMENTS / STARTS;
        let mut starters: Vec<tokio::task::JoinHandle<Outcome>> = (0..STARTERS - 1)
            .map(|s| tokio::task::spawn_blocking(move || start_and_replace(s, per, kills)))
            .collect();
        starters.push(tokio::spawn(async move {
            tokio::task::block_in_place(|| start_and_replace(STARTERS - 1, per, kills))
        }));
        // And as many shared pools, started and awaited from a task.
        starters.push(tokio::spawn(start_and_replace_pools(
            STARTERS, STARTS, kills,
        )));
        let all = async {
            let mut total = (0, 0);
            let mut failures = Vec::new();
            for s in starters {
                match s.await {
                    Ok(Ok((starts, replaced))) => {
                        total.0 += starts;
                        total.1 += replaced;
                    }
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(format!("a starter panicked: {e}")),
                }
            }
            if failures.is_empty() {
                Ok(total)
            } else {
                Err(failures.join("\n"))
            }
        };
        let result = match tokio::time::timeout(TEST_LIMIT, all).await {
            Ok(r) => r,
            Err(_) => Err(format!("not done after {TEST_LIMIT:?}: deadlocked")),
        };
        stop.store(true, Ordering::Relaxed);
        for t in noisy {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        result
    });
    let took = t0.elapsed();
    // Whatever is still stuck is left to the harness, which fails the test for it too.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(silenced);
    let (starts, replaced) = result.unwrap_or_else(|e| panic!("{e}"));
    let records = *LOGGER
        .records
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let lines = printed.load(Ordering::Relaxed);
    println!(
        "{starts} starts, {replaced} replacements in {took:?}; {lines} stdout lines and {records} log records from the noise threads meanwhile"
    );
    // The mediators' and the shared pools'.
    assert_eq!((starts, replaced), (2 * STARTS, 2 * REPLACEMENTS));
    assert!(
        lines > 1000 && records > 1000,
        "the noise ran: {lines} lines, {records} records"
    );
}

/// Whether process `pid` is gone or a zombie (dead, not yet reaped by whoever adopted it).
fn dead(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            == Some(true)
    })
}

fn a_fork_server_outlives_the_thread_that_forked_it_and_dies_with_its_process() {
    // A mediator cannot leave the thread it was made on, and is dropped there: only one leaked
    // on a thread that then ends outlives its forking thread. The process that does this is a
    // child of the test, so that its death can be watched too.
    let (pid, mut lines) = support::fork_reporting(|mut report| {
        let forker = std::thread::spawn(|| {
            // SAFETY: getpid cannot fail.
            let me = unsafe { libc::getpid() };
            // A canary forked from the same thread, with SIGKILL as its parent-death signal:
            // its death shows that this thread's end sends that signal.
            // SAFETY: the child only calls prctl, getppid and pause before it is killed.
            let canary = match unsafe { libc::fork() } {
                0 => unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    if libc::getppid() != me {
                        libc::_exit(0);
                    }
                    loop {
                        libc::pause();
                    }
                },
                c => c,
            };
            let m = Box::leak(Box::new(EchoMediator::new("Echo", Echo)));
            m.workers(1).timeout(CALL_LIMIT);
            let id = m.who(1).expect("submit");
            let (worker, server) = m.wait(id, CALL_LIMIT).expect("a first call");
            (canary, worker as i32, server)
        });
        let (canary, worker, server) = forker.join().expect("the forking thread");
        // The thread is gone: its canary dies of its parent-death signal, and the server got
        // its own.
        let mut status = 0;
        let canary_killed = support::eventually(Duration::from_secs(5), || {
            // SAFETY: non-blocking reaping of our own child.
            unsafe { libc::waitpid(canary, &mut status, libc::WNOHANG) == canary }
        }) && libc::WIFSIGNALED(status)
            && libc::WTERMSIG(status) == libc::SIGKILL;
        std::thread::sleep(Duration::from_millis(500));
        let lives = !dead(server) && !dead(worker);
        let _ = writeln!(report, "{canary_killed} {lives} {server} {worker}");
        // Leaving now: the process dies with its leaked mediator.
    });
    let line = lines.next().expect("a report").expect("a report line");
    let mut status = 0;
    // SAFETY: reaping our own child, which exits right after its report.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let words: Vec<&str> = line.split_whitespace().collect();
    let [canary_killed, lives, server, worker] = words[..] else {
        panic!("a bad report: {line:?}");
    };
    assert_eq!(
        canary_killed, "true",
        "the forking thread's end sent the parent-death signal"
    );
    assert_eq!(
        lives, "true",
        "the fork server and its worker live on, 500 ms after their forking thread ended"
    );
    let (server, worker): (i32, i32) = (server.parse().unwrap(), worker.parse().unwrap());
    assert!(
        support::eventually(Duration::from_secs(5), || dead(server) && dead(worker)),
        "the fork server {server} and its worker {worker} outlived their process"
    );
}

fn workers_of_a_thread_that_blocks_signals_start_with_none_blocked() {
    let blocked = std::thread::spawn(|| {
        // A thread of the program's that blocks signals its main thread takes.
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGUSR1);
        set.add(nix::sys::signal::Signal::SIGALRM);
        set.add(nix::sys::signal::Signal::SIGTERM);
        set.thread_block().expect("block");
        let mut m = EchoMediator::new("Echo", Echo);
        m.timeout(CALL_LIMIT);
        let id = m.blocked().expect("submit");
        m.wait(id, CALL_LIMIT * 2)
    })
    .join()
    .expect("the thread");
    assert_eq!(blocked, Ok(0), "the worker's blocked signals");
}

/// A logger that keeps each record with the pid of the process that logged it.
struct Recorder {
    records: Mutex<Vec<(u32, String)>>,
}

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((std::process::id(), record.args().to_string()));
    }

    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder {
    records: Mutex::new(Vec::new()),
};

fn a_workers_own_warning_reaches_the_parents_logger_not_the_workers_copy() {
    // A worker that cannot set its RLIMIT_DATA warns: it cannot raise its hard limit, which is
    // below what the memory limit asks for, as another user than root.
    if support::rerun_as(65534) {
        return;
    }
    let hard = libc::rlimit {
        rlim_cur: 1 << 30,
        rlim_max: 1 << 30,
    };
    // SAFETY: setrlimit with a valid struct; lowering needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_DATA, &hard) }, 0);
    log::set_logger(&RECORDER).expect("the first logger");
    log::set_max_level(log::LevelFilter::Warn);
    // SAFETY: the test process is single-threaded.
    unsafe { std::env::set_var("FORKWORKER_MEMORY_LIMIT_MECHANISM", "rlimit_data") };
    let mut m = EchoMediator::new("Echo", Echo);
    m.memory_limit(2 << 30).timeout(CALL_LIMIT);
    let id = m.blocked().expect("submit");
    m.wait(id, CALL_LIMIT * 2).expect("the call");
    let pid = m.pids()[0];
    let wanted = format!("[worker {pid}] cannot set RLIMIT_DATA");
    let me = std::process::id();
    let found = support::eventually(Duration::from_secs(5), || {
        m.poll();
        RECORDER
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(from, text)| *from == me && text.starts_with(&wanted))
    });
    let records = RECORDER
        .records
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(
        found,
        "{wanted:?} logged by the parent {me}; the parent's logger got {records:?}"
    );
}

tests![
    a_workers_own_warning_reaches_the_parents_logger_not_the_workers_copy,
    starts_and_replacements_inside_a_tokio_runtime_never_deadlock,
    a_fork_server_outlives_the_thread_that_forked_it_and_dies_with_its_process,
    workers_of_a_thread_that_blocks_signals_start_with_none_blocked,
];
