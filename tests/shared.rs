//! The shared pool (`XPool`): real forks, real kills, real runtimes (tokio's multi-threaded
//! one and `futures`' executor). Each test runs alone in its own process (see `support`),
//! which also checks that the pool left no process and no shared memory behind.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use forkworker::{CancelReason, Pending};
use support::eventually;

const LONG: Duration = Duration::from_secs(30);

pub struct Echo;

#[forkworker::worker]
impl Echo {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Sleeps, then says which worker slept.
    pub fn sleep_ms(&self, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }

    /// Returns its argument after `ms`; `ms` of `u64::MAX` hangs.
    pub fn slow_echo(&self, n: u64, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms.min(600_000)));
        n
    }

    pub fn crash(&self) -> u8 {
        // SAFETY: not safe at all; crashing the worker is the point.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        0
    }

    pub fn bytes(&self, data: Vec<u8>) -> usize {
        data.len()
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// This process's children (the fork servers of its pools), from /proc.
fn children() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .map(|c| c.split_whitespace().count())
        .sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn the_pool_is_send_sync_clone_and_static() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    fn future<T: std::future::Future + Send + Unpin + 'static>() {}
    shared::<EchoPool>();
    future::<Pending<u64>>();
}

fn awaited_calls_return_on_tokio_from_many_tasks() {
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .timeout(LONG)
        .start()
        .unwrap();
    let rt = runtime();
    let sum = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..50u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut sum = 0;
                for i in 0..20 {
                    sum += pool.echo(t * 100 + i).await.unwrap();
                }
                sum
            }));
        }
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    let expected: u64 = (0..50u64)
        .flat_map(|t| (0..20).map(move |i| t * 100 + i))
        .sum();
    assert_eq!(sum, expected);
    drop(rt);
    assert_eq!(pool.pending(), 0);
}

fn futures_executor_awaits_too_with_join_all() {
    let pool = EchoPool::builder("Echo", Echo).workers(2).start().unwrap();
    let calls: Vec<_> = (0..200).map(|n| pool.echo(n)).collect();
    let results = futures::executor::block_on(futures::future::join_all(calls));
    let results: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (0..200).collect::<Vec<_>>());
    // FuturesUnordered: every result once, in any order.
    use futures::StreamExt;
    let unordered: futures::stream::FuturesUnordered<_> = (0..100).map(|n| pool.echo(n)).collect();
    let mut seen: Vec<u64> =
        futures::executor::block_on(unordered.map(Result::unwrap).collect::<Vec<_>>());
    seen.sort();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
}

fn blocking_waits_from_threads_and_a_wait_with_a_timeout_gives_the_handle_back() {
    let pool = EchoPool::builder("Echo", Echo).workers(2).start().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| pool.echo(t * 1000 + i).wait().unwrap())
                    .sum::<u64>()
            })
        })
        .collect();
    let sum: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        sum,
        (0..4u64)
            .map(|t| (0..50).map(|i| t * 1000 + i).sum::<u64>())
            .sum()
    );
    let call = pool.slow_echo(7, 300);
    let call = match call.wait_timeout(Duration::from_millis(20)) {
        Err(call) => call,
        Ok(r) => panic!("a 300 ms call ended within 20 ms: {r:?}"),
    };
    assert!(matches!(
        call.status(),
        Some(CallStatus::Called | CallStatus::Running)
    ));
    assert_eq!(call.wait_timeout(LONG).unwrap().unwrap(), 7);
}

fn a_hung_call_is_killed_on_time_while_the_program_sleeps() {
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let first = pool.pid().wait().unwrap();
    let started = Instant::now();
    let hung = pool.slow_echo(1, u64::MAX);
    // Nobody drives the pool: the program sleeps.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(hung.status(), Some(CallStatus::Timeout));
    let t = hung.timings().unwrap();
    let ran = t.entered(CallStatus::Timeout).unwrap() - t.entered(CallStatus::Uncalled).unwrap();
    assert!(
        ran < Duration::from_millis(500),
        "killed {ran:?} after the call was made (timeout 200 ms)"
    );
    assert!(!alive(first), "the hung worker {first} was killed");
    assert!(matches!(hung.wait(), Err(CallError::Timeout { .. })));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let next = pool.pid().wait().unwrap();
    assert_ne!(next, first, "a new worker serves the next call");
}

fn dropping_a_running_call_kills_its_worker_and_fires_on_error() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen = cancelled.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .on_error(move |call, _| {
            if matches!(
                call.error(),
                Some(CallError::Cancelled {
                    reason: CancelReason::ByCaller,
                    ..
                })
            ) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap();
    let first = pool.pid().wait().unwrap();
    let running = pool.slow_echo(1, 60_000);
    assert!(eventually(LONG, || running.status() == Some(CallStatus::Running)));
    drop(running);
    assert!(eventually(LONG, || !alive(first)), "worker {first} killed");
    assert!(eventually(LONG, || cancelled.load(Ordering::SeqCst) == 1));
    let next = pool.pid().wait().unwrap();
    assert_ne!(next, first);
    // A timeout from the runtime leaves no work running either.
    let rt = runtime();
    let timed_out = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), pool.slow_echo(2, 60_000)).await
    });
    assert!(timed_out.is_err());
    assert!(eventually(LONG, || !alive(next)), "worker {next} killed");
    assert!(eventually(LONG, || cancelled.load(Ordering::SeqCst) == 2));
    assert_eq!(pool.pending(), 0);
}

fn dropping_a_queued_call_removes_it_and_a_finished_one_is_never_cancelled() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let errors = Arc::new(AtomicUsize::new(0));
    let failed = errors.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .on_return(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .on_error(move |_, _| {
            failed.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    let busy = pool.slow_echo(1, 300);
    let queued = pool.echo(2);
    assert_eq!(queued.status(), Some(CallStatus::Uncalled));
    drop(queued);
    assert_eq!(busy.wait().unwrap(), 1);
    assert!(eventually(LONG, || errors.load(Ordering::SeqCst) == 1));
    assert_eq!(ran.load(Ordering::SeqCst), 1, "the dropped call never ran");
    // A finished call dropped unwaited: returned, not cancelled.
    let done = pool.echo(3);
    assert!(eventually(LONG, || done.status() == Some(CallStatus::Returned)));
    done.cancel();
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert!(eventually(LONG, || pool.pending() == 0));
}

fn every_result_comes_back_and_every_callback_fires_3000_times() {
    let fired = Arc::new(AtomicUsize::new(0));
    let count = fired.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .on_return(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    let calls: Vec<_> = (0..3000).map(|n| pool.echo(n)).collect();
    let mut returned = 0;
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.wait().unwrap(), n as u64);
        returned += 1;
    }
    assert_eq!(returned, 3000);
    assert_eq!(fired.load(Ordering::SeqCst), 3000);
}

/// With a store (and call table) smaller than the calls made at once, calls wait in the
/// backlog; every one returns and every callback fires once (a submit that finds no room must
/// not deliver finished calls itself, past the callbacks).
fn a_full_store_loses_no_call_and_no_callback() {
    let fired = Arc::new(AtomicUsize::new(0));
    let count = fired.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .malloc(64 << 10)
        .on_return(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    let calls: Vec<_> = (0..3000).map(|n| pool.echo(n)).collect();
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.wait().unwrap(), n as u64);
    }
    assert_eq!(fired.load(Ordering::SeqCst), 3000);
    drop(pool);
    // The same load fills the table: told to fail, some calls are refused.
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .malloc(64 << 10)
        .fail_when_full(true)
        .start()
        .unwrap();
    let calls: Vec<_> = (0..3000).map(|n| pool.echo(n)).collect();
    let refused = calls
        .into_iter()
        .map(Pending::wait)
        .filter(|r| {
            matches!(
                r,
                Err(CallError::TooManyCalls { .. } | CallError::OutOfMemory { .. })
            )
        })
        .count();
    assert!(refused > 0, "the table or the store was full");
}

fn a_finished_calls_status_stays_until_its_handle_takes_it() {
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .timeout(Duration::from_millis(200))
        .on_return(|_, _| {})
        .on_timeout(|_, _| {})
        .start()
        .unwrap();
    let call = pool.echo(5);
    assert!(eventually(LONG, || call.status() == Some(CallStatus::Returned)));
    let id = call.id();
    assert_eq!(call.wait().unwrap(), 5);
    let _ = id;
    let hung = pool.slow_echo(1, u64::MAX);
    assert!(eventually(LONG, || hung.status() == Some(CallStatus::Timeout)));
    assert!(matches!(hung.wait(), Err(CallError::Timeout { .. })));
}

fn status_answers_by_id_after_the_handle_and_several_calls_are_waited_for_at_once() {
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .timeout(Duration::from_millis(200))
        .status_history(4)
        .start()
        .unwrap();
    let call = pool.echo(1);
    let id = call.id();
    assert_eq!(call.wait().unwrap(), 1);
    assert_eq!(pool.status(id), Some(CallStatus::Returned));
    assert!(
        pool.timings(id)
            .unwrap()
            .entered(CallStatus::Returned)
            .is_some()
    );
    let hung = pool.slow_echo(1, u64::MAX);
    let hung_id = hung.id();
    assert!(matches!(hung.wait(), Err(CallError::Timeout { .. })));
    assert_eq!(pool.status(hung_id), Some(CallStatus::Timeout));
    // Only the last 4 are remembered.
    let results = pool.wait_all((0..6).map(|n| pool.echo(n)), LONG);
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    assert_eq!(pool.status(id), None, "forgotten past the history");
    let mut calls = vec![pool.slow_echo(1, 2_000), pool.slow_echo(2, 10)];
    let (first, result) = pool.wait_any(&mut calls, LONG).unwrap();
    assert_eq!(result.unwrap(), 2);
    assert_eq!(pool.status(first), Some(CallStatus::Returned));
    assert_eq!(calls.len(), 1);
    assert!(
        pool.wait_any(&mut calls, Duration::from_millis(10))
            .is_none()
    );
    assert_eq!(calls.len(), 1, "untouched when the time is up");
}

fn a_crash_is_reported_as_a_crash() {
    let pool = EchoPool::builder("Echo", Echo).workers(1).start().unwrap();
    assert!(matches!(
        pool.crash().wait(),
        Err(CallError::Crashed { .. })
    ));
    assert_eq!(pool.echo(1).wait().unwrap(), 1);
}

fn a_pool_shared_by_8_threads_and_50_tasks_returns_every_result_once() {
    let pool = EchoPool::builder("Echo", Echo).workers(2).start().unwrap();
    let rt = runtime();
    let from_tasks: Vec<_> = (0..50u64)
        .map(|t| {
            let pool = pool.clone();
            rt.spawn(async move {
                let mut got = Vec::new();
                for i in 0..40 {
                    got.push(pool.echo(1_000_000 + t * 1000 + i).await.unwrap());
                }
                got
            })
        })
        .collect();
    let from_threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| pool.echo(t * 1000 + i).wait().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in from_threads {
        all.extend(t.join().unwrap());
    }
    rt.block_on(async {
        for t in from_tasks {
            all.extend(t.await.unwrap());
        }
    });
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 8 * 100 + 50 * 40);
    assert_eq!(unique.len(), all.len(), "every result exactly once");
}

fn a_ticker_on_the_runtime_never_stalls_while_calls_are_awaited() {
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .timeout(Duration::from_millis(50))
        .start()
        .unwrap();
    let rt = runtime();
    let (worst, timeouts, returned) = rt.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticking = stop.clone();
        let ticker = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            while !ticking.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = Instant::now();
                worst = worst.max((now - last).saturating_sub(Duration::from_millis(5)));
                last = now;
            }
            worst
        });
        let mut tasks = Vec::new();
        for t in 0..50u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let (mut timeouts, mut returned) = (0, 0);
                for i in 0..20u64 {
                    // One call in 40 hangs past the timeout.
                    let ms = if (t * 20 + i) % 40 == 0 { 10_000 } else { 0 };
                    match pool.slow_echo(i, ms).await {
                        Ok(_) => returned += 1,
                        Err(CallError::Timeout { .. }) => timeouts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (timeouts, returned)
            }));
        }
        let (mut timeouts, mut returned) = (0, 0);
        for t in tasks {
            let (a, b) = t.await.unwrap();
            timeouts += a;
            returned += b;
        }
        stop.store(true, Ordering::SeqCst);
        (ticker.await.unwrap(), timeouts, returned)
    });
    assert_eq!(timeouts, 25);
    assert_eq!(returned, 975);
    println!("worst ticker stall: {worst:?}");
    // The bar is 10 ms; this machine's two noisy CPUs get some slack.
    assert!(
        worst < Duration::from_millis(30),
        "the ticker stalled {worst:?}"
    );
}

fn the_last_clone_dropped_stops_the_pool_after_detached_calls() {
    let fired = Arc::new(AtomicUsize::new(0));
    let count = fired.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(2)
        .on_return(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    let pids: Vec<u32> = (0..2)
        .map(|_| pool.sleep_ms(100))
        .map(|c| c.wait().unwrap())
        .collect();
    let clone = pool.clone();
    drop(pool);
    clone.slow_echo(1, 200).detach();
    let held = clone.slow_echo(2, 100);
    drop(clone);
    // The pool is up while the held and the detached call go on.
    assert_eq!(held.wait().unwrap(), 2);
    assert!(eventually(LONG, || fired.load(Ordering::SeqCst) == 4));
    assert!(
        eventually(LONG, || pids.iter().all(|&p| !alive(p))),
        "every worker gone once the calls ended"
    );
    // The pool stopped itself (the detached call was its last): its fork server is reaped.
    assert!(eventually(LONG, || children() == 0), "the pool stopped");
}

fn close_runs_the_calls_made_and_shutdown_cancels_them() {
    let pool = EchoPool::builder("Echo", Echo).workers(1).start().unwrap();
    let calls: Vec<_> = (0..5).map(|n| pool.slow_echo(n, 20)).collect();
    pool.close();
    assert!(!pool.is_open());
    let results: Vec<u64> = calls.into_iter().map(|c| c.wait().unwrap()).collect();
    assert_eq!(results, vec![0, 1, 2, 3, 4]);
    assert!(matches!(pool.echo(1).wait(), Err(CallError::Closed { .. })));

    let pool = EchoPool::builder("Echo", Echo).workers(1).start().unwrap();
    let running = pool.slow_echo(1, 60_000);
    assert!(eventually(LONG, || running.status() == Some(CallStatus::Running)));
    let queued = pool.echo(2);
    let t0 = Instant::now();
    pool.shutdown(Duration::from_millis(100));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        running.wait(),
        Err(CallError::Cancelled {
            reason: CancelReason::ShutdownGrace { .. },
            ..
        })
    ));
    assert!(matches!(
        queued.wait(),
        Err(CallError::Cancelled {
            reason: CancelReason::Shutdown,
            ..
        })
    ));
    assert!(matches!(pool.echo(3).wait(), Err(CallError::Closed { .. })));
    assert!(pool.pids().is_empty());
}

fn calls_wait_for_room_unless_told_to_fail() {
    // 64 KiB of store: four 20 KiB calls at most at once.
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .malloc(64 << 10)
        .start()
        .unwrap();
    let calls: Vec<_> = (0..40).map(|_| pool.bytes(vec![1; 20_000])).collect();
    let rt = runtime();
    let lens = rt.block_on(futures::future::join_all(calls));
    assert!(lens.into_iter().all(|r| r.unwrap() == 20_000));
    drop(pool);

    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .malloc(64 << 10)
        .fail_when_full(true)
        .start()
        .unwrap();
    let calls: Vec<_> = (0..40).map(|_| pool.bytes(vec![1; 20_000])).collect();
    let results: Vec<_> = calls.into_iter().map(Pending::wait).collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(CallError::OutOfMemory { .. })))
    );
    assert!(results.iter().any(|r| r.is_ok()));
    // Larger than the whole allocation: at once, either way.
    assert!(matches!(
        pool.bytes(vec![1; 1 << 20]).wait(),
        Err(CallError::TooLarge { .. })
    ));
}

fn a_callback_may_neither_hang_nor_break_the_pool() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let holder: Arc<std::sync::Mutex<Option<EchoPool>>> = Arc::new(std::sync::Mutex::new(None));
    let from_callback = holder.clone();
    let refused = Arc::new(AtomicUsize::new(0));
    let refusals = refused.clone();
    let pool = EchoPool::builder("Echo", Echo)
        .workers(1)
        .on_return(move |call, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            if call.id() % 2 == 0 {
                panic!("callback panics on call {}", call.id());
            }
            if refusals.load(Ordering::SeqCst) == 0
                && let Some(pool) = from_callback.lock().unwrap().as_ref()
                && matches!(pool.echo(1).wait(), Err(CallError::FromCallback { .. }))
            {
                refusals.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap();
    *holder.lock().unwrap() = Some(pool.clone());
    for n in 0..100 {
        assert_eq!(pool.echo(n).wait().unwrap(), n);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "a call from a callback is refused"
    );
    holder.lock().unwrap().take();
}

/// The case: a multi-threaded tokio TCP service parsing untrusted input in a pool.
/// Hostile input that hangs is killed by the timeout, input that crashes is reported as a
/// crash, benign input is answered, and a ticker on the same runtime stays on time.
fn a_tokio_tcp_service_parses_untrusted_input_in_the_pool() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let pool = EchoPool::builder("Parser", Echo)
        .workers(2)
        .timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let rt = runtime();
    let (replies, worst) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = {
            let pool = pool.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let (read, mut write) = stream.into_split();
                        let mut lines = BufReader::new(read).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let reply = match line.as_str() {
                                "hang" => pool.slow_echo(0, u64::MAX).await.map(|_| 0),
                                "crash" => pool.crash().await.map(u64::from),
                                n => pool.echo(n.parse().unwrap_or(0)).await,
                            };
                            let text = match reply {
                                Ok(n) => format!("ok {n}"),
                                Err(CallError::Timeout { .. }) => "timeout".into(),
                                Err(CallError::Crashed { .. }) => "crashed".into(),
                                Err(e) => format!("error {e}"),
                            };
                            write
                                .write_all(format!("{text}\n").as_bytes())
                                .await
                                .unwrap();
                        }
                    });
                }
            })
        };
        let (stop, watch) = tokio::sync::watch::channel(false);
        let ticker = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !*watch.borrow() {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                worst = worst.max(t.elapsed().saturating_sub(Duration::from_millis(5)));
            }
            worst
        });
        let inputs = ["1", "hang", "2", "crash", "3", "hang", "4", "crash", "5"];
        let clients = inputs.iter().map(|&input| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("{input}\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            BufReader::new(&mut stream)
                .read_line(&mut reply)
                .await
                .unwrap();
            reply.trim().to_owned()
        });
        let replies = futures::future::join_all(clients).await;
        stop.send(true).unwrap();
        let worst = ticker.await.unwrap();
        server.abort();
        (replies, worst)
    });
    assert_eq!(
        replies,
        [
            "ok 1", "timeout", "ok 2", "crashed", "ok 3", "timeout", "ok 4", "crashed", "ok 5"
        ]
    );
    println!("worst ticker stall: {worst:?}");
    assert!(
        worst < Duration::from_millis(30),
        "the ticker stalled {worst:?}"
    );
    drop(rt);
}

fn inline_runs_in_this_process() {
    let pool = EchoPool::builder("Echo", Echo).workers(1).start().unwrap();
    assert_eq!(pool.inline().pid(), std::process::id());
    assert_ne!(pool.pid().wait().unwrap(), std::process::id());
}

fn a_start_that_fails_says_why_and_leaves_nothing() {
    pub struct Picky;
    #[forkworker::worker]
    impl Picky {
        pub fn check_environment(&self) -> Vec<String> {
            vec!["no GPU".into(), "no licence".into()]
        }
        pub fn run(&self) -> u8 {
            0
        }
    }
    match PickyPool::builder("Picky", Picky).start() {
        Err(StartError::Environment(problems)) => assert_eq!(problems.len(), 2),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started"),
    }
}

tests![
    the_pool_is_send_sync_clone_and_static,
    awaited_calls_return_on_tokio_from_many_tasks,
    futures_executor_awaits_too_with_join_all,
    blocking_waits_from_threads_and_a_wait_with_a_timeout_gives_the_handle_back,
    a_hung_call_is_killed_on_time_while_the_program_sleeps,
    dropping_a_running_call_kills_its_worker_and_fires_on_error,
    dropping_a_queued_call_removes_it_and_a_finished_one_is_never_cancelled,
    every_result_comes_back_and_every_callback_fires_3000_times,
    a_full_store_loses_no_call_and_no_callback,
    a_finished_calls_status_stays_until_its_handle_takes_it,
    status_answers_by_id_after_the_handle_and_several_calls_are_waited_for_at_once,
    a_crash_is_reported_as_a_crash,
    a_pool_shared_by_8_threads_and_50_tasks_returns_every_result_once,
    a_ticker_on_the_runtime_never_stalls_while_calls_are_awaited,
    the_last_clone_dropped_stops_the_pool_after_detached_calls,
    close_runs_the_calls_made_and_shutdown_cancels_them,
    calls_wait_for_room_unless_told_to_fail,
    a_callback_may_neither_hang_nor_break_the_pool,
    a_tokio_tcp_service_parses_untrusted_input_in_the_pool,
    inline_runs_in_this_process,
    a_start_that_fails_says_why_and_leaves_nothing,
];
