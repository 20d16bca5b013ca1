//! Faults with real processes: crashes of every kind, external kills, chaos, recycling,
//! corrupted shared memory, a parent killed with SIGKILL, and a threaded parent. Each test runs
//! alone in its own process (see `support`), which also checks what it left behind.

mod support;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use support::{assert_no_children, eventually};

const LONG: Duration = Duration::from_secs(30);

pub struct Faulty;

#[forkworker::worker]
impl Faulty {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    /// Works a little, so that a kill often lands while a call runs.
    pub fn work(&self, n: u64) -> u64 {
        std::thread::sleep(Duration::from_micros(200));
        n
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// A real fault: a write through a null pointer (SIGSEGV).
    pub fn segfault(&self) -> u8 {
        // SAFETY: not safe at all; crashing the worker is the point.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        0
    }

    pub fn abort(&self) -> u8 {
        std::process::abort()
    }

    pub fn exit(&self, code: i32) -> u8 {
        std::process::exit(code)
    }
}

/// Runs a crashing call on a fresh pool of 4 and checks that the crash is reported with
/// `expected` long before the 60 s timeout, and that the pool is back to 4 workers after.
fn crash_is_reported<R: std::fmt::Debug + 'static>(
    make_call: impl FnOnce(&mut FaultyMediator) -> Handle<R>,
    expected: ExitCause,
) {
    let mut m = FaultyMediator::new("Faulty", Faulty);
    let errors = Rc::new(RefCell::new(Vec::new()));
    let sink = errors.clone();
    m.workers(4)
        .timeout(Duration::from_secs(60))
        .on_error(move |call, _log| sink.borrow_mut().push((call.id(), call.status())));
    let warm: Vec<_> = (0..4).map(|n| m.echo(n).unwrap()).collect();
    for id in warm {
        m.wait(id, LONG).unwrap();
    }
    let t = Instant::now();
    let call = make_call(&mut m);
    let id = call.id();
    match m.wait(call, LONG) {
        Err(CallError::Crashed { cause, method, .. }) => {
            assert_eq!(cause, expected, "crash of {method}()");
        }
        other => panic!("expected Crashed with {expected:?}, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "reported after {took:?}");
    assert_eq!(*errors.borrow(), [(id.raw(), CallStatus::Crashed)]);
    assert!(
        eventually(LONG, || {
            m.poll();
            m.pids().len() == 4
        }),
        "the pool is back to 4 workers"
    );
    let id = m.echo(42).unwrap();
    assert_eq!(m.wait(id, LONG), Ok(42));
    assert_eq!(m.errors().communication, 1);
}

fn a_null_pointer_write_is_reported_as_sigsegv() {
    crash_is_reported(
        |m| m.segfault().unwrap(),
        ExitCause::Signaled(libc::SIGSEGV),
    );
}

fn abort_is_reported_as_sigabrt() {
    crash_is_reported(|m| m.abort().unwrap(), ExitCause::Signaled(libc::SIGABRT));
}

fn exit_3_is_reported_with_its_code() {
    crash_is_reported(|m| m.exit(3).unwrap(), ExitCause::Exited(3));
}

fn an_external_sigkill_is_reported() {
    crash_is_reported(
        |m| {
            let call = m.sleep_ms(60_000).unwrap();
            let id = call.id();
            assert!(eventually(LONG, || m.status(id) == Some(CallStatus::Running)));
            let pid = m.worker_pid(id).expect("a worker holds the call");
            // SAFETY: someone else's SIGKILL, as far as the mediator knows.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            call
        },
        ExitCause::Signaled(libc::SIGKILL),
    );
}

/// Forks a process that SIGKILLs a random worker of `target` every `every`: a child of one of
/// its children (the fork server) other than the killer itself.
fn start_killer(target: i32, every: Duration) -> i32 {
    // SAFETY: the test process is single-threaded; the child only reads /proc, kills and
    // sleeps, then leaves with _exit.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: prctl with valid arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let me = std::process::id() as i32;
            let children_of = |pid: i32| -> Vec<i32> {
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            };
            let mut x: u64 = (me as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            loop {
                std::thread::sleep(every);
                let children: Vec<i32> = children_of(target)
                    .into_iter()
                    .filter(|&p| p != me)
                    .flat_map(children_of)
                    .collect();
                if children.is_empty() {
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let victim = children[(x % children.len() as u64) as usize];
                // SAFETY: SIGKILL to one of the test's workers.
                unsafe { libc::kill(victim, libc::SIGKILL) };
            }
        }
        pid if pid > 0 => pid,
        _ => panic!("fork failed"),
    }
}

fn stop_killer(pid: i32) {
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

fn chaos_every_call_is_accounted_for_exactly_once() {
    let outcomes: Rc<RefCell<HashMap<u64, Result<u64, CallStatus>>>> = Default::default();
    let duplicates = Rc::new(RefCell::new(0u32));
    let mut m = FaultyMediator::new("Chaos", Faulty);
    let (ok, err, dup) = (outcomes.clone(), outcomes.clone(), duplicates.clone());
    let dup2 = duplicates.clone();
    m.workers(4)
        .timeout(Duration::from_secs(20))
        .on_return(move |call, _log| {
            let Some(Ok(FaultyReturn::Work(n))) = call.return_value() else {
                panic!("bad return for {call:?}");
            };
            if ok.borrow_mut().insert(call.id(), Ok(n)).is_some() {
                *dup.borrow_mut() += 1;
            }
        })
        .on_error(move |call, _log| {
            if err
                .borrow_mut()
                .insert(call.id(), Err(call.status()))
                .is_some()
            {
                *dup2.borrow_mut() += 1;
            }
        });
    let killer = start_killer(std::process::id() as i32, Duration::from_millis(4));
    let mut expected = HashMap::new();
    for n in 0..5_000u64 {
        match m.work(n) {
            Ok(id) => {
                expected.insert(id.id().raw(), n);
            }
            Err(e) => panic!("call {n} refused: {e}"),
        }
        if n % 16 == 0 {
            m.poll();
        }
    }
    let done = eventually(Duration::from_secs(60), || {
        m.poll();
        outcomes.borrow().len() >= expected.len()
    });
    stop_killer(killer);
    assert!(
        done,
        "only {} of {} calls settled",
        outcomes.borrow().len(),
        expected.len()
    );
    assert_eq!(*duplicates.borrow(), 0, "a call was delivered twice");
    let outcomes = outcomes.borrow();
    assert_eq!(outcomes.len(), expected.len());
    let mut returned = 0;
    let mut failed = HashMap::new();
    for (id, n) in &expected {
        match outcomes.get(id) {
            Some(Ok(got)) => {
                assert_eq!(got, n, "call {id} returned another call's value");
                returned += 1;
            }
            Some(Err(status)) => *failed.entry(*status).or_insert(0) += 1,
            None => panic!("call {id} was lost"),
        }
    }
    for status in failed.keys() {
        assert!(
            matches!(status, CallStatus::Crashed | CallStatus::Cancelled),
            "unexpected final status {status:?}"
        );
    }
    println!(
        "chaos: {returned} returned, failed {failed:?}, errors {:?}",
        m.errors()
    );
    assert!(returned > 2_500, "most calls return: {returned}");
    assert!(!failed.is_empty(), "the killer hit running calls");
    assert_eq!(m.pending(), 0);
}

fn recycled_workers_lose_no_call() {
    let mut m = FaultyMediator::new("Recycled", Faulty);
    m.workers(4).recycle(Recycle::after_calls(10));
    let ids: Vec<_> = (0..1_000u64).map(|n| m.echo(n).unwrap()).collect();
    for (n, id) in ids.into_iter().enumerate() {
        assert_eq!(m.wait(id, LONG), Ok(n as u64));
    }
    let mut pids = HashSet::new();
    for _ in 0..200 {
        let id = m.pid().unwrap();
        pids.insert(m.wait(id, LONG).unwrap());
    }
    assert!(
        pids.len() >= 10,
        "workers retired and were replaced: {} pids",
        pids.len()
    );
    assert_eq!(m.errors(), ErrorCounts::default());
}

pub struct SlowStart {
    setup_ms: u64,
    die_in_setup: bool,
}

#[forkworker::worker]
impl SlowStart {
    pub fn setup(&mut self) {
        if self.die_in_setup {
            std::process::exit(7);
        }
        std::thread::sleep(Duration::from_millis(self.setup_ms));
    }

    pub fn hello(&self) -> u8 {
        1
    }
}

fn a_call_whose_worker_died_before_starting_it_is_requeued() {
    let mut m = SlowStartMediator::new(
        "SlowStart",
        SlowStart {
            setup_ms: 300,
            die_in_setup: false,
        },
    );
    let retries = Rc::new(RefCell::new(Vec::new()));
    let sink = retries.clone();
    m.on_return(move |call, _| sink.borrow_mut().push(call.retries()));
    let id = m.hello().unwrap();
    assert_eq!(
        m.status(id.id()),
        Some(CallStatus::Called),
        "handed over, not started"
    );
    let pid = m.pids()[0];
    // SAFETY: killing our own worker while it is still in setup.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(m.wait(id, LONG), Ok(1));
    assert_eq!(*retries.borrow(), [1], "ran once, on its first requeue");
    assert_ne!(m.pids()[0], pid);
}

fn a_call_is_cancelled_after_three_requeues_and_nothing_hangs() {
    let mut m = SlowStartMediator::new(
        "Doomed",
        SlowStart {
            setup_ms: 0,
            die_in_setup: true,
        },
    );
    let t = Instant::now();
    let id = m.hello().unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Cancelled {
            reason: forkworker::CancelReason::WorkersDied { attempts, .. },
            ..
        }) => assert_eq!(attempts, 4),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The next call meets the start-failure limit instead of forking forever.
    let id = m.hello().unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Pool(forkworker::PoolError::WorkersDying { failures })) => {
            assert!(failures >= 5, "{failures}")
        }
        other => panic!("expected Pool(WorkersDying), got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// The layout of a channel in a worker's area (see worker-core/src/channel.rs and area.rs):
/// the channel starts the area; its response half at +64, whose `seq` is at +8, `kind` at
/// +12, `ret_len` at +16 and `check` at +40. The request half's `seq` is at +0.
const CHANNEL0: usize = 0;

fn a_forged_answer_in_shared_memory_fails_its_call_only() {
    let mut m = FaultyMediator::new("Forged", Faulty);
    m.workers(1);
    let id = m.sleep_ms(2_000).unwrap();
    assert!(eventually(LONG, || m.status(id.id()) == Some(CallStatus::Running)));
    let worker = m.pids()[0];
    let (base, _) = support::area_of("Forged", 0).expect("the worker's area");
    let base = base as *mut u8;
    // SAFETY: scribbling on the test's own mapping of the segment, as a stray write would.
    unsafe {
        let req_seq = std::ptr::read_volatile(base.add(CHANNEL0) as *const u32);
        let resp = base.add(CHANNEL0 + 64);
        std::ptr::write_volatile(resp.add(12) as *mut u32, 1); // "returned"
        std::ptr::write_volatile(resp.add(16) as *mut u64, 1 << 40); // a huge length
        std::ptr::write_volatile(resp.add(40) as *mut u64, 0xdead_beef); // a wrong checksum
        std::ptr::write_volatile(resp.add(8) as *mut u32, req_seq);
    }
    match m.wait(id, LONG) {
        Err(CallError::Wire {
            source: WireError::Corrupted(detail),
            ..
        }) => assert!(detail.contains("invalid"), "{detail}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(m.errors().corruption, 1);
    let id = m.pid().unwrap();
    let next = m.wait(id, LONG).unwrap();
    assert_ne!(
        next as i32, worker,
        "the worker behind the bad channel was replaced"
    );
}

fn workers_die_within_two_seconds_of_a_sigkilled_parent() {
    // Orphaned workers are re-parented to us, so that we can reap them.
    // SAFETY: prctl with valid arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // The child builds a pool, reports its pids and sleeps until it is killed.
    let (parent, lines) = support::fork_reporting(|mut out| {
        let mut m = FaultyMediator::new("Orphans", Faulty);
        m.workers(3);
        let ids: Vec<_> = (0..3).map(|_| m.sleep_ms(50).unwrap()).collect();
        for id in ids {
            m.wait(id, LONG).unwrap();
        }
        for pid in m.pids() {
            writeln!(out, "{pid}").unwrap();
        }
        drop(out);
        let _running = m.sleep_ms(60_000).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: never reached in the test; leave without destructors.
        unsafe { libc::_exit(0) }
    });
    // Three lines (the workers no longer hold the pipe's write end: it is /dev/null in them).
    let pids: Vec<i32> = lines.take(3).map(|l| l.unwrap().parse().unwrap()).collect();
    assert_eq!(pids.len(), 3);
    support::kill_and_reap(parent);
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(2), || {
        // Reap what was re-parented to us; a reaped worker no longer exists.
        // SAFETY: non-blocking reaping of our adopted children.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        pids.iter().all(|&p| !support::process_exists(p))
    });
    // The segment is a memfd: it went with the last process that mapped it.
    assert!(support::segments_of(parent as u32).is_empty());
    assert!(
        gone,
        "workers still alive {:?} after the parent's death",
        killed.elapsed()
    );
    // The fork server dies with the parent too (after killing what is left of its tree):
    // nothing of ours is left.
    let all_gone = eventually(Duration::from_secs(2), || {
        // SAFETY: non-blocking reaping of our adopted children.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: as above; ECHILD means none is left.
        unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) == -1 }
    });
    assert!(all_gone, "the fork server outlived its parent");
    assert_no_children();
}

static SHARED: Mutex<u64> = Mutex::new(0);

pub struct Printer;

#[forkworker::worker]
impl Printer {
    pub fn setup(&mut self) {
        // Both take locks that the parent's threads hold most of the time.
        *SHARED.lock().unwrap() += 1;
        println!("worker {} ready", std::process::id());
    }

    pub fn hello(&self) -> u32 {
        std::process::id()
    }
}

fn a_threaded_parent_starts_200_workers_through_the_fork_server() {
    let mut m = PrinterMediator::new("Printer", Printer);
    m.workers(2)
        .recycle(Recycle::after_calls(1))
        .timeout(Duration::from_secs(20));
    m.start().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut guard = SHARED.lock().unwrap();
                    *guard += 1;
                    println!("thread {t} holds the lock: {}", *guard);
                    drop(guard);
                }
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for _ in 0..200 {
        let id = m.hello().unwrap();
        pids.insert(m.wait(id, LONG).expect("no worker deadlocked"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(pids.len() >= 190, "{} distinct workers", pids.len());
}

tests![
    a_null_pointer_write_is_reported_as_sigsegv,
    abort_is_reported_as_sigabrt,
    exit_3_is_reported_with_its_code,
    an_external_sigkill_is_reported,
    chaos_every_call_is_accounted_for_exactly_once,
    recycled_workers_lose_no_call,
    a_call_whose_worker_died_before_starting_it_is_requeued,
    a_call_is_cancelled_after_three_requeues_and_nothing_hangs,
    a_forged_answer_in_shared_memory_fails_its_call_only,
    workers_die_within_two_seconds_of_a_sigkilled_parent,
    a_threaded_parent_starts_200_workers_through_the_fork_server,
];
