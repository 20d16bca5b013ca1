//! The daemon host's building blocks, end to end with real processes: closure workers, tasks,
//! signals, and the single-instance lock. Each test runs alone in its own process (see
//! `support`), which also checks that it left no process and no shared-memory segment behind.

mod support;

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::closure::FnMediator;
use forkworker::instance::{InstanceError, InstanceLock};
use forkworker::prelude::*;
use forkworker::signals::{SignalEvents, Signals};
use forkworker::task::{TaskError, TaskStatus, Tasks};
use support::{eventually, process_exists};

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

/// Sleeps in `poll(2)` until one of `fds` is readable or `until` passes.
fn sleep_on(fds: &[BorrowedFd<'_>], until: Option<Instant>) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = until.map_or(-1, |u| {
        u.saturating_duration_since(Instant::now())
            .as_millis()
            .min(60_000) as i32
            + 1
    });
    // SAFETY: a valid array of pollfd of the given length.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

// ---- closure workers ----

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
        expected.push((id.raw(), n, format!("n{n}:"), format!("n{n}:{n}")));
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

// ---- tasks ----

fn tasks_return_typed_values_small_large_and_empty() {
    let mut tasks = Tasks::new("Tasks");
    let numbers: Vec<u64> = (1..=1000).collect();
    let sum = tasks.spawn(|| numbers.iter().sum::<u64>()).expect("spawn");
    let pid = tasks.spawn(|| std::process::id() as i32).expect("spawn");
    // Four MiB: far more than a pipe holds, so the parent must read while the task writes.
    let big = tasks
        .spawn(|| {
            serde_bytes::ByteBuf::from(
                (0..4u32 << 20)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .expect("spawn");
    let unit = tasks.spawn(|| ()).expect("spawn");
    let expected_pid = tasks.pid(pid).expect("known");
    assert_eq!(tasks.wait(sum, LONG), Ok(500_500));
    assert_eq!(tasks.wait(pid, LONG), Ok(expected_pid));
    assert_ne!(expected_pid, std::process::id() as i32);
    let bytes = tasks.wait(big, LONG).expect("big").into_vec();
    assert_eq!(bytes.len(), 4 << 20);
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8)
    );
    assert_eq!(tasks.wait(unit, LONG), Ok(()));
    assert_eq!(
        tasks.wait(sum, LONG),
        Err(TaskError::Unknown(sum.raw())),
        "taken once"
    );
    assert!(tasks.is_idle());
}

fn tasks_report_panics_crashes_and_exits_with_their_cause() {
    let mut tasks = Tasks::new("Tasks");
    let panics = tasks
        .spawn(|| -> u8 { panic!("task {} gave up", 42) })
        .expect("spawn");
    let segfaults = tasks
        .spawn(|| -> u8 {
            // SAFETY: not safe at all; crashing the task is the point.
            unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
            0
        })
        .expect("spawn");
    let aborts = tasks
        .spawn(|| -> u8 { std::process::abort() })
        .expect("spawn");
    let exits = tasks
        .spawn(|| -> u8 { std::process::exit(3) })
        .expect("spawn");
    let t = Instant::now();
    match tasks.wait(panics, LONG) {
        Err(TaskError::Panicked { id, message, pid }) => {
            assert_eq!(id, panics.raw());
            assert_eq!(message, "task 42 gave up");
            assert!(pid > 0 && !process_exists(pid), "reaped");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    for (id, cause) in [
        (segfaults, ExitCause::Signaled(libc::SIGSEGV)),
        (aborts, ExitCause::Signaled(libc::SIGABRT)),
        (exits, ExitCause::Exited(3)),
    ] {
        match tasks.wait(id, LONG) {
            Err(e @ TaskError::Died { .. }) => {
                let TaskError::Died { cause: got, .. } = e else {
                    unreachable!()
                };
                assert_eq!(got, cause);
                let text = e.to_string();
                assert!(text.contains("without a value"), "{text}");
            }
            other => panic!("expected Died with {cause:?}, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

fn a_task_past_its_timeout_is_killed_and_reaped() {
    let mut tasks = Tasks::new("Tasks");
    tasks.timeout(Duration::from_millis(200));
    let id = tasks
        .spawn(|| std::thread::sleep(Duration::from_secs(60)))
        .expect("spawn");
    let pid = tasks.pid(id).expect("known");
    assert_eq!(tasks.status(id), Some(TaskStatus::Running));
    assert!(tasks.next_deadline().is_some());
    let t = Instant::now();
    assert_eq!(
        tasks.wait(id, LONG),
        Err(TaskError::Timeout {
            id: id.raw(),
            pid,
            timeout: Duration::from_millis(200)
        })
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!process_exists(pid), "killed and reaped");
    // No timeout for tasks spawned after it is lifted.
    tasks.timeout(None);
    let id = tasks
        .spawn(|| std::thread::sleep(Duration::from_millis(300)))
        .expect("spawn");
    assert!(tasks.next_deadline().is_none());
    assert_eq!(tasks.wait(id, LONG), Ok(()));
}

fn a_wait_that_gives_up_leaves_the_task_running() {
    let mut tasks = Tasks::new("Tasks");
    let id = tasks
        .spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            5u8
        })
        .expect("spawn");
    match tasks.wait(id, Duration::from_millis(50)) {
        Err(TaskError::WaitTimeout { id: got, waited }) => {
            assert_eq!(got, id.raw());
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert_eq!(tasks.status(id), Some(TaskStatus::Running));
    assert_eq!(tasks.wait(id, LONG), Ok(5));
}

fn tasks_deliver_once_to_callbacks_in_an_event_loop() {
    let mut tasks = Tasks::new("Tasks");
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    tasks
        .timeout(Duration::from_secs(1))
        .on_done(move |done, log| {
            log.info(format_args!(
                "task {} done in {:?}",
                done.id(),
                done.elapsed()
            ));
            let value = done.value::<u64>();
            sink.borrow_mut()
                .push((done.id(), value.map_err(|e| e.to_string())));
        });
    let typed = Rc::new(RefCell::new(None));
    let typed_sink = typed.clone();
    let mut ids = Vec::new();
    for ms in [300u64, 100, 200, 0] {
        ids.push(
            tasks
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    ms
                })
                .expect("spawn")
                .raw(),
        );
    }
    let hangs = tasks
        .spawn(|| -> u64 {
            std::thread::sleep(Duration::from_secs(60));
            0
        })
        .expect("spawn");
    let own = tasks
        .spawn_then(
            || vec![String::from("typed")],
            move |result: Result<Vec<String>, TaskError>, _log| {
                *typed_sink.borrow_mut() = Some(result)
            },
        )
        .expect("spawn");
    // The loop of a daemon: sleep on the fds until the nearest deadline, then poll.
    let end = Instant::now() + LONG;
    let mut wakeups = 0;
    while !tasks.is_idle() && Instant::now() < end {
        sleep_on(&tasks.wake_fds(), tasks.next_deadline());
        tasks.poll();
        wakeups += 1;
    }
    tasks.poll();
    assert!(tasks.is_idle());
    assert!(
        wakeups < 100,
        "the loop slept between events: {wakeups} wake-ups"
    );
    let seen = seen.borrow().clone();
    assert_eq!(seen.len(), 5, "each task once: {seen:?}");
    let by_id: std::collections::HashMap<u64, Result<u64, String>> = seen.into_iter().collect();
    for (id, ms) in ids.iter().zip([300u64, 100, 200, 0]) {
        assert_eq!(by_id[id], Ok(ms));
    }
    let timed_out = by_id[&hangs.raw()].as_ref().expect_err("timed out");
    assert!(timed_out.contains("timeout"), "{timed_out}");
    assert_eq!(*typed.borrow(), Some(Ok(vec!["typed".to_owned()])));
    assert!(!by_id.contains_key(&own.raw()), "its own callback only");
    // Delivered to callbacks, so released.
    assert_eq!(tasks.wait(own, LONG), Err(TaskError::Unknown(own.raw())));
}

fn a_killed_task_ends_as_killed() {
    let mut tasks = Tasks::new("Tasks");
    let id = tasks
        .spawn(|| std::thread::sleep(Duration::from_secs(60)))
        .expect("spawn");
    let pid = tasks.pid(id).expect("known");
    assert!(tasks.kill(id));
    assert!(!process_exists(pid), "reaped at once");
    assert!(!tasks.kill(id), "only once");
    assert_eq!(tasks.poll(), 1, "its end is seen by the next poll");
    assert_eq!(tasks.status(id), Some(TaskStatus::Failed));
    assert_eq!(
        tasks.wait(id, LONG),
        Err(TaskError::Killed { id: id.raw(), pid })
    );
}

fn dropping_tasks_kills_and_reaps_the_running_ones() {
    let mut tasks = Tasks::new("Tasks");
    let done = tasks.spawn(|| 1u8).expect("spawn");
    for _ in 0..3 {
        tasks
            .spawn(|| std::thread::sleep(Duration::from_secs(60)))
            .expect("spawn");
    }
    assert!(eventually(LONG, || {
        tasks.poll();
        tasks.status(done) == Some(TaskStatus::Returned)
    }));
    let pids = tasks.pids();
    assert_eq!(pids.len(), 3);
    assert_eq!(tasks.wake_fds().len(), 6, "a pidfd and a pipe each");
    assert!(pids.iter().all(|&p| process_exists(p)));
    let t = Instant::now();
    drop(tasks);
    assert!(t.elapsed() < Duration::from_secs(2));
    for pid in pids {
        assert!(!process_exists(pid), "task {pid} was killed and reaped");
    }
}

// ---- signals ----

fn each_signal_sets_its_flag_and_wakes_the_fd() {
    let signals = Signals::install().expect("install");
    assert!(!readable(signals.wake_fd()));
    assert_eq!(signals.take(), SignalEvents::default());
    let cases = [
        (libc::SIGINT, "shutdown"),
        (libc::SIGTERM, "shutdown"),
        (libc::SIGHUP, "restart"),
        (libc::SIGUSR1, "stats"),
        (libc::SIGCONT, "wake"),
    ];
    for (signal, flag) in cases {
        // SAFETY: raising a handled signal at this process.
        assert_eq!(unsafe { libc::raise(signal) }, 0);
        assert!(readable(signals.wake_fd()), "signal {signal} wakes the fd");
        let events = signals.take();
        let expected = SignalEvents {
            shutdown: flag == "shutdown",
            restart: flag == "restart",
            stats: flag == "stats",
            wake: flag == "wake",
        };
        assert_eq!(events, expected, "signal {signal}");
        assert!(!readable(signals.wake_fd()), "drained by take");
        assert!(!signals.take().any(), "cleared by take");
    }
    // Several signals before one take: all reported, at once.
    // SAFETY: as above.
    unsafe {
        libc::raise(libc::SIGUSR1);
        libc::raise(libc::SIGUSR1);
        libc::raise(libc::SIGHUP);
    }
    let events = signals.take();
    assert!(events.stats && events.restart && !events.shutdown && !events.wake);
}

fn a_signal_from_another_process_wakes_a_loop_sleeping_in_poll() {
    let signals = Signals::install().expect("install");
    let mut tasks = Tasks::new("Tasks");
    let parent = std::process::id() as i32;
    tasks
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: signalling the parent, as `kill -TERM` would.
            unsafe { libc::kill(parent, libc::SIGTERM) };
        })
        .expect("spawn");
    let t = Instant::now();
    let mut events = SignalEvents::default();
    while !events.shutdown && t.elapsed() < LONG {
        let mut fds = tasks.wake_fds();
        fds.push(signals.wake_fd());
        sleep_on(&fds, None);
        tasks.poll();
        events = signals.take();
    }
    assert!(events.shutdown, "woken by SIGTERM");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(eventually(LONG, || {
        tasks.poll();
        tasks.is_idle()
    }));
}

fn a_task_gets_default_signal_actions_not_the_parents_handlers() {
    let signals = Signals::install().expect("install");
    let mut tasks = Tasks::new("Tasks");
    let id = tasks
        .spawn(|| {
            // SAFETY: raising SIGTERM at the task itself.
            unsafe { libc::raise(libc::SIGTERM) };
            1u8
        })
        .expect("spawn");
    match tasks.wait(id, LONG) {
        Err(TaskError::Died { cause, .. }) => {
            assert_eq!(cause, ExitCause::Signaled(libc::SIGTERM))
        }
        other => panic!("expected the task to die of SIGTERM, got {other:?}"),
    }
    assert!(!signals.take().any(), "the parent saw nothing");
}

fn dropping_signals_unregisters_its_handlers_only() {
    let first = Signals::install().expect("install");
    let second = Signals::install().expect("install");
    drop(first);
    // SAFETY: raising a handled signal at this process.
    unsafe { libc::raise(libc::SIGHUP) };
    assert!(second.take().restart, "the other instance still hears it");
    drop(second);
    // With no action left, signal-hook's handler ignores the signal: the process lives on.
    // SAFETY: as above.
    unsafe { libc::raise(libc::SIGUSR1) };
    let again = Signals::install().expect("install again");
    assert!(!again.take().any(), "nothing stale");
}

// ---- single instance ----

fn a_forked_holder_blocks_the_lock_until_it_exits() {
    let path = std::env::temp_dir().join(format!("forkworker-it-{}.lock", std::process::id()));
    let mut ready = [0; 2];
    let mut go = [0; 2];
    // SAFETY: valid arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
    }
    // SAFETY: the test process is single-threaded; the child takes the lock, reports, waits
    // for the word, and leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        let code = match InstanceLock::acquire(&path) {
            Ok(lock) => {
                let mut byte = [1u8];
                // SAFETY: pipe fds inherited from the parent; valid buffers.
                unsafe {
                    libc::write(ready[1], byte.as_ptr().cast(), 1);
                    libc::read(go[0], byte.as_mut_ptr().cast(), 1);
                }
                std::mem::forget(lock);
                0
            }
            Err(_) => 1,
        };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut byte = [0u8];
    // SAFETY: valid pipe fds and buffers.
    unsafe {
        libc::close(ready[1]);
        libc::close(go[0]);
        assert_eq!(libc::read(ready[0], byte.as_mut_ptr().cast(), 1), 1);
    }
    let err = InstanceLock::acquire(&path).expect_err("the child holds it");
    match &err {
        InstanceError::Held { path: p, pid } => {
            assert_eq!(p, &path);
            assert_eq!(*pid, Some(child));
        }
        other => panic!("expected Held, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains(&format!("pid {child}")),
        "{text}"
    );
    let mut status = 0;
    // SAFETY: valid fds; waiting for our own child.
    unsafe {
        libc::write(go[1], byte.as_ptr().cast(), 1);
        assert_eq!(libc::waitpid(child, &mut status, 0), child);
        libc::close(go[1]);
        libc::close(ready[0]);
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let lock = InstanceLock::acquire(&path).expect("free once the holder exited");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
    drop(lock);
    std::fs::remove_file(&path).unwrap();
}

tests![
    closure_workers_run_in_the_pool_and_inline,
    closure_workers_fire_on_return_with_typed_args_and_return,
    closure_workers_time_out_panic_and_go_on,
    tasks_return_typed_values_small_large_and_empty,
    tasks_report_panics_crashes_and_exits_with_their_cause,
    a_task_past_its_timeout_is_killed_and_reaped,
    a_wait_that_gives_up_leaves_the_task_running,
    tasks_deliver_once_to_callbacks_in_an_event_loop,
    a_killed_task_ends_as_killed,
    dropping_tasks_kills_and_reaps_the_running_ones,
    each_signal_sets_its_flag_and_wakes_the_fd,
    a_signal_from_another_process_wakes_a_loop_sleeping_in_poll,
    a_task_gets_default_signal_actions_not_the_parents_handlers,
    dropping_signals_unregisters_its_handlers_only,
    a_forked_holder_blocks_the_lock_until_it_exits,
];
