//! Closure workers (`FnMediator`, the seed's function workers), end to end with real
//! processes: calls in the pool and inline, callbacks with typed arguments and returns,
//! timeouts and panics. Each test runs alone in its own process (see `support`), which also
//! checks that it left no process and no shared-memory segment behind.

mod support;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::closure::FnMediator;
use forkworker::prelude::*;
use support::eventually;

const LONG: Duration = Duration::from_secs(30);

fn factors(mut n: u64) -> Vec<u64> {
    let mut found = Vec::new();
    let mut d = 2;
    while n > 1 {
        while n.is_multiple_of(d) {
            found.push(d);
            n /= d;
        }
        d += 1;
    }
    found
}

fn closure_workers_run_in_the_pool_and_inline() {
    let mut get_factors = FnMediator::new("GetFactors", |n: u64| -> (Vec<u64>, u32) {
        (factors(n), std::process::id())
    });
    get_factors.workers(2).timeout(Duration::from_secs(5));
    let ids: Vec<_> = (1000..1200u64)
        .map(|n| (n, get_factors.call(n).expect("call")))
        .collect();
    let mut pids = HashSet::new();
    for (n, id) in ids {
        let (found, pid) = get_factors.wait(id, LONG).expect("result");
        assert_eq!(found, factors(n));
        assert_eq!(found.iter().product::<u64>(), n);
        pids.insert(pid);
    }
    assert!(!pids.contains(&std::process::id()), "ran in workers");
    assert!(pids.len() <= 2, "two workers at most: {pids:?}");
    let (found, pid) = get_factors.inline(1234);
    assert_eq!((found, pid), (vec![2, 617], std::process::id()));
    assert!(get_factors.pids().len() <= 2);
}

fn closure_workers_fire_on_return_with_typed_args_and_return() {
    let mut add = FnMediator::new("Add", |(a, b): (u64, String)| format!("{b}{a}"));
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    add.workers(2).on_return(move |call, _log| {
        assert_eq!(call.method(), "call");
        assert_eq!(call.status(), CallStatus::Returned);
        let (a, b): (u64, String) = call.args().expect("args");
        let r: String = call.return_value().expect("returned").expect("decoded");
        sink.borrow_mut().push((call.id(), a, b, r));
    });
    let mut expected = Vec::new();
    for n in 0..100u64 {
        let id = add.call((n, format!("n{n}:"))).expect("call");
        expected.push((id.id().raw(), n, format!("n{n}:"), format!("n{n}:{n}")));
    }
    assert!(eventually(LONG, || {
        add.poll();
        seen.borrow().len() == expected.len()
    }));
    let mut seen = seen.borrow().clone();
    seen.sort();
    assert_eq!(seen, expected, "each call returned once, typed");
    assert_eq!(add.pending(), 0);
}

fn closure_workers_time_out_panic_and_go_on() {
    let mut m = FnMediator::new("Moody", |ms: u64| -> u64 {
        assert!(ms != 7, "seven is unlucky");
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    m.workers(1).timeout(Duration::from_millis(300));
    let t = Instant::now();
    let id = m.call(20_000).expect("call");
    match m.wait(id, LONG) {
        Err(CallError::Timeout { method, .. }) => assert_eq!(method, "call"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let id = m.call(7).expect("call");
    match m.wait(id, LONG) {
        Err(CallError::Panicked { message, .. }) => {
            assert!(message.contains("seven is unlucky"), "{message}")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let id = m.call(1).expect("call");
    assert_eq!(m.wait(id, LONG), Ok(1));
    assert!(m.errors().catchall >= 1, "{:?}", m.errors());
}

tests![
    closure_workers_run_in_the_pool_and_inline,
    closure_workers_fire_on_return_with_typed_args_and_return,
    closure_workers_time_out_panic_and_go_on,
];
