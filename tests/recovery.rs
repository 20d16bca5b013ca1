//! Recovery of calls through the persistent shared memory: after a graceful suspend, after the
//! parent is killed with SIGKILL, and refusal to misread a segment of another layout. Each test
//! runs alone in its own process (see `support`), which also checks what it left behind.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::{CallError, CallStatus, ErrorCounts};
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
}

/// The application name: the test process's, also in the children it forks.
fn app() -> String {
    static TEST_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    app_name(*TEST_PID.get_or_init(std::process::id))
}

/// A persistent mediator whose returns are counted by input value.
/// Returns by input value, and how many returns had been retried.
type Counts = (Rc<RefCell<HashMap<u64, u32>>>, Rc<RefCell<u32>>);

fn counted(workers: usize, recover: bool) -> (JobsMediator, Counts) {
    counted_reporting(workers, recover, None)
}

/// As [`counted`], and each return is also written, from inside the callback, to `report`.
fn counted_reporting(
    workers: usize,
    recover: bool,
    mut report: Option<std::fs::File>,
) -> (JobsMediator, Counts) {
    let done: Rc<RefCell<HashMap<u64, u32>>> = Default::default();
    let retried = Rc::new(RefCell::new(0));
    let (sink, retries) = (done.clone(), retried.clone());
    let mut m = JobsMediator::new("Jobs", Jobs);
    m.workers(workers)
        .malloc(4 << 20)
        .persist(app())
        .recover(recover)
        .on_return(move |call, _log| {
            let Some(Ok(JobsReturn::Job(n))) = call.return_value() else {
                panic!("bad return {call:?}");
            };
            *sink.borrow_mut().entry(n).or_default() += 1;
            if let Some(out) = report.as_mut() {
                writeln!(out, "{n}").unwrap();
            }
            if call.retries() > 0 {
                *retries.borrow_mut() += 1;
            }
        });
    (m, (done, retried))
}

fn drive_until(m: &mut JobsMediator, done: &Rc<RefCell<HashMap<u64, u32>>>, count: usize) -> bool {
    eventually(LONG, || {
        m.poll();
        done.borrow().len() >= count
    })
}

fn a_suspended_queue_is_completed_by_the_next_run() {
    let (mut first, (done_first, _)) = counted(1, false);
    for n in 0..100 {
        drop(first.job(n, 2).unwrap());
    }
    assert!(drive_until(&mut first, &done_first, 10));
    let kept = first.suspend();
    let finished_first = done_first.borrow().len();
    assert!(
        kept > 0 && kept + finished_first >= 100,
        "kept {kept}, done {finished_first}"
    );
    drop(first);
    assert_eq!(
        support::segments_of(std::process::id()).len(),
        1,
        "the segment was kept"
    );

    let (mut second, (done_second, _)) = counted(1, true);
    second.start().unwrap();
    assert_eq!(second.pending(), kept, "every kept call was recovered");
    assert_eq!(
        second.errors(),
        ErrorCounts::default(),
        "no journal entry was misread"
    );
    assert!(drive_until(&mut second, &done_second, kept));
    let mut all = done_first.borrow().clone();
    for (n, c) in done_second.borrow().iter() {
        *all.entry(*n).or_default() += c;
    }
    assert_eq!(all.len(), 100, "every call completed");
    assert!(
        all.values().all(|&c| c == 1),
        "none ran twice after a graceful stop"
    );
    drop(second);
    assert!(
        support::segments_of(std::process::id()).is_empty(),
        "nothing left: removed"
    );
}

fn every_call_survives_a_sigkilled_parent() {
    app();
    // The child runs the first program and is killed in the middle.
    let (parent, mut lines) = support::fork_reporting(|mut out| {
        writeln!(out, "queued").unwrap();
        let (mut m, _) = counted_reporting(2, false, Some(out.try_clone().unwrap()));
        for n in 0..1_000 {
            drop(m.job(n, 1).unwrap());
        }
        writeln!(out, "queued").unwrap();
        loop {
            m.poll();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    assert_eq!(lines.next().unwrap().unwrap(), "queued");
    // Returns delivered while calls were still being queued come first.
    let mut first_run = HashMap::<u64, u32>::new();
    for line in lines.by_ref() {
        match line.unwrap().as_str() {
            "queued" => break,
            n => {
                first_run.insert(n.parse().unwrap(), 1);
            }
        }
    }
    // Let it complete some calls, then kill it in the middle of the rest.
    for line in lines.by_ref() {
        let n: u64 = line.unwrap().parse().unwrap();
        first_run.insert(n, 1);
        if first_run.len() >= 200 {
            break;
        }
    }
    support::kill_and_reap(parent);
    // What it delivered before it died. The pipe ends when its workers, which hold it too,
    // have died with it (parent-death signal).
    for line in lines {
        first_run.insert(line.unwrap().parse().unwrap(), 1);
    }
    let t = Instant::now();
    let (mut m, (done, retried)) = counted(2, true);
    m.start().unwrap();
    let recovered = m.pending();
    assert!(recovered > 0 && recovered <= 800, "recovered {recovered}");
    assert!(eventually(LONG, || {
        m.poll();
        m.pending() == 0
    }));
    let second_run = done.borrow().clone();
    let mut lost = Vec::new();
    for n in 0..1_000u64 {
        if !first_run.contains_key(&n) && !second_run.contains_key(&n) {
            lost.push(n);
        }
    }
    assert!(lost.is_empty(), "calls lost: {lost:?}");
    assert_eq!(
        m.errors(),
        ErrorCounts::default(),
        "no journal entry was misread"
    );
    let twice = first_run
        .keys()
        .filter(|n| second_run.contains_key(n))
        .count();
    println!(
        "recovered {recovered} calls in {:?}; {} ran again with retries + 1; {twice} delivered in both runs",
        t.elapsed(),
        retried.borrow()
    );
    drop(m);
}

fn a_segment_of_another_layout_is_replaced_with_a_warning() {
    let (mut first, _) = counted(1, false);
    for n in 0..20 {
        drop(first.job(n, 50).unwrap());
    }
    assert!(first.suspend() > 0);
    drop(first);
    // Another malloc: the old layout cannot be read.
    let mut second = JobsMediator::new("Jobs", Jobs);
    second
        .workers(1)
        .malloc(8 << 20)
        .persist(app())
        .recover(true);
    second.start().unwrap();
    assert_eq!(second.pending(), 0, "nothing was misread");
    let id = second.job(7, 0).unwrap();
    assert_eq!(second.wait(id, LONG), Ok(7));
}

fn without_recovery_an_old_journal_is_purged() {
    let (mut first, _) = counted(1, false);
    for n in 0..20 {
        drop(first.job(n, 50).unwrap());
    }
    assert!(first.suspend() > 0);
    drop(first);
    let (mut second, (done, _)) = counted(1, false);
    second.start().unwrap();
    assert_eq!(second.pending(), 0);
    // Only for its callback: the handle goes at once.
    let id = second.job(5, 0).unwrap().id();
    assert!(drive_until(&mut second, &done, 1));
    // Delivered to on_return and released; its status stays.
    assert_eq!(second.status(id), Some(CallStatus::Returned));
    assert_eq!(
        second.retry(id.raw()),
        Err(CallError::UnknownCall(id.raw()))
    );
    assert_eq!(done.borrow().len(), 1);
}

/// A call `wait` delivered is done: a parent SIGKILLed afterwards, before it did anything
/// else, leaves nothing of it to recover (the bookkeeping after a delivery is deferred, but
/// the persistent journal forgets the call at once).
fn a_call_delivered_by_wait_is_not_recovered() {
    app();
    // The child is killed while it sleeps.
    let (parent, mut lines) = support::fork_reporting(|mut out| {
        let mut m = JobsMediator::new("Jobs", Jobs);
        // The layout of `counted`'s segment, so that the next run reads this journal.
        m.workers(1).malloc(4 << 20).persist(app()).recover(false);
        for n in 0..3 {
            let id = m.job(n, 0).unwrap();
            assert_eq!(m.wait(id, LONG).unwrap(), n);
        }
        writeln!(out, "delivered").unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    assert_eq!(lines.next().unwrap().unwrap(), "delivered");
    support::kill_and_reap(parent);
    // Its worker dies with it (parent-death signal), closing the pipe.
    assert!(lines.next().is_none());
    let (mut m, (done, _)) = counted(1, true);
    m.start().unwrap();
    // A recovered call would be pending, or returned and delivered to `on_return` now.
    assert_eq!(m.pending(), 0, "a delivered call was recovered");
    m.poll();
    assert_eq!(
        *done.borrow(),
        HashMap::new(),
        "a delivered call was delivered again"
    );
    assert_eq!(m.errors(), ErrorCounts::default());
}

tests![
    a_suspended_queue_is_completed_by_the_next_run,
    every_call_survives_a_sigkilled_parent,
    a_call_delivered_by_wait_is_not_recovered,
    a_segment_of_another_layout_is_replaced_with_a_warning,
    without_recovery_an_old_journal_is_purged,
];
