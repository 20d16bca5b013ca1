//! `idle_timeout(d)` (loky's): idle workers above `min_workers` exit after `d` and are forked
//! again when calls come; with the setting off, idle workers stay. Real forks: the exited
//! workers' pids are gone (reaped by the fork server, no zombie), and the runner checks that
//! nothing is left behind (see `support`).

mod support;

use std::time::{Duration, Instant};

use forkworker::prelude::*;
use support::{eventually, process_exists};

const LONG: Duration = Duration::from_secs(30);

pub struct Idle;

#[forkworker::worker]
impl Idle {
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn sleep_ms(&self, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }
}

/// Runs `n` calls at once, each on its own worker (each sleeps `ms`), and returns the pids
/// that served them, sorted.
fn busy_all(m: &mut IdleMediator, n: usize, ms: u64) -> Vec<i32> {
    let ids: Vec<_> = (0..n).map(|_| m.sleep_ms(ms).unwrap()).collect();
    let mut pids: Vec<i32> = ids
        .into_iter()
        .map(|id| m.wait(id, LONG).unwrap() as i32)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), n, "each call ran on its own worker: {pids:?}");
    pids
}

fn sorted(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort_unstable();
    pids
}

fn idle_workers_above_the_minimum_exit_and_the_minimum_stays() {
    let idle = Duration::from_millis(400);
    let mut m = IdleMediator::new("Idle", Idle);
    m.workers(3).min_workers(1).idle_timeout(idle);
    let submitted = Instant::now();
    let first = busy_all(&mut m, 3, 100);
    // Each worker was busy until at least 100 ms after the submission.
    let busy_until = submitted + Duration::from_millis(100);
    m.poll();
    if busy_until.elapsed() < idle / 2 {
        assert_eq!(
            sorted(m.pids()),
            first,
            "no worker exits before its idle time"
        );
    }
    assert!(
        eventually(LONG, || {
            m.poll();
            m.pids().len() < 3
        }),
        "idle workers exit: {:?}",
        m.pids()
    );
    assert!(
        busy_until.elapsed() >= idle,
        "a worker exited after {:?} idle, before its idle_timeout of {idle:?}",
        busy_until.elapsed()
    );
    assert!(eventually(LONG, || {
        m.poll();
        m.pids().len() == 1
    }));
    let kept = m.pids()[0];
    assert!(first.contains(&kept), "the one left is one of the first");
    for pid in first.iter().filter(|&&p| p != kept) {
        assert!(
            eventually(LONG, || {
                m.poll();
                !process_exists(*pid)
            }),
            "worker {pid} exited and was reaped (no zombie)"
        );
    }
    assert_eq!(m.stats().workers, 1);
    assert_eq!(m.stats().configured_workers, 3);
    // The minimum stays, however long it idles.
    let until = Instant::now() + idle * 3;
    while Instant::now() < until {
        m.poll();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.pids(), [kept], "the minimum stays");
    // Calls come again: the missing workers are forked again (Mixed: all at the next call).
    let again = busy_all(&mut m, 3, 100);
    assert!(again.contains(&kept));
    assert_eq!(m.pids().len(), 3);
    for pid in again.iter().filter(|&&p| p != kept) {
        assert!(!first.contains(pid), "{pid} is a new worker");
    }
    assert_eq!(m.errors(), ErrorCounts::default());
}

fn with_no_minimum_every_idle_worker_exits_and_a_new_one_serves_the_next_call() {
    let mut m = IdleMediator::new("Idle", Idle);
    m.workers(2)
        .strategy(ForkStrategy::Lazy)
        .idle_timeout(Duration::from_millis(100));
    let first = busy_all(&mut m, 2, 50);
    assert!(
        eventually(LONG, || {
            m.poll();
            m.pids().is_empty()
        }),
        "every idle worker exits: {:?}",
        m.pids()
    );
    for &pid in &first {
        assert!(
            eventually(LONG, || {
                m.poll();
                !process_exists(pid)
            }),
            "worker {pid} reaped"
        );
    }
    assert_eq!(m.stats().workers, 0);
    // A call forks one worker (lazy), a new one, which serves it.
    let id = m.pid().unwrap();
    let served = m.wait(id, LONG).unwrap() as i32;
    assert!(!first.contains(&served), "{served} is a new worker");
    assert_eq!(m.pids(), [served]);
}

fn a_sleeping_loop_wakes_for_the_idle_deadline() {
    let idle = Duration::from_millis(150);
    let mut m = IdleMediator::new("Idle", Idle);
    m.workers(2).idle_timeout(idle);
    busy_all(&mut m, 2, 20);
    let start = Instant::now();
    // Nothing else would wake this loop before 20 s.
    let far = start + Duration::from_secs(20);
    while !m.pids().is_empty() && start.elapsed() < LONG {
        forkworker::sleep_on(&mut [&mut *m], &[], Some(far));
        m.poll();
    }
    assert!(m.pids().is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken for the idle deadline, after {:?}",
        start.elapsed()
    );
}

fn with_the_setting_off_idle_workers_stay() {
    let mut m = IdleMediator::new("Idle", Idle);
    // A minimum alone changes nothing.
    m.workers(2).min_workers(1);
    let first = busy_all(&mut m, 2, 20);
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        m.poll();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sorted(m.pids()), first, "no worker exits");
    assert_eq!(busy_all(&mut m, 2, 20), first, "the same workers serve");
    // Turned on while the pool runs, then off again before the time is up.
    m.idle_timeout(Duration::from_secs(3600));
    m.poll();
    m.idle_timeout(None);
    m.poll();
    assert_eq!(sorted(m.pids()), first);
}

tests![
    idle_workers_above_the_minimum_exit_and_the_minimum_stays,
    with_no_minimum_every_idle_worker_exits_and_a_new_one_serves_the_next_call,
    a_sleeping_loop_wakes_for_the_idle_deadline,
    with_the_setting_off_idle_workers_stay,
];
