//! End-to-end tests of typed worker pools: real forks, real shared memory, real signals.
//! Each test runs alone in its own process (see `support`), which also checks that it left no
//! process and no shared-memory segment behind.

mod support;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use serde::{Deserialize, Serialize};
use support::{assert_no_children, assert_no_segments, process_exists};

const LONG: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    x: i64,
    y: i64,
}

/// A worker with one method per behaviour under test.
pub struct Probe {
    /// Set by `setup` in each worker; stays false in the parent.
    set_up: bool,
    counter: u64,
}

#[forkworker::worker]
impl Probe {
    pub fn setup(&mut self) {
        self.set_up = true;
    }

    /// Returns `n` and the pid of the process that ran the call.
    pub fn echo(&self, n: u64) -> (u64, u32) {
        (n, std::process::id())
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn was_set_up(&self) -> bool {
        self.set_up
    }

    pub fn bump(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    pub fn reverse(&self, mut data: Vec<u8>) -> Vec<u8> {
        data.reverse();
        data
    }

    pub fn checksum(&self, data: &[u8]) -> u64 {
        data.iter().map(|&b| b as u64).sum()
    }

    pub fn filled(&self, len: u64) -> Vec<u8> {
        vec![0xA5; len as usize]
    }

    pub fn concat(&self, a: &str, b: &[u64], p: &Point) -> String {
        format!("{a}:{}:{}", b.len(), p.x + p.y)
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    pub fn exit_with(&self, code: i32) {
        // SAFETY: leaving the worker process abruptly is what this test wants.
        unsafe { libc::_exit(code) }
    }

    pub fn fail(&self, message: String) -> u64 {
        panic!("{message}")
    }

    /// Reports an error through the worker-side API, then returns.
    pub fn complain(&self, fatal: bool) -> u32 {
        assert!(forkworker::this_worker::is_worker());
        assert_eq!(forkworker::this_worker::alias(), Some("Probe"));
        forkworker::this_worker::log("complaining");
        if fatal {
            forkworker::this_worker::fatal_error("cannot go on");
        } else {
            forkworker::this_worker::error("something is off");
        }
        std::process::id()
    }
}

fn probe() -> Probe {
    Probe {
        set_up: false,
        counter: 0,
    }
}

fn recycle_set_after_start_applies_to_workers_forked_afterwards() {
    let mut m = ProbeMediator::new("LateRecycle", probe());
    m.workers(1).recycle(Recycle::NEVER);
    let pid = |m: &mut ProbeMediator| m.pid().map(|id| m.wait(id, LONG)).unwrap().unwrap();
    let first = pid(&mut m);
    m.recycle(Recycle::after_calls(3).with_jitter(0.0));
    // The worker forked before keeps its own rule.
    for _ in 0..10 {
        assert_eq!(pid(&mut m), first);
    }
    // Its replacement gets the new one: it retires after three calls.
    support::kill_and_reap_foreign(first as i32);
    let mut seen = HashSet::new();
    for _ in 0..12 {
        seen.insert(pid(&mut m));
    }
    seen.remove(&first);
    assert!(seen.len() >= 3, "workers after the change: {seen:?}");
}

fn ten_thousand_calls_over_four_workers_return_once() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(4);
    let ids: Vec<_> = (0..10_000u64).map(|n| m.echo(n).expect("call")).collect();
    let mut pids = HashSet::new();
    for (n, call) in ids.into_iter().enumerate() {
        let id = call.id();
        let (got, pid) = m.wait(call, LONG).expect("result");
        assert_eq!(got, n as u64);
        pids.insert(pid);
        // Taken once (`wait` took the handle); its status stays.
        assert_eq!(m.status(id), Some(CallStatus::Returned));
    }
    assert_eq!(m.pending(), 0);
    assert_eq!(pids.len(), 4, "every worker took calls: {pids:?}");
    assert!(!pids.contains(&std::process::id()));
}

fn pipelined_tiny_calls_stay_on_one_worker_of_two() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    // The method's run time is measured first: it is short.
    for _ in 0..40 {
        let call = m.pid().expect("call");
        m.wait(call, LONG).expect("pid");
    }
    let calls: Vec<_> = (0..400).map(|_| m.pid().expect("call")).collect();
    let mut by_pid = std::collections::HashMap::<u32, usize>::new();
    for call in calls {
        *by_pid.entry(m.wait(call, LONG).expect("pid")).or_default() += 1;
    }
    // Spread, they would be about half and half.
    let busiest = by_pid.values().copied().max().unwrap_or(0);
    assert!(
        busiest >= 300,
        "tiny calls spread over both workers: {by_pid:?}"
    );
}

fn a_short_methods_hanging_call_does_not_hold_the_queue() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    for _ in 0..40 {
        let call = m.sleep_ms(0).expect("call");
        m.wait(call, LONG).expect("sleep_ms");
    }
    // The method is short on average; this call of it is not, and the next goes to the other
    // worker once the hold (100 us) is over, not after the long one.
    let long = m.sleep_ms(1000).expect("call");
    let started = Instant::now();
    let quick = m.sleep_ms(0).expect("call");
    assert_eq!(m.wait(quick, LONG), Ok(0));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the queued call waited {:?} for the long one",
        started.elapsed()
    );
    assert_eq!(m.wait(long, LONG), Ok(1000));
    // Long calls run side by side.
    let started = Instant::now();
    let calls: Vec<_> = (0..2).map(|_| m.sleep_ms(300).expect("call")).collect();
    for call in calls {
        assert_eq!(m.wait(call, LONG), Ok(300));
    }
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
}

fn ten_thousand_calls_through_on_return_fire_once_each() {
    let mut m = ProbeMediator::new("Probe", probe());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    m.workers(4).on_return(move |call, _log| {
        let Some(Ok(ProbeReturn::Echo((n, _pid)))) = call.return_value() else {
            panic!("unexpected return for {call:?}");
        };
        let Ok(ProbeArgs::Echo { n: arg }) = call.args() else {
            panic!("unexpected args for {call:?}");
        };
        assert_eq!(n, arg);
        assert_eq!(call.status(), CallStatus::Returned);
        assert_eq!(call.method(), "echo");
        sink.borrow_mut().push((call.id(), n));
    });
    let mut expected = Vec::new();
    for n in 0..10_000u64 {
        expected.push((m.echo(n).expect("call").id().raw(), n));
    }
    let end = Instant::now() + LONG;
    while seen.borrow().len() < expected.len() && Instant::now() < end {
        m.poll();
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut seen = seen.borrow().clone();
    assert_eq!(seen.len(), 10_000, "every call returned exactly once");
    seen.sort();
    assert_eq!(seen, expected);
    assert_eq!(m.pending(), 0);
}

/// Small arguments and returns travel inside the channel's cache lines (up to 24 and 16
/// encoded bytes), larger ones in the payload area: every size around those limits arrives
/// intact, through `wait` and through `on_return`, and the calls' timings stay ordered.
fn payloads_of_every_size_around_the_channel_line_arrive_intact() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    for len in 0..=80usize {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let id = m.reverse(data.clone()).expect("call");
        let back = m.wait(id, LONG).expect("result");
        assert!(back.iter().rev().eq(data.iter()), "{len} bytes came back");
        let id = m.filled(len as u64).expect("call");
        assert_eq!(
            m.wait(id, LONG).unwrap(),
            vec![0xA5; len],
            "{len} bytes filled"
        );
    }
    let returned = Rc::new(RefCell::new(Vec::new()));
    let seen = returned.clone();
    m.on_return(move |call, _log| {
        let t = call.timings();
        let called = t.entered(CallStatus::Called).unwrap();
        let running = t.entered(CallStatus::Running).unwrap();
        let done = t.entered(CallStatus::Returned).unwrap();
        assert!(called <= running && running <= done);
        let Some(Ok(ProbeReturn::Filled(v))) = call.return_value() else {
            panic!("unexpected return for {call:?}");
        };
        assert!(v.iter().all(|&b| b == 0xA5));
        seen.borrow_mut().push(v.len());
    });
    for len in 0..=40u64 {
        drop(m.filled(len).expect("call"));
    }
    assert!(support::eventually(LONG, || {
        m.poll();
        returned.borrow().len() == 41
    }));
    let mut lens = returned.borrow().clone();
    lens.sort();
    assert_eq!(lens, (0..=40).collect::<Vec<_>>());
}

fn sixteen_mib_arguments_and_returns_arrive_intact() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2).malloc(64 << 20);
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let id = m.reverse(data.clone()).expect("call");
    let back = m.wait(id, LONG).expect("result");
    assert_eq!(back.len(), data.len());
    assert!(
        back.iter().rev().eq(data.iter()),
        "bytes came back reversed and intact"
    );
    let id = m.checksum(&data).expect("call");
    assert_eq!(
        m.wait(id, LONG).unwrap(),
        data.iter().map(|&b| b as u64).sum::<u64>()
    );
    // A return far larger than the reservation made with the call.
    let id = m.filled(16 << 20).expect("call");
    let filled = m.wait(id, LONG).expect("result");
    assert!(filled.len() == 16 << 20 && filled.iter().all(|&b| b == 0xA5));
}

fn an_oversized_call_gets_its_error_and_the_next_call_works() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(1).malloc(1 << 20);
    match m.reverse(vec![1; 2 << 20]) {
        Err(CallError::TooLarge {
            method,
            needed,
            allocation,
        }) => {
            assert_eq!(method, "reverse");
            assert!(
                needed > 2 << 20 && allocation <= 1 << 20,
                "{needed} {allocation}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let id = m.echo(7).expect("call");
    assert_eq!(m.wait(id, LONG).unwrap().0, 7);
    // A return value that cannot fit fails its call only.
    let id = m.filled(4 << 20).expect("call");
    match m.wait(id, LONG) {
        Err(CallError::ReturnTooLarge { method, needed, .. }) => {
            assert_eq!(method, "filled");
            assert!(needed > 4 << 20);
        }
        other => panic!("expected ReturnTooLarge, got {other:?}"),
    }
    let message = CallError::TooLarge {
        method: "reverse",
        needed: 3,
        allocation: 2,
    }
    .to_string();
    assert!(message.contains("malloc"), "{message}");
    let id = m.echo(8).expect("call");
    assert_eq!(m.wait(id, LONG).unwrap().0, 8);
}

fn a_return_waits_for_room_while_other_calls_free_it() {
    let mut m = ProbeMediator::new("Probe", probe());
    let lens = Rc::new(RefCell::new(Vec::new()));
    let failed = Rc::new(RefCell::new(Vec::new()));
    let (sink, errors) = (lens.clone(), failed.clone());
    m.workers(3)
        .malloc(1 << 20)
        .on_return(move |call, _| {
            if let Some(Ok(ProbeReturn::Filled(v))) = call.return_value() {
                sink.borrow_mut().push(v.len());
            }
        })
        .on_error(move |call, _| errors.borrow_mut().push(format!("{:?}", call.error())));
    // Each return takes 40% of the allocation: at most two fit at once.
    for _ in 0..6 {
        drop(m.filled(400_000).unwrap());
    }
    assert!(support::eventually(LONG, || {
        m.poll();
        lens.borrow().len() + failed.borrow().len() == 6
    }));
    assert_eq!(
        *failed.borrow(),
        Vec::<String>::new(),
        "no call failed for want of room"
    );
    assert_eq!(*lens.borrow(), [400_000; 6]);
}

fn status_goes_called_running_returned_with_ordered_times() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(1);
    let first = m.sleep_ms(300).expect("call");
    let second = m.sleep_ms(10).expect("call");
    assert_eq!(
        m.status(second.id()),
        Some(CallStatus::Uncalled),
        "queued behind the first"
    );
    assert!(support::eventually(LONG, || m.status(first.id()) == Some(CallStatus::Running)));
    assert!(support::eventually(LONG, || {
        m.poll();
        m.status(second.id()) == Some(CallStatus::Returned)
    }));
    assert_eq!(m.status(first.id()), Some(CallStatus::Returned));
    for id in [first.id(), second.id()] {
        let t = m.timings(id).expect("known call");
        let order = [
            CallStatus::Uncalled,
            CallStatus::Called,
            CallStatus::Running,
            CallStatus::Returned,
        ];
        let times: Vec<Instant> = order
            .iter()
            .map(|&s| t.entered(s).expect("entered"))
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{order:?} at {times:?}"
        );
    }
    let t = m.timings(first.id()).unwrap();
    let ran = t.entered(CallStatus::Returned).unwrap() - t.entered(CallStatus::Running).unwrap();
    assert!(ran >= Duration::from_millis(250), "ran for {ran:?}");
    let first_id = first.id();
    assert_eq!(m.wait(first, LONG), Ok(300));
    assert_eq!(
        m.status(first_id),
        Some(CallStatus::Returned),
        "a taken result's status stays"
    );
    assert_eq!(
        m.timings(first_id).unwrap().entered(CallStatus::Returned),
        t.entered(CallStatus::Returned)
    );
}

fn is_idle_turns_false_when_all_workers_are_busy_and_true_after() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    assert!(m.is_idle());
    let a = m.sleep_ms(400).expect("call");
    assert!(m.is_idle(), "one of two workers is still free");
    let b = m.sleep_ms(400).expect("call");
    assert!(!m.is_idle());
    m.wait(a, LONG).unwrap();
    m.wait(b, LONG).unwrap();
    assert!(m.is_idle());
}

fn inline_calls_run_in_this_process() {
    let mut m = ProbeMediator::new("Probe", probe());
    assert_eq!(m.inline().pid(), std::process::id());
    assert_eq!(m.inline().bump(), 1);
    assert_eq!(m.inline().bump(), 2);
    assert!(!m.inline().was_set_up(), "setup runs only in workers");
    assert!(m.pids().is_empty(), "no process was forked");
    assert_no_children();
    assert_no_segments(std::process::id());
}

fn workers_inherit_state_and_run_setup() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.inline().bump();
    let id = m.was_set_up().expect("call");
    assert!(m.wait(id, LONG).unwrap());
    let id = m.bump().expect("call");
    assert_eq!(
        m.wait(id, LONG),
        Ok(2),
        "the worker forked from the parent's state"
    );
    let id = m
        .concat("hi", &[1, 2, 3], &Point { x: 40, y: 2 })
        .expect("call");
    assert_eq!(m.wait(id, LONG).unwrap(), "hi:3:42");
}

fn dropping_the_mediator_leaves_no_process_and_no_segment() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(3).grace(Duration::from_millis(200));
    let ids: Vec<_> = (0..3).map(|n| m.echo(n).unwrap()).collect();
    for id in ids {
        m.wait(id, LONG).unwrap();
    }
    let pids = m.pids();
    assert_eq!(pids.len(), 3);
    // One call running past the grace period, others queued behind it.
    let _ = m.sleep_ms(10_000).unwrap();
    for _ in 0..5 {
        let _ = m.sleep_ms(1).unwrap();
    }
    assert!(!support::memfd_mappings("").is_empty());
    let t = Instant::now();
    drop(m);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        t.elapsed()
    );
    for pid in pids {
        assert!(!process_exists(pid), "worker {pid} still exists");
    }
    assert_no_children();
    assert_no_segments(std::process::id());
    assert!(
        support::memfd_mappings("").is_empty(),
        "the segment is unmapped"
    );
}

fn a_worker_that_dies_does_not_hang_the_parent() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    let t = Instant::now();
    let id = m.exit_with(3).expect("call");
    match m.wait(id, LONG) {
        Err(CallError::Crashed { cause, .. }) => assert_eq!(cause, ExitCause::Exited(3)),
        other => panic!("expected Crashed, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "noticed after {:?}",
        t.elapsed()
    );
    let id = m.echo(1).expect("call");
    assert_eq!(m.wait(id, LONG).unwrap().0, 1);
    assert!(support::eventually(LONG, || {
        m.poll();
        m.pids().len() == 2
    }));
}

fn a_panic_reaches_the_caller_with_its_message() {
    let mut m = ProbeMediator::new("Probe", probe());
    let id = m.fail("bad input 42".into()).expect("call");
    match m.wait(id, LONG) {
        Err(CallError::Panicked {
            message, method, ..
        }) => {
            assert_eq!(method, "fail");
            assert!(message.contains("bad input 42"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let id = m.echo(5).expect("call");
    assert_eq!(m.wait(id, LONG).unwrap().0, 5);
}

fn a_call_that_never_returns_times_out_once_and_the_pool_goes_on() {
    let mut m = ProbeMediator::new("Probe", probe());
    let fired = Rc::new(RefCell::new(Vec::new()));
    let sink = fired.clone();
    m.workers(1)
        .timeout(Duration::from_millis(200))
        .on_timeout(move |call, _log| sink.borrow_mut().push((call.id(), call.status())));
    let id = m.pid().unwrap();
    let first_pid = m.wait(id, LONG).unwrap();
    let t = Instant::now();
    let call = m.sleep_ms(60_000).unwrap();
    let id = call.id();
    match m.wait(call, LONG) {
        Err(CallError::Timeout { method, pid, .. }) => {
            assert_eq!(method, "sleep_ms");
            assert_eq!(pid as u32, first_pid);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(*fired.borrow(), [(id.raw(), CallStatus::Timeout)]);
    assert_eq!(m.status(id), Some(CallStatus::Timeout), "after wait too");
    assert!(
        !process_exists(first_pid as i32),
        "the timed-out worker was killed and reaped"
    );
    let id = m.pid().unwrap();
    let next_pid = m.wait(id, LONG).unwrap();
    assert_ne!(next_pid, first_pid, "a new worker took over");
}

fn retrying_from_on_timeout_counts_retries_and_stops_at_three() {
    let mut m = ProbeMediator::new("Probe", probe());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    m.workers(1)
        .timeout(Duration::from_millis(100))
        .on_timeout(move |call, log| {
            sink.borrow_mut().push((call.id(), call.retries()));
            if call.retries() < 3 {
                log.warn(format_args!("call {} timed out; retrying", call.id()));
                call.retry();
            }
        });
    // Only the callback looks at it: the handle goes at once.
    let id = m.sleep_ms(60_000).unwrap().id();
    assert!(support::eventually(LONG, || {
        m.poll();
        seen.borrow().len() >= 4
    }));
    // Long enough for a fifth timeout, had there been a fourth retry.
    let end = Instant::now() + Duration::from_millis(400);
    while Instant::now() < end {
        m.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
    let raw = id.raw();
    assert_eq!(*seen.borrow(), [(raw, 0), (raw, 1), (raw, 2), (raw, 3)]);
    // Released after its last callback; its status stays.
    assert_eq!(m.retry(raw), Err(CallError::UnknownCall(raw)), "released");
    assert_eq!(m.status(id), Some(CallStatus::Timeout));
    let id = m.echo(9).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap().0, 9);
}

fn stats_count_every_method_and_error() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(2);
    let ids: Vec<_> = (0..50).map(|n| m.echo(n).unwrap()).collect();
    for id in ids {
        m.wait(id, LONG).unwrap();
    }
    let id = m.sleep_ms(30).unwrap();
    m.wait(id, LONG).unwrap();
    let id = m.complain(false).unwrap();
    m.wait(id, LONG).unwrap();
    let stats = m.stats();
    let echo = stats.methods.iter().find(|s| s.method == "echo").unwrap();
    assert_eq!((echo.called.count, echo.running.count), (50, 50));
    let sleep = stats
        .methods
        .iter()
        .find(|s| s.method == "sleep_ms")
        .unwrap();
    assert!(sleep.running.p50 >= Duration::from_millis(30), "{sleep:?}");
    assert!(sleep.running.mean >= Duration::from_millis(30));
    assert!(echo.running.p99 < Duration::from_secs(1));
    // The call `wait` delivered last counts at once, and holds no shared memory.
    let complain = stats
        .methods
        .iter()
        .find(|s| s.method == "complain")
        .unwrap();
    assert_eq!((complain.called.count, complain.running.count), (1, 1));
    assert_eq!(stats.shared_memory.1, 0, "no call holds shared memory");
    assert_eq!(stats.errors.catchall, 1, "this_worker::error was counted");
    assert_eq!(stats.workers, 2);
    assert_eq!(stats.worker_rss_kib.len(), 2);
    assert!(stats.parent_rss_kib > 0);
    let table = stats.to_string();
    for needle in [
        "Worker Runtime Statistics",
        "echo",
        "Called",
        "Running",
        "Communication",
        "Catchall",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
}

fn fatal_error_restarts_the_worker_after_its_call() {
    let mut m = ProbeMediator::new("Probe", probe());
    m.workers(1);
    let id = m.complain(true).unwrap();
    let first = m.wait(id, LONG).expect("the call itself returns");
    assert!(
        support::eventually(LONG, || {
            m.poll();
            m.pids().first().is_some_and(|&p| p as u32 != first)
        }),
        "a new worker replaced the one that called fatal_error"
    );
    let id = m.pid().unwrap();
    assert_ne!(m.wait(id, LONG).unwrap(), first);
    assert_eq!(m.errors().catchall, 1);
}

pub struct Picky;

#[forkworker::worker]
impl Picky {
    pub fn check_environment(&self) -> Vec<String> {
        vec!["no GPU".into(), "disk full".into()]
    }

    pub fn work(&self) -> u8 {
        1
    }
}

fn check_environment_problems_stop_the_pool() {
    let mut m = PickyMediator::new("Picky", Picky);
    match m.work() {
        Err(CallError::Environment(problems)) => assert_eq!(problems, ["no GPU", "disk full"]),
        other => panic!("expected Environment, got {other:?}"),
    }
    // start() fails with the narrower StartError, which `?` turns into the same CallError.
    match m.start() {
        Err(forkworker::StartError::Environment(problems)) => {
            assert_eq!(problems, ["no GPU", "disk full"])
        }
        other => panic!("expected StartError::Environment, got {other:?}"),
    }
    let mut started = || -> Result<(), CallError> { Ok(m.start()?) };
    assert!(matches!(started(), Err(CallError::Environment(_))));
    assert!(m.pids().is_empty());
}

/// An id is a number and a type: the id of another mediator's call may name a call here that
/// returns another type. Its handle is refused (not decoded as that type), and its own
/// mediator releases the call.
fn an_id_of_another_mediator_does_not_decode_a_call_of_another_type() {
    let mut doubles = FnMediator::new("Doubles", |n: u64| n * 2);
    let mut words = FnMediator::new("Words", |n: u64| n.to_string());
    // 0 encodes as one zero byte, which would decode as an empty string.
    let doubled = doubles.call(0).expect("call");
    let word = words.call(5).expect("call");
    assert_eq!(
        doubled.id().raw(),
        word.id().raw(),
        "both mediators number from the same start"
    );
    let word_id = word.id();
    assert_eq!(
        doubles.wait(word, LONG),
        Err(CallError::UnknownCall(word_id.raw()))
    );
    assert!(
        doubles.status(doubled.id()).is_some(),
        "its own call is untouched"
    );
    assert_eq!(doubles.wait(doubled, LONG).expect("its own call"), 0);
    let word = words.call(6).expect("call");
    assert_eq!(words.wait(word, LONG).expect("its own mediator"), "6");
    assert_eq!(words.status(word_id), Some(CallStatus::Returned));
    assert_eq!(words.pending(), 0);
    let again = doubles.call(4).expect("call");
    assert_eq!(doubles.wait(again, LONG).expect("result"), 8);
}

tests![
    recycle_set_after_start_applies_to_workers_forked_afterwards,
    ten_thousand_calls_over_four_workers_return_once,
    ten_thousand_calls_through_on_return_fire_once_each,
    payloads_of_every_size_around_the_channel_line_arrive_intact,
    sixteen_mib_arguments_and_returns_arrive_intact,
    an_oversized_call_gets_its_error_and_the_next_call_works,
    a_return_waits_for_room_while_other_calls_free_it,
    status_goes_called_running_returned_with_ordered_times,
    is_idle_turns_false_when_all_workers_are_busy_and_true_after,
    inline_calls_run_in_this_process,
    workers_inherit_state_and_run_setup,
    dropping_the_mediator_leaves_no_process_and_no_segment,
    a_worker_that_dies_does_not_hang_the_parent,
    a_panic_reaches_the_caller_with_its_message,
    check_environment_problems_stop_the_pool,
    a_call_that_never_returns_times_out_once_and_the_pool_goes_on,
    retrying_from_on_timeout_counts_retries_and_stops_at_three,
    stats_count_every_method_and_error,
    fatal_error_restarts_the_worker_after_its_call,
    an_id_of_another_mediator_does_not_decode_a_call_of_another_type,
    pipelined_tiny_calls_stay_on_one_worker_of_two,
    a_short_methods_hanging_call_does_not_hold_the_queue,
];
