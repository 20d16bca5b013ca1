//! Pools across machines over a real Redis: each test starts its own `redis-server` on a free
//! port (and stops it), hosts run in this process or in child processes of this test binary
//! (`FW_ROLE=host`), and kills are real SIGKILLs.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use forkworker::remote::RemoteError;
use support::eventually;
use support::host_process::HostProcess;
use support::redis::RedisServer;

pub struct Parser;

#[forkworker::worker]
impl Parser {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    /// Where it ran: the host's name (as its process was told) and the worker's pid.
    pub fn where_ran(&self) -> (String, u32) {
        (
            std::env::var("FW_HOST_NAME").unwrap_or_default(),
            std::process::id(),
        )
    }

    /// Writes `n` to the run log (one line per run, appended), then returns it.
    pub fn logged(&self, n: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(1));
        if let Ok(path) = std::env::var("FW_RUN_LOG") {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .expect("run log");
            f.write_all(format!("{n}\n").as_bytes()).expect("log");
        }
        n
    }

    pub fn slow(&self, n: u64, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        n
    }

    /// Sleeps `ms`, then creates file `path`: a call killed before never does.
    pub fn touch_after(&self, path: String, ms: u64) -> bool {
        std::thread::sleep(Duration::from_millis(ms));
        std::fs::write(path, b"ran").is_ok()
    }

    pub fn crash(&self) -> u8 {
        // SAFETY: not safe at all; crashing the worker is the point.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        0
    }

    pub fn panics(&self) -> u8 {
        panic!("parser exploded")
    }

    /// SIGKILLs the host process that runs it (told by `FW_HOST_PID`), as a poisonous
    /// input would.
    pub fn kill_host(&self) -> u8 {
        let pid: i32 = std::env::var("FW_HOST_PID").unwrap().parse().unwrap();
        // SAFETY: signalling a process by pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(60));
        0
    }

    pub fn bytes(&self, data: Vec<u8>) -> usize {
        data.len()
    }

    /// Appends a line to file `path`, then sleeps `ms`: the file counts the runs.
    pub fn count_run(&self, path: String, ms: u64) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("run count file");
        f.write_all(b"ran\n").expect("count");
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// Another build's worker under the same alias: its interface differs.
pub struct ParserV2;

#[forkworker::worker]
impl ParserV2 {
    pub fn echo(&self, n: u32) -> u32 {
        n
    }
}

const LONG: Duration = Duration::from_secs(60);

/// A connected pool of "Parser".
type Remote = ParserPool<Parser, forkworker::RemotePool<Parser>>;

/// A host of "Parser" in this process, with `workers` workers.
fn serve(redis: &RedisServer, workers: usize) -> forkworker::Host {
    ParserPool::builder("Parser", Parser)
        .workers(workers)
        .serve(&redis.url())
        .expect("serve")
}

/// A connected pool of "Parser" whose calls may take a minute.
fn connect(redis: &RedisServer) -> Remote {
    ParserPool::remote("Parser")
        .timeout(LONG)
        .connect(&redis.url())
        .expect("connect")
}

/// The keys of pool "Parser" left in Redis, with their lengths (streams) or types.
fn keys_left(redis: &RedisServer) -> HashMap<String, i64> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.into_iter()
        .map(|k| {
            let len: i64 = redis::cmd("XLEN").arg(&k).query(&mut con).unwrap_or(-1);
            (k, len)
        })
        .collect()
}

/// Asserts that every stream of the pool is empty: calls, results, control.
fn assert_streams_empty(redis: &RedisServer) {
    let left = keys_left(redis);
    let nonempty: Vec<_> = left.iter().filter(|&(_, &len)| len != 0).collect();
    assert!(nonempty.is_empty(), "streams not empty: {nonempty:?}");
}

/// How many calls are pending under the consumer of the host process `pid` (host ids are
/// `{machine}-{pid}-{random}`).
fn pending_under(redis: &RedisServer, pid: u32) -> usize {
    let mut con = redis.client().get_connection().unwrap();
    let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("forkworker:Parser:calls")
        .arg("hosts")
        .query(&mut con)
        .unwrap();
    let tag = format!("-{pid}-");
    consumers
        .iter()
        .find(|c| matches!(c.get("name"), Some(redis::Value::BulkString(n)) if String::from_utf8_lossy(n).contains(&tag)))
        .and_then(|c| match c.get("pending") {
            Some(redis::Value::Int(n)) => Some(*n as usize),
            _ => None,
        })
        .expect("host a's consumer")
}

/// A host of "Parser" in a child process (see `support::host_process`), named `name` (its
/// workers say so), with `workers` workers and a visibility time.
fn start_host(url: &str, name: &str, workers: usize, visibility: Duration) -> HostProcess {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("FW_HOST_NAME", name)
        .env("FW_WORKERS", workers.to_string())
        .env("FW_VISIBILITY_MS", visibility.as_millis().to_string());
    HostProcess::start(command, url)
}

/// The host role: serves "Parser" until its stdin closes.
fn host_role() {
    let url = std::env::var("FW_URL").unwrap();
    let workers: usize = std::env::var("FW_WORKERS").unwrap().parse().unwrap();
    let visibility =
        Duration::from_millis(std::env::var("FW_VISIBILITY_MS").unwrap().parse().unwrap());
    // SAFETY: single-threaded here, before any thread starts.
    unsafe { std::env::set_var("FW_HOST_PID", std::process::id().to_string()) };
    let host = ParserPool::builder("Parser", Parser)
        .workers(workers)
        .timeout(Duration::from_secs(20))
        .visibility(visibility)
        .serve(&url)
        .expect("serve");
    support::host_process::serve_until_stdin_closes(host);
}

fn a_call_runs_on_a_host_and_comes_back_typed() {
    // A connected pool is shared as a local one is; a host can move to another thread.
    fn shared<T: Send + Sync + Clone + 'static>() {}
    fn movable<T: Send + Sync + 'static>() {}
    shared::<Remote>();
    movable::<forkworker::Host>();
    let redis = RedisServer::start();
    let host = serve(&redis, 2);
    let pool = connect(&redis);
    assert_eq!(pool.echo(42).wait().unwrap(), 42);
    let calls: Vec<_> = (0..500).map(|n| pool.echo(n)).collect();
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.wait().unwrap(), n as u64);
    }
    let stats = pool.stats();
    let echo = stats.methods.iter().find(|m| m.method == "echo").unwrap();
    assert_eq!(echo.outcomes.returned, 501);
    assert_eq!(echo.round_trip.count, 501);
    // The host's statistics are its local pool's.
    assert_eq!(
        host.stats()
            .methods
            .iter()
            .find(|m| m.method == "echo")
            .unwrap()
            .outcomes
            .returned,
        501
    );
    pool.close();
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

fn an_awaited_call_works_on_tokio() {
    let redis = RedisServer::start();
    let host = serve(&redis, 2);
    let pool = connect(&redis);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sum = rt.block_on(async {
        let calls = (0..100).map(|n| pool.echo(n));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum::<u64>()
    });
    assert_eq!(sum, 4950);
    drop(rt);
    drop(pool);
    host.stop(Duration::from_secs(1));
}

fn crashes_and_panics_on_a_host_are_reported_at_once_and_not_run_again() {
    let redis = RedisServer::start();
    let host = serve(&redis, 1);
    let pool = connect(&redis);
    let started = Instant::now();
    let err = pool.crash().wait().unwrap_err();
    let CallError::OnHost { host: on, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(on, host.id());
    assert!(
        matches!(
            **error,
            CallError::Crashed {
                method: "crash",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(host.id()), "{err}");
    let err = pool.panics().wait().unwrap_err();
    assert!(err.to_string().contains("parser exploded"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Each ran once on the host.
    let stats = host.stats();
    let count = |m: &str| {
        stats
            .methods
            .iter()
            .find(|s| s.method == m)
            .unwrap()
            .outcomes
            .total()
    };
    assert_eq!((count("crash"), count("panics")), (1, 1));
    assert_eq!(pool.echo(7).wait().unwrap(), 7);
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

fn a_call_with_no_host_up_ends_timeout_at_its_deadline_and_leaves_nothing() {
    let redis = RedisServer::start();
    let timeouts = Arc::new(AtomicUsize::new(0));
    let counted = timeouts.clone();
    let pool = ParserPool::remote("Parser")
        .timeout(Duration::from_millis(300))
        .on_timeout(move |call| {
            assert_eq!((call.method(), call.host()), ("echo", None));
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .connect(&redis.url())
        .unwrap();
    let started = Instant::now();
    let err = pool.echo(1).wait().unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Timeout { pid: 0, .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert_eq!(timeouts.load(Ordering::SeqCst), 1);
    // A call dropped before its deadline ends cancelled.
    let dropped = pool.echo(2).id();
    assert_eq!(pool.status(dropped), Some(CallStatus::Cancelled));
    // Its entry was deleted: a host started now never runs it.
    assert!(eventually(Duration::from_secs(2), || keys_left(&redis)
        .iter()
        .all(|(_, len)| *len == 0)));
    drop(pool);
}

fn a_dropped_call_is_deleted_if_queued_and_killed_if_running() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("fw-remote-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let queued_marker = dir.join("queued");
    let running_marker = dir.join("running");
    let pool = connect(&redis);
    // Queued (no host yet), then dropped: deleted from the stream.
    let queued = pool.touch_after(queued_marker.display().to_string(), 0);
    assert!(eventually(Duration::from_secs(2), || keys_left(&redis)
        .get("forkworker:Parser:calls")
        == Some(&1)));
    drop(queued);
    assert!(eventually(Duration::from_secs(2), || keys_left(&redis)
        .get("forkworker:Parser:calls")
        == Some(&0)));
    let host = serve(&redis, 1);
    // Running on the host, then cancelled: its worker is killed before it writes.
    let running = pool.touch_after(running_marker.display().to_string(), 1500);
    assert!(eventually(Duration::from_secs(5), || host.running() == 1));
    let worker = host.pids();
    running.cancel();
    assert!(
        eventually(Duration::from_secs(5), || host.running() == 0),
        "the host did not end the cancelled call"
    );
    assert!(eventually(Duration::from_secs(5), || host.pids() != worker));
    std::thread::sleep(Duration::from_millis(1700));
    assert!(
        !running_marker.exists(),
        "the cancelled call ran to its end"
    );
    assert!(!queued_marker.exists(), "the deleted call ran");
    let cancelled = host
        .stats()
        .methods
        .iter()
        .find(|m| m.method == "touch_after")
        .unwrap()
        .outcomes
        .cancelled;
    assert_eq!(cancelled, 1);
    assert_eq!(pool.echo(3).wait().unwrap(), 3);
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_host_with_another_interface_refuses_the_call() {
    let redis = RedisServer::start();
    let host = serve(&redis, 1);
    let pool = ParserV2Pool::remote("Parser")
        .timeout(LONG)
        .connect(&redis.url())
        .unwrap();
    let err = pool.echo(1).wait().unwrap_err();
    match &err {
        CallError::Incompatible {
            method: "echo",
            host: h,
            ours,
            theirs,
        } => {
            assert_eq!(h, host.id());
            assert_eq!(*ours, <ParserV2 as forkworker::Worker>::fingerprint());
            assert_eq!(*theirs, <Parser as forkworker::Worker>::fingerprint());
        }
        other => panic!("{other:?}"),
    }
    assert!(host.stats().methods.iter().all(|m| m.outcomes.total() == 0));
    drop(pool);
    host.stop(Duration::from_secs(1));
}

fn a_payload_over_the_limit_is_refused_at_call_time() {
    let redis = RedisServer::start();
    let pool = ParserPool::remote("Parser")
        .payload_limit(1000)
        .connect(&redis.url())
        .unwrap();
    let err = pool.bytes(vec![0; 2000]).wait().unwrap_err();
    assert!(
        matches!(
            err,
            CallError::PayloadTooLarge {
                method: "bytes",
                limit: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("payload_limit"), "{err}");
    assert_eq!(keys_left(&redis).get("forkworker:Parser:calls"), Some(&0));
}

fn redis_unreachable_at_connect_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ParserPool::remote("Parser")
        .connect(&format!("redis://127.0.0.1:{port}"))
        .unwrap_err();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    let err = ParserPool::builder("Parser", Parser)
        .serve(&format!("redis://127.0.0.1:{port}"))
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    let err = ParserPool::remote("Parser")
        .connect("nonsense://x")
        .unwrap_err();
    assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");
}

fn redis_going_away_fails_calls_after_the_retry_time_and_both_sides_reconnect() {
    let mut redis = RedisServer::start();
    let host = serve(&redis, 1);
    let pool = ParserPool::remote("Parser")
        .redis_retry(Some(Duration::from_millis(800)))
        .connect(&redis.url())
        .unwrap();
    assert_eq!(pool.echo(1).wait().unwrap(), 1);
    redis.kill();
    let started = Instant::now();
    let err = pool.echo(2).wait().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, CallError::Remote { source, .. } if matches!(**source, RemoteError::Gone { .. })),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    redis.restart();
    // Both reconnect: calls work again.
    let back = Instant::now();
    loop {
        match pool.echo(3).wait_timeout(Duration::from_secs(10)) {
            Ok(Ok(3)) => break,
            other => {
                assert!(
                    back.elapsed() < Duration::from_secs(15),
                    "no reconnect: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(pool);
    host.stop(Duration::from_secs(1));
}

fn a_result_written_twice_reaches_the_caller_once() {
    let redis = RedisServer::start();
    let host = serve(&redis, 1);
    let fired = Arc::new(Mutex::new(Vec::new()));
    let seen = fired.clone();
    let pool = ParserPool::remote("Parser")
        .timeout(LONG)
        .on_return(move |call| {
            let value = call.return_value().map(|r| match r.unwrap() {
                ParserReturn::Echo(n) | ParserReturn::Slow(n) => n.to_string(),
                _ => "other".to_owned(),
            });
            seen.lock().unwrap().push((
                call.id(),
                call.method(),
                call.host().map(str::to_owned),
                value,
            ));
        })
        .connect(&redis.url())
        .unwrap();
    let first = pool.echo(5);
    let id = first.id();
    assert_eq!(first.wait().unwrap(), 5);
    // A second result for the same call (as a host that died after writing it, before
    // acknowledging, and the host that ran it again would write), and one for a call still
    // running: the second of each is dropped.
    let running = pool.slow(9, 500);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let stream = format!("forkworker:Parser:results:{}", pool.caller_id());
    let encoded_9 = postcard_u64(9);
    let encoded_77 = postcard_u64(77);
    for (seq, value) in [(id.raw(), &encoded_77), (running.id().raw(), &encoded_9)] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("seq")
            .arg(seq.to_string())
            .arg("host")
            .arg("forged")
            .arg("ok")
            .arg(value.as_slice())
            .query(&mut con)
            .unwrap();
    }
    let running_id = running.id().raw();
    assert_eq!(running.wait().unwrap(), 9);
    let stats = pool.stats();
    let total: u64 = stats.methods.iter().map(|m| m.outcomes.total()).sum();
    assert_eq!(total, 2, "{stats}");
    assert_eq!(pool.status(id), Some(CallStatus::Returned));
    // The host's own result for the running call came after the forged one: dropped too.
    std::thread::sleep(Duration::from_millis(700));
    // The callbacks fired once per call, with the first result to arrive: the host's for the
    // first call, the forged one for the second (the host's came 500 ms later).
    let fired = fired.lock().unwrap().clone();
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0].0, id.raw());
    assert_eq!(fired[0].2.as_deref(), Some(host.id()));
    assert_eq!(fired[0].3.as_deref(), Some("5"));
    assert_eq!(fired[1].0, running_id);
    assert_eq!(fired[1].2.as_deref(), Some("forged"));
    assert_eq!(fired[1].3.as_deref(), Some("9"));
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

/// `n` as postcard encodes a `u64` (a varint).
fn postcard_u64(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn a_stopping_host_hands_its_running_calls_to_another() {
    let redis = RedisServer::start();
    let first = ParserPool::builder("Parser", Parser)
        .workers(1)
        .serve(&redis.url())
        .unwrap();
    let pool = connect(&redis);
    let call = pool.slow(11, 1000);
    assert!(eventually(Duration::from_secs(5), || first.running() == 1));
    first.stop(Duration::ZERO);
    let second = ParserPool::builder("Parser", Parser)
        .workers(1)
        .serve(&redis.url())
        .unwrap();
    let started = Instant::now();
    assert_eq!(call.wait().unwrap(), 11);
    // Handed back at once, not after a visibility time.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(pool);
    second.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

fn two_thousand_calls_with_a_host_killed_mid_run_complete_exactly_once() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("fw-remote-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("runs.log");
    // SAFETY: before any thread of this test process starts.
    unsafe { std::env::set_var("FW_RUN_LOG", &log) };
    let visibility = Duration::from_secs(1);
    let mut a = start_host(&redis.url(), "a", 2, visibility);
    let mut b = start_host(&redis.url(), "b", 2, visibility);
    let pool = connect(&redis);
    const CALLS: u64 = 2000;
    let mut calls: Vec<_> = (0..CALLS).map(|n| pool.logged(n)).collect();
    // Kill host a once a quarter of the calls came back, and count the calls it held then
    // (pending under its name: running, or finished and not yet acknowledged).
    let mut results = Vec::new();
    let mut held = None;
    for (k, call) in calls.drain(..).enumerate() {
        if k == (CALLS / 4) as usize {
            let pid = a.pid();
            a.kill();
            held = Some(pending_under(&redis, pid));
        }
        results.push(call.wait());
    }
    let held = held.unwrap();
    assert!(
        held >= 1,
        "host a held no call when it was killed: not mid-run"
    );
    for (n, r) in results.iter().enumerate() {
        assert_eq!(r, &Ok(n as u64), "call {n}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<u64, u32> = HashMap::new();
    for line in text.lines() {
        *runs.entry(line.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(runs.len() as u64, CALLS, "every call ran");
    let twice: Vec<_> = runs.iter().filter(|&(_, &c)| c > 1).collect();
    // Only calls host a held when it died ran twice.
    assert!(
        twice.len() <= held,
        "{} ran more than once, host a held {held}: {twice:?}",
        twice.len()
    );
    println!("host a held {held} calls when killed; ran twice: {twice:?}");
    drop(pool);
    b.stop();
    assert_streams_empty(&redis);
    drop(a);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_call_that_kills_its_hosts_ends_poisoned_after_three_deliveries() {
    let redis = RedisServer::start();
    let visibility = Duration::from_millis(500);
    let pool = connect(&redis);
    let call = pool.kill_host();
    let mut hosts_killed = 0;
    let mut host = start_host(&redis.url(), "h0", 1, visibility);
    let outcome = loop {
        if host.died() {
            hosts_killed += 1;
            assert!(hosts_killed <= 3, "a fourth host died");
            host = start_host(&redis.url(), &format!("h{hosts_killed}"), 1, visibility);
        }
        match call_done(&pool, call.id()) {
            Some(_) => break call.wait(),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let err = outcome.unwrap_err();
    assert_eq!(
        err,
        CallError::Poisoned {
            method: "kill_host",
            deliveries: 3
        }
    );
    assert_eq!(hosts_killed, 3);
    assert_eq!(pool.echo(1).wait().unwrap(), 1);
    drop(pool);
    host.stop();
    assert_streams_empty(&redis);
}

/// The status of a call if it finished.
fn call_done<R>(pool: &Remote, id: CallId<R>) -> Option<CallStatus> {
    pool.status(id).filter(|s| *s != CallStatus::Uncalled)
}

fn redis_killed_and_restarted_with_persistence_loses_no_call() {
    let mut redis = RedisServer::builder().persistence().start();
    let visibility = Duration::from_secs(1);
    let mut a = start_host(&redis.url(), "a", 2, visibility);
    let pool = ParserPool::remote("Parser")
        .timeout(LONG)
        .redis_retry(Some(Duration::from_secs(30)))
        .connect(&redis.url())
        .unwrap();
    const CALLS: u64 = 1000;
    let calls: Vec<_> = (0..CALLS).map(|n| pool.slow(n, 1)).collect();
    let mut results = Vec::new();
    for (k, call) in calls.into_iter().enumerate() {
        if k == 200 {
            redis.kill();
            std::thread::sleep(Duration::from_millis(300));
            redis.restart();
        }
        results.push(call.wait());
    }
    for (n, r) in results.iter().enumerate() {
        assert_eq!(r, &Ok(n as u64), "call {n}");
    }
    drop(pool);
    a.stop();
    assert_streams_empty(&redis);
}

/// The caller role: makes a slow call under prefix "gone", says so, and waits to be killed.
fn caller_role() {
    let url = std::env::var("FW_URL").unwrap();
    let pool = ParserPool::remote("Parser")
        .prefix("gone")
        .connect(&url)
        .expect("connect");
    let call = pool.slow(1, 500);
    // Sent once the stream has it.
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().unwrap();
    while redis::cmd("XLEN")
        .arg("gone:Parser:calls")
        .query::<i64>(&mut con)
        .unwrap()
        == 0
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("called");
    std::thread::sleep(Duration::from_secs(60));
    drop(call);
}

fn results_for_a_caller_that_went_away_expire() {
    let redis = RedisServer::start();
    let host = ParserPool::builder("Parser", Parser)
        .prefix("gone")
        .result_ttl(Duration::from_secs(1))
        .serve(&redis.url())
        .unwrap();
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .env("FW_ROLE", "caller")
        .env("FW_URL", redis.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(caller.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "called\n");
    // The caller dies (no cleanup) while its call runs on the host.
    caller.kill().unwrap();
    caller.wait().unwrap();
    let results = || -> Vec<String> {
        let mut con = redis.client().get_connection().unwrap();
        redis::cmd("KEYS")
            .arg("gone:Parser:results:*")
            .query(&mut con)
            .unwrap()
    };
    // The host answers it into the dead caller's stream, which expires after result_ttl.
    assert!(eventually(Duration::from_secs(5), || results().len() == 1));
    let started = Instant::now();
    assert!(eventually(Duration::from_secs(5), || results().is_empty()));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    host.stop(Duration::from_secs(1));
    // Nothing of the prefix is left (the calls stream is empty).
    assert_streams_empty(&redis);
}

fn a_deadline_holds_while_redis_is_away() {
    let mut redis = RedisServer::start();
    let pool = ParserPool::remote("Parser")
        .timeout(Duration::from_millis(500))
        .redis_retry(None)
        .connect(&redis.url())
        .unwrap();
    redis.kill();
    let started = Instant::now();
    let err = pool.echo(1).wait().unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Timeout { pid: 0, .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Dropping the pool with Redis gone does not hang either.
    let dropped = Instant::now();
    drop(pool);
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "{:?}",
        dropped.elapsed()
    );
}

/// A scratch directory of this test process, removed by the test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fw-remote-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn a_live_call_longer_than_the_visibility_time_is_not_stolen() {
    let redis = RedisServer::start();
    let dir = scratch("claims");
    let runs = dir.join("runs");
    let visibility = Duration::from_millis(400);
    let serve = || {
        ParserPool::builder("Parser", Parser)
            .workers(1)
            .visibility(visibility)
            .serve(&redis.url())
            .unwrap()
    };
    let (a, b) = (serve(), serve());
    let pool = connect(&redis);
    // Six visibility times long: the other host, idle all along, would claim it if its
    // host did not keep its claim fresh.
    assert_eq!(
        pool.count_run(runs.display().to_string(), 2400).wait(),
        Ok(2400)
    );
    let text = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "the call ran {} times",
        text.lines().count()
    );
    drop(pool);
    a.stop(Duration::from_secs(1));
    b.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_host_drops_a_call_whose_deadline_passed_instead_of_running_it() {
    let redis = RedisServer::start();
    let dir = scratch("deadline");
    let client = redis.client();
    let mut con = client.get_connection().unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut con).unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let method = <Parser as forkworker::Worker>::METHODS
        .iter()
        .position(|m| *m == "touch_after")
        .unwrap();
    let fingerprint = format!("{:016x}", <Parser as forkworker::Worker>::fingerprint());
    // Two calls written as a caller writes them (in Redis's clock): one whose deadline
    // passed a second ago, one with a minute left.
    for (seq, deadline) in [(1u64, now_ms - 1000), (2, now_ms + 60_000)] {
        let marker = dir.join(format!("call{seq}")).display().to_string();
        let args = forkworker::__private::encode_to_vec(&(marker.as_str(), 0u64)).unwrap();
        let _: String = redis::cmd("XADD")
            .arg("forkworker:Parser:calls")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("caller")
            .arg("forged")
            .arg("seq")
            .arg(seq.to_string())
            .arg("reply")
            .arg("forkworker:Parser:results:forged")
            .arg("fp")
            .arg(&fingerprint)
            .arg("m")
            .arg(method.to_string())
            .arg("dl")
            .arg(deadline.to_string())
            .arg("args")
            .arg(args)
            .query(&mut con)
            .unwrap();
    }
    let host = serve(&redis, 1);
    assert!(eventually(Duration::from_secs(5), || dir
        .join("call2")
        .exists()));
    assert!(eventually(Duration::from_secs(5), || {
        keys_left(&redis).get("forkworker:Parser:calls") == Some(&0)
    }));
    assert!(!dir.join("call1").exists(), "a call past its deadline ran");
    // Only the live call was answered.
    let answered: i64 = redis::cmd("XLEN")
        .arg("forkworker:Parser:results:forged")
        .query(&mut con)
        .unwrap();
    assert_eq!(answered, 1);
    host.stop(Duration::from_secs(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_caller_that_asked_to_wait_for_redis_gets_its_result_when_redis_is_back() {
    let mut redis = RedisServer::builder().persistence().start();
    let host = serve(&redis, 1);
    let pool = ParserPool::remote("Parser")
        .timeout(Duration::from_secs(30))
        .redis_retry(None)
        .connect(&redis.url())
        .unwrap();
    assert_eq!(pool.echo(1).wait().unwrap(), 1);
    redis.kill();
    let call = pool.echo(2);
    // Longer than the default retry time would allow? Not needed: it must simply not fail
    // while Redis is away.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(call.status(), Some(CallStatus::Uncalled));
    redis.restart();
    assert_eq!(call.wait().unwrap(), 2);
    drop(pool);
    host.stop(Duration::from_secs(1));
}

/// The test list: `support::Test`s named after their functions.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$(support::Test { name: stringify!($name), run: $name }),*]
    };
}

fn main() {
    if std::env::var("FW_ROLE").as_deref() == Ok("host") {
        host_role();
        return;
    }
    if std::env::var("FW_ROLE").as_deref() == Ok("caller") {
        caller_role();
        return;
    }
    support::main(cases![
        a_call_runs_on_a_host_and_comes_back_typed,
        an_awaited_call_works_on_tokio,
        crashes_and_panics_on_a_host_are_reported_at_once_and_not_run_again,
        a_call_with_no_host_up_ends_timeout_at_its_deadline_and_leaves_nothing,
        a_dropped_call_is_deleted_if_queued_and_killed_if_running,
        a_host_with_another_interface_refuses_the_call,
        a_payload_over_the_limit_is_refused_at_call_time,
        redis_unreachable_at_connect_is_a_clear_error,
        redis_going_away_fails_calls_after_the_retry_time_and_both_sides_reconnect,
        a_result_written_twice_reaches_the_caller_once,
        a_stopping_host_hands_its_running_calls_to_another,
        two_thousand_calls_with_a_host_killed_mid_run_complete_exactly_once,
        a_call_that_kills_its_hosts_ends_poisoned_after_three_deliveries,
        redis_killed_and_restarted_with_persistence_loses_no_call,
        a_live_call_longer_than_the_visibility_time_is_not_stolen,
        a_host_drops_a_call_whose_deadline_passed_instead_of_running_it,
        a_caller_that_asked_to_wait_for_redis_gets_its_result_when_redis_is_back,
        results_for_a_caller_that_went_away_expire,
        a_deadline_holds_while_redis_is_away,
    ]);
}
