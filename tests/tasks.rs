//! Tasks (`Tasks`, the seed's ad-hoc background processes), end to end with real
//! processes: typed values, panics, crashes and exits with their cause, timeouts, kills,
//! callbacks in an event loop, and cleanup on drop. Each test runs alone in its own process
//! (see `support`), which also checks that it left no process and no shared-memory segment
//! behind.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::ExitCause;
use forkworker::task::{TaskError, TaskStatus, Tasks};
use support::{eventually, process_exists, sleep_on};

const LONG: Duration = Duration::from_secs(30);

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
    let panic_line = line!() + 2;
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
            // With where it panicked.
            let at = format!("task 42 gave up (at {}:{panic_line}:", file!());
            assert!(
                message.starts_with(&at) && message.ends_with(')'),
                "{message}"
            );
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

/// The parent's resident memory now and at its peak, in KiB (/proc/self/statm, VmHWM).
fn rss_kib() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    (pages * page / 1024, hwm)
}

/// In a task: the write end of its result pipe, found as a hostile closure would (the one
/// close-on-exec, write-only FIFO it holds beyond stdin, stdout and stderr).
fn own_result_pipe() -> i32 {
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds") {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        // SAFETY: fstat and fcntl on a descriptor number; a closed one just fails.
        let (fifo, wronly, cloexec) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            let fifo = libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO;
            let fl = libc::fcntl(fd, libc::F_GETFL);
            let fdfl = libc::fcntl(fd, libc::F_GETFD);
            (
                fifo,
                fl >= 0 && fl & libc::O_ACCMODE == libc::O_WRONLY,
                fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
            )
        };
        if fifo && wronly && cloexec {
            return fd;
        }
    }
    panic!("no result pipe found");
}

fn a_task_flooding_its_output_is_killed_at_the_limit_and_the_parent_stays_small() {
    let mut tasks = Tasks::new("Tasks");
    // Warm up: the parent's own code and buffers are resident before the baseline.
    let warm = tasks.spawn(|| 1u8).expect("spawn");
    assert_eq!(tasks.wait(warm, LONG), Ok(1));
    let limit = forkworker::task::DEFAULT_OUTPUT_LIMIT;
    let (rss_before, peak_before) = rss_kib();

    // A hostile task: announces a value within the limit, then writes 200 MiB as fast as it
    // can into its result pipe.
    let flood = tasks
        .spawn(|| -> u8 {
            let fd = own_result_pipe();
            let mut header = vec![0u8];
            header.extend_from_slice(&(8u64 << 20).to_le_bytes());
            let chunk = vec![0x55u8; 1 << 20];
            for bytes in std::iter::once(&header).chain(std::iter::repeat_n(&chunk, 200)) {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    // SAFETY: writing from a valid slice.
                    let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
                    assert!(n > 0, "the parent stopped reading");
                    rest = &rest[n as usize..];
                }
            }
            0
        })
        .expect("spawn");
    let pid = tasks.pid(flood).expect("known");
    let started = Instant::now();
    assert_eq!(
        tasks.wait(flood, LONG),
        Err(TaskError::OutputLimit {
            id: flood.raw(),
            pid,
            limit
        })
    );
    assert!(!process_exists(pid), "killed and reaped");
    println!("flood stopped after {:?}", started.elapsed());

    // A value whose announced length passes the limit is refused without being read.
    let big = tasks
        .spawn(|| serde_bytes::ByteBuf::from(vec![7u8; 2 * limit]))
        .expect("spawn");
    let err = tasks.wait(big, LONG).expect_err("over the limit");
    assert!(
        matches!(err, TaskError::OutputLimit { limit: l, .. } if l == limit),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("output limit of {limit} bytes")),
        "{text}"
    );

    let (rss_after, peak_after) = rss_kib();
    println!("parent RSS {rss_before} -> {rss_after} KiB, peak {peak_before} -> {peak_after} KiB");
    let bound = (limit / 1024) as u64 + 8 * 1024;
    assert!(
        peak_after.saturating_sub(peak_before) <= bound,
        "the parent's peak RSS grew by {} KiB, more than the {limit}-byte limit and 8 MiB",
        peak_after - peak_before
    );
    assert!(rss_after.saturating_sub(rss_before) <= bound);

    // The limit is a setting: a smaller one refuses what the default lets through.
    tasks.output_limit(1 << 20);
    let small = tasks
        .spawn(|| serde_bytes::ByteBuf::from(vec![1u8; 512 << 10]))
        .expect("spawn");
    let large = tasks
        .spawn(|| serde_bytes::ByteBuf::from(vec![1u8; 2 << 20]))
        .expect("spawn");
    assert_eq!(tasks.wait(small, LONG).map(|b| b.len()), Ok(512 << 10));
    assert!(matches!(
        tasks.wait(large, LONG),
        Err(TaskError::OutputLimit { limit: 1048576, .. })
    ));
}

tests![
    tasks_return_typed_values_small_large_and_empty,
    tasks_report_panics_crashes_and_exits_with_their_cause,
    a_task_past_its_timeout_is_killed_and_reaped,
    a_wait_that_gives_up_leaves_the_task_running,
    tasks_deliver_once_to_callbacks_in_an_event_loop,
    a_killed_task_ends_as_killed,
    dropping_tasks_kills_and_reaps_the_running_ones,
    a_task_flooding_its_output_is_killed_at_the_limit_and_the_parent_stays_small,
];
