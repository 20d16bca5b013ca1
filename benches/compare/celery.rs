//! The peer of pools across machines: Celery with a Redis broker, and the bench's Redis server.
//!
//! - [`RedisServer`]: a `redis-server` of this run on a free loopback port, in a temporary
//!   directory, persisting nothing; killed, reaped and its directory removed on drop. The
//!   Celery rows and forkworker's remote rows use the same server.
//! - [`Venv`]: a Python virtual environment under `target/bench-venv`, made once (`python3 -m
//!   venv`, then `pip install -r benches/celery/requirements.txt`, every version pinned) and
//!   reused while its marker file holds the same requirements.
//! - [`CeleryWorker`]: a Celery worker (`celery -A fw_bench_app worker --pool=prefork
//!   --concurrency=N`, its own process group, killed whole on drop) consuming a queue of its
//!   own, and a Python client process (`benches/celery/fw_bench_client.py`) that the bench
//!   drives one line at a time: each command is one timed batch, so that rounds can be
//!   interleaved with other rows'. Interpreter start-up, imports, the worker's start and a
//!   warm-up all happen in [`CeleryWorker::start`], before any timing.
//! - [`measure`] runs the Celery rows' rounds (1 and then 2 worker processes); [`rows`] turns
//!   them into table rows; [`round_trip_row`] and [`throughput_row`] compare a forkworker
//!   figure with Celery's in one row.
//!
//! A call is `empty.delay().get()`: the task takes nothing and returns `None`; its message
//! goes through the Redis broker (a list) and its result through the Redis result backend
//! (JSON messages, Celery's defaults otherwise).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Row, fmt_rate, fmt_time, median, row};

/// Where the Python side lives: the app, the client and the pinned requirements.
const PY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/celery");
/// How long a Celery worker may take to answer its first call.
const READY_S: u32 = 60;

/// Why the peer's rows could not be measured (no network for pip, no redis-server, a child
/// that failed): the bench prints it and skips the rows.
#[derive(Debug)]
pub enum PeerError {
    /// An operating-system call failed while doing `what`.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A child process or the Python client reported a failure while doing `what`.
    Failed { what: String, detail: String },
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Io { what, source } => write!(f, "{what}: {source}"),
            PeerError::Failed { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for PeerError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

fn failed(what: impl Into<String>, detail: impl Into<String>) -> PeerError {
    PeerError::Failed {
        what: what.into(),
        detail: detail.into(),
    }
}

/// The last `n` lines of a log file, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Kills a process group and reaps its leader (`child`), then waits (at most 5 s) until no
/// process of the group is left, reaping any of them that are this process's children.
fn kill_group(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: kill(2) and waitpid(2) with plain integers; the group is the child's own
    // (made with `process_group(0)`), so no other process is hit.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: as above; WNOHANG never blocks.
        let gone = unsafe {
            while libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::kill(-pgid, 0) != 0
        };
        if gone || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes `cmd`'s process a group of its own (so that a kill reaches its children too, and a
/// terminal's Ctrl-C does not reach it first) that gets SIGKILL when the thread that started
/// it ends, so that a bench killed without unwinding leaves no server or worker behind (a
/// Celery worker's prefork children end when their parent does).
fn own_group(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.process_group(0)
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A `redis-server` of this run: loopback only, on a port that was free, persisting nothing
/// (`--save "" --appendonly no`), in a temporary directory. Dropping it kills it (SIGKILL: it
/// holds nothing worth saving), reaps it and removes the directory.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` and waits (at most 10 s) until it answers `PING` with `+PONG`.
    /// First removes the directories of servers whose bench was killed (their pid is gone).
    pub fn start() -> Result<RedisServer, PeerError> {
        remove_stale_dirs();
        // A port the kernel found free; released just before the server binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("pick a free loopback port"))?
            .port();
        let dir =
            std::env::temp_dir().join(format!("fw-bench-redis.{}.{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let log = std::fs::File::create(dir.join("redis.log")).map_err(io("create redis.log"))?;
        let spawned = own_group(&mut Command::new("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io("start redis-server")(e));
            }
        };
        // From here on, drop cleans up.
        let mut server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers_ping() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(failed(
                    "redis-server",
                    format!("{status}: {}", tail(&server.dir.join("redis.log"), 5)),
                ));
            }
            if Instant::now() > deadline {
                return Err(failed("redis-server", "no PONG within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Whether the server answers a raw RESP `PING` with `+PONG`.
    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT`. (Celery uses database 1 of it.)
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port on 127.0.0.1.
    #[allow(dead_code)] // for forkworker's remote rows
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Removes `fw-bench-redis.PID.PORT` directories of benches no longer running (a bench
/// killed without unwinding cannot remove its own; its server died with it, see `own_group`).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("fw-bench-redis.")
            .and_then(|rest| rest.split('.').next()?.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The virtual environment

/// The Python virtual environment of the Celery rows, under the build's `target/`.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// `target/bench-venv`, made if missing or if its marker's requirements differ from
    /// `benches/celery/requirements.txt` (pip then needs PyPI: without it this fails, quickly).
    pub fn ensure() -> Result<Venv, PeerError> {
        let dir = target_dir().join("bench-venv");
        let marker = dir.join("fw-bench-requirements.txt");
        let wanted = Path::new(PY_DIR).join("requirements.txt");
        let requirements = std::fs::read_to_string(&wanted).map_err(io("read requirements.txt"))?;
        let venv = Venv { dir };
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str())
            && venv.bin("python").exists()
        {
            return Ok(venv);
        }
        eprintln!("compare: making {} (pip install)", venv.dir.display());
        if venv.dir.exists() {
            std::fs::remove_dir_all(&venv.dir).map_err(io("remove an incomplete venv"))?;
        }
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv.dir),
            "python3 -m venv",
        )?;
        run(
            Command::new(venv.bin("pip"))
                .args(["install", "--disable-pip-version-check", "--quiet"])
                .args(["--timeout", "20", "--retries", "1", "-r"])
                .arg(&wanted),
            "pip install -r benches/celery/requirements.txt",
        )?;
        std::fs::write(&marker, requirements).map_err(io("write the venv's marker"))?;
        Ok(venv)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }
}

/// The build's target directory: three levels above this binary (`target/release/deps/`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs a setup command to its end; its stderr's tail is the error if it fails.
fn run(cmd: &mut Command, what: &str) -> Result<(), PeerError> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io(what))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let detail = lines[lines.len().saturating_sub(3)..].join(" | ");
    Err(failed(what, format!("{}: {detail}", out.status)))
}

// ---------------------------------------------------------------------------------------------
// The worker and its client

/// A Celery worker of `concurrency` prefork processes and the Python client that calls it.
/// Dropping it ends the client and kills the worker's whole process group.
pub struct CeleryWorker {
    worker: Child,
    client: Child,
    to_client: ChildStdin,
    from_client: BufReader<ChildStdout>,
    log: PathBuf,
    concurrency: usize,
}

impl CeleryWorker {
    /// Starts a worker consuming a queue of its own on `redis`, then the client, and waits
    /// until an empty call returns (at most 60 s); the client then warms up (100 round trips,
    /// 500 pipelined calls). Nothing of this is timed.
    pub fn start(
        venv: &Venv,
        redis: &RedisServer,
        concurrency: usize,
    ) -> Result<CeleryWorker, PeerError> {
        let queue = format!("fw-bench-{}-{concurrency}", std::process::id());
        let log = venv.dir.join(format!("worker-{concurrency}.log"));
        let log_file = std::fs::File::create(&log).map_err(io("create the worker's log"))?;
        let env = |cmd: &mut Command| {
            cmd.env("FW_BENCH_REDIS", redis.url())
                .env("FW_BENCH_QUEUE", &queue)
                .env("PYTHONPATH", PY_DIR)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .current_dir(PY_DIR);
        };
        let mut cmd = Command::new(venv.bin("celery"));
        own_group(&mut cmd)
            .args(["-A", "fw_bench_app", "worker", "--pool=prefork"])
            .arg(format!("--concurrency={concurrency}"))
            .args(["--loglevel=WARNING", "--without-gossip", "--without-mingle"])
            .arg("--without-heartbeat")
            .arg(format!("--hostname=fw-bench-{concurrency}@%h"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        env(&mut cmd);
        let mut worker = cmd.spawn().map_err(io("start the Celery worker"))?;
        let mut cmd = Command::new(venv.bin("python"));
        own_group(&mut cmd)
            .arg(Path::new(PY_DIR).join("fw_bench_client.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        env(&mut cmd);
        let mut client = match cmd.spawn() {
            Ok(client) => client,
            Err(e) => {
                kill_group(&mut worker);
                return Err(io("start the Celery client")(e));
            }
        };
        let (to_client, from_client) = (client.stdin.take(), client.stdout.take());
        let mut w = CeleryWorker {
            worker,
            client,
            to_client: to_client.expect("piped stdin"),
            from_client: BufReader::new(from_client.expect("piped stdout")),
            log,
            concurrency,
        };
        w.ask(&format!("ready {READY_S}"), 1)?;
        Ok(w)
    }

    /// One command to the client; its answer's numbers (at least `want` of them).
    fn ask(&mut self, command: &str, want: usize) -> Result<Vec<f64>, PeerError> {
        let what = format!(
            "Celery client ({} worker processes), `{command}`",
            self.concurrency
        );
        writeln!(self.to_client, "{command}")
            .and_then(|()| self.to_client.flush())
            .map_err(io(what.clone()))?;
        let mut line = String::new();
        self.from_client
            .read_line(&mut line)
            .map_err(io(what.clone()))?;
        let mut words = line.split_whitespace();
        let numbers: Vec<f64> = match words.next() {
            Some("ok") => words.filter_map(|w| w.parse().ok()).collect(),
            _ => {
                let detail = if line.is_empty() {
                    "the client ended".to_string()
                } else {
                    line.trim().to_string()
                };
                let log = tail(&self.log, 3);
                return Err(failed(what, format!("{detail}; worker log: {log}")));
            }
        };
        if numbers.len() < want {
            return Err(failed(what, format!("bad answer {line:?}")));
        }
        Ok(numbers)
    }

    /// `calls` empty calls one after another, each `empty.delay().get()` timed alone: the
    /// median round trip, in seconds.
    pub fn round_trip(&mut self, calls: usize) -> Result<f64, PeerError> {
        Ok(self.ask(&format!("rt {calls}"), 3)?[0])
    }

    /// `calls` empty calls all sent before any result is taken, then every result taken in
    /// order: calls per second from the first send to the last result, and how many results
    /// were missing after 30 s or wrong (lost).
    pub fn pipelined(&mut self, calls: usize) -> Result<(f64, usize), PeerError> {
        let a = self.ask(&format!("tp {calls}"), 2)?;
        Ok((a[0], a[1] as usize))
    }

    /// `calls` echoes of a `len`-character string, one after another: the median round trip
    /// in seconds, and how many came back different (lost).
    #[allow(dead_code)] // for forkworker's remote rows, if they compare payloads
    pub fn echo(&mut self, len: usize, calls: usize) -> Result<(f64, usize), PeerError> {
        let a = self.ask(&format!("echo {len} {calls}"), 2)?;
        Ok((a[0], a[1] as usize))
    }

    /// The worker's prefork processes.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = writeln!(self.to_client, "quit").and_then(|()| self.to_client.flush());
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.client.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_group(&mut self.client);
        kill_group(&mut self.worker);
    }
}

// ---------------------------------------------------------------------------------------------
// The rows

/// How many calls and rounds the Celery rows take.
pub struct Settings {
    /// Rounds per worker count; the rows give medians over them.
    pub rounds: usize,
    /// Empty calls per round trip round (each timed alone; the round's median is kept).
    pub round_trips: usize,
    /// Calls in flight per pipelined round.
    pub pipelined: usize,
}

impl Settings {
    /// The full run's: 5 rounds of 200 round trips and of 2,000 pipelined calls.
    pub fn full() -> Settings {
        Settings {
            rounds: 5,
            round_trips: 200,
            pipelined: 2_000,
        }
    }
}

/// One worker count's figures, one entry per round.
pub struct CeleryFigures {
    pub concurrency: usize,
    /// Median round trip of an empty call, in seconds.
    pub round_trip: Vec<f64>,
    /// Pipelined empty calls per second.
    pub pipelined: Vec<f64>,
    /// Results missing or wrong, over every pipelined round.
    pub lost: usize,
}

impl CeleryFigures {
    /// Median round trip over the rounds, in seconds.
    pub fn round_trip_s(&self) -> f64 {
        median(&self.round_trip)
    }

    /// Median pipelined calls per second over the rounds.
    pub fn calls_per_s(&self) -> f64 {
        median(&self.pipelined)
    }
}

/// The Celery rows' figures: one worker process, then two.
pub struct Celery {
    pub settings: Settings,
    pub one: CeleryFigures,
    pub two: CeleryFigures,
}

/// `settings.rounds` rounds of a round-trip batch and a pipelined batch, on a worker of one
/// prefork process and then on one of two (each started, warmed up, measured, killed).
pub fn measure(
    redis: &RedisServer,
    settings: Settings,
    verbose: bool,
) -> Result<Celery, PeerError> {
    let venv = Venv::ensure()?;
    let figures = |concurrency| -> Result<CeleryFigures, PeerError> {
        let mut w = CeleryWorker::start(&venv, redis, concurrency)?;
        let mut f = CeleryFigures {
            concurrency,
            round_trip: vec![],
            pipelined: vec![],
            lost: 0,
        };
        for _ in 0..settings.rounds {
            f.round_trip.push(w.round_trip(settings.round_trips)?);
            let (rate, lost) = w.pipelined(settings.pipelined)?;
            f.pipelined.push(rate);
            f.lost += lost;
            if verbose {
                eprintln!(
                    "celery round, {} worker processes: round trip {}, pipelined {}",
                    w.concurrency(),
                    fmt_time(f.round_trip[f.round_trip.len() - 1]),
                    fmt_rate(rate)
                );
            }
        }
        Ok(f)
    };
    let one = figures(1)?;
    let two = figures(2)?;
    Ok(Celery { settings, one, two })
}

fn processes(n: usize) -> String {
    format!("{n} worker process{}", if n > 1 { "es" } else { "" })
}

/// Celery's own rows: its figures in the peer column, nothing in forkworker's.
pub fn rows(c: &Celery) -> Vec<Row> {
    let mut rows = Vec::new();
    for f in [&c.one, &c.two] {
        rows.push(row(
            format!(
                "celery (redis broker) empty round trip, {} (median of {} rounds of {})",
                processes(f.concurrency),
                f.round_trip.len(),
                c.settings.round_trips
            ),
            "-".into(),
            fmt_time(f.round_trip_s()),
            "-".into(),
        ));
    }
    for f in [&c.one, &c.two] {
        rows.push(row(
            format!(
                "celery pipelined calls/s, {}, {} calls in flight (lost: {})",
                processes(f.concurrency),
                c.settings.pipelined,
                f.lost
            ),
            "-".into(),
            fmt_rate(f.calls_per_s()),
            "-".into(),
        ));
    }
    rows
}

/// A row comparing forkworker's round trip (seconds) with Celery's: issue 14's target is at
/// most a fifth of it.
#[allow(dead_code)] // for forkworker's remote rows
pub fn round_trip_row(measure: impl Into<String>, ours: f64, celery: &CeleryFigures) -> Row {
    let theirs = celery.round_trip_s();
    row(
        measure,
        fmt_time(ours),
        fmt_time(theirs),
        format!("{:.3}x", ours / theirs),
    )
    .target("<= 0.2x", ours <= 0.2 * theirs)
}

/// A row comparing forkworker's pipelined calls per second with Celery's: issue 14's target
/// is at least five times it.
#[allow(dead_code)] // for forkworker's remote rows
pub fn throughput_row(measure: impl Into<String>, ours: f64, celery: &CeleryFigures) -> Row {
    let theirs = celery.calls_per_s();
    row(
        measure,
        fmt_rate(ours),
        fmt_rate(theirs),
        format!("{:.1}x", ours / theirs),
    )
    .target(">= 5x", ours >= 5.0 * theirs)
}

/// `--only celery [--count N] [--rounds N]`: the Celery rows alone (N pipelined calls per
/// round, a tenth of them, at least 50, round trips), on a Redis server of their own; prints
/// their table, or why they were skipped. Returns how many calls were timed (0 if skipped).
pub fn only(count: Option<usize>, rounds: Option<usize>) -> usize {
    let full = Settings::full();
    let settings = Settings {
        rounds: rounds.unwrap_or(full.rounds),
        round_trips: count.map_or(full.round_trips, |n| (n / 10).max(50)),
        pipelined: count.unwrap_or(full.pipelined),
    };
    let calls = settings.rounds * 2 * (settings.round_trips + settings.pipelined);
    let measured = RedisServer::start().and_then(|redis| measure(&redis, settings, true));
    let leftovers = super::cleanup_problems(std::process::id());
    println!();
    let calls = match measured {
        Ok(c) => {
            super::print_table(&rows(&c));
            println!();
            calls
        }
        Err(e) => {
            println!("celery rows skipped: {e}");
            0
        }
    };
    super::exit_if_left_behind(&leftovers);
    calls
}
