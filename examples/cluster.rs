//! A pool across machines, on one machine: a `redis-server`, two hosts and a caller, in one
//! command.
//!
//! Each **host** is a process of its own (this program again, started with `host NAME URL`)
//! that serves the `Parser` pool through Redis with two forked workers of its own. The
//! **caller** connects to the same Redis with the same typed proxy, `ParserPool`, and has no
//! worker: its calls run on whichever host has a free worker. Each call says where it ran
//! (the host's name and the worker's pid come back in its result); a line that crashes the
//! parser and one that hangs it are reported as errors of that host, and the caller's
//! statistics close the run. Then everything stops: the caller, the hosts (`Host::stop`, when
//! their stdin closes), Redis and its temporary directory, also when something fails.
//!
//! ```sh
//! cargo run --release --example cluster        # needs Debian's redis-server
//! ```
//! On real machines, run a host on each worker machine against a shared Redis (it stops
//! cleanly at Ctrl-D, when its stdin closes):
//! ```sh
//! cargo run --release --example cluster -- host NAME redis://10.0.0.5:6379
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use serde::{Deserialize, Serialize};

/// What a parsed line is, and where it was parsed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Doc {
    pub numbers: usize,
    pub sum: i64,
    /// The name of the host that ran the call.
    pub host: String,
    /// The worker process that ran it, on that host.
    pub pid: u32,
}

/// A parser of untrusted input (here a line of integers), as in `examples/server.rs`: two
/// inputs stand for what a real parser does on a hostile file.
pub struct Parser {
    /// The name of the host this parser serves on.
    host: String,
}

#[forkworker::worker]
impl Parser {
    pub fn parse(&self, input: &[u8]) -> Result<Doc, String> {
        // The work a real parser does takes a while: long enough for the calls to spread
        // over both hosts.
        std::thread::sleep(Duration::from_millis(30));
        let text = std::str::from_utf8(input).map_err(|e| format!("not UTF-8: {e}"))?;
        match text.trim() {
            // A parser stuck in a loop on a crafted input: the host's timeout kills it.
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(1));
            },
            // A parser that writes through a wild pointer.
            "crash" => {
                // SAFETY: not safe at all: crashing the worker is the point.
                unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
                unreachable!()
            }
            text => {
                let numbers = text
                    .split_whitespace()
                    .map(|w| w.parse::<i64>().map_err(|e| format!("{w:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let sum = numbers.iter().try_fold(0i64, |a, &n| a.checked_add(n));
                Ok(Doc {
                    numbers: numbers.len(),
                    sum: sum.ok_or("the sum overflows")?,
                    host: self.host.clone(),
                    pid: std::process::id(),
                })
            }
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => demo(),
        [role, name, url] if role == "host" => host(name, url),
        _ => Err("usage: cluster  |  cluster host NAME REDIS_URL".into()),
    };
    // Every guard of `demo` has been dropped here: nothing is left running.
    if let Err(e) = result {
        eprintln!("cluster: {e}");
        std::process::exit(1);
    }
}

/// The host role: serves the `Parser` pool at `url` until stdin closes.
fn host(name: &str, url: &str) -> Result<(), Error> {
    let host = ParserPool::builder("Parser", Parser { host: name.into() })
        .workers(2)
        .timeout(Duration::from_millis(500)) // a call running longer is killed on its host
        .serve(url)?;
    println!("serving {}", host.id());
    // Until the caller (or Ctrl-D) closes stdin.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    // Calls still running get 5 s to finish; what is left is handed back to the other hosts.
    host.stop(Duration::from_secs(5));
    Ok(())
}

/// Redis, two hosts and a caller.
fn demo() -> Result<(), Error> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    println!("redis-server on {url}, in {}", redis.dir.display());

    let hosts = [
        HostProcess::start("host-a", &url)?,
        HostProcess::start("host-b", &url)?,
    ];
    for h in &hosts {
        println!("{} (process {}) serves Parser as {}", h.name, h.pid(), h.id);
    }
    // Errors name a host by its id.
    let names: HashMap<String, String> = hosts
        .iter()
        .map(|h| (h.id.clone(), h.name.clone()))
        .collect();

    // The caller: the same typed proxy as a local pool, with no worker of its own.
    let pool = ParserPool::remote("Parser")
        .timeout(Duration::from_secs(5)) // the caller's deadline, carried in each call
        .connect(&url)?;
    println!("caller {} connected\n", pool.caller_id());

    let inputs = [
        "1 2 3",
        "40 2",
        "10 20 30",
        "5 5 5 5",
        "crash",
        "7 x",
        "100 -1",
        "hang",
        "8 8",
        "0",
        "1 1 2 3 5 8",
        "2 4 8 16",
    ];
    let started = Instant::now();
    // All at once: each call is a `Pending` handle (a future, or `.wait()`).
    let calls: Vec<_> = inputs
        .iter()
        .map(|&input| (input, pool.parse(input.as_bytes())))
        .collect();
    for (input, call) in calls {
        let answer = match call.wait() {
            Ok(Ok(doc)) => format!(
                "{} numbers, sum {:<3} ran on {}, worker {}",
                doc.numbers, doc.sum, doc.host, doc.pid
            ),
            Ok(Err(invalid)) => format!("invalid: {invalid}"),
            // A crash or a timeout on a host is reported at once, as in a local pool, with
            // the host that saw it; it is not run again.
            Err(CallError::OnHost { host, error }) => {
                format!(
                    "failed on {}: {error}",
                    names.get(&host).map_or("?", |n| n.as_str())
                )
            }
            Err(e) => return Err(e.into()),
        };
        println!("{:>13} -> {answer}", format!("{input:?}"));
    }
    println!(
        "\n{} calls in {} ms\n",
        inputs.len(),
        started.elapsed().as_millis()
    );
    println!("{}", pool.stats());

    // Stop in order: the caller (it deletes its results stream), then the hosts.
    drop(pool);
    for mut h in hosts {
        let status = h.stop()?;
        if !status.success() {
            return Err(format!("{} ended with {status}", h.name).into());
        }
    }
    println!("Redis keeps: {}", redis.streams()?);
    Ok(())
}

/// A host of the demo: this program again, as `host NAME URL`. Stopped by closing its stdin
/// ([`HostProcess::stop`]); dropped (an error on the way), the same, then SIGKILL if it does
/// not stop within a few seconds.
struct HostProcess {
    name: String,
    /// Its id, as it said when it started serving.
    id: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Held open: the host writes nothing more.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl HostProcess {
    fn start(name: &str, url: &str) -> Result<HostProcess, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["host", name, url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        let mut host = HostProcess {
            name: name.to_owned(),
            id: String::new(),
            child: Some(child),
            stdin,
            _stdout: stdout,
        };
        // It says "serving <id>" once it takes calls.
        let mut line = String::new();
        if let Some(out) = host._stdout.as_mut() {
            out.read_line(&mut line)?;
        }
        match line.trim().strip_prefix("serving ") {
            Some(id) => host.id = id.to_owned(),
            None => return Err(format!("{name} did not start").into()),
        }
        Ok(host)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Closes its stdin: it stops (`Host::stop`) and exits. Waits for it.
    fn stop(&mut self) -> std::io::Result<ExitStatus> {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("stopped once");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // It did not stop: kill it, and remove the shared memory its pool left
                // (named after its pid).
                let _ = child.kill();
                let status = child.wait()?;
                remove_shm_of(child.id());
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Removes the /dev/shm segments of pool process `pid` (`fw.<pid>.*`).
fn remove_shm_of(pid: u32) {
    let prefix = format!("fw.{pid}.");
    for entry in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A `redis-server` of the demo: on a free loopback port, in a temporary directory of its
/// own, saving nothing. Stopped (SIGTERM, then SIGKILL) and its directory removed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> Result<RedisServer, Error> {
        let dir = std::env::temp_dir().join(format!("forkworker-cluster.{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        // A free port: the kernel picks one, and redis-server binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    "redis-server is not installed: install Debian's redis-server \
                     (apt-get install redis-server)"
                        .into()
                } else {
                    format!("cannot start redis-server: {e}").into()
                });
            }
        };
        let mut server = RedisServer { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until it answers PING.
    fn wait_ready(&mut self) -> Result<(), Error> {
        let client = redis::Client::open(self.url())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server ended at start with {status}:\n{log}").into());
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            match pong {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(
                        format!("redis-server does not answer on {}: {e}", self.url()).into(),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The keys in Redis and how many entries each holds.
    fn streams(&self) -> Result<String, Error> {
        let mut con = redis::Client::open(self.url())?.get_connection()?;
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con)?;
        keys.sort();
        let mut listed = Vec::new();
        for key in keys {
            let len: u64 = redis::cmd("XLEN").arg(&key).query(&mut con)?;
            listed.push(format!("{key} ({len} entries)"));
        }
        Ok(listed.join(", "))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
