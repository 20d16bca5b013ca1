//! forkworker against its floors and its nearest Rust peer, measured in one run.
//!
//! `cargo bench --bench compare` prints one Markdown table: each measure, forkworker's figure,
//! the floor or peer it is compared with, their ratio, the target, and whether it is met.
//! `cargo bench --bench compare -- --smoke` runs the same code paths with tiny counts (CI).
//! `-- --verbose` also prints every round's figures to stderr; `-- --only WHAT [--count N]`
//! runs one forkworker path alone for a profiler, or, with `paired`, the empty call and the
//! futex floor in alternating batches (see `profile_only`).
//!
//! Floors and peers, all measured in this run and interleaved round by round with forkworker,
//! so that a noisy VM slows both sides alike:
//! - a raw two-process ping-pong through a futex word in a shared mapping, spinning briefly
//!   before sleeping, as forkworker's channel does (the spin measured with the time-stamp
//!   counter; and, for comparison, the same floor measuring its spin with the clock, whose
//!   reads cost it about 100 ns per round trip on these VMs);
//! - a pipe-pair ping-pong;
//! - two `memcpy`s of the payload between pre-faulted buffers;
//! - `procspawn` (re-executes this binary for its workers; IPC through `ipc-channel`) with its
//!   `Pool`.
//!
//! Order in `main` matters: `procspawn::init()` comes first (a procspawn worker re-enters
//! `main` and never leaves `init`, so it never reaches forkworker's code); then every fork
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

const MIB: usize = 1 << 20;
const LONG: Duration = Duration::from_secs(60);
/// How long the futex floor spins before sleeping, in nanoseconds: the same as forkworker's
/// channel (`SPIN_NS` in worker-core/src/channel.rs); keep the two equal.
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

/// How a floor side measures its spin: with the CPU's time-stamp counter (about 10 ns a read),
/// as forkworker's channel does, or with the clock (60-100 ns a read on these VMs: it costs
/// the floor about 100 ns per round trip, which is how forkworker spun until it moved to the
/// counter).
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
    /// available (not at all otherwise), as forkworker's channel does.
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
            Ok(id) if blocked => {
                queued.push(id);
                break queued.len() - 1;
            }
            Ok(id) => queued.push(id),
            // The queued calls ran, but their results wait for `wait` and keep the room.
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
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let what = args.get(i + 1).map_or("", String::as_str);
        let count = args
            .iter()
            .position(|a| a == "--count")
            .and_then(|j| args.get(j + 1)?.parse().ok());
        profile_only(what, count);
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut cfg = Cfg::new(smoke);
    cfg.verbose = args.iter().any(|a| a == "--verbose");
    let started = Instant::now();
    let cpu_start = CpuSample::now();
    let me = std::process::id();
    eprintln!(
        "compare: {} run, pid {me}",
        if smoke { "smoke" } else { "full" }
    );

    // ---- Phase 1: every fork, while single-threaded. ----
    assert_single_threaded("start");
    // The crash stamp's page lives until the process exits.
    let stamp = shared_page() as usize;

    let memory = measure_memory(stamp);
    let biggest = cfg.payloads.iter().map(|p| p.0).max().unwrap_or(MIB);
    let mut pools: Vec<BenchMediator> = [
        ("bench-1", 1, 64 * MIB),
        ("bench-2", 2, 64 * MIB),
        ("bench-payload", 1, 3 * biggest),
    ]
    .into_iter()
    .map(|(alias, workers, malloc)| {
        let mut m = BenchMediator::new(alias, Bench { stamp });
        m.workers(workers)
            .malloc(malloc)
            .strategy(ForkStrategy::Aggressive);
        m.start().expect("start");
        m
    })
    .collect();
    let [m1, m2, mpay] = pools.as_mut_slice() else {
        unreachable!()
    };
    let mut futex = FutexFloor::start(SPIN);
    let mut futex_long = FutexFloor::start(LONG_SPIN);
    let mut futex_clock = FutexFloor::start_with(SPIN, Budget::Clock);
    let mut pipe = PipeFloor::start();
    let faults = measure_faults(&cfg, stamp);
    let queue_noop = measure_queue_memory(&cfg, stamp, 0);
    let queue_1k = measure_queue_memory(&cfg, stamp, 1000);
    assert_single_threaded("end of the forking phase");
    eprintln!(
        "compare: forks done in {:.1} s; starting procspawn pools",
        started.elapsed().as_secs_f64()
    );

    // ---- Phase 2: procspawn pools (threads) and the interleaved rounds. No fork from here. ----
    let ps1 = procspawn::Pool::new(1).expect("procspawn pool of 1");
    let ps2 = procspawn::Pool::new(2).expect("procspawn pool of 2");

    // Warm-up: every path once, plus a short burst.
    fw_empty(m1, cfg.empty_fast / 10 + 1);
    (0..cfg.empty_fast / 10 + 1).for_each(|_| futex.round_trip());
    (0..cfg.empty_fast / 10 + 1).for_each(|_| futex_long.round_trip());
    (0..cfg.empty_fast / 10 + 1).for_each(|_| futex_clock.round_trip());
    (0..cfg.empty_pipe / 10 + 1).for_each(|_| pipe.round_trip());
    ps_empty(&ps1, 5);
    ps_empty(&ps2, 5);
    fw_empty(m2, 100);

    let (mut e_fw, mut e_fx, mut e_fl, mut e_fc, mut e_pp, mut e_ps) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let per_call = |n: usize, f: &mut dyn FnMut()| {
        quiesce(f);
        let t = Instant::now();
        (0..n).for_each(|_| f());
        t.elapsed().as_secs_f64() / n as f64
    };
    // The empty call and its floor alternate in batches of a tenth of a round, and the ratio
    // is the median of the batch-by-batch ratios: on a VM the cost of a cache line's crossing
    // changes from one moment to the next (the host moves the virtual CPUs), and a pair of
    // neighbouring batches sees the same placement where two medians taken apart need not.
    let mut e_ratio = vec![];
    for _ in 0..cfg.rounds {
        let part = cfg.empty_fast.div_ceil(10);
        for _ in 0..10 {
            quiesce(&mut || {
                fw_empty(m1, 1);
            });
            let fw = fw_empty(m1, part);
            let fx = per_call(part, &mut || futex.round_trip());
            e_fw.push(fw);
            e_fx.push(fx);
            e_ratio.push(fw / fx);
        }
        e_fl.push(per_call(cfg.empty_fast, &mut || futex_long.round_trip()));
        e_fc.push(per_call(cfg.empty_fast, &mut || futex_clock.round_trip()));
        e_pp.push(per_call(cfg.empty_pipe, &mut || pipe.round_trip()));
        e_ps.push(ps_empty(&ps1, cfg.empty_ps));
        if cfg.verbose {
            let l = |v: &[f64]| fmt_time(v[v.len() - 1]);
            eprintln!(
                "empty round: forkworker {} futex {} futex-long {} futex-clock {} pipe {} procspawn {}",
                l(&e_fw),
                l(&e_fx),
                l(&e_fl),
                l(&e_fc),
                l(&e_pp),
                l(&e_ps)
            );
        }
    }
    eprintln!(
        "compare: empty calls done at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (mut t1, mut t2, mut p1, mut p2) = (vec![], vec![], vec![], vec![]);
    let mut heap_per_call = 0.0;
    // The parent's heap grows once for the pending calls' records; later rounds reuse it.
    let before = proc_status(0, "VmRSS").unwrap_or(0);
    for round in 0..cfg.throughput_rounds {
        t1.push(fw_throughput(m1, cfg.tp_calls));
        if round == 0 {
            let after = proc_status(0, "VmRSS").unwrap_or(0);
            heap_per_call = after.saturating_sub(before) as f64 * 1024.0 / cfg.tp_calls as f64;
        }
        p1.push(ps_throughput(&ps1, cfg.tp_ps_calls));
        t2.push(fw_throughput(m2, cfg.tp_calls));
        p2.push(ps_throughput(&ps2, cfg.tp_ps_calls));
        if cfg.verbose {
            let l = |v: &[f64]| fmt_rate(v[v.len() - 1]);
            eprintln!(
                "throughput round: 1 worker {} (procspawn {}), 2 workers {} (procspawn {})",
                l(&t1),
                l(&p1),
                l(&t2),
                l(&p2)
            );
        }
    }
    eprintln!(
        "compare: throughput done at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut payload_rows = Vec::new();
    for &(size, calls) in &cfg.payloads {
        let mut data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let src = data.clone();
        let (mut mid, mut dst) = (vec![1u8; size], vec![2u8; size]);
        // Warm-up: the first call sizes the return reservation and faults the buffers.
        fw_echo(mpay, &mut data);
        memcpy_twice(&src, &mut mid, &mut dst);
        ps_echo_once(&ps1, &mut data);
        let (mut fw, mut mc, mut ps) = (vec![], vec![], vec![]);
        for _ in 0..cfg.rounds.div_ceil(2) {
            for _ in 0..calls {
                fw.push(fw_echo(mpay, &mut data));
                mc.push(memcpy_twice(&src, &mut mid, &mut dst).as_secs_f64());
            }
            ps.push(ps_echo_once(&ps1, &mut data));
        }
        assert!(data == src, "echo changed the bytes");
        if cfg.verbose {
            let all = |v: &[f64]| v.iter().map(|&x| fmt_time(x)).collect::<Vec<_>>().join(" ");
            eprintln!("echo {}: forkworker {}", size_name(size), all(&fw));
            eprintln!("echo {}: memcpy x2 {}", size_name(size), all(&mc));
            eprintln!("echo {}: procspawn {}", size_name(size), all(&ps));
        }
        payload_rows.push((size, median(&fw), median(&mc), median(&ps)));
    }
    eprintln!(
        "compare: payloads done at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // ---- Clean up: every pool, every floor process; then check. ----
    drop(ps1);
    drop(ps2);
    drop(pools);
    drop(futex);
    drop(futex_long);
    drop(futex_clock);
    drop(pipe);
    let leftovers = cleanup_problems(me);

    // ---- The table. ----
    let mut rows = Vec::new();
    let (fw, fx, fl, pp, ps) = (
        median(&e_fw),
        median(&e_fx),
        median(&e_fl),
        median(&e_pp),
        median(&e_ps),
    );
    let ratio = median(&e_ratio);
    rows.push(
        row(
            format!(
                "empty call round trip vs futex ping-pong floor (spin {} us, as forkworker; ratio: median of {} paired batches)",
                SPIN / 1000,
                e_ratio.len()
            ),
            fmt_time(fw),
            fmt_time(fx),
            format!("{ratio:.2}x"),
        )
        .target("<= 2x", ratio <= 2.0),
    );
    rows.push(row(
        format!(
            "empty call round trip vs futex ping-pong floor (spin {} ms: never sleeps)",
            LONG_SPIN / 1_000_000
        ),
        fmt_time(fw),
        fmt_time(fl),
        format!("{:.2}x", fw / fl),
    ));
    let fc = median(&e_fc);
    rows.push(row(
        format!(
            "empty call round trip vs futex ping-pong floor (spin {} us measured with the clock, as forkworker did before it read the counter)",
            SPIN / 1000
        ),
        fmt_time(fw),
        fmt_time(fc),
        format!("{:.2}x", fw / fc),
    ));
    rows.push(row(
        "empty call round trip vs pipe ping-pong",
        fmt_time(fw),
        fmt_time(pp),
        format!("{:.2}x", fw / pp),
    ));
    rows.push(row(
        "empty call round trip vs procspawn Pool(1)",
        fmt_time(fw),
        fmt_time(ps),
        format!("{:.3}x", fw / ps),
    ));
    for (workers, fw, ps) in [(1, &t1, &p1), (2, &t2, &p2)] {
        let (fw, ps) = (median(fw), median(ps));
        rows.push(
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
            .target(">= 10x", fw >= 10.0 * ps),
        );
    }
    for &(size, fw, mc, ps) in &payload_rows {
        let mut r = row(
            format!("echo {} round trip vs memcpy x2", size_name(size)),
            fmt_time(fw),
            fmt_time(mc),
            format!("{:.2}x", fw / mc),
        );
        if size == 64 * MIB {
            r = r.target("<= 3x", fw <= 3.0 * mc);
        }
        rows.push(r);
        rows.push(row(
            format!("echo {} round trip vs procspawn Pool(1)", size_name(size)),
            fmt_time(fw),
            fmt_time(ps),
            format!("{:.3}x", fw / ps),
        ));
    }
    let ms5 = 5e-3;
    let (tl, rp, cl) = (
        median(&faults.timeout_late),
        median(&faults.replacement),
        median(&faults.crash_late),
    );
    let tl_max = faults.timeout_late.iter().copied().fold(0.0, f64::max);
    let cl_max = faults.crash_late.iter().copied().fold(0.0, f64::max);
    rows.push(
        figure(
            format!(
                "timeout ({} ms): deadline to on_timeout, median (max)",
                cfg.timeout.as_millis()
            ),
            format!("{} ({})", fmt_time(tl), fmt_time(tl_max)),
        )
        .target("<= 5 ms", tl_max <= ms5),
    );
    rows.push(figure(
        "after a timeout: its report to the first return of the replacement worker",
        fmt_time(rp),
    ));
    rows.push(
        figure(
            "crash (abort in the method) to wait's CallError::Crashed, median (max)",
            format!("{} ({})", fmt_time(cl), fmt_time(cl_max)),
        )
        .target("<= 5 ms", cl_max <= ms5),
    );
    rows.push(figure(
        "parent RSS added by starting a 1-worker pool (default malloc 8 MiB, pre-faulted)",
        fmt_bytes(memory.parent_delta_kib as f64 * 1024.0),
    ));
    rows.push(figure(
        "idle worker RSS after one call (VmRSS; anon + shmem)",
        format!(
            "{} ({} + {})",
            fmt_bytes(memory.worker_rss_kib as f64 * 1024.0),
            fmt_bytes(memory.worker_anon_kib as f64 * 1024.0),
            fmt_bytes(memory.worker_shmem_kib as f64 * 1024.0)
        ),
    ));
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

    println!();
    println!(
        "forkworker compare ({} run, {} rounds, medians; ratio = forkworker / floor-or-peer for times, forkworker / peer for throughput)",
        if cfg.smoke { "smoke" } else { "full" },
        cfg.rounds
    );
    println!();
    print_table(&rows);
    println!();
    let (steal, others) = CpuSample::now().noise_since(cpu_start);
    let met = rows.iter().filter(|r| r.met == "yes").count();
    let targets = rows.iter().filter(|r| r.met != "-").count();
    println!(
        "targets met: {met} of {targets}; total time {:.1} s; nproc {}; during the run, CPU used by other processes {others:.0}% and stolen by the hypervisor {steal:.1}% (above a few %, the figures are noisy)",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !leftovers.is_empty() {
        eprintln!("compare: left behind: {}", leftovers.join("; "));
        std::process::exit(1);
    }
    println!("cleanup: no fw.* segment of this process in /dev/shm, no child process left");
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

/// `--only WHAT [--count N]`: one forkworker path (or the futex floor) alone, with no
/// procspawn and no other floor, for a profiler (`perf stat`, `valgrind --tool=callgrind
/// --trace-children=yes`). WHAT is `empty`, `paired` (the empty call and the futex floor in
/// alternating batches), `throughput`, `throughput2`, `echo64`, `futex`, `futex-long` or
/// `futex-clock`.
fn profile_only(what: &str, count: Option<usize>) {
    let stamp = 0;
    let mut m = BenchMediator::new("bench-profile", Bench { stamp });
    let workers = if what == "throughput2" { 2 } else { 1 };
    m.workers(workers)
        .malloc(3 * 64 * MIB)
        .strategy(ForkStrategy::Aggressive);
    m.start().expect("start");
    let t = Instant::now();
    let n = match what {
        "empty" => {
            let n = count.unwrap_or(100_000);
            let batches: Vec<f64> = (0..n.div_ceil(BATCH))
                .map(|_| fw_empty(&mut m, BATCH))
                .collect();
            print_batches(what, &batches);
            n.div_ceil(BATCH) * BATCH
        }
        "throughput" | "throughput2" => {
            let n = count.unwrap_or(100_000);
            fw_throughput(&mut m, n);
            n
        }
        "echo64" => {
            let n = count.unwrap_or(20);
            let mut data = vec![5u8; 64 * MIB];
            for _ in 0..n {
                fw_echo(&mut m, &mut data);
            }
            n
        }
        "paired" => {
            // Alternating batches of forkworker's empty call and of the futex floor, in this
            // one process: both see the same placement of processes on CPUs.
            let n = count.unwrap_or(100_000);
            let mut floor = FutexFloor::start(SPIN);
            let (mut fw, mut fl) = (Vec::new(), Vec::new());
            for _ in 0..n.div_ceil(BATCH) {
                quiesce(&mut || {
                    fw_empty(&mut m, 1);
                });
                fw.push(fw_empty(&mut m, BATCH));
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
        "futex" | "futex-long" | "futex-clock" => {
            let n = count.unwrap_or(100_000);
            let mut floor = match what {
                "futex" => FutexFloor::start(SPIN),
                "futex-clock" => FutexFloor::start_with(SPIN, Budget::Clock),
                _ => FutexFloor::start(LONG_SPIN),
            };
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
        _ => {
            eprintln!(
                "--only takes empty, paired, throughput, throughput2, echo64, futex, futex-long or futex-clock"
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
