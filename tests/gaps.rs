//! Correctness gaps that peers' test suites found: a nested pool's worker knows its own pool, a
//! custom serde error keeps its message, a panic comes with its location, lowering `workers()`
//! retires the extra workers, a worker that called `fatal_error` takes no other call, a
//! failure is logged once, and the statistics count every outcome. Each test runs alone in its
//! own process (see `support`), which also checks what it left behind.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use forkworker::prelude::*;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::{eventually, process_exists};

const LONG: Duration = Duration::from_secs(30);

/// A value whose `Deserialize` refuses 0 with a custom message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonZero(pub u8);

impl Serialize for NonZero {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NonZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Err(D::Error::custom("my message: zero is not allowed")),
            n => Ok(NonZero(n)),
        }
    }
}

/// A wrapper that puts the refusing value inside a struct, an enum and a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Nested {
    Plain(u32),
    Deep {
        label: String,
        values: Vec<Option<NonZero>>,
    },
}

static HOOK_RUNS: AtomicU32 = AtomicU32::new(0);

pub struct Gaps;

#[forkworker::worker]
impl Gaps {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn sleep_ms(&self, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }

    /// Queued behind others, to be cancelled.
    pub fn queued(&self) -> u8 {
        0
    }

    pub fn take(&self, value: NonZero) -> u8 {
        value.0
    }

    pub fn take_nested(&self, value: Nested) -> u32 {
        match value {
            Nested::Plain(n) => n,
            Nested::Deep { values, .. } => values.len() as u32,
        }
    }

    pub fn give(&self, n: u8) -> NonZero {
        NonZero(n)
    }

    /// Panics with its own line in the message, so the test knows where it panicked.
    pub fn boom(&self) -> u8 {
        panic!("boom {}", line!())
    }

    /// Panics and catches it itself: how many times the user's panic hook ran in this worker.
    pub fn caught(&self) -> u32 {
        let _ = std::panic::catch_unwind(|| panic!("caught inside"));
        HOOK_RUNS.load(Ordering::Relaxed)
    }

    /// A real fault: a write through a null pointer (SIGSEGV).
    pub fn segfault(&self) -> u8 {
        // SAFETY: not safe at all; crashing the worker is the point.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        0
    }

    /// Returns normally, then the worker restarts.
    pub fn fatal(&self) -> u32 {
        this_worker::fatal_error("cannot go on");
        std::process::id()
    }

    /// Starts a pool of its own inside this worker and asks its worker who it is.
    pub fn nested(&self) -> (Option<String>, u64, Option<String>) {
        let mut inner = InnerMediator::new("Inner", Inner);
        let id = inner.whoami().expect("inner call");
        let alias = inner.wait(id, LONG).expect("inner result");
        let inner_errors = inner.errors().catchall;
        drop(inner);
        (alias, inner_errors, this_worker::alias().map(str::to_owned))
    }
}

pub struct Inner;

#[forkworker::worker]
impl Inner {
    /// The alias this worker sees, after counting one error.
    pub fn whoami(&self) -> Option<String> {
        this_worker::error("counted on the inner pool");
        this_worker::alias().map(str::to_owned)
    }
}

fn a_nested_pools_worker_sees_its_own_pool() {
    let mut m = GapsMediator::new("Outer", Gaps);
    let id = m.nested().unwrap();
    let (inner_alias, inner_errors, outer_alias) = m.wait(id, LONG).unwrap();
    assert_eq!(
        inner_alias.as_deref(),
        Some("Inner"),
        "the inner worker's alias"
    );
    assert_eq!(
        inner_errors, 1,
        "the inner worker's error counts on the inner pool"
    );
    assert_eq!(
        outer_alias.as_deref(),
        Some("Outer"),
        "the outer worker is still the outer pool's"
    );
    m.poll();
    assert_eq!(m.errors().catchall, 0, "nothing counted on the outer pool");
}

fn a_custom_serde_error_keeps_its_message() {
    let mut m = GapsMediator::new("Gaps", Gaps);
    // Decoded in the worker: an argument.
    let id = m.take(NonZero(0)).unwrap();
    match m.wait(id, LONG) {
        Err(e @ CallError::Wire { .. }) => {
            assert!(
                e.to_string().contains("my message: zero is not allowed"),
                "{e}"
            )
        }
        other => panic!("expected a wire error, got {other:?}"),
    }
    // Deep inside an enum, a struct variant, a sequence and an option.
    let value = Nested::Deep {
        label: "x".into(),
        values: vec![Some(NonZero(3)), None, Some(NonZero(0))],
    };
    let id = m.take_nested(value).unwrap();
    match m.wait(id, LONG) {
        Err(e @ CallError::Wire { .. }) => {
            assert!(
                e.to_string().contains("my message: zero is not allowed"),
                "{e}"
            )
        }
        other => panic!("expected a wire error, got {other:?}"),
    }
    // Decoded in the parent: a return value.
    let id = m.give(0).unwrap();
    match m.wait(id, LONG) {
        Err(e @ CallError::Wire { .. }) => {
            assert!(
                e.to_string().contains("my message: zero is not allowed"),
                "{e}"
            )
        }
        other => panic!("expected a wire error, got {other:?}"),
    }
    // Values that decode still do.
    let id = m.give(7).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), NonZero(7));
    let id = m.take_nested(Nested::Plain(5)).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 5);
}

fn a_panic_comes_with_its_location() {
    // The user's own hook, inherited by the workers, keeps running.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        HOOK_RUNS.fetch_add(1, Ordering::Relaxed);
        default(info)
    }));
    let mut m = GapsMediator::new("Gaps", Gaps);
    let id = m.boom().unwrap();
    let message = match m.wait(id, LONG) {
        Err(CallError::Panicked { message, .. }) => message,
        other => panic!("expected Panicked, got {other:?}"),
    };
    // "boom 93 (at tests/gaps.rs:93:9)"
    let line: u32 = message
        .strip_prefix("boom ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    let at = format!(" (at {}:{line}:", file!());
    assert!(
        message.contains(&at) && message.ends_with(')'),
        "{message:?} should say{at}COLUMN)"
    );
    let id = m.caught().unwrap();
    assert_eq!(
        m.wait(id, LONG).unwrap(),
        1,
        "the user's hook ran in the worker"
    );
    let _ = std::panic::take_hook();
}

fn lowering_workers_retires_the_extra_ones_after_their_calls() {
    let mut m = GapsMediator::new("Gaps", Gaps);
    m.workers(3);
    let ids: Vec<_> = (0..3).map(|_| m.sleep_ms(300).unwrap()).collect();
    assert!(eventually(LONG, || {
        m.poll();
        m.pids().len() == 3
    }));
    let before = m.pids();
    // Lowered while all three run: no call is lost.
    m.workers(1);
    let ran: Vec<u32> = ids
        .into_iter()
        .map(|id| m.wait(id, LONG).unwrap())
        .collect();
    let mut distinct = ran.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "each call ran on its own worker: {ran:?}"
    );
    assert!(
        eventually(LONG, || {
            m.poll();
            m.pids().len() == 1
        }),
        "the extra workers retire: {:?}",
        m.pids()
    );
    let kept = m.pids()[0];
    for pid in before.iter().filter(|&&p| p != kept) {
        assert!(
            eventually(LONG, || {
                m.poll();
                !process_exists(*pid)
            }),
            "retired worker {pid} exited and was reaped"
        );
    }
    let id = m.pid().unwrap();
    assert_eq!(m.wait(id, LONG).unwrap() as i32, kept, "the one left works");
    assert_eq!(m.stats().workers, 1);
    // Raised again: more workers are forked for the calls.
    m.workers(3);
    let ids: Vec<_> = (0..3).map(|_| m.sleep_ms(200).unwrap()).collect();
    assert!(eventually(LONG, || {
        m.poll();
        m.pids().len() == 3
    }));
    for id in ids {
        m.wait(id, LONG).unwrap();
    }
}

/// Every log line the parent wrote: (level, target, text).
static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
}

fn take_lines() -> Vec<(log::Level, String)> {
    std::mem::take(&mut *LINES.lock().unwrap())
}

fn after_fatal_error_the_exiting_worker_takes_no_other_call() {
    capture_logs();
    let mut m = GapsMediator::new("Gaps", Gaps);
    m.workers(1);
    // Through `wait`'s short path: the answer is taken and the next call posted at once.
    let first = m.fatal().unwrap();
    let others: Vec<_> = (0..5).map(|n| m.echo(n).unwrap()).collect();
    let exiting = m.wait(first, LONG).unwrap();
    for (n, id) in others.into_iter().enumerate() {
        assert_eq!(m.wait(id, LONG).unwrap(), n as u64);
    }
    assert!(!m.pids().contains(&(exiting as i32)));
    // Through the callbacks: each call runs once, with no retry.
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    m.on_return(move |call, _log| {
        sink.borrow_mut().push((call.id(), call.retries()));
    });
    let first = m.fatal().unwrap();
    let first_id = first.id();
    let others: Vec<_> = (0..5).map(|n| m.echo(n).unwrap().id().raw()).collect();
    m.wait(first, LONG).unwrap();
    assert!(
        eventually(LONG, || {
            m.poll();
            seen.borrow().len() == 6
        }),
        "every call returned: {:?}",
        seen.borrow()
    );
    let seen = seen.borrow();
    assert_eq!(seen[0], (first_id.raw(), 0));
    for (id, retries) in seen.iter().skip(1) {
        assert!(others.contains(id));
        assert_eq!(
            *retries, 0,
            "call {id} ran once, on a worker that was not exiting"
        );
    }
    let lines = take_lines();
    assert!(
        !lines.iter().any(|(_, l)| l.contains("before starting it")),
        "{lines:?}"
    );
    assert_eq!(m.errors().communication, 0, "no worker died holding a call");
}

/// WARN lines the parent wrote since the last look.
fn warnings() -> Vec<String> {
    take_lines()
        .into_iter()
        .filter(|(level, _)| *level == log::Level::Warn)
        .map(|(_, l)| l)
        .collect()
}

fn a_timeout_or_a_crash_is_logged_once() {
    capture_logs();
    let mut m = GapsMediator::new("Gaps", Gaps);
    m.workers(1).timeout(Duration::from_millis(200));
    let id = m.pid().unwrap();
    m.wait(id, LONG).unwrap();
    warnings();
    // Without callbacks: `wait` takes the failures.
    let id = m.sleep_ms(60_000).unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Timeout { .. })));
    let w = warnings();
    assert_eq!(w.len(), 1, "one warning for a timeout: {w:?}");
    let id = m.segfault().unwrap();
    let r = m.wait(id, LONG);
    assert!(matches!(r, Err(CallError::Crashed { .. })), "{r:?}");
    let w = warnings();
    assert_eq!(w.len(), 1, "one warning for a crash: {w:?}");
    // With callbacks: still once.
    let fired = Rc::new(RefCell::new(0));
    let (a, b) = (fired.clone(), fired.clone());
    m.on_timeout(move |_, _| *a.borrow_mut() += 1)
        .on_error(move |_, _| *b.borrow_mut() += 1);
    drop(m.sleep_ms(60_000).unwrap());
    drop(m.segfault().unwrap());
    assert!(eventually(LONG, || {
        m.poll();
        *fired.borrow() == 2
    }));
    let w = warnings();
    assert_eq!(w.len(), 2, "one warning each: {w:?}");
}

fn stats_count_each_methods_outcomes() {
    let mut m = GapsMediator::new("Gaps", Gaps);
    m.workers(1).timeout(Duration::from_millis(300));
    for n in 0..3 {
        let id = m.echo(n).unwrap();
        m.wait(id, LONG).unwrap();
    }
    let id = m.sleep_ms(60_000).unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Timeout { .. })));
    let id = m.segfault().unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Crashed { .. })));
    let id = m.boom().unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Panicked { .. })));
    let id = m.take(NonZero(0)).unwrap();
    assert!(matches!(m.wait(id, LONG), Err(CallError::Wire { .. })));
    let id = m.take(NonZero(4)).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 4);
    // Queued behind a running call, then cancelled by the shutdown.
    let running = m.sleep_ms(100).unwrap();
    drop(m.queued().unwrap());
    drop(m.queued().unwrap());
    let stats = m.stats();
    let outcomes = |name: &str| {
        stats
            .methods
            .iter()
            .find(|s| s.method == name)
            .unwrap()
            .outcomes
    };
    assert_eq!(outcomes("echo").returned, 3);
    assert_eq!(outcomes("sleep_ms").timeout, 1);
    assert_eq!(outcomes("segfault").crashed, 1);
    assert_eq!(outcomes("boom").panicked, 1);
    assert_eq!(outcomes("take").failed, 1);
    assert_eq!(outcomes("take").returned, 1);
    let table = stats.to_string();
    assert!(
        table.contains("Returned") && table.contains("Cancelled"),
        "{table}"
    );
    let _ = running;
    m.shutdown();
    let stats = m.stats();
    let queued = stats.methods.iter().find(|s| s.method == "queued").unwrap();
    assert_eq!(queued.outcomes.cancelled, 2);
    assert_eq!(queued.outcomes.returned, 0);
    let sleep = stats
        .methods
        .iter()
        .find(|s| s.method == "sleep_ms")
        .unwrap();
    assert_eq!((sleep.outcomes.returned, sleep.outcomes.timeout), (1, 1));
    let echo = stats.methods.iter().find(|s| s.method == "echo").unwrap();
    let o = echo.outcomes;
    assert_eq!(
        (
            o.returned,
            o.timeout,
            o.crashed,
            o.panicked,
            o.failed,
            o.cancelled
        ),
        (3, 0, 0, 0, 0, 0)
    );
    // The table shows them: the outcome row of `queued` says 2 cancelled.
    let table = stats.to_string();
    let row: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|t| {
            t.first() == Some(&"queued")
                && t.len() == 7
                && t[1..].iter().all(|n| n.parse::<u64>().is_ok())
        })
        .unwrap_or_else(|| panic!("no outcome row for queued in\n{table}"));
    assert_eq!(row[1..], ["0", "0", "0", "0", "0", "2"], "{table}");
}

fn a_callback_that_panics_is_logged_and_the_mediator_goes_on() {
    capture_logs();
    // The default hook would print each of the callbacks' panics to stderr; the test's own
    // still show.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload_as_str().unwrap_or_default();
        if !text.contains("callback bug") {
            default(info);
        }
    }));
    let mut m = GapsMediator::new("Gaps", Gaps);
    m.workers(2);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    m.on_return(move |call, _log| {
        let Some(Ok(GapsReturn::Echo(n))) = call.return_value() else {
            panic!("not an echo: {call:?}");
        };
        sink.borrow_mut().push(n);
        if n == 1000 {
            call.retry();
        }
        if n % 2 == 1 || n == 1000 {
            panic!("callback bug on {n}");
        }
    });
    for n in 0..100 {
        let _ = m.echo(n).unwrap();
    }
    assert!(
        eventually(LONG, || {
            m.poll();
            seen.borrow().len() == 100
        }),
        "every call delivered: {} of 100",
        seen.borrow().len()
    );
    let mut delivered = seen.borrow().clone();
    delivered.sort_unstable();
    assert_eq!(delivered, (0..100).collect::<Vec<_>>(), "each once");
    assert_eq!(m.errors().catchall, 50, "each panic counted");
    let lines = take_lines();
    let panicked: Vec<_> = lines
        .iter()
        .filter(|(level, l)| {
            *level == log::Level::Error && l.contains("its on_return callback panicked")
        })
        .collect();
    assert_eq!(panicked.len(), 50, "each panic logged: {lines:?}");
    // Delivered in the order the calls finished, which two workers may change.
    assert!(
        panicked
            .iter()
            .any(|(_, l)| l.starts_with("call ") && l.contains("panicked: callback bug on 1;")),
        "{panicked:?}"
    );
    // A call waited for whose callback panics: the wait still gets its result.
    let id = m.echo(7).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 7);
    // A retry asked for before the panic is dropped: the call is delivered once.
    let id = m.echo(1000).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 1000);
    for _ in 0..20 {
        m.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen.borrow().len(), 102, "{:?}", &seen.borrow()[100..]);
    assert_eq!(m.errors().catchall, 52);
    // The mediator goes on: the same workers, no call lost.
    let pids = m.pids();
    let id = m.echo(2).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 2);
    assert_eq!(m.pids(), pids, "no worker was replaced");
    assert_eq!(m.pending(), 0);
    drop(m);
    // A handler lent for one poll, as the daemon lends its callbacks (`poll_with`).
    let mut m = GapsMediator::new("Lent", Gaps);
    for n in 0..10 {
        let _ = m.echo(n).unwrap();
    }
    let mut lent = 0;
    let start = std::time::Instant::now();
    while lent < 10 && start.elapsed() < LONG {
        m.poll_with(&mut |call, _log| {
            lent += 1;
            if call.id() % 2 == 0 {
                panic!("daemon callback bug");
            }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(lent, 10, "every call delivered to the lent handler");
    assert_eq!(m.errors().catchall, 5);
    let id = m.echo(3).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 3);
    let _ = std::panic::take_hook();
}

tests![
    a_callback_that_panics_is_logged_and_the_mediator_goes_on,
    a_nested_pools_worker_sees_its_own_pool,
    a_custom_serde_error_keeps_its_message,
    a_panic_comes_with_its_location,
    lowering_workers_retires_the_extra_ones_after_their_calls,
    after_fatal_error_the_exiting_worker_takes_no_other_call,
    a_timeout_or_a_crash_is_logged_once,
    stats_count_each_methods_outcomes,
];
