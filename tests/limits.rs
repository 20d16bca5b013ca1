//! The limits a user sets on workers, with real allocations and real CPU burning in worker
//! methods: `memory_limit` (cgroup v1, this machine's, and `RLIMIT_DATA`), `cpu_limit`, and
//! `Recycle::above_memory`. Each test runs alone in its own process (see `support`); the memory
//! tests also check that no cgroup of this process is left, and remove any even on failure.

mod support;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forkworker::LimitMechanism;
use forkworker::prelude::*;

/// Calls `$method` on mediator `$m` and waits for its result.
macro_rules! call {
    ($m:ident, $method:ident($($arg:expr),*)) => {{
        let id = $m.$method($($arg),*).unwrap();
        $m.wait(id, LONG)
    }};
}

const LONG: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// The memory limit of the memory tests.
const LIMIT: u64 = 64 * MIB;

/// What `Hungry::keep` holds on to, per worker process.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

pub struct Hungry;

#[forkworker::worker]
impl Hungry {
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Allocates `bytes`, writes to every page, and frees them; returns the sum of a byte per
    /// page (so that nothing is optimised away).
    pub fn touch(&self, bytes: u64) -> u64 {
        let mut v = vec![0u8; bytes as usize];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&mut v);
        v.iter().step_by(4096).map(|&b| u64::from(b)).sum()
    }

    /// Allocates `bytes`, writes to every page, and keeps them; returns this worker's pid and
    /// how many bytes it keeps in all.
    pub fn keep(&self, bytes: u64) -> (u32, u64) {
        let mut v = vec![0u8; bytes as usize];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        let mut kept = KEPT.lock().unwrap();
        kept.push(v);
        let total = kept.iter().map(|v| v.len() as u64).sum();
        (std::process::id(), total)
    }

    /// This worker's line of /proc/self/cgroup for the memory controller.
    pub fn memory_cgroup(&self) -> String {
        std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "memory"))
            })
            .unwrap_or_default()
            .to_owned()
    }

    /// This worker's soft `RLIMIT_DATA`, if it has one.
    pub fn data_limit(&self) -> Option<u64> {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut r) };
        (r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
    }

    /// Burns `ms` milliseconds of this process's CPU time.
    pub fn spin(&self, ms: u64) -> u64 {
        let start = cpu_time();
        let mut n = 0u64;
        while cpu_time() - start < Duration::from_millis(ms) {
            for _ in 0..1000 {
                n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        n
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// This process's CPU time.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This process's own group in the cgroup v1 memory hierarchy (where the pools' groups go).
fn own_memory_cgroup() -> PathBuf {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })
        .expect("this machine has no cgroup v1 memory hierarchy: the cgroup v1 test cannot run");
    PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))
}

/// The cgroups this process's pools made (`fw-<pid>-<n>`), wherever the memory hierarchy has
/// them. On drop, removes any that is left (so that a failed test leaves none behind).
struct Groups {
    own: Option<PathBuf>,
}

impl Groups {
    fn watch() -> Groups {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .filter(|c| c.lines().any(|l| l.contains(":memory:")))
            .map(|_| own_memory_cgroup());
        Groups { own }
    }

    /// The groups of this process that exist now.
    fn left(&self) -> Vec<PathBuf> {
        let Some(own) = &self.own else {
            return Vec::new();
        };
        let prefix = format!("fw-{}-", std::process::id());
        std::fs::read_dir(own)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_none_left(&self) {
        let left = self.left();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
    }
}

fn remove_tree(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Groups {
    fn drop(&mut self) {
        for dir in self.left() {
            remove_tree(&dir);
        }
    }
}

/// A pool of one worker with a memory limit of [`LIMIT`] enforced by `mechanism` (asked for
/// through the documented environment variable), started; panics, saying so, if the
/// mechanism cannot be had here.
fn limited(alias: &str, mechanism: &str, expect: LimitMechanism) -> HungryMediator {
    // SAFETY: this test process is single-threaded (see `support`).
    unsafe { std::env::set_var("FORKWORKER_MEMORY_LIMIT_MECHANISM", mechanism) };
    let mut m = HungryMediator::new(alias, Hungry);
    m.memory_limit(LIMIT).timeout(LONG);
    m.start().expect("start");
    // SAFETY: as above.
    unsafe { std::env::remove_var("FORKWORKER_MEMORY_LIMIT_MECHANISM") };
    let got = m.stats().memory_limit;
    assert_eq!(
        got,
        Some(expect),
        "the memory limit mechanism {expect:?} is not available on this machine (got {got:?}); see the debug log of the limits module"
    );
    m
}

/// A worker that allocates and touches 2x its limit ends its call with `check` (given the
/// error); the next call runs on a replacement, which works within the limit.
fn over_the_limit_is_reported(m: &mut HungryMediator, check: impl FnOnce(&CallError)) {
    let failed = Rc::new(RefCell::new(Vec::new()));
    let sink = failed.clone();
    m.on_error(move |call, _| sink.borrow_mut().push((call.id(), call.status())));
    let first = call!(m, pid()).unwrap();
    // Under the limit: fine, and again (freed memory does not count).
    for _ in 0..2 {
        let id = m.touch(LIMIT / 2).unwrap();
        assert_eq!(m.wait(id, LONG).unwrap(), LIMIT / 2 / 4096);
    }
    assert_eq!(call!(m, pid()).unwrap(), first);
    let t = Instant::now();
    let call = m.touch(2 * LIMIT).unwrap();
    let id = call.id();
    let err = m
        .wait(call, LONG)
        .expect_err("2x the memory limit must not return");
    assert!(t.elapsed() < LONG, "reported only at the timeout");
    check(&err);
    assert_eq!(*failed.borrow(), [(id.raw(), CallStatus::Crashed)]);
    // A replacement takes the next calls.
    let second = call!(m, pid()).unwrap();
    assert_ne!(second, first, "the worker was not replaced");
    let id = m.touch(LIMIT / 2).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), LIMIT / 2 / 4096);
    assert_eq!(m.errors().communication, 1);
}

fn memory_limit_with_cgroup_v1() {
    let groups = Groups::watch();
    assert!(
        groups.own.is_some(),
        "this machine has no cgroup v1 memory hierarchy: the cgroup v1 test cannot run"
    );
    {
        let mut m = limited("CgroupV1", "cgroup_v1", LimitMechanism::CgroupV1);
        // The worker sits in a group of its own, named by its pid, under this pool's group.
        let pid = call!(m, pid()).unwrap();
        let line = call!(m, memory_cgroup()).unwrap();
        let suffix = format!("/fw-{}-0/{pid}", std::process::id());
        assert!(
            line.ends_with(&suffix),
            "worker {pid} is in {line:?}, not in */{suffix}"
        );
        let dir = groups
            .left()
            .pop()
            .expect("the pool's cgroup")
            .join(pid.to_string());
        let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), LIMIT.to_string());
        over_the_limit_is_reported(&mut m, |err| match err {
            CallError::MemoryLimit {
                method,
                pid: dead,
                limit,
                mechanism,
                cause,
                ..
            } => {
                assert_eq!(
                    (*method, *dead, *limit, *mechanism),
                    ("touch", pid as i32, LIMIT, LimitMechanism::CgroupV1)
                );
                assert_eq!(*cause, ExitCause::Signaled(libc::SIGKILL));
            }
            other => panic!("expected MemoryLimit, got {other:?}"),
        });
        // The dead worker's group went with it; the replacement's is there.
        assert!(!dir.exists(), "{} was not removed", dir.display());
        assert_eq!(groups.left().len(), 1);
    }
    // The pool's group went with the pool.
    groups.assert_none_left();
}

/// Both limits hold for workers forked by the fork server, which captured them when it
/// started.
fn limits_hold_through_the_fork_server() {
    let groups = Groups::watch();
    {
        // SAFETY: this test process is single-threaded (see `support`).
        unsafe { std::env::set_var("FORKWORKER_MEMORY_LIMIT_MECHANISM", "cgroup_v1") };
        let mut m = HungryMediator::new("Served", Hungry);
        m.memory_limit(LIMIT)
            .cpu_limit(Duration::from_millis(200))
            .timeout(LONG);
        m.start().expect("start");
        // SAFETY: as above.
        unsafe { std::env::remove_var("FORKWORKER_MEMORY_LIMIT_MECHANISM") };
        assert_eq!(m.stats().memory_limit, Some(LimitMechanism::CgroupV1));
        let pid = call!(m, pid()).unwrap();
        let line = call!(m, memory_cgroup()).unwrap();
        assert!(
            line.ends_with(&format!("/{pid}")),
            "worker {pid} is in {line:?}"
        );
        match call!(m, touch(2 * LIMIT)) {
            Err(CallError::MemoryLimit { mechanism, .. }) => {
                assert_eq!(mechanism, LimitMechanism::CgroupV1)
            }
            other => panic!("expected MemoryLimit, got {other:?}"),
        }
        match call!(m, spin(5_000)) {
            Err(CallError::CpuLimit { method, .. }) => assert_eq!(method, "spin"),
            other => panic!("expected CpuLimit, got {other:?}"),
        }
        let last = call!(m, pid()).unwrap();
        assert_ne!(last, pid);
        assert_eq!(call!(m, touch(LIMIT / 2)).unwrap(), LIMIT / 2 / 4096);
    }
    groups.assert_none_left();
}

/// Groups left by a program that is gone (`fw-<its pid>-<n>`, with a worker's group inside)
/// are removed when a pool with a memory limit starts; another live program's are kept.
fn stale_cgroups_are_removed_at_start() {
    let groups = Groups::watch();
    let own = groups
        .own
        .clone()
        .expect("no cgroup v1 memory hierarchy: the test cannot run");
    // A pid that is gone: a child that exited and was reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = own.join(format!("fw-{dead}-0"));
    let live = own.join(format!("fw-{}-99", std::process::id()));
    let _cleanup = Leftover(vec![stale.clone(), live.clone()]);
    std::fs::create_dir(&stale).unwrap();
    std::fs::create_dir(stale.join("12345")).unwrap();
    std::fs::create_dir(&live).unwrap();
    {
        let mut m = limited("Stale", "cgroup_v1", LimitMechanism::CgroupV1);
        assert!(
            !stale.exists(),
            "the stale group {} is still there",
            stale.display()
        );
        assert!(live.exists(), "the group of a live program was removed");
        call!(m, pid()).unwrap();
    }
    std::fs::remove_dir(&live).unwrap();
    groups.assert_none_left();
}

/// Removes these cgroups on drop, if they are still there.
struct Leftover(Vec<PathBuf>);

impl Drop for Leftover {
    fn drop(&mut self) {
        for dir in &self.0 {
            remove_tree(dir);
        }
    }
}

fn memory_limit_with_rlimit_data() {
    let groups = Groups::watch();
    {
        let mut m = limited("RlimitData", "rlimit_data", LimitMechanism::RlimitData);
        let limit = call!(m, data_limit()).unwrap();
        let limit = limit.expect("the worker has no RLIMIT_DATA");
        assert!(
            (LIMIT..LIMIT + 256 * MIB).contains(&limit),
            "RLIMIT_DATA {limit} is not the data size after setup plus {LIMIT}"
        );
        assert!(
            groups.left().is_empty(),
            "a cgroup was made for RLIMIT_DATA"
        );
        over_the_limit_is_reported(&mut m, |err| match err {
            CallError::MemoryLimit {
                mechanism,
                cause,
                stderr,
                ..
            } => {
                assert_eq!(*mechanism, LimitMechanism::RlimitData);
                assert_eq!(*cause, ExitCause::Signaled(libc::SIGABRT));
                assert!(
                    stderr.contains("memory allocation of"),
                    "the tail says why: {stderr:?}"
                );
            }
            other => panic!("expected MemoryLimit, got {other:?}"),
        });
    }
    groups.assert_none_left();
}

fn no_memory_limit_by_default() {
    let mut m = HungryMediator::new("Unlimited", Hungry);
    m.timeout(LONG);
    m.start().unwrap();
    assert_eq!(m.stats().memory_limit, None);
    assert_eq!(call!(m, data_limit()).unwrap(), None);
    let id = m.touch(2 * LIMIT).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 2 * LIMIT / 4096);
}

fn cpu_limit_ends_a_spinning_call() {
    let cpu = Duration::from_millis(300);
    let mut m = HungryMediator::new("Cpu", Hungry);
    m.cpu_limit(cpu).timeout(Duration::from_secs(20));
    let first = call!(m, pid()).unwrap();
    // The limit is per call: calls that together use more each stay under it.
    for _ in 0..4 {
        let id = m.spin(120).unwrap();
        m.wait(id, LONG).unwrap();
    }
    // Waiting is not CPU time.
    let id = m.sleep_ms(600).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 600);
    assert_eq!(call!(m, pid()).unwrap(), first);
    let t = Instant::now();
    let id = m.spin(10_000).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::CpuLimit { method, pid, limit }) => {
            assert_eq!((method, pid, limit), ("spin", first as i32, cpu));
        }
        other => panic!("expected CpuLimit, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the CPU limit ended the call only after {took:?}"
    );
    let second = call!(m, pid()).unwrap();
    assert_ne!(second, first, "the worker was not replaced");
    let id = m.spin(50).unwrap();
    m.wait(id, LONG).unwrap();
}

fn recycle_above_memory_retires_a_growing_worker() {
    let threshold = 48 * MIB;
    let step = 8 * MIB;
    let mut m = HungryMediator::new("Growing", Hungry);
    m.recycle(Recycle::above_memory(threshold)).timeout(LONG);
    let (first, _) = call!(m, keep(0)).unwrap();
    let mut pid = first;
    let mut kept = 0;
    let mut retired_at = None;
    for _ in 0..40 {
        let (p, total) = call!(m, keep(step)).unwrap();
        if p == pid {
            assert_eq!(total, kept + step, "worker {p} lost what it kept");
        } else {
            // A fresh worker keeps only this call's bytes.
            assert_eq!(total, step, "worker {p} is not fresh");
            retired_at = Some(kept);
            break;
        }
        kept = total;
        pid = p;
        // Let the parent's next look at the worker's memory come due.
        std::thread::sleep(Recycle::MEMORY_CHECK + Duration::from_millis(5));
    }
    let retired_at = retired_at.expect("the growing worker was never retired");
    assert_eq!(pid, first);
    // Retired once past the threshold (its own heap counts too), not before.
    assert!(
        retired_at + 8 * MIB >= threshold && retired_at <= threshold + 2 * step,
        "retired when it kept {} MiB, threshold {} MiB",
        retired_at / MIB,
        threshold / MIB
    );
    // The replacement serves the next calls.
    let (p, total) = call!(m, keep(step)).unwrap();
    assert_ne!(p, first);
    assert_eq!(total, 2 * step);
}

tests![
    memory_limit_with_cgroup_v1,
    stale_cgroups_are_removed_at_start,
    limits_hold_through_the_fork_server,
    memory_limit_with_rlimit_data,
    no_memory_limit_by_default,
    cpu_limit_ends_a_spinning_call,
    recycle_above_memory_retires_a_growing_worker,
];
