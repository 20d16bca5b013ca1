//! The daemon host, run as a child process and driven with real signals: statistics on
//! SIGUSR1, a graceful SIGTERM that keeps queued calls, recovery in the next run, the
//! application's state from inside workers, and the single-instance lock. Each test runs
//! alone in its own process (see `support`), which also checks what it left behind.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forkworker::daemon::{Application, BoxError, Control, Daemon, DaemonError, WorkerKey, Workers};
use forkworker::instance::InstanceError;
use forkworker::this_worker;
use support::{app_name, eventually};

const LONG: Duration = Duration::from_secs(60);

pub struct Jobs;

#[forkworker::worker]
impl Jobs {
    /// Idempotent work: returns its input after `ms` milliseconds.
    pub fn job(&self, n: u64, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        n
    }

    /// The application's secret, as the worker saw it at its fork.
    pub fn secret(&self) -> Option<u64> {
        this_worker::daemon::<App>().map(|app| app.secret)
    }
}

/// What the test's daemon does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Queue `n` calls at setup, each taking `ms`; stop once all returned (if `stop_when_done`).
    Queue {
        n: u64,
        ms: u64,
        stop_when_done: bool,
    },
    /// Ask a worker for the secret once, write it to the report, and stop.
    Secret,
    /// Do nothing until signalled.
    Idle,
}

pub struct App {
    plan: Plan,
    secret: u64,
    jobs: Option<WorkerKey<JobsMediator>>,
    report: PathBuf,
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

impl Application for App {
    fn setup(&mut self, workers: &mut Workers<Self>, _ctl: &mut Control) -> Result<(), BoxError> {
        let jobs = workers.get(self.jobs.unwrap());
        if let Plan::Queue { n, ms, .. } = self.plan {
            for i in 0..n {
                drop(jobs.job(i, ms)?);
            }
        }
        if self.plan == Plan::Secret {
            drop(jobs.secret()?);
        }
        Ok(())
    }

    fn execute(&mut self, workers: &mut Workers<Self>, ctl: &mut Control) {
        let jobs = workers.get(self.jobs.unwrap());
        match self.plan {
            Plan::Queue {
                stop_when_done: true,
                ..
            } if jobs.pending() == 0 && ctl.iteration() > 0 => ctl.stop(),
            Plan::Secret if jobs.pending() == 0 && ctl.iteration() > 0 => ctl.stop(),
            _ => {}
        }
    }
}

/// A logger that appends every line to a file.
struct FileLog(Mutex<std::fs::File>);

impl log::Log for FileLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let mut f = self.0.lock().unwrap();
        let _ = writeln!(
            f,
            "[{} {}] {}",
            record.level(),
            record.target(),
            record.args()
        );
    }
    fn flush(&self) {}
}

struct Paths {
    dir: PathBuf,
    log: PathBuf,
    report: PathBuf,
}

fn paths() -> Paths {
    let dir = std::env::temp_dir().join(format!("fw-daemon-test-{}", test_pid()));
    std::fs::create_dir_all(&dir).unwrap();
    Paths {
        log: dir.join("daemon.log"),
        report: dir.join("report"),
        dir,
    }
}

fn test_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Forks a child that runs the daemon with `plan`; returns its pid.
fn start_daemon(plan: Plan, recover: bool) -> i32 {
    let p = paths();
    // SAFETY: the test process is single-threaded; the child runs the daemon and exits.
    match unsafe { libc::fork() } {
        0 => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p.log)
                .unwrap();
            log::set_boxed_logger(Box::new(FileLog(Mutex::new(file)))).unwrap();
            log::set_max_level(log::LevelFilter::Info);
            let report = p.report.clone();
            let mut daemon = Daemon::new(
                app_name(test_pid()),
                App {
                    plan,
                    secret: 4242,
                    jobs: None,
                    report: p.report.clone(),
                },
            );
            daemon
                .lock_dir(&p.dir)
                .recover_workers(recover)
                .loop_interval(Duration::from_millis(20));
            let mut jobs = JobsMediator::new("Jobs", Jobs);
            jobs.workers(1)
                .malloc(2 << 20)
                .timeout(Duration::from_secs(30));
            let key = daemon.add(jobs);
            daemon.app().jobs = Some(key);
            daemon.on_return(key, move |app, _workers, call, _log| {
                match call.return_value() {
                    Some(Ok(JobsReturn::Job(n))) => append(&app.report, &n.to_string()),
                    Some(Ok(JobsReturn::Secret(s))) => {
                        append(&app.report, &format!("secret {s:?}"))
                    }
                    _ => panic!("unexpected return for call {}", call.id()),
                }
            });
            let _ = &report;
            let code = match daemon.run() {
                Ok(_) => 0,
                Err(DaemonError::Instance(InstanceError::Held { pid, .. })) => {
                    append(&p.report, &format!("held by {pid:?}"));
                    4
                }
                Err(e) => {
                    append(&p.report, &format!("error: {e}"));
                    3
                }
            };
            // SAFETY: leaving the forked test process without running the test harness on.
            unsafe { libc::_exit(code) }
        }
        pid if pid > 0 => pid,
        _ => panic!("fork failed"),
    }
}

/// A daemon run that only recovers the queue an earlier run left and stops when it is done.
fn start_recovery() -> i32 {
    start_daemon(
        Plan::Queue {
            n: 0,
            ms: 0,
            stop_when_done: true,
        },
        true,
    )
}

fn wait_exit(pid: i32) -> i32 {
    let mut status = 0;
    let end = Instant::now() + LONG;
    loop {
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(Instant::now() < end, "daemon {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status),
        "daemon ended by a signal: {status}"
    );
    libc::WEXITSTATUS(status)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn report_counts() -> HashMap<u64, u32> {
    let mut counts = HashMap::new();
    for line in read(&paths().report).lines() {
        if let Ok(n) = line.parse() {
            *counts.entry(n).or_default() += 1;
        }
    }
    counts
}

fn cleanup() {
    let _ = std::fs::remove_dir_all(paths().dir);
}

fn sigusr1_writes_the_statistics_table() {
    let pid = start_daemon(
        Plan::Queue {
            n: 30,
            ms: 1,
            stop_when_done: false,
        },
        false,
    );
    assert!(eventually(LONG, || report_counts().len() == 30));
    signal(pid, libc::SIGUSR1);
    assert!(eventually(LONG, || read(&paths().log)
        .contains("Worker Runtime Statistics")));
    // The table is written in one log line; give it a moment to be complete.
    std::thread::sleep(Duration::from_millis(50));
    signal(pid, libc::SIGTERM);
    assert_eq!(wait_exit(pid), 0);
    let log = read(&paths().log);
    let row = log
        .lines()
        .find(|l| l.trim_start().starts_with("job") && l.contains("Running"))
        .unwrap_or_else(|| panic!("no row for job in\n{log}"));
    assert!(row.trim_end().ends_with(" 30"), "30 calls counted: {row}");
    // The outcomes: 30 returned, nothing else.
    let outcomes: Vec<&str> = log
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|t| t.first() == Some(&"job") && t.len() == 7 && t[1].parse::<u64>().is_ok())
        .unwrap_or_else(|| panic!("no outcome row for job in\n{log}"));
    assert_eq!(outcomes[1..], ["30", "0", "0", "0", "0", "0"], "{log}");
    assert!(
        log.contains("Returned") && log.contains("Cancelled"),
        "{log}"
    );
    for needle in [
        "Communication",
        "Corruption",
        "Catchall",
        "Uptime",
        "Memory",
    ] {
        assert!(log.contains(needle), "{needle} missing from\n{log}");
    }
    cleanup();
}

fn sigterm_keeps_queued_calls_and_recovery_completes_all_100() {
    let pid = start_daemon(
        Plan::Queue {
            n: 100,
            ms: 20,
            stop_when_done: false,
        },
        false,
    );
    assert!(eventually(LONG, || report_counts().len() >= 5));
    signal(pid, libc::SIGTERM);
    assert_eq!(wait_exit(pid), 0, "a graceful stop exits 0");
    let first = report_counts();
    assert!(first.len() < 100, "the stop came before the queue drained");
    assert!(
        read(&paths().log).contains("calls kept for the next run"),
        "{}",
        read(&paths().log)
    );
    let pid = start_recovery();
    assert_eq!(wait_exit(pid), 0);
    let all = report_counts();
    assert_eq!(all.len(), 100, "every call completed across the two runs");
    assert!(all.values().all(|&c| c == 1), "none ran twice");
    assert!(
        support::segments_of(test_pid()).is_empty(),
        "nothing left to recover: removed"
    );
    cleanup();
}

fn a_sigkilled_daemon_loses_none_of_1000_calls() {
    let pid = start_daemon(
        Plan::Queue {
            n: 1_000,
            ms: 1,
            stop_when_done: false,
        },
        false,
    );
    assert!(eventually(LONG, || report_counts().len() >= 100));
    support::kill_and_reap(pid);
    let first = report_counts();
    assert!(first.len() < 1_000, "killed before the queue drained");
    // Its workers die with it; the lock is free again once they are gone.
    let pid = start_recovery();
    assert_eq!(wait_exit(pid), 0, "{}", read(&paths().report));
    let all = report_counts();
    let lost: Vec<u64> = (0..1_000).filter(|n| !all.contains_key(n)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let twice = all.values().filter(|&&c| c > 1).count();
    println!(
        "first run delivered {}, recovery the rest; {twice} delivered twice",
        first.len()
    );
    assert!(
        twice <= 2,
        "at most the calls in flight at the kill run twice: {twice}"
    );
    assert!(support::segments_of(test_pid()).is_empty());
    cleanup();
}

fn a_worker_reads_the_applications_state_as_forked() {
    let pid = start_daemon(Plan::Secret, false);
    assert_eq!(wait_exit(pid), 0);
    assert!(
        read(&paths().report).contains("secret Some(4242)"),
        "{}",
        read(&paths().report)
    );
    cleanup();
}

fn a_second_instance_refuses_to_start() {
    let first = start_daemon(Plan::Idle, false);
    assert!(eventually(LONG, || read(&paths().log).contains("started")));
    let second = start_daemon(Plan::Idle, false);
    assert_eq!(
        wait_exit(second),
        4,
        "the second instance failed with InstanceError::Held"
    );
    let report = read(&paths().report);
    assert!(
        report.contains(&format!("held by Some({first})")),
        "names the running instance: {report}"
    );
    signal(first, libc::SIGTERM);
    assert_eq!(wait_exit(first), 0);
    cleanup();
}

tests![
    sigusr1_writes_the_statistics_table,
    sigterm_keeps_queued_calls_and_recovery_completes_all_100,
    a_sigkilled_daemon_loses_none_of_1000_calls,
    a_worker_reads_the_applications_state_as_forked,
    a_second_instance_refuses_to_start,
];
