//! forkworker against its floors and its nearest Rust peer, measured in one run.
//!
//! `cargo bench --bench compare` prints one Markdown table: each measure, forkworker's figure,
//! the floor or peer it is compared with, their ratio, the target, and whether it is met.
//! `cargo bench --bench compare -- --smoke` runs the same code paths with tiny counts (CI).
//! `-- --verbose` also prints every round's figures to stderr; `-- --only WHAT [--count N]`
//! runs one forkworker path alone for a profiler, or, with `paired`, the empty call and the
//! futex floor in alternating batches, or, with `pipeline` and `pipeline-loaded`, two workers
//! against one on pipelined calls, quiet or with one CPU kept busy (see `profile_only`). A
//! smoke run also runs the loaded pipeline, in its forking phase; a full run leaves it to its
//! `--only` group, so that its spinning process disturbs no other row.
//!
//! `main` reads the arguments; `full_table` runs one function per group of rows
//! (`measure_empty`, `measure_throughput`, `measure_pipeline`, `measure_payloads`, and the
//! forking measurements of `Forked::start`), and one function per group turns its figures
//! into rows (`empty_rows`, ...).
//!
//! Floors and peers, all measured in this run and interleaved round by round with forkworker,
//! so that a noisy VM slows both sides alike:
//! - a raw two-process ping-pong through a futex word in a shared mapping, spinning a fixed
//!   50 us before sleeping (the floor's own spin, see `SPIN`), measured with the time-stamp
//!   counter; and, for comparison, the same floor measuring its spin with the clock, whose
//!   reads cost it a clock read per check of the budget;
//! - a pipe-pair ping-pong;
//! - two `memcpy`s of the payload between pre-faulted buffers;
//! - `procspawn` (re-executes this binary for its workers; IPC through `ipc-channel`) with its
//!   `Pool`;
//! - Celery with a Redis broker and result backend, the peer of pools across machines, in a
//!   full run only (`compare/celery.rs`; `--only celery` runs its rows alone).
//!
//! Order matters: `procspawn::init()` comes first in `main` (a procspawn worker re-enters
//! `main` and never leaves `init`, so it never reaches forkworker's code); then, in
//! `full_table`, every fork
//! (forkworker pools, floor processes, the fault tests, whose workers are replaced by forks)
//! while this process has one thread; only then the procspawn pools, which start threads.
//! From then on no forkworker worker may die (its replacement would be forked from a threaded
//! process), so the fault tests run before.
//!
//! Medians over rounds, after a warm-up. On a VM a wait that really sleeps costs tens of
//! microseconds, so round trips are bimodal (spinning peer: well under a microsecond; sleeping
//! peer: 30-60 us) and the medians move from run to run; the last line gives the CPU steal
//! time of the run. The empty call's ratio to the futex floor is the median of ratios of
//! neighbouring batches, since the cost of a cache line's crossing itself moves (the host
//! places the two virtual CPUs differently from one run, or one second, to the next). Each
//! timed batch of a spinning path starts quiet (see `quiesce`): the peers of the paths timed
//! before it have stopped spinning, so on two CPUs it shares them with no third spinner.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use serde_bytes::ByteBuf;

// Not benches/celery.rs: Cargo would take that for a bench target of its own.
#[path = "compare/celery.rs"]
mod celery;
#[path = "compare/remote.rs"]
mod remote;

/// A connected pool of the bench's worker (pools across machines).
type RemoteBench = BenchPool<Bench, forkworker::RemotePool<Bench>>;

const MIB: usize = 1 << 20;
const LONG: Duration = Duration::from_secs(60);
/// How long the futex floor spins before sleeping, in nanoseconds: the floor's own, fixed
/// spin. It is the longest spin forkworker's sides use (`SPIN_NS` in worker-core/src/wake.rs),
/// and stays fixed while theirs adapts to the CPUs that are free, so that the floor measures
/// the same thing from one version to the next.
const SPIN: u32 = 50_000;
/// A longer spin for a second floor row (1 ms): the round trip when neither side ever sleeps.
const LONG_SPIN: u32 = 1_000_000;
/// How long `quiesce` waits: longer than any peer's spin, so that every peer sleeps after it.
const QUIET: Duration = Duration::from_micros(LONG_SPIN as u64 / 1000 + 200);
/// Untimed round trips that wake the pair about to be timed.
const WAKE: usize = 200;

/// Before a timed batch: waits until every spinning peer of this process (forkworker's
/// workers, the floors' peers) has given up its spin and sleeps, then wakes the pair about to
/// be timed with `WAKE` untimed round trips of `warm`. Without it, on two CPUs, the peer of
/// the batch timed just before keeps spinning into this one (50 us, or 1 ms for the long
/// floor), and both sides of a pair paid for it unevenly.
fn quiesce(warm: &mut dyn FnMut()) {
    std::thread::sleep(QUIET);
    (0..WAKE).for_each(|_| warm());
}

/// The worker type of every forkworker pool in this bench.
pub struct Bench {
    /// Address of an `AtomicU64` in a shared mapping made before any fork: `crash` stamps
    /// the time there just before it aborts, so the parent can tell how late it heard.
    stamp: usize,
}

#[forkworker::worker]
impl Bench {
    /// The empty call.
    pub fn noop(&self) {}

    /// Bytes in, bytes out.
    pub fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    /// Sleeps for `ms` milliseconds (keeps a worker busy).
    pub fn nap(&self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// Never returns: for timeouts.
    pub fn hang(&self) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Stamps CLOCK_MONOTONIC into the shared word, then aborts (SIGABRT, no core file).
    pub fn crash(&self) {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `stamp` points into a shared mapping that lives as long as the process; the
        // rlimit pointer is valid; abort never returns.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            (*(self.stamp as *const AtomicU64)).store(mono_ns(), Ordering::SeqCst);
            libc::abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Cfg {
    smoke: bool,
    /// Print each round's figures to stderr (`--verbose`).
    verbose: bool,
    /// Interleaved rounds of each comparison; medians are over them.
    rounds: usize,
    /// Empty calls per round (forkworker, futex floor).
    empty_fast: usize,
    /// Empty calls per round (pipe floor).
    empty_pipe: usize,
    /// Empty calls per round (procspawn).
    empty_ps: usize,
    /// Pipelined calls per throughput run (forkworker).
    tp_calls: usize,
    /// Pipelined calls per throughput run (procspawn; each pending call holds about three
    /// file descriptors, and procspawn is slow: see the note in the table).
    tp_ps_calls: usize,
    throughput_rounds: usize,
    /// Payload sizes and calls per round for each.
    payloads: Vec<(usize, usize)>,
    /// Timeouts and crashes provoked.
    faults: usize,
    timeout: Duration,
    /// How long the busy worker naps in the queue-memory test.
    nap_ms: u64,
}

impl Cfg {
    fn new(smoke: bool) -> Cfg {
        if smoke {
            Cfg {
                smoke,
                verbose: false,
                rounds: 2,
                empty_fast: 500,
                empty_pipe: 200,
                empty_ps: 20,
                tp_calls: 2_000,
                tp_ps_calls: 100,
                throughput_rounds: 2,
                payloads: vec![(MIB, 2), (16 * MIB, 1), (64 * MIB, 1)],
                faults: 2,
                timeout: Duration::from_millis(50),
                nap_ms: 100,
            }
        } else {
            Cfg {
                smoke,
                verbose: false,
                rounds: 15,
                empty_fast: 10_000,
                empty_pipe: 2_000,
                empty_ps: 200,
                tp_calls: 100_000,
                tp_ps_calls: 2_000,
                throughput_rounds: 7,
                payloads: vec![(MIB, 20), (16 * MIB, 4), (64 * MIB, 2)],
                faults: 10,
                timeout: Duration::from_millis(50),
                nap_ms: 300,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes (unlike `Instant`'s API).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A field of /proc/PID/status in KiB (VmRSS, RssAnon, RssShmem, Threads...).
fn proc_status(pid: i32, key: &str) -> Option<u64> {
    let path = if pid == 0 {
        "/proc/self/status".to_owned()
    } else {
        format!("/proc/{pid}/status")
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time of the whole machine and of this process tree, to tell a quiet run from a noisy one.
#[derive(Clone, Copy)]
struct CpuSample {
    /// Seconds over all CPUs from /proc/stat: busy (user, nice, system, irq, softirq), steal,
    /// and everything.
    busy: f64,
    steal: f64,
    total: f64,
    /// Seconds used by this process and its reaped children (every worker is reaped by the end).
    ours: f64,
}

impl CpuSample {
    fn now() -> CpuSample {
        // SAFETY: sysconf has no memory arguments.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
        let ours = [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
            .into_iter()
            .map(|who| {
                // SAFETY: getrusage fills a valid, zeroed rusage.
                let mut r: libc::rusage = unsafe { std::mem::zeroed() };
                unsafe { libc::getrusage(who, &mut r) };
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
                secs(r.ru_utime) + secs(r.ru_stime)
            })
            .sum();
        CpuSample {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
            total: (0..8).map(at).sum(),
            ours,
        }
    }

    /// (steal, others' use) in percent of the machine's CPU time since `start`.
    fn noise_since(self, start: CpuSample) -> (f64, f64) {
        let total = (self.total - start.total).max(1e-9);
        let steal = (self.steal - start.steal) / total * 100.0;
        let others = ((self.busy - start.busy) - (self.ours - start.ours)).max(0.0) / total;
        (steal, others * 100.0)
    }
}

fn threads() -> u64 {
    proc_status(0, "Threads").unwrap_or(0)
}

fn assert_single_threaded(when: &str) {
    let n = threads();
    assert_eq!(
        n, 1,
        "{when}: this process has {n} threads; forks must come before threads"
    );
}

fn spin_allowed() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
}

fn fmt_time(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M calls/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k calls/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} calls/s")
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= MIB as f64 {
        format!("{:.1} MiB", b / MIB as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn size_name(n: usize) -> String {
    format!("{} MiB", n / MIB)
}

// ---------------------------------------------------------------------------------------------
// The floors

/// The shared page of the futex ping-pong. Each cache line has one writer.
#[repr(C, align(64))]
struct Line {
    seq: AtomicU32,
    sleeping: AtomicU32,
}

#[repr(C)]
struct PingPage {
    /// Written by the parent: the request number (u32::MAX: quit).
    req: Line,
    /// Written by the child: the last request answered.
    resp: Line,
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on an aligned u32 of a shared mapping (not PRIVATE: the waker is
    // another process); returns at once if the word changed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on an aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// How a floor side measures its spin: with the CPU's time-stamp counter, as forkworker's
/// sides do, or with the clock, whose reads are slower (how forkworker spun until it moved to
/// the counter; benches/README.md has the figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Ticks,
    Clock,
}

/// The time-stamp counter (the clock's nanoseconds where there is none).
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no preconditions on x86_64.
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(not(target_arch = "x86_64"))]
    return mono_ns();
}

/// Counter ticks per nanosecond, measured once over 20 ms (the floor's own calibration: a
/// floor must not depend on the code it measures).
fn ticks_per_ns() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        let (t0, n0) = (ticks(), mono_ns());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, n1) = (ticks(), mono_ns());
        (t1 - t0) as f64 / (n1 - n0) as f64
    })
}

/// Waits until `line.seq` differs from `last`: spins for `spin_ns`, then sleeps, announcing
/// the sleep in `mine.sleeping` so that the peer knows to wake us.
fn wait_change(line: &Line, mine: &Line, last: u32, spin_ns: u32, budget: Budget) -> u32 {
    // Spin by time, looking at the counter (or the clock) every 64 checks.
    let (start, limit) = match budget {
        Budget::Ticks => (ticks(), (spin_ns as f64 * ticks_per_ns()) as u64),
        Budget::Clock => (mono_ns(), spin_ns as u64),
    };
    let elapsed = || match budget {
        Budget::Ticks => ticks().wrapping_sub(start),
        Budget::Clock => mono_ns() - start,
    };
    let mut spinning = spin_ns > 0;
    loop {
        let now = line.seq.load(Ordering::Acquire);
        if now != last {
            return now;
        }
        if spinning {
            for _ in 0..64 {
                if line.seq.load(Ordering::Acquire) != last {
                    break;
                }
                std::hint::spin_loop();
            }
            spinning = elapsed() < limit;
            continue;
        }
        mine.sleeping.store(1, Ordering::SeqCst);
        if line.seq.load(Ordering::SeqCst) == last {
            futex_wait(&line.seq, last);
        }
        mine.sleeping.store(0, Ordering::Relaxed);
    }
}

/// A fresh page of anonymous memory shared with the children forked after it, zeroed; it is
/// never unmapped (it lives as long as the bench).
fn shared_page() -> *mut libc::c_void {
    // SAFETY: a new anonymous shared mapping of one page; checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap failed");
    page
}

/// Forks a child that runs `body` and leaves with `_exit`; it dies with this process.
fn fork_child(body: impl FnOnce()) -> i32 {
    let parent = std::process::id() as i32;
    // SAFETY: this process is single-threaded here (checked by the callers' phase); the child
    // runs `body` and `_exit`s without unwinding into the parent's code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl with valid arguments; _exit never returns.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
        }
        body();
        // SAFETY: leaving without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Two processes bouncing a number through a futex word in a MAP_SHARED|MAP_ANONYMOUS page.
struct FutexFloor {
    page: *mut PingPage,
    pid: i32,
    seq: u32,
    spin: u32,
    budget: Budget,
}

impl FutexFloor {
    /// Forks the peer. Spins for `spin` nanoseconds before sleeping when more than one CPU is
    /// available (not at all otherwise), as forkworker's sides do when their spin is longest.
    fn start(spin: u32) -> FutexFloor {
        Self::start_with(spin, Budget::Ticks)
    }

    /// [`FutexFloor::start`], measuring the spin with `budget`.
    fn start_with(spin: u32, budget: Budget) -> FutexFloor {
        ticks_per_ns(); // before the fork: the child inherits it
        let page = shared_page().cast::<PingPage>();
        let spin = if spin_allowed() { spin } else { 0 };
        let addr = page as usize;
        let pid = fork_child(move || {
            // SAFETY: the mapping is shared with the parent and outlives this child.
            let p = unsafe { &*(addr as *const PingPage) };
            let mut last = 0;
            loop {
                last = wait_change(&p.req, &p.resp, last, spin, budget);
                if last == u32::MAX {
                    return;
                }
                p.resp.seq.store(last, Ordering::SeqCst);
                if p.req.sleeping.load(Ordering::SeqCst) != 0 {
                    futex_wake(&p.resp.seq);
                }
            }
        });
        FutexFloor {
            page,
            pid,
            seq: 0,
            spin,
            budget,
        }
    }

    fn page(&self) -> &PingPage {
        // SAFETY: mapped for the life of `self`.
        unsafe { &*self.page }
    }

    fn round_trip(&mut self) {
        let last = self.seq;
        self.seq = if self.seq + 1 == u32::MAX {
            1
        } else {
            self.seq + 1
        };
        let p = self.page();
        p.req.seq.store(self.seq, Ordering::SeqCst);
        if p.resp.sleeping.load(Ordering::SeqCst) != 0 {
            futex_wake(&p.req.seq);
        }
        while wait_change(&p.resp, &p.req, last, self.spin, self.budget) != self.seq {}
    }
}

impl Drop for FutexFloor {
    fn drop(&mut self) {
        let p = self.page();
        p.req.seq.store(u32::MAX, Ordering::SeqCst);
        futex_wake(&p.req.seq);
        reap(self.pid);
        // SAFETY: unmapping our own mapping; nothing borrows it any more.
        unsafe { libc::munmap(self.page.cast(), 4096) };
    }
}

/// Two processes bouncing one byte through a pair of pipes.
struct PipeFloor {
    to_child: i32,
    from_child: i32,
    pid: i32,
}

fn pipe_pair() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two fds. CLOEXEC: procspawn's workers must not inherit them.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2 failed");
    (fds[0], fds[1])
}

fn read_byte(fd: i32) -> Option<u8> {
    let mut b = 0u8;
    // SAFETY: reading one byte into a valid buffer.
    (unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) } == 1).then_some(b)
}

fn write_byte(fd: i32, b: u8) {
    // SAFETY: writing one byte from a valid buffer.
    let n = unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    assert_eq!(n, 1, "pipe write failed");
}

impl PipeFloor {
    fn start() -> PipeFloor {
        let (req_r, req_w) = pipe_pair();
        let (resp_r, resp_w) = pipe_pair();
        let pid = fork_child(move || {
            while let Some(b) = read_byte(req_r) {
                if b == b'q' {
                    return;
                }
                write_byte(resp_w, b);
            }
        });
        // SAFETY: closing the child's ends in the parent.
        unsafe {
            libc::close(req_r);
            libc::close(resp_w);
        }
        PipeFloor {
            to_child: req_w,
            from_child: resp_r,
            pid,
        }
    }

    fn round_trip(&mut self) {
        write_byte(self.to_child, b'p');
        assert_eq!(read_byte(self.from_child), Some(b'p'));
    }
}

impl Drop for PipeFloor {
    fn drop(&mut self) {
        // A quit byte, not EOF: forkworker's workers forked later hold copies of the write end.
        write_byte(self.to_child, b'q');
        reap(self.pid);
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(self.to_child);
            libc::close(self.from_child);
        }
    }
}

/// The floor of a payload round trip: the bytes copied twice between pre-faulted buffers.
fn memcpy_twice(src: &[u8], mid: &mut [u8], dst: &mut [u8]) -> Duration {
    let t = Instant::now();
    mid.copy_from_slice(std::hint::black_box(src));
    dst.copy_from_slice(std::hint::black_box(&*mid));
    std::hint::black_box(&*dst);
    t.elapsed()
}

// ---------------------------------------------------------------------------------------------
// procspawn: its functions run in a re-executed copy of this binary.

fn ps_noop(_: ()) {}

fn ps_echo(data: ByteBuf) -> ByteBuf {
    data
}

// ---------------------------------------------------------------------------------------------
// The table

struct Row {
    measure: String,
    ours: String,
    theirs: String,
    ratio: String,
    target: String,
    met: String,
}

fn row(measure: impl Into<String>, ours: String, theirs: String, ratio: String) -> Row {
    Row {
        measure: measure.into(),
        ours,
        theirs,
        ratio,
        target: "-".into(),
        met: "-".into(),
    }
}

/// A row with forkworker's figure alone: no floor or peer, no ratio.
fn figure(measure: impl Into<String>, ours: String) -> Row {
    row(measure, ours, "-".into(), "-".into())
}

impl Row {
    fn target(mut self, target: &str, met: bool) -> Row {
        self.target = target.into();
        self.met = if met { "yes" } else { "**no**" }.into();
        self
    }
}

fn print_table(rows: &[Row]) {
    println!("| measure | forkworker | floor / peer | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.measure, r.ours, r.theirs, r.ratio, r.target, r.met
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements that fork (phase 1)

struct Memory {
    parent_delta_kib: u64,
    worker_rss_kib: u64,
    worker_anon_kib: u64,
    worker_shmem_kib: u64,
}

/// Parent RSS before and after starting a one-worker pool with the default malloc (8 MiB),
/// and the idle worker's RSS after one call.
fn measure_memory(stamp: usize) -> Memory {
    let before = proc_status(0, "VmRSS").expect("VmRSS");
    let mut m = BenchMediator::new("bench-memory", Bench { stamp });
    m.strategy(ForkStrategy::Aggressive);
    m.start().expect("start");
    let id = m.noop().expect("noop");
    m.wait(id, LONG).expect("noop returns");
    let after = proc_status(0, "VmRSS").expect("VmRSS");
    let pid = m.pids()[0];
    let memory = Memory {
        parent_delta_kib: after.saturating_sub(before),
        worker_rss_kib: proc_status(pid, "VmRSS").unwrap_or(0),
        worker_anon_kib: proc_status(pid, "RssAnon").unwrap_or(0),
        worker_shmem_kib: proc_status(pid, "RssShmem").unwrap_or(0),
    };
    drop(m);
    memory
}

/// Shared memory one queued call holds: with the only worker busy, queue calls into a small
/// allocation until a submit blocks waiting for room; bytes per call = allocation / calls.
fn measure_queue_memory(cfg: &Cfg, stamp: usize, arg_len: usize) -> QueueMemory {
    const ALLOCATION: usize = 64 << 10;
    let mut m = BenchMediator::new("bench-queue", Bench { stamp });
    m.malloc(ALLOCATION).strategy(ForkStrategy::Aggressive);
    m.start().expect("start");
    let data = vec![7u8; arg_len];
    // One call of each method first: the return reservation follows the last return's size.
    let id = m.nap(0).expect("nap");
    m.wait(id, LONG).expect("nap returns");
    let id = m.echo(data.clone()).expect("echo");
    m.wait(id, LONG).expect("echo returns");
    let busy = m.nap(cfg.nap_ms).expect("nap");
    let mut queued = Vec::new();
    let fitted = loop {
        let t = Instant::now();
        let id = if arg_len == 0 {
            m.noop().map(Err)
        } else {
            m.echo(data.clone()).map(Ok)
        };
        let blocked = t.elapsed() > Duration::from_millis(cfg.nap_ms / 4);
        match id {
            // Room came back once the busy call ended: the previous calls were all that fit.
            // (A proxy no longer waits for room; kept for the figures of earlier versions.)
            Ok(id) if blocked => {
                queued.push(id);
                break queued.len() - 1;
            }
            Ok(id) => queued.push(id),
            // The calls queued behind the busy one hold the room with their arguments and
            // return reservations (finished results would not: they are in the heap).
            Err(CallError::OutOfMemory { .. }) => break queued.len(),
            Err(e) => panic!("queueing: {e}"),
        }
        assert!(queued.len() < 100_000, "the queue never filled");
    };
    m.wait(busy, LONG).expect("nap returns");
    let mut too_large = 0;
    for id in queued {
        match id {
            Err(id) => m.wait(id, LONG).expect("noop returns"),
            // A call admitted when only the minimum return reservation was left fails when
            // its return does not fit: count those.
            Ok(id) => match m.wait(id, LONG) {
                Ok(_) => {}
                Err(CallError::ReturnTooLarge { .. }) => too_large += 1,
                Err(e) => panic!("echo: {e}"),
            },
        }
    }
    // The nap call's own block (its argument and return reservation) shares the allocation.
    QueueMemory {
        fitted,
        per_call: ALLOCATION as f64 / fitted as f64,
        too_large,
    }
}

struct QueueMemory {
    fitted: usize,
    per_call: f64,
    too_large: usize,
}

struct Faults {
    /// on_timeout callback time minus (dispatch time + timeout).
    timeout_late: Vec<f64>,
    /// From the timeout's report to the next call's return (a new worker is forked).
    replacement: Vec<f64>,
    /// From the worker's abort() to `wait` returning `CallError::Crashed`.
    crash_late: Vec<f64>,
}

/// When `on_timeout` ran, and when its call had been dispatched.
type Fired = Rc<Cell<Option<(Instant, Option<Instant>)>>>;

fn measure_faults(cfg: &Cfg, stamp: usize) -> Faults {
    let mut m = BenchMediator::new("bench-faults", Bench { stamp });
    m.timeout(cfg.timeout);
    let fired: Fired = Rc::new(Cell::new(None));
    let cell = fired.clone();
    m.on_timeout(move |call, _log| {
        let now = Instant::now();
        cell.set(Some((now, call.timings().entered(CallStatus::Called))));
    });
    m.on_error(|_call, _log| {});
    let id = m.noop().expect("noop");
    m.wait(id, LONG).expect("noop returns");
    let mut out = Faults {
        timeout_late: Vec::new(),
        replacement: Vec::new(),
        crash_late: Vec::new(),
    };
    // SAFETY: `stamp` is the address of an AtomicU64 in a live shared mapping.
    let stamp_word = unsafe { &*(stamp as *const AtomicU64) };
    for i in 0..=cfg.faults {
        let warm = i == 0;
        let id = m.hang().expect("hang");
        let err = m.wait(id, LONG).expect_err("hang cannot return");
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        let (cb, called) = fired.take().expect("on_timeout fired");
        let called = called.expect("the call was dispatched");
        let late = cb.saturating_duration_since(called + cfg.timeout);
        let id = m.noop().expect("noop");
        m.wait(id, LONG).expect("the replacement answers");
        let replacement = cb.elapsed();

        stamp_word.store(0, Ordering::SeqCst);
        let id = m.crash().expect("crash");
        let err = m.wait(id, LONG).expect_err("crash cannot return");
        let heard = mono_ns();
        assert!(matches!(err, CallError::Crashed { .. }), "{err}");
        let crashed = stamp_word.load(Ordering::SeqCst);
        assert!(crashed > 0, "the worker did not stamp its crash");
        // The next call forks the replacement; keep that out of the next timeout's figure.
        let id = m.noop().expect("noop");
        m.wait(id, LONG).expect("the replacement answers");
        if !warm {
            out.timeout_late.push(late.as_secs_f64());
            out.replacement.push(replacement.as_secs_f64());
            out.crash_late
                .push(heard.saturating_sub(crashed) as f64 * 1e-9);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rounds (phase 2: forkworker pools already forked; procspawn pools with their threads)

/// Seconds per call for `n` empty forkworker calls, one at a time.
fn fw_empty(m: &mut BenchMediator, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let id = m.noop().expect("noop");
        m.wait(id, LONG).expect("noop returns");
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn ps_empty(pool: &procspawn::Pool, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        pool.spawn((), ps_noop).join().expect("procspawn noop");
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// Calls per second: submit `n` empty calls, then collect them all.
fn fw_throughput(m: &mut BenchMediator, n: usize) -> f64 {
    let t = Instant::now();
    let ids: Vec<_> = (0..n).map(|_| m.noop().expect("noop")).collect();
    for id in ids {
        m.wait(id, LONG).expect("noop returns");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn ps_throughput(pool: &procspawn::Pool, n: usize) -> f64 {
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|_| pool.spawn((), ps_noop)).collect();
    for h in handles {
        h.join().expect("procspawn noop");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn fw_echo(m: &mut BenchMediator, data: &mut Vec<u8>) -> f64 {
    let len = data.len();
    let t = Instant::now();
    let id = m.echo(std::mem::take(data)).expect("echo");
    *data = m.wait(id, LONG).expect("echo returns");
    let s = t.elapsed().as_secs_f64();
    assert_eq!(data.len(), len);
    s
}

fn ps_echo_once(pool: &procspawn::Pool, data: &mut Vec<u8>) -> f64 {
    let len = data.len();
    let t = Instant::now();
    let buf = ByteBuf::from(std::mem::take(data));
    *data = pool
        .spawn(buf, ps_echo)
        .join()
        .expect("procspawn echo")
        .into_vec();
    let s = t.elapsed().as_secs_f64();
    assert_eq!(data.len(), len);
    s
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // First: a procspawn worker is this binary re-executed; it serves its call inside init()
    // and exits there, never reaching the code below.
    procspawn::init();
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let what = args.get(i + 1).map_or("", String::as_str);
        let number = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|j| args.get(j + 1)?.parse().ok())
        };
        profile_only(what, number("--count"), number("--rounds"), smoke);
        return;
    }
    let mut cfg = Cfg::new(smoke);
    cfg.verbose = args.iter().any(|a| a == "--verbose");
    full_table(&cfg);
}

/// The whole table: every fork first (phase 1), then the procspawn pools and the interleaved
/// rounds (phase 2), then the cleanup check and the table.
fn full_table(cfg: &Cfg) {
    let started = Instant::now();
    let cpu_start = CpuSample::now();
    let me = std::process::id();
    eprintln!(
        "compare: {} run, pid {me}",
        if cfg.smoke { "smoke" } else { "full" }
    );
    let progress = |what: &str| {
        eprintln!(
            "compare: {what} done at {:.1} s",
            started.elapsed().as_secs_f64()
        )
    };

    let mut forked = Forked::start(cfg);
    eprintln!(
        "compare: forks done in {:.1} s; starting procspawn pools",
        started.elapsed().as_secs_f64()
    );

    // ---- Phase 2: procspawn pools (threads) and the interleaved rounds. No fork from here. ----
    let ps1 = procspawn::Pool::new(1).expect("procspawn pool of 1");
    let ps2 = procspawn::Pool::new(2).expect("procspawn pool of 2");
    warm_up(cfg, &mut forked, &ps1, &ps2);
    let empty = measure_empty(cfg, &mut forked.m1, &mut forked.floors, &ps1);
    progress("empty calls");
    let throughput = measure_throughput(cfg, &mut forked.m1, &mut forked.m2, &ps1, &ps2);
    progress("throughput");
    let pipeline = measure_pipeline(
        &mut forked.m1,
        &mut forked.m2,
        cfg.tp_calls,
        cfg.throughput_rounds,
        cfg.verbose,
    );
    progress("pipeline");
    let payloads = measure_payloads(cfg, &mut forked.mpay, &ps1);
    progress("payloads");
    let shared = measure_shared(cfg, &forked.s1, &forked.s2, &mut forked.m1, &ps1);
    progress("shared pool");
    // Celery, the peer of pools across machines, on this run's Redis server: full runs only
    // (CI has no PyPI guarantee). An error (no network for pip, say) skips its rows.
    // Pools across machines, through the run's Redis server.
    let remote = forked
        .hosts
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|hosts| {
            let pipelined = if cfg.smoke { 200 } else { 5_000 };
            remote::measure(hosts, cfg.rounds, cfg.empty_ps, pipelined, cfg.verbose)
        });
    progress("remote pools");
    let peer = if cfg.smoke {
        Err("a smoke run leaves Celery out".to_string())
    } else {
        let c = match &forked.hosts {
            Ok(hosts) => celery::measure(&hosts.redis, celery::Settings::full(), cfg.verbose),
            Err(_) => celery::RedisServer::start()
                .and_then(|r| celery::measure(&r, celery::Settings::full(), cfg.verbose)),
        };
        progress("celery");
        c.map_err(|e| e.to_string())
    };

    // ---- Clean up: every pool, every floor process; then check. ----
    drop(ps1);
    drop(ps2);
    let Forked {
        m1,
        m2,
        mpay,
        floors,
        memory,
        faults,
        queue_noop,
        queue_1k,
        loaded,
        s1,
        s2,
        hosts,
    } = forked;
    drop((m1, m2, mpay));
    drop((s1, s2));
    drop(hosts);
    drop(floors);
    let leftovers = cleanup_problems(me);

    // ---- The table. ----
    let mut rows = empty_rows(&empty);
    rows.extend(throughput_rows(cfg, &throughput));
    rows.push(pipeline_row(&pipeline));
    rows.extend(loaded.iter().map(pipeline_row));
    rows.extend(payload_rows(&payloads));
    rows.extend(shared_rows(cfg, &shared, &throughput));
    rows.extend(peer.iter().flat_map(celery::rows));
    if let Ok(figures) = &remote {
        rows.extend(remote::rows(figures, peer.as_ref().ok()));
    }
    rows.extend(fault_rows(cfg, &faults));
    rows.extend(memory_rows(
        cfg,
        &memory,
        &queue_noop,
        &queue_1k,
        throughput.heap_per_call,
    ));

    println!();
    println!(
        "forkworker compare ({} run, {} rounds, medians; ratio = forkworker / floor-or-peer for times, forkworker / peer for throughput)",
        if cfg.smoke { "smoke" } else { "full" },
        cfg.rounds
    );
    println!();
    print_table(&rows);
    println!();
    if let Err(why) = &peer {
        println!("celery rows skipped: {why}");
    }
    if let Err(why) = &remote {
        println!("remote rows skipped: {why}");
    }
    let (steal, others) = CpuSample::now().noise_since(cpu_start);
    let met = rows.iter().filter(|r| r.met == "yes").count();
    let targets = rows.iter().filter(|r| r.met != "-").count();
    println!(
        "targets met: {met} of {targets}; total time {:.1} s; nproc {}; during the run, CPU used by other processes {others:.0}% and stolen by the hypervisor {steal:.1}% (above a few %, the figures are noisy)",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    exit_if_left_behind(&leftovers);
}

/// The shared pool's figures: an awaited empty call (tokio), a blocking one through its
/// handle, the mediator's and procspawn's blocking calls in the same rounds, and pipelined
/// calls awaited from 50 tasks on one and on two workers.
struct Shared {
    awaited: Vec<f64>,
    blocking: Vec<f64>,
    mediator: Vec<f64>,
    procspawn: Vec<f64>,
    tasks_one: Vec<f64>,
    tasks_two: Vec<f64>,
}

/// Tasks that await calls at once in the pipelined rows.
const TASKS: usize = 50;

fn measure_shared(
    cfg: &Cfg,
    s1: &BenchPool,
    s2: &BenchPool,
    m1: &mut BenchMediator,
    ps1: &procspawn::Pool,
) -> Shared {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut s = Shared {
        awaited: vec![],
        blocking: vec![],
        mediator: vec![],
        procspawn: vec![],
        tasks_one: vec![],
        tasks_two: vec![],
    };
    let n = cfg.empty_fast;
    let awaited = |n: usize| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..n {
                s1.noop().await.expect("noop");
            }
            t.elapsed().as_secs_f64() / n as f64
        })
    };
    let tasks = |pool: &BenchPool, n: usize| {
        rt.block_on(async {
            let t = Instant::now();
            let each = n.div_ceil(TASKS);
            let running: Vec<_> = (0..TASKS)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        for _ in 0..each {
                            pool.noop().await.expect("noop");
                        }
                    })
                })
                .collect();
            for r in running {
                r.await.expect("a task");
            }
            (each * TASKS) as f64 / t.elapsed().as_secs_f64()
        })
    };
    awaited(n / 10 + 1);
    tasks(s1, n / 10 + 1);
    tasks(s2, n / 10 + 1);
    for _ in 0..cfg.rounds {
        s.awaited.push(awaited(n));
        let t = Instant::now();
        for _ in 0..n {
            s1.noop().wait().expect("noop");
        }
        s.blocking.push(t.elapsed().as_secs_f64() / n as f64);
        s.mediator.push(fw_empty(m1, n));
        s.procspawn.push(ps_empty(ps1, cfg.empty_ps));
        s.tasks_one.push(tasks(s1, cfg.tp_calls / 4));
        s.tasks_two.push(tasks(s2, cfg.tp_calls / 4));
        if cfg.verbose {
            let l = |v: &[f64]| v[v.len() - 1];
            eprintln!(
                "shared round: awaited {} blocking {} mediator {} procspawn {} 50 tasks {} / {}",
                fmt_time(l(&s.awaited)),
                fmt_time(l(&s.blocking)),
                fmt_time(l(&s.mediator)),
                fmt_time(l(&s.procspawn)),
                fmt_rate(l(&s.tasks_one)),
                fmt_rate(l(&s.tasks_two)),
            );
        }
    }
    s
}

fn shared_rows(cfg: &Cfg, s: &Shared, t: &Throughput) -> Vec<Row> {
    let awaited = median(&s.awaited);
    let mediator = median(&s.mediator);
    let procspawn = median(&s.procspawn);
    let blocking = median(&s.blocking);
    let mut rows = vec![
        row(
            "shared pool: awaited empty call (tokio, 1 worker) vs the mediator's blocking call",
            fmt_time(awaited),
            fmt_time(mediator),
            format!("{:.1}x", awaited / mediator),
        )
        .target("< 10 us", awaited < 10e-6),
        row(
            "shared pool: awaited empty call (tokio, 1 worker) vs procspawn's blocking call",
            fmt_time(awaited),
            fmt_time(procspawn),
            format!("{:.3}x", awaited / procspawn),
        ),
        row(
            "shared pool: blocking wait() on an empty call (1 worker) vs the mediator's",
            fmt_time(blocking),
            fmt_time(mediator),
            format!("{:.1}x", blocking / mediator),
        ),
    ];
    for (workers, fw, ps) in [(1, &s.tasks_one, &t.ps_one), (2, &s.tasks_two, &t.ps_two)] {
        let (fw, ps) = (median(fw), median(ps));
        rows.push(
            row(
                format!(
                    "shared pool: {} calls awaited from {TASKS} tasks, {workers} worker{} (procspawn: {} pipelined)",
                    cfg.tp_calls / 4,
                    if workers > 1 { "s" } else { "" },
                    cfg.tp_ps_calls
                ),
                fmt_rate(fw),
                fmt_rate(ps),
                format!("{:.1}x", fw / ps),
            )
            .target(">= 100,000/s", fw >= 100_000.0),
        );
    }
    rows
}

/// Fails the run if the bench left anything behind; says so if not.
fn exit_if_left_behind(leftovers: &[String]) {
    if !leftovers.is_empty() {
        eprintln!("compare: left behind: {}", leftovers.join("; "));
        std::process::exit(1);
    }
    println!("cleanup: no fw.* segment of this process in /dev/shm, no child process left");
}

/// The floor processes of the empty call's rows.
struct Floors {
    futex: FutexFloor,
    futex_long: FutexFloor,
    futex_clock: FutexFloor,
    pipe: PipeFloor,
}

/// Everything phase 1 made or measured: the pools and floors the rounds use, and the
/// measurements that fork.
struct Forked {
    /// One worker, two workers, and one worker for the payloads.
    m1: BenchMediator,
    m2: BenchMediator,
    mpay: BenchMediator,
    floors: Floors,
    memory: Memory,
    faults: Faults,
    queue_noop: QueueMemory,
    queue_1k: QueueMemory,
    /// The pipeline with one CPU kept busy: in a smoke run only (its own `--only` group
    /// otherwise, so that its spinning process disturbs no other row).
    loaded: Option<Pipeline>,
    /// Shared pools (the `XPool` face) of one and two workers.
    s1: BenchPool,
    s2: BenchPool,
    /// The run's Redis server and the hosts of the remote rows (or why they could not start).
    hosts: Result<remote::Hosts, String>,
}

impl Forked {
    /// Phase 1: every fork, while this process has one thread.
    fn start(cfg: &Cfg) -> Forked {
        assert_single_threaded("start");
        // The crash stamp's page lives until the process exits.
        let stamp = shared_page() as usize;
        let memory = measure_memory(stamp);
        let biggest = cfg.payloads.iter().map(|p| p.0).max().unwrap_or(MIB);
        let mut m1 = pool("bench-1", 1, 64 * MIB, stamp);
        let mut m2 = pool("bench-2", 2, 64 * MIB, stamp);
        let mpay = pool("bench-payload", 1, 3 * biggest, stamp);
        let floors = Floors {
            futex: FutexFloor::start(SPIN),
            futex_long: FutexFloor::start(LONG_SPIN),
            futex_clock: FutexFloor::start_with(SPIN, Budget::Clock),
            pipe: PipeFloor::start(),
        };
        let faults = measure_faults(cfg, stamp);
        let queue_noop = measure_queue_memory(cfg, stamp, 0);
        let queue_1k = measure_queue_memory(cfg, stamp, 1000);
        let loaded = cfg.smoke.then(|| {
            measure_pipeline_loaded(
                &mut m1,
                &mut m2,
                cfg.tp_calls,
                cfg.throughput_rounds,
                cfg.verbose,
            )
        });
        assert_single_threaded("end of the forking phase");
        // Last: each shared pool is a thread, which forks its fork server and workers.
        let s1 = shared_pool("bench-s1", 1, 64 * MIB, stamp);
        let s2 = shared_pool("bench-s2", 2, 64 * MIB, stamp);
        // Hosts are shared pools too.
        let hosts = remote::Hosts::start(stamp);
        Forked {
            m1,
            m2,
            mpay,
            floors,
            memory,
            faults,
            queue_noop,
            queue_1k,
            loaded,
            s1,
            s2,
            hosts,
        }
    }
}

/// A started shared pool of `workers`, every worker forked (and warmed by one call).
fn shared_pool(alias: &str, workers: usize, malloc: usize, stamp: usize) -> BenchPool {
    let pool = BenchPool::builder(alias, Bench { stamp })
        .workers(workers)
        .malloc(malloc)
        .strategy(ForkStrategy::Aggressive)
        .start()
        .expect("start a shared pool");
    pool.noop().wait().expect("noop");
    pool
}

/// A started pool of `workers` with `malloc` bytes of shared memory, every worker forked.
fn pool(alias: &str, workers: usize, malloc: usize, stamp: usize) -> BenchMediator {
    let mut m = BenchMediator::new(alias, Bench { stamp });
    m.workers(workers)
        .malloc(malloc)
        .strategy(ForkStrategy::Aggressive);
    m.start().expect("start");
    m
}

/// Every path once, plus a short burst.
fn warm_up(cfg: &Cfg, forked: &mut Forked, ps1: &procspawn::Pool, ps2: &procspawn::Pool) {
    let burst = cfg.empty_fast / 10 + 1;
    let f = &mut forked.floors;
    fw_empty(&mut forked.m1, burst);
    (0..burst).for_each(|_| f.futex.round_trip());
    (0..burst).for_each(|_| f.futex_long.round_trip());
    (0..burst).for_each(|_| f.futex_clock.round_trip());
    (0..cfg.empty_pipe / 10 + 1).for_each(|_| f.pipe.round_trip());
    ps_empty(ps1, 5);
    ps_empty(ps2, 5);
    fw_empty(&mut forked.m2, 100);
}

/// Seconds per round trip of `n` calls of `f`, after a quiet start (see `quiesce`).
fn per_call(n: usize, f: &mut dyn FnMut()) -> f64 {
    quiesce(f);
    let t = Instant::now();
    (0..n).for_each(|_| f());
    t.elapsed().as_secs_f64() / n as f64
}

/// The empty call's round trips and its floors', in seconds, one entry per batch.
struct Empty {
    forkworker: Vec<f64>,
    futex: Vec<f64>,
    futex_long: Vec<f64>,
    futex_clock: Vec<f64>,
    pipe: Vec<f64>,
    procspawn: Vec<f64>,
    /// The empty call over the futex floor, batch by batch.
    ratio: Vec<f64>,
}

/// The empty call against its floors and procspawn.
///
/// The empty call and its futex floor alternate in batches of a tenth of a round, and the
/// ratio is the median of the batch-by-batch ratios: on a VM the cost of a cache line's
/// crossing changes from one moment to the next (the host moves the virtual CPUs), and a pair
/// of neighbouring batches sees the same placement where two medians taken apart need not.
fn measure_empty(
    cfg: &Cfg,
    m1: &mut BenchMediator,
    f: &mut Floors,
    ps1: &procspawn::Pool,
) -> Empty {
    let mut e = Empty {
        forkworker: vec![],
        futex: vec![],
        futex_long: vec![],
        futex_clock: vec![],
        pipe: vec![],
        procspawn: vec![],
        ratio: vec![],
    };
    for _ in 0..cfg.rounds {
        let part = cfg.empty_fast.div_ceil(10);
        for _ in 0..10 {
            quiesce(&mut || {
                fw_empty(m1, 1);
            });
            let fw = fw_empty(m1, part);
            let fx = per_call(part, &mut || f.futex.round_trip());
            e.forkworker.push(fw);
            e.futex.push(fx);
            e.ratio.push(fw / fx);
        }
        e.futex_long
            .push(per_call(cfg.empty_fast, &mut || f.futex_long.round_trip()));
        e.futex_clock
            .push(per_call(cfg.empty_fast, &mut || f.futex_clock.round_trip()));
        e.pipe
            .push(per_call(cfg.empty_pipe, &mut || f.pipe.round_trip()));
        e.procspawn.push(ps_empty(ps1, cfg.empty_ps));
        if cfg.verbose {
            let l = |v: &[f64]| fmt_time(v[v.len() - 1]);
            eprintln!(
                "empty round: forkworker {} futex {} futex-long {} futex-clock {} pipe {} procspawn {}",
                l(&e.forkworker),
                l(&e.futex),
                l(&e.futex_long),
                l(&e.futex_clock),
                l(&e.pipe),
                l(&e.procspawn)
            );
        }
    }
    e
}

fn empty_rows(e: &Empty) -> Vec<Row> {
    let fw = median(&e.forkworker);
    let ratio = median(&e.ratio);
    let against = |measure: String, floor: &[f64], digits: usize| {
        let floor = median(floor);
        row(
            measure,
            fmt_time(fw),
            fmt_time(floor),
            format!("{:.digits$}x", fw / floor),
        )
    };
    vec![
        row(
            format!(
                "empty call round trip vs futex ping-pong floor (spin {} us, as forkworker; ratio: median of {} paired batches)",
                SPIN / 1000,
                e.ratio.len()
            ),
            fmt_time(fw),
            fmt_time(median(&e.futex)),
            format!("{ratio:.2}x"),
        )
        .target("<= 2x", ratio <= 2.0),
        against(
            format!(
                "empty call round trip vs futex ping-pong floor (spin {} ms: never sleeps)",
                LONG_SPIN / 1_000_000
            ),
            &e.futex_long,
            2,
        ),
        against(
            format!(
                "empty call round trip vs futex ping-pong floor (spin {} us measured with the clock, as forkworker did before it read the counter)",
                SPIN / 1000
            ),
            &e.futex_clock,
            2,
        ),
        against(
            "empty call round trip vs pipe ping-pong".into(),
            &e.pipe,
            2,
        ),
        against(
            "empty call round trip vs procspawn Pool(1)".into(),
            &e.procspawn,
            3,
        ),
    ]
}

/// Pipelined calls per second, one entry per round.
struct Throughput {
    one: Vec<f64>,
    two: Vec<f64>,
    ps_one: Vec<f64>,
    ps_two: Vec<f64>,
    /// The parent's heap growth per pending call, in bytes.
    heap_per_call: f64,
}

/// Pipelined empty calls on one and two workers, forkworker and procspawn in turn.
fn measure_throughput(
    cfg: &Cfg,
    m1: &mut BenchMediator,
    m2: &mut BenchMediator,
    ps1: &procspawn::Pool,
    ps2: &procspawn::Pool,
) -> Throughput {
    let mut t = Throughput {
        one: vec![],
        two: vec![],
        ps_one: vec![],
        ps_two: vec![],
        heap_per_call: 0.0,
    };
    // The parent's heap grows once for the pending calls' records; later rounds reuse it.
    let before = proc_status(0, "VmRSS").unwrap_or(0);
    for round in 0..cfg.throughput_rounds {
        t.one.push(fw_throughput(m1, cfg.tp_calls));
        if round == 0 {
            let after = proc_status(0, "VmRSS").unwrap_or(0);
            t.heap_per_call = after.saturating_sub(before) as f64 * 1024.0 / cfg.tp_calls as f64;
        }
        t.ps_one.push(ps_throughput(ps1, cfg.tp_ps_calls));
        t.two.push(fw_throughput(m2, cfg.tp_calls));
        t.ps_two.push(ps_throughput(ps2, cfg.tp_ps_calls));
        if cfg.verbose {
            let l = |v: &[f64]| fmt_rate(v[v.len() - 1]);
            eprintln!(
                "throughput round: 1 worker {} (procspawn {}), 2 workers {} (procspawn {})",
                l(&t.one),
                l(&t.ps_one),
                l(&t.two),
                l(&t.ps_two)
            );
        }
    }
    t
}

fn throughput_rows(cfg: &Cfg, t: &Throughput) -> Vec<Row> {
    [(1, &t.one, &t.ps_one), (2, &t.two, &t.ps_two)]
        .into_iter()
        .map(|(workers, fw, ps)| {
            let (fw, ps) = (median(fw), median(ps));
            row(
                format!(
                    "throughput, {workers} worker{}, {} calls pipelined (procspawn: {})",
                    if workers > 1 { "s" } else { "" },
                    cfg.tp_calls,
                    cfg.tp_ps_calls
                ),
                fmt_rate(fw),
                fmt_rate(ps),
                format!("{:.1}x", fw / ps),
            )
            .target(">= 10x", fw >= 10.0 * ps)
        })
        .collect()
}

/// Two workers against one on the same pipelined calls, in calls per second.
struct Pipeline {
    calls: usize,
    one: Vec<f64>,
    two: Vec<f64>,
    /// Two workers' throughput over one worker's, run by run.
    ratios: Vec<f64>,
    /// Whether a spinning process kept one CPU busy meanwhile.
    loaded: bool,
}

/// `calls` pipelined empty calls on one worker and on two, `rounds` times, alternating which
/// goes first; each run starts quiet (see `quiesce`), so that the other pool's workers have
/// stopped spinning.
fn measure_pipeline(
    m1: &mut BenchMediator,
    m2: &mut BenchMediator,
    calls: usize,
    rounds: usize,
    verbose: bool,
) -> Pipeline {
    let mut p = Pipeline {
        calls,
        one: vec![],
        two: vec![],
        ratios: vec![],
        loaded: false,
    };
    let run = |m: &mut BenchMediator| {
        quiesce(&mut || {
            fw_empty(m, 1);
        });
        fw_throughput(m, calls)
    };
    for round in 0..rounds {
        let (one, two) = if round % 2 == 0 {
            let one = run(m1);
            (one, run(m2))
        } else {
            let two = run(m2);
            (run(m1), two)
        };
        p.one.push(one);
        p.two.push(two);
        p.ratios.push(two / one);
        if verbose {
            eprintln!(
                "pipeline round: 1 worker {}, 2 workers {}: {:.2}x",
                fmt_rate(one),
                fmt_rate(two),
                two / one
            );
        }
    }
    p
}

/// A process that keeps one CPU busy until it is dropped (killed and reaped).
struct Hog(i32);

impl Hog {
    /// Forks it (this process must be single-threaded).
    fn start() -> Hog {
        Hog(fork_child(|| {
            loop {
                std::hint::spin_loop();
            }
        }))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // SAFETY: killing our own child, which nothing else reaps.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        reap(self.0);
    }
}

/// [`measure_pipeline`] while a spinning process keeps one CPU busy.
fn measure_pipeline_loaded(
    m1: &mut BenchMediator,
    m2: &mut BenchMediator,
    calls: usize,
    rounds: usize,
    verbose: bool,
) -> Pipeline {
    let hog = Hog::start();
    let mut p = measure_pipeline(m1, m2, calls, rounds, verbose);
    drop(hog);
    p.loaded = true;
    p
}

fn pipeline_row(p: &Pipeline) -> Row {
    let ratio = median(&p.ratios);
    row(
        format!(
            "pipeline, 2 workers vs 1 worker, {} calls pipelined{} (ratio: median of {} alternating runs)",
            p.calls,
            if p.loaded {
                ", one CPU kept busy by a spinning process"
            } else {
                ""
            },
            p.ratios.len()
        ),
        fmt_rate(median(&p.two)),
        fmt_rate(median(&p.one)),
        format!("{ratio:.2}x"),
    )
    .target(">= 0.95x", ratio >= 0.95)
}

/// One payload size: forkworker's echo, two memcpys, procspawn's echo (medians, seconds).
struct PayloadRow {
    size: usize,
    forkworker: f64,
    memcpy: f64,
    procspawn: f64,
}

/// Echoes of each payload size against two memcpys and procspawn.
fn measure_payloads(cfg: &Cfg, mpay: &mut BenchMediator, ps1: &procspawn::Pool) -> Vec<PayloadRow> {
    let mut rows = Vec::new();
    for &(size, calls) in &cfg.payloads {
        let mut data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let src = data.clone();
        let (mut mid, mut dst) = (vec![1u8; size], vec![2u8; size]);
        // Warm-up: the first call sizes the return reservation and faults the buffers.
        fw_echo(mpay, &mut data);
        memcpy_twice(&src, &mut mid, &mut dst);
        ps_echo_once(ps1, &mut data);
        let (mut fw, mut mc, mut ps) = (vec![], vec![], vec![]);
        for _ in 0..cfg.rounds.div_ceil(2) {
            for _ in 0..calls {
                fw.push(fw_echo(mpay, &mut data));
                mc.push(memcpy_twice(&src, &mut mid, &mut dst).as_secs_f64());
            }
            ps.push(ps_echo_once(ps1, &mut data));
        }
        assert!(data == src, "echo changed the bytes");
        if cfg.verbose {
            let all = |v: &[f64]| v.iter().map(|&x| fmt_time(x)).collect::<Vec<_>>().join(" ");
            eprintln!("echo {}: forkworker {}", size_name(size), all(&fw));
            eprintln!("echo {}: memcpy x2 {}", size_name(size), all(&mc));
            eprintln!("echo {}: procspawn {}", size_name(size), all(&ps));
        }
        rows.push(PayloadRow {
            size,
            forkworker: median(&fw),
            memcpy: median(&mc),
            procspawn: median(&ps),
        });
    }
    rows
}

fn payload_rows(payloads: &[PayloadRow]) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in payloads {
        let (fw, mc, ps) = (p.forkworker, p.memcpy, p.procspawn);
        let mut r = row(
            format!("echo {} round trip vs memcpy x2", size_name(p.size)),
            fmt_time(fw),
            fmt_time(mc),
            format!("{:.2}x", fw / mc),
        );
        if p.size == 64 * MIB {
            r = r.target("<= 3.5x", fw <= 3.5 * mc);
        }
        rows.push(r);
        rows.push(row(
            format!("echo {} round trip vs procspawn Pool(1)", size_name(p.size)),
            fmt_time(fw),
            fmt_time(ps),
            format!("{:.3}x", fw / ps),
        ));
    }
    rows
}

fn fault_rows(cfg: &Cfg, faults: &Faults) -> Vec<Row> {
    let ms5 = 5e-3;
    let (tl, rp, cl) = (
        median(&faults.timeout_late),
        median(&faults.replacement),
        median(&faults.crash_late),
    );
    let tl_max = faults.timeout_late.iter().copied().fold(0.0, f64::max);
    let cl_max = faults.crash_late.iter().copied().fold(0.0, f64::max);
    vec![
        figure(
            format!(
                "timeout ({} ms): deadline to on_timeout, median (max)",
                cfg.timeout.as_millis()
            ),
            format!("{} ({})", fmt_time(tl), fmt_time(tl_max)),
        )
        .target("<= 5 ms", tl_max <= ms5),
        figure(
            "after a timeout: its report to the first return of the replacement worker",
            fmt_time(rp),
        ),
        figure(
            "crash (abort in the method) to wait's CallError::Crashed, median (max)",
            format!("{} ({})", fmt_time(cl), fmt_time(cl_max)),
        )
        .target("<= 5 ms", cl_max <= ms5),
    ]
}

fn memory_rows(
    cfg: &Cfg,
    memory: &Memory,
    queue_noop: &QueueMemory,
    queue_1k: &QueueMemory,
    heap_per_call: f64,
) -> Vec<Row> {
    let mut rows = vec![
        figure(
            "parent RSS added by starting a 1-worker pool (default malloc 8 MiB, pre-faulted)",
            fmt_bytes(memory.parent_delta_kib as f64 * 1024.0),
        ),
        figure(
            "idle worker RSS after one call (VmRSS; anon + shmem)",
            format!(
                "{} ({} + {})",
                fmt_bytes(memory.worker_rss_kib as f64 * 1024.0),
                fmt_bytes(memory.worker_anon_kib as f64 * 1024.0),
                fmt_bytes(memory.worker_shmem_kib as f64 * 1024.0)
            ),
        ),
    ];
    for (what, q) in [("noop()", queue_noop), ("echo(1000 B)", queue_1k)] {
        let failed = if q.too_large > 0 {
            format!(
                "; {} ended ReturnTooLarge (admitted with the 256 B minimum return room)",
                q.too_large
            )
        } else {
            String::new()
        };
        rows.push(figure(
            format!(
                "shared memory per queued {what}: 64 KiB malloc / {} calls queued{failed}",
                q.fitted
            ),
            fmt_bytes(q.per_call),
        ));
    }
    rows.push(figure(
        format!(
            "parent RSS growth per pending call ({} calls submitted before collecting)",
            cfg.tp_calls
        ),
        fmt_bytes(heap_per_call),
    ));
    rows
}

/// What the bench left behind: shared-memory segments of this process, live children.
fn cleanup_problems(me: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let prefix = format!("fw.{me}.");
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                problems.push(format!("segment /dev/shm/{name}"));
            }
        }
    }
    // Children of any of our threads (procspawn's monitor threads spawned its workers).
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace() {
                problems.push(format!("child process {pid}"));
            }
        }
    }
    problems
}

/// Round trips per batch in `--only empty` and `--only futex`.
const BATCH: usize = 1_000;

/// The tenth percentile and the median of per-batch times: on a VM whose rounds are bimodal
/// (a side descheduled now and then), the low percentile shows the cost of the path itself.
fn print_batches(what: &str, batches: &[f64]) {
    if std::env::var_os("BATCHES").is_some() {
        let all: Vec<String> = batches.iter().map(|&b| format!("{:.0}", b * 1e9)).collect();
        eprintln!("{what}: {}", all.join(" "));
    }
    let mut sorted = batches.to_vec();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{what}: batches of {BATCH}: p10 {}, median {}",
        fmt_time(sorted[sorted.len() / 10]),
        fmt_time(median(&sorted))
    );
}

/// `--only WHAT [--count N] [--rounds N] [--smoke]`: one forkworker path (or the futex floor) alone, with
/// no procspawn and no other floor, for a profiler (`perf stat`, `valgrind --tool=callgrind
/// --trace-children=yes`). WHAT is `empty`, `paired` (the empty call and the futex floor in
/// alternating batches), `throughput`, `throughput2`, `echo64`, `futex`, `futex-long`,
/// `futex-clock`, `pipeline` (two workers against one on pipelined calls, alternating runs)
/// or `pipeline-loaded` (the same while a spinning process keeps one CPU busy; `--rounds`
/// sets how many runs of each, 7 by default). `--smoke` makes the default counts tiny.
fn profile_only(what: &str, count: Option<usize>, rounds: Option<usize>, smoke: bool) {
    let default = |full: usize| count.unwrap_or(if smoke { 500 } else { full });
    let t = Instant::now();
    let n = match what {
        "empty" => only_empty(&mut profiled(1), default(100_000)),
        "throughput" => only_throughput(&mut profiled(1), default(100_000)),
        "throughput2" => only_throughput(&mut profiled(2), default(100_000)),
        "echo64" => only_echo64(
            &mut profiled(1),
            count.unwrap_or(if smoke { 2 } else { 20 }),
        ),
        "paired" => only_paired(&mut profiled(1), default(100_000)),
        "futex" => only_futex(FutexFloor::start(SPIN), what, default(100_000)),
        "futex-clock" => only_futex(
            FutexFloor::start_with(SPIN, Budget::Clock),
            what,
            default(100_000),
        ),
        "futex-long" => only_futex(FutexFloor::start(LONG_SPIN), what, default(100_000)),
        "pipeline" | "pipeline-loaded" => {
            let rounds = rounds.unwrap_or(if smoke { 2 } else { 7 });
            only_pipeline(what == "pipeline-loaded", default(100_000), rounds)
        }
        "celery" => match celery::only(count, rounds) {
            0 => return,
            n => n,
        },
        "remote" => match remote::only(count, rounds, smoke) {
            0 => return,
            n => n,
        },
        _ => {
            eprintln!(
                "--only takes empty, paired, throughput, throughput2, echo64, futex, futex-long, futex-clock, pipeline, pipeline-loaded, celery or remote"
            );
            std::process::exit(2);
        }
    };
    println!(
        "{what}: {n} in {:.3} s, {} each",
        t.elapsed().as_secs_f64(),
        fmt_time(t.elapsed().as_secs_f64() / n as f64)
    );
}

/// The pool of `--only`: `workers` of them, room for 64 MiB echoes.
fn profiled(workers: usize) -> BenchMediator {
    pool("bench-profile", workers, 3 * 64 * MIB, 0)
}

/// `--only empty`: `n` empty calls in batches; returns how many ran.
fn only_empty(m: &mut BenchMediator, n: usize) -> usize {
    let batches: Vec<f64> = (0..n.div_ceil(BATCH)).map(|_| fw_empty(m, BATCH)).collect();
    print_batches("empty", &batches);
    n.div_ceil(BATCH) * BATCH
}

/// `--only throughput` and `throughput2`: `n` pipelined empty calls.
fn only_throughput(m: &mut BenchMediator, n: usize) -> usize {
    fw_throughput(m, n);
    n
}

/// `--only echo64`: `n` echoes of 64 MiB.
fn only_echo64(m: &mut BenchMediator, n: usize) -> usize {
    let mut data = vec![5u8; 64 * MIB];
    for _ in 0..n {
        fw_echo(m, &mut data);
    }
    n
}

/// `--only paired`: alternating batches of forkworker's empty call and of the futex floor,
/// in this one process: both see the same placement of processes on CPUs.
fn only_paired(m: &mut BenchMediator, n: usize) -> usize {
    let mut floor = FutexFloor::start(SPIN);
    let (mut fw, mut fl) = (Vec::new(), Vec::new());
    for _ in 0..n.div_ceil(BATCH) {
        quiesce(&mut || {
            fw_empty(m, 1);
        });
        fw.push(fw_empty(m, BATCH));
        quiesce(&mut || floor.round_trip());
        let t = Instant::now();
        (0..BATCH).for_each(|_| floor.round_trip());
        fl.push(t.elapsed().as_secs_f64() / BATCH as f64);
    }
    print_batches("empty", &fw);
    print_batches("futex", &fl);
    let mut ratios: Vec<f64> = fw.iter().zip(&fl).map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "empty / futex, batch by batch: p10 {:.2}x, median {:.2}x",
        ratios[ratios.len() / 10],
        median(&ratios)
    );
    2 * n.div_ceil(BATCH) * BATCH
}

/// `--only futex`, `futex-long`, `futex-clock`: `n` round trips of a floor, in batches.
fn only_futex(mut floor: FutexFloor, what: &str, n: usize) -> usize {
    let batches: Vec<f64> = (0..n.div_ceil(BATCH))
        .map(|_| {
            let t = Instant::now();
            (0..BATCH).for_each(|_| floor.round_trip());
            t.elapsed().as_secs_f64() / BATCH as f64
        })
        .collect();
    print_batches(what, &batches);
    n.div_ceil(BATCH) * BATCH
}

/// `--only pipeline` and `pipeline-loaded`: two workers against one on `n` pipelined calls,
/// alternating runs, printed as the full table's row; then the cleanup check.
fn only_pipeline(loaded: bool, n: usize, rounds: usize) -> usize {
    let mut m1 = pool("bench-1", 1, 64 * MIB, 0);
    let mut m2 = pool("bench-2", 2, 64 * MIB, 0);
    // Warm-up: the pending calls' records and every worker's first calls.
    fw_throughput(&mut m1, n.min(10_000));
    fw_throughput(&mut m2, n.min(10_000));
    let p = if loaded {
        measure_pipeline_loaded(&mut m1, &mut m2, n, rounds, true)
    } else {
        measure_pipeline(&mut m1, &mut m2, n, rounds, true)
    };
    drop((m1, m2));
    let leftovers = cleanup_problems(std::process::id());
    println!();
    print_table(&[pipeline_row(&p)]);
    println!();
    exit_if_left_behind(&leftovers);
    2 * rounds * n
}
