//! A real `redis-server` for one test: [`RedisServer`] starts Debian's `redis-server` on a free
//! port in a temporary directory of its own and kills it (SIGKILL, reaped) and removes the
//! directory when dropped, also while a failing test unwinds.
//!
//! The server is a child of the test process and stays in its process group, so the runner
//! (see `support`) kills it if the test process itself dies, and fails a test that leaves one.
//! A server that cannot start panics with the reason and the tail of its log: a test that needs
//! Redis never skips silently.
//!
//! ```ignore
//! let server = RedisServer::builder().persistence().password("pw").start();
//! let mut con = server.connection();
//! let _: String = ::redis::cmd("XADD").arg("s").arg("*").arg("k").arg("v").query(&mut con)?;
//! server.kill(); // SIGKILL
//! server.restart(); // same port, same directory: the append-only file is replayed
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest a server may take to answer PING after it was started.
const START_LIMIT: Duration = Duration::from_secs(15);
/// Longest [`RedisServer::stop`] waits for a server to leave after SIGTERM before killing it.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How many fresh ports a start tries when another process took the one chosen.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of the server's log a failure message shows.
const LOG_TAIL: usize = 30;

/// What to start: the defaults are a server on a free loopback port without persistence
/// (`--save ""`, no append-only file), password or TLS. Built by [`RedisServer::builder`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    persistence: bool,
    password: Option<String>,
    bind: IpAddr,
    tls: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            persistence: false,
            password: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls: false,
        }
    }
}

impl RedisOptions {
    /// Every write is in the append-only file before it is acknowledged
    /// (`--appendonly yes --appendfsync always`): a server killed with SIGKILL and restarted
    /// has every write it acknowledged.
    pub fn persistence(mut self) -> Self {
        self.persistence = true;
        self
    }

    /// Clients must authenticate (`--requirepass`); [`RedisServer::url`] carries the password
    /// (`redis://:pw@host:port`).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Listens on `addr` instead of 127.0.0.1 (e.g. a veth address of [`super::netns::NetNs`]);
    /// the address must exist on this machine when the server starts.
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Serves TLS only (`--port 0 --tls-port P`), with a server certificate for the bind
    /// address, 127.0.0.1 and `localhost` signed by a throwaway CA made for this server
    /// ([`RedisServer::ca_cert_pem`]); clients are not asked for certificates.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the server and waits until it answers PING; panics with the reason if it does
    /// not within a few seconds.
    pub fn start(self) -> RedisServer {
        RedisServer::start_with(self)
    }
}

/// A running `redis-server` of this test (see the module's doc).
pub struct RedisServer {
    options: RedisOptions,
    dir: PathBuf,
    port: u16,
    /// The server process, `None` after [`RedisServer::kill`] or [`RedisServer::stop`].
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with the default options (see [`RedisOptions`]).
    pub fn start() -> RedisServer {
        RedisOptions::default().start()
    }

    /// Options for a server other than the default one.
    pub fn builder() -> RedisOptions {
        RedisOptions::default()
    }

    fn start_with(options: RedisOptions) -> RedisServer {
        let dir = fresh_dir();
        let mut server = RedisServer {
            options,
            dir,
            port: 0,
            child: None,
        };
        if server.options.tls {
            make_certificates(&server.dir, server.options.bind);
        }
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port(server.options.bind);
            match server.launch() {
                Ok(()) => return server,
                Err(Failure::PortTaken(log)) => last = log,
                Err(Failure::Other(why)) => panic!("{why}"),
            }
        }
        panic!(
            "redis-server found no free port on {} in {PORT_ATTEMPTS} attempts; its log:\n{last}",
            server.options.bind
        );
    }

    /// The URL a client connects with: `redis://[:password@]host:port`, or `rediss://` for TLS
    /// (whose certificate a client trusts only with [`RedisServer::ca_cert_pem`]: see
    /// [`RedisServer::client`]).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        let auth = match &self.options.password {
            Some(pw) => format!(":{}@", percent_encode(pw)),
            None => String::new(),
        };
        let host = match self.options.bind {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        format!("{scheme}://{auth}{host}:{}", self.port)
    }

    /// The port the server listens on (its TLS port with [`RedisOptions::tls`]); the same
    /// across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on.
    pub fn addr(&self) -> IpAddr {
        self.options.bind
    }

    /// The server's own directory (its log `redis.log`, its append-only files, its certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the running server; panics if it was killed or stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the Redis server is not running (killed or stopped)")
            .id()
    }

    /// The PEM of the CA that signed a TLS server's certificate; panics without
    /// [`RedisOptions::tls`].
    pub fn ca_cert_pem(&self) -> Vec<u8> {
        let path = self.ca_cert_path();
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The file of [`RedisServer::ca_cert_pem`].
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(
            self.options.tls,
            "this Redis server was started without TLS"
        );
        self.dir.join("ca.crt")
    }

    /// A client of this server: with TLS, one that trusts this server's CA (and only it)
    /// through `redis::Client::build_with_tls` and `TlsCertificates::root_cert`.
    pub fn client(&self) -> ::redis::Client {
        let client = if self.options.tls {
            ::redis::Client::build_with_tls(
                self.url(),
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(self.ca_cert_pem()),
                },
            )
        } else {
            ::redis::Client::open(self.url())
        };
        client.unwrap_or_else(|e| panic!("a redis client for {}: {e}", self.url()))
    }

    /// A connection of [`RedisServer::client`], with 5 s timeouts on reads and writes so that
    /// a test fails instead of hanging; panics if the server cannot be reached.
    pub fn connection(&self) -> ::redis::Connection {
        connect(&self.client(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.log_tail()))
    }

    /// Kills the server with SIGKILL and reaps it: what it had not written to disk is lost.
    /// [`RedisServer::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already gone is fine: kill only fails on a reaped child, and we reap below.
            let _ = child.kill();
            child.wait().expect("reap the killed redis-server");
        }
    }

    /// Asks the server to leave (SIGTERM: it finishes its writes, fsyncs its append-only
    /// file) and waits for it; kills it if it has not left within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + STOP_LIMIT;
        while Instant::now() < end {
            if child.try_wait().expect("wait for redis-server").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().expect("reap the killed redis-server");
        panic!(
            "redis-server did not leave within {STOP_LIMIT:?} of SIGTERM; killed it\n{}",
            self.log_tail()
        );
    }

    /// Starts the server again after [`RedisServer::kill`] or [`RedisServer::stop`] (kills it
    /// first if it runs): same port, same directory and options, so a persistent server
    /// replays its append-only file. Waits until it answers PING, and until it loaded its data.
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours; a process that grabbed it meanwhile is given a few seconds.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(Failure::PortTaken(_)) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(Failure::PortTaken(log)) => panic!(
                    "redis-server could not get its port {} back on restart; its log:\n{log}",
                    self.port
                ),
                Err(Failure::Other(why)) => panic!("{why}"),
            }
        }
    }

    /// The last lines of the server's log and of its standard output and error.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {}:\n{}--- {}:\n{}",
            self.dir.join("redis.log").display(),
            tail(&self.dir.join("redis.log")),
            self.dir.join("redis.out").display(),
            tail(&self.dir.join("redis.out")),
        )
    }

    /// Starts `redis-server` on `self.port` and waits until it answers PING as itself.
    fn launch(&mut self) -> Result<(), Failure> {
        // Where this start's lines begin in the log, which earlier starts appended to.
        let log_start = std::fs::metadata(self.dir.join("redis.log")).map_or(0, |m| m.len());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.out"))
            .map_err(|e| Failure::Other(format!("create {}: {e}", self.dir.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Failure::Other(format!("dup a file descriptor: {e}")))?;
        let mut cmd = Command::new("redis-server");
        // No configuration file: every setting is an argument.
        cmd.arg("--bind")
            .arg(self.options.bind.to_string())
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--save", ""]);
        if self.options.persistence {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw]);
        }
        if self.options.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        // Same process group as the test (no setsid): the runner kills what a dead test left.
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|e| {
            Failure::Other(if e.kind() == std::io::ErrorKind::NotFound {
                "redis-server is not installed (not found in PATH): install Debian's \
                 redis-server: apt-get install redis-server"
                    .to_owned()
            } else {
                format!("start redis-server: {e}")
            })
        })?;
        self.child = Some(child);
        self.wait_ready(log_start)
    }

    /// Waits until the server answers PING and says it is our child (another process may
    /// listen on the port we chose), and has loaded its data.
    fn wait_ready(&mut self, log_start: u64) -> Result<(), Failure> {
        let client = self.client();
        let end = Instant::now() + START_LIMIT;
        let mut last_error;
        loop {
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().expect("wait for redis-server") {
                self.child = None;
                let log = self.log_tail();
                let this_start = read_from(&self.dir.join("redis.log"), log_start);
                return Err(if this_start.contains("Address already in use") {
                    Failure::PortTaken(log)
                } else {
                    Failure::Other(format!(
                        "redis-server on {}:{} ended at start with {status}; its log:\n{log}",
                        self.options.bind, self.port
                    ))
                });
            }
            match ready(&client, child.id()) {
                Ok(true) => return Ok(()),
                Ok(false) => last_error = "still loading its data".into(),
                Err(e) => last_error = e,
            }
            if Instant::now() > end {
                self.kill();
                return Err(Failure::Other(format!(
                    "redis-server on {}:{} did not answer PING within {START_LIMIT:?} \
                     (last: {last_error}); killed it; its log:\n{}",
                    self.options.bind,
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Also while a failing test unwinds: no panic here.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("remove {}: {e}", self.dir.display());
        }
    }
}

/// Why a start failed: the port was taken (try another), or anything else.
enum Failure {
    PortTaken(String),
    Other(String),
}

/// A connection with `timeout` for connecting, reading and writing.
fn connect(
    client: &::redis::Client,
    timeout: Duration,
) -> ::redis::RedisResult<::redis::Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// Whether the server at `client` answers PING, is process `pid` and has loaded its data.
fn ready(client: &::redis::Client, pid: u32) -> Result<bool, String> {
    let mut con = connect(client, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    let pong: String = ::redis::cmd("PING")
        .query(&mut con)
        .map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    let info: String = ::redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .map_err(|e| e.to_string())?;
    let theirs = info_field(&info, "process_id");
    if theirs != Some(pid.to_string().as_str()) {
        return Err(format!(
            "another server (pid {theirs:?}) answers on the port of ours ({pid})"
        ));
    }
    let persistence: String = ::redis::cmd("INFO")
        .arg("persistence")
        .query(&mut con)
        .map_err(|e| e.to_string())?;
    Ok(info_field(&persistence, "loading") == Some("0"))
}

/// The value of `name` in an INFO reply (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A port free on `addr` right now (the kernel's choice for port 0); another process may take
/// it before the server binds it, which the start notices and retries.
fn free_port(addr: IpAddr) -> u16 {
    let listener =
        TcpListener::bind((addr, 0)).unwrap_or_else(|e| panic!("bind a free port on {addr}: {e}"));
    listener
        .local_addr()
        .expect("a bound listener's address")
        .port()
}

/// A new directory of this test process, readable by its user only.
fn fresh_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("forkworker-redis.{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return dir,
            // Left by an earlier process of the same pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir`: a throwaway CA (P-256) and a
/// server certificate it signed for `bind`, 127.0.0.1 and localhost, through the openssl CLI.
fn make_certificates(dir: &Path, bind: IpAddr) {
    let mut san = String::from("subjectAltName=IP:127.0.0.1,DNS:localhost");
    if !bind.is_loopback() {
        san.push_str(&format!(",IP:{bind}"));
    }
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        format!(
            "{san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
            &["-subj", "/CN=forkworker test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"],
            &ec[..],
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

/// Runs `openssl args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("run openssl (Debian's openssl: apt-get install openssl) to make TLS certificates: {e}")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// File `path` from byte `offset` on, or nothing if it cannot be read.
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let _ = std::fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut bytes)
    });
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last [`LOG_TAIL`] lines of file `path` (at most its last 64 KiB), or why not.
fn tail(path: &Path) -> String {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return format!("(cannot read: {e})\n"),
    };
    let text = read_from(path, len.saturating_sub(64 * 1024));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
    out.push('\n');
    out
}

/// `s` with every byte but URL-unreserved ones percent-encoded, for a URL's userinfo.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
