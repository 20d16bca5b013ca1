//! Results never vanish on the mediator: callbacks observe a call, a handle keeps its result
//! until `wait` takes it, a dropped handle's call finishes, fires its callbacks and leaves
//! nothing behind, finished results live in the parent's memory (not in the shared memory
//! new calls need), and `status` keeps answering for the most recent finished calls. Real
//! forks, real timeouts; each test runs alone (see `support`).

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::prelude::*;

const LONG: Duration = Duration::from_secs(30);

pub struct Res;

#[forkworker::worker]
impl Res {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    pub fn filled(&self, len: u64) -> Vec<u8> {
        vec![0xA5; len as usize]
    }

    /// Holds `data` (its arguments stay in the store while it is queued) for `ms`.
    pub fn hold(&self, data: &[u8], ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        data.len() as u64
    }
}

/// The case: 3,000 calls with an `on_return` that counts, then `wait` on each in
/// order. Every result comes back, and the callback fired for every call.
fn three_thousand_calls_with_on_return_all_return_and_all_fire() {
    let mut m = ResMediator::new("Res", Res);
    let fired = Rc::new(RefCell::new(0u32));
    let count = fired.clone();
    m.workers(2).on_return(move |_, _| *count.borrow_mut() += 1);
    let calls: Vec<_> = (0..3_000u64).map(|n| m.echo(n).expect("call")).collect();
    let mut returned = 0;
    for (n, call) in calls.into_iter().enumerate() {
        let id = call.id();
        assert_eq!(m.wait(call, LONG), Ok(n as u64), "call {n}");
        assert_eq!(m.status(id), Some(CallStatus::Returned));
        returned += 1;
    }
    assert_eq!(returned, 3_000);
    assert_eq!(*fired.borrow(), 3_000);
    assert_eq!(m.pending(), 0);
    assert_eq!(
        m.stats().shared_memory.1,
        0,
        "no result left in shared memory"
    );
}

/// `status` right after `wait`: `Returned`, or `Timeout` for a call that timed out, with its
/// timings; and the same once the call left the table, through the history.
fn status_after_wait_is_returned_or_timeout() {
    let mut m = ResMediator::new("Res", Res);
    m.workers(1).timeout(Duration::from_millis(200));
    let call = m.sleep_ms(10).unwrap();
    let id = call.id();
    assert_eq!(m.wait(call, LONG), Ok(10));
    assert_eq!(m.status(id), Some(CallStatus::Returned));
    let t = m.timings(id).expect("timings of a finished call");
    assert!(t.entered(CallStatus::Running).unwrap() <= t.entered(CallStatus::Returned).unwrap());
    assert!(m.worker_pid(id).is_some());
    let call = m.sleep_ms(60_000).unwrap();
    let hung = call.id();
    assert!(matches!(m.wait(call, LONG), Err(CallError::Timeout { .. })));
    assert_eq!(m.status(hung), Some(CallStatus::Timeout));
    assert!(
        m.timings(hung)
            .unwrap()
            .entered(CallStatus::Timeout)
            .is_some()
    );
    // Through the short path too (no on_return), then after the next call's bookkeeping.
    let call = m.echo(5).unwrap();
    let quick = call.id();
    assert_eq!(m.wait(call, LONG), Ok(5));
    assert_eq!(m.status(quick), Some(CallStatus::Returned));
    let call = m.echo(6).unwrap();
    assert_eq!(m.wait(call, LONG), Ok(6));
    assert_eq!(m.status(quick), Some(CallStatus::Returned));
    assert_eq!(m.status(id), Some(CallStatus::Returned));
    assert_eq!(m.status(hung), Some(CallStatus::Timeout));
}

/// A handle dropped unwaited: the call runs to its end, its callbacks fire, and it leaves
/// nothing in the table or in shared memory (the daemon's `call(x).ok()`).
fn a_dropped_handle_finishes_fires_and_leaves_nothing() {
    let mut m = ResMediator::new("Res", Res);
    let fired = Rc::new(RefCell::new(Vec::new()));
    let sink = fired.clone();
    m.workers(1)
        .on_return(move |call, _| sink.borrow_mut().push(call.return_value()));
    let id = m.sleep_ms(100).unwrap().id();
    m.echo(7).ok();
    assert!(support::eventually(LONG, || {
        m.poll();
        fired.borrow().len() == 2
    }));
    assert!(matches!(
        fired.borrow()[0],
        Some(Ok(ResReturn::SleepMs(100)))
    ));
    assert_eq!(m.pending(), 0);
    assert_eq!(
        m.retry(id.raw()),
        Err(CallError::UnknownCall(id.raw())),
        "released"
    );
    assert_eq!(m.status(id), Some(CallStatus::Returned), "remembered");
    assert_eq!(m.stats().shared_memory.1, 0);
    // A handle dropped after its call finished and its callbacks ran: released at once.
    let call = m.echo(8).unwrap();
    let late = call.id();
    assert!(support::eventually(LONG, || {
        m.poll();
        fired.borrow().len() == 3
    }));
    assert_eq!(m.status(late), Some(CallStatus::Returned));
    drop(call);
    m.poll();
    assert_eq!(m.retry(late.raw()), Err(CallError::UnknownCall(late.raw())));
}

/// Finished results are in the parent's memory: results nobody took yet never stop new
/// calls, and a store full of queued calls fails a call at once instead of blocking.
fn untaken_results_leave_the_store_to_new_calls() {
    let mut m = ResMediator::new("Res", Res);
    m.workers(1).malloc(1 << 20);
    // 20 results of 200 KB: four times the whole store, all held, none taken yet.
    let calls: Vec<_> = (0..20).map(|_| m.filled(200_000).unwrap()).collect();
    assert!(support::eventually(LONG, || {
        m.poll();
        m.pending() == 0
    }));
    assert_eq!(m.stats().shared_memory.1, 0);
    let call = m.echo(1).unwrap();
    assert_eq!(m.wait(call, LONG), Ok(1));
    for call in calls {
        assert_eq!(m.wait(call, LONG).unwrap().len(), 200_000);
    }
    // Arguments of queued calls fill the store: the next call fails at once.
    let mut held = Vec::new();
    let t = Instant::now();
    let refused = loop {
        match m.hold(&[7u8; 300_000], 300) {
            Ok(call) => held.push(call),
            Err(e) => break e,
        }
        assert!(held.len() < 10, "the store never filled");
    };
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(refused, CallError::OutOfMemory { .. }),
        "{refused}"
    );
    for call in held {
        assert_eq!(m.wait(call, LONG), Ok(300_000));
    }
}

/// `wait_timeout` gives the handle back to wait again; `wait_all` and `wait_any` wait for
/// several.
fn waiting_again_and_waiting_for_several() {
    let mut m = ResMediator::new("Res", Res);
    m.workers(2);
    let mut call = m.sleep_ms(300).unwrap();
    let mut expired = 0;
    let got = loop {
        match m.wait_timeout(call, Duration::from_millis(50)) {
            Ok(result) => break result,
            Err(again) => {
                expired += 1;
                call = again;
            }
        }
    };
    assert_eq!(got, Ok(300));
    assert!(expired >= 3, "expired {expired} times");
    // A plain wait that times out gives the handle up: the call runs on and is released.
    let call = m.sleep_ms(200).unwrap();
    let id = call.id();
    assert!(matches!(
        m.wait(call, Duration::from_millis(10)),
        Err(CallError::WaitTimeout { .. })
    ));
    assert!(support::eventually(LONG, || {
        m.poll();
        m.status(id) == Some(CallStatus::Returned) && m.pending() == 0
    }));
    assert_eq!(m.retry(id.raw()), Err(CallError::UnknownCall(id.raw())));
    // All, in order, under one deadline.
    let calls: Vec<_> = [30, 10, 20].map(|ms| m.sleep_ms(ms).unwrap()).into();
    assert_eq!(m.wait_all(calls, LONG), [Ok(30), Ok(10), Ok(20)]);
    let calls: Vec<_> = [10, 600].map(|ms| m.sleep_ms(ms).unwrap()).into();
    let results = m.wait_all(calls, Duration::from_millis(300));
    assert_eq!(results[0], Ok(10));
    assert!(matches!(results[1], Err(CallError::WaitTimeout { .. })));
    assert!(support::eventually(LONG, || {
        m.poll();
        m.pending() == 0
    }));
    // Any: the quickest first, each once.
    let mut calls: Vec<_> = [400, 20].map(|ms| m.sleep_ms(ms).unwrap()).into();
    let (slow, fast) = (calls[0].id(), calls[1].id());
    assert_eq!(m.wait_any(&mut calls, LONG), Some((fast, Ok(20))));
    assert_eq!(calls.len(), 1);
    assert!(
        m.wait_any(&mut calls, Duration::from_millis(10)).is_none(),
        "not yet"
    );
    assert_eq!(calls.len(), 1, "untouched on timeout");
    assert_eq!(m.wait_any(&mut calls, LONG), Some((slow, Ok(400))));
    assert!(calls.is_empty());
    assert_eq!(m.wait_any(&mut calls, LONG), None);
    assert!(support::eventually(LONG, || {
        m.poll();
        m.pending() == 0
    }));
}

/// The history answers for the last `status_history(n)` released calls, and no further back.
fn the_status_history_is_bounded() {
    let mut m = ResMediator::new("Res", Res);
    m.workers(1).status_history(10);
    let mut ids = Vec::new();
    for n in 0..30 {
        let call = m.echo(n).unwrap();
        ids.push(call.id());
        assert_eq!(m.wait(call, LONG), Ok(n));
    }
    // The last call's bookkeeping waits for the next call or poll; both count it.
    m.poll();
    let known: Vec<bool> = ids.iter().map(|&id| m.status(id).is_some()).collect();
    assert!(known[..20].iter().all(|k| !k), "{known:?}");
    assert!(known[20..].iter().all(|&k| k), "{known:?}");
    // None at all.
    m.status_history(0);
    let call = m.echo(99).unwrap();
    let id = call.id();
    assert_eq!(m.wait(call, LONG), Ok(99));
    m.poll();
    assert_eq!(m.status(id), None);
    assert_eq!(m.status(ids[29]), None);
}

/// A held finished call can still be retried: its arguments, which left shared memory with
/// its result, go back in; the handle then gets the new run's result.
fn a_held_finished_call_can_be_retried() {
    let mut m = ResMediator::new("Res", Res);
    let fired = Rc::new(RefCell::new(Vec::new()));
    let sink = fired.clone();
    m.on_return(move |call, _| sink.borrow_mut().push((call.args(), call.retries())));
    let call = m.hold(&[1, 2, 3], 0).unwrap();
    let id = call.id();
    assert!(support::eventually(LONG, || {
        m.poll();
        fired.borrow().len() == 1
    }));
    assert_eq!(
        m.stats().shared_memory.1,
        0,
        "its arguments left the store too"
    );
    m.retry(id.raw()).expect("a held call can be retried");
    assert_eq!(m.wait(call, LONG), Ok(3));
    let fired = fired.borrow();
    assert_eq!(fired.len(), 2);
    assert_eq!(fired[1].1, 1, "the second run is a retry");
    assert!(
        matches!(&fired[1].0, Ok(ResArgs::Hold { data, ms: 0 }) if data == &[1, 2, 3]),
        "the same arguments"
    );
}

/// A persistent mediator keeps a result in its store (for its journal) until a callback or
/// the handle took it; once its callback ran, a held result moves to the heap as well.
fn a_persistent_mediator_moves_delivered_results_out_of_its_store() {
    let mut m = ResMediator::new("Res", Res);
    let fired = Rc::new(RefCell::new(0u32));
    let count = fired.clone();
    m.workers(2)
        .malloc(1 << 20)
        .persist(support::app_name(std::process::id()))
        .on_return(move |_, _| *count.borrow_mut() += 1);
    // Eight results of 200 KB, held: more than the store could keep at once.
    let calls: Vec<_> = (0..8).map(|_| m.filled(200_000).unwrap()).collect();
    assert!(support::eventually(LONG, || {
        m.poll();
        *fired.borrow() == 8 && m.pending() == 0
    }));
    assert_eq!(m.stats().shared_memory.1, 0);
    for call in calls {
        assert_eq!(m.wait(call, LONG).unwrap().len(), 200_000);
    }
}

tests![
    three_thousand_calls_with_on_return_all_return_and_all_fire,
    status_after_wait_is_returned_or_timeout,
    a_dropped_handle_finishes_fires_and_leaves_nothing,
    untaken_results_leave_the_store_to_new_calls,
    waiting_again_and_waiting_for_several,
    the_status_history_is_bounded,
    a_held_finished_call_can_be_retried,
    a_persistent_mediator_moves_delivered_results_out_of_its_store,
];
