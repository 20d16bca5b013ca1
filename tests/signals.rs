//! Signals as flags and a wake-up descriptor (`Signals`), end to end with real processes:
//! each signal sets its flag and wakes the descriptor, a signal from another process wakes a
//! loop sleeping in `poll`, tasks get default signal actions, and dropping unregisters only
//! its own handlers. Each test runs alone in its own process (see `support`), which also
//! checks that it left no process and no shared-memory segment behind.

mod support;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use forkworker::ExitCause;
use forkworker::signals::{SignalEvents, Signals};
use forkworker::task::{TaskError, Tasks};
use support::{eventually, sleep_on};

const LONG: Duration = Duration::from_secs(30);

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

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

tests![
    each_signal_sets_its_flag_and_wakes_the_fd,
    a_signal_from_another_process_wakes_a_loop_sleeping_in_poll,
    a_task_gets_default_signal_actions_not_the_parents_handlers,
    dropping_signals_unregisters_its_handlers_only,
];
