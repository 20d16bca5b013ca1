//! Pools across machines over real networks: a Redis that asks for a password (AUTH through
//! the URL), one that speaks only TLS (`rediss://` with a certificate the test makes), and a
//! host in a network namespace of its own, so that its calls really cross a veth pair.
//!
//! Each test starts its own `redis-server` (tests/support/redis.rs); hosts run in this process
//! or in a child process of this test binary (`FW_ROLE=host`, as in tests/remote.rs).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use forkworker::remote::{RemoteError, ServeError};
use support::host_process::HostProcess;
use support::netns::NetNs;
use support::redis::RedisServer;

/// What a worker sees of the network it runs in.
pub struct Net;

#[forkworker::worker]
impl Net {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    /// The names of the network interfaces of the worker's network namespace, as its
    /// `/proc/net/dev` lists them.
    pub fn interfaces(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/net/dev")
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// The worker's IPv4 addresses (interface, address), through `getifaddrs`.
    pub fn addresses(&self) -> Vec<(String, String)> {
        ipv4_addresses()
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// This process's IPv4 addresses (interface, address), through `getifaddrs`.
fn ipv4_addresses() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list that freeifaddrs frees below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: a node of the list getifaddrs made, alive until freeifaddrs.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in; ifa_name is a C string.
        let (addr, name) = unsafe {
            let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
            (
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                std::ffi::CStr::from_ptr(ifa.ifa_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        out.push((name, addr.to_string()));
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

const LONG: Duration = Duration::from_secs(60);
/// How long a connect that must fail (bad password, unknown certificate, wrong protocol) may
/// take: the library's connect timeout is 2 s and its command timeout 5 s.
const FAILS_WITHIN: Duration = Duration::from_secs(8);

/// The keys left in `redis` with their stream lengths (-1 for a key that is no stream).
fn keys_left(redis: &RedisServer) -> HashMap<String, i64> {
    let mut con = redis.connection();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.into_iter()
        .map(|k| {
            let len: i64 = ::redis::cmd("XLEN").arg(&k).query(&mut con).unwrap_or(-1);
            (k, len)
        })
        .collect()
}

/// Asserts that every stream left in `redis` is empty: calls, results, control.
fn assert_streams_empty(redis: &RedisServer) {
    let left = keys_left(redis);
    assert!(!left.is_empty(), "the pool made no stream at all");
    let nonempty: Vec<_> = left.iter().filter(|&(_, &len)| len != 0).collect();
    assert!(nonempty.is_empty(), "streams not empty: {nonempty:?}");
}

/// `secret` is nowhere in the error, neither its text nor its debug form.
fn assert_hidden(err: &dyn std::fmt::Debug, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "the password is in the error: {text}"
    );
    let debug = format!("{err:?}");
    assert!(
        !debug.contains(secret),
        "the password is in the error: {debug}"
    );
}

/// Runs `f`, which must fail within [`FAILS_WITHIN`]; its error and how long it took.
fn fails_quickly<T, E: std::fmt::Debug>(what: &str, f: impl FnOnce() -> Result<T, E>) -> E {
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    let Err(err) = result else {
        panic!("{what}: succeeded")
    };
    assert!(
        took < FAILS_WITHIN,
        "{what}: took {took:?} to fail: {err:?}"
    );
    println!("{what}: failed in {took:?}: {err:?}");
    err
}

/// A running host serves calls of a caller: both work end to end.
fn round_trip(pool: &NetPool<Net, forkworker::RemotePool<Net>>) {
    assert_eq!(pool.echo(42).wait().unwrap(), 42);
    let calls: Vec<_> = (0..200).map(|n| pool.echo(n)).collect();
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.wait().unwrap(), n as u64);
    }
}

// --- AUTH ---------------------------------------------------------------------------------

const PASSWORD: &str = "s3cret-Pw_7@x";

/// A host and a caller whose URL carries the password work; the password is percent-encoded
/// in the URL (it has an `@`) and the Redis crate sends it as AUTH.
fn a_password_in_the_url_lets_host_and_caller_work() {
    let redis = RedisServer::builder().password(PASSWORD).start();
    let url = redis.url();
    assert!(url.contains("%40"), "{url}");
    let host = NetPool::builder("Net", Net).workers(2).serve(&url).unwrap();
    let pool = NetPool::remote("Net").timeout(LONG).connect(&url).unwrap();
    round_trip(&pool);
    // A user name with it (the ACL's `default`) works as well.
    let with_user = url.replacen("redis://:", "redis://default:", 1);
    let other = NetPool::remote("Net")
        .timeout(LONG)
        .connect(&with_user)
        .unwrap();
    assert_eq!(other.echo(7).wait().unwrap(), 7);
    drop(other);
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

/// A wrong password, or none, fails at connect (caller and host alike) with an error that
/// says it is about authentication, names the URL with its password hidden, and never shows
/// the password; no call is queued and no host runs.
fn a_wrong_or_missing_password_is_a_clear_error_that_hides_it() {
    let redis = RedisServer::builder().password(PASSWORD).start();
    let port = redis.port();
    let wrong_secret = "not-the-Pw-9";
    let wrong = format!("redis://:{wrong_secret}@127.0.0.1:{port}");
    let err = fails_quickly("caller, wrong password", || {
        NetPool::remote("Net").connect(&wrong)
    });
    let text = err.to_string();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(
        text.to_lowercase().contains("auth") || text.contains("WRONGPASS"),
        "does not say it is about authentication: {text}"
    );
    assert!(
        text.contains(&format!("redis://:***@127.0.0.1:{port}")),
        "does not name the redacted URL: {text}"
    );
    assert_hidden(&err, &text, wrong_secret);
    // With a user name, the user stays and the password goes.
    let wrong_user = format!("redis://app:{wrong_secret}@127.0.0.1:{port}/0");
    let err = fails_quickly("caller, wrong user and password", || {
        NetPool::remote("Net").connect(&wrong_user)
    });
    let text = err.to_string();
    assert!(
        text.contains(&format!("redis://app:***@127.0.0.1:{port}/0")),
        "{text}"
    );
    assert_hidden(&err, &text, wrong_secret);

    // No password at all: Redis answers the first command NOAUTH.
    let missing = format!("redis://127.0.0.1:{port}");
    let err = fails_quickly("caller, no password", || {
        NetPool::remote("Net").connect(&missing)
    });
    let text = err.to_string();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(
        text.to_lowercase().contains("auth") || text.contains("NOAUTH"),
        "does not say it is about authentication: {text}"
    );

    // A host: the same errors, and its local pool is stopped (the runner fails a test that
    // leaves a worker process or a /dev/shm segment).
    let err = fails_quickly("host, wrong password", || {
        NetPool::builder("Net", Net).workers(1).serve(&wrong)
    });
    let text = err.to_string();
    assert!(
        matches!(err, ServeError::Remote(RemoteError::Unreachable { .. })),
        "{err:?}"
    );
    assert!(
        text.to_lowercase().contains("auth") || text.contains("WRONGPASS"),
        "{text}"
    );
    assert!(text.contains("redis://:***@"), "{text}");
    assert_hidden(&err, &text, wrong_secret);
    let err = fails_quickly("host, no password", || {
        NetPool::builder("Net", Net).workers(1).serve(&missing)
    });
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("auth") || text.contains("NOAUTH"),
        "{text}"
    );

    // Where else a URL carries a password: the query of a unix socket's URL, and a URL the
    // client cannot parse. Neither error shows it.
    let socket = format!("unix:///nonexistent/fw-{port}.sock?db=0&pass={wrong_secret}");
    let err = fails_quickly("caller, unix socket with pass=", || {
        NetPool::remote("Net").connect(&socket)
    });
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("pass=***"), "{err}");
    assert_hidden(&err, &err.to_string(), wrong_secret);
    let bad = format!("redis://:{wrong_secret}@127.0.0.1:notaport");
    let err = fails_quickly("caller, bad URL", || NetPool::remote("Net").connect(&bad));
    assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");
    assert_hidden(&err, &err.to_string(), wrong_secret);

    // Nothing reached Redis: no stream, no group.
    assert!(keys_left(&redis).is_empty(), "{:?}", keys_left(&redis));
    // And the right password still works after all that.
    let pool = NetPool::remote("Net")
        .timeout(Duration::from_millis(200))
        .connect(&redis.url())
        .unwrap();
    let err = pool.echo(1).wait().unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
}

// --- TLS ----------------------------------------------------------------------------------

/// Host and caller over `rediss://`, each trusting the test's CA through `tls_root_ca`, with
/// a password as well: calls go end to end, and nothing is left in Redis.
fn tls_with_the_root_ca_works_end_to_end() {
    let redis = RedisServer::builder().tls().password(PASSWORD).start();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = redis.ca_cert_pem();
    let host = NetPool::builder("Net", Net)
        .workers(2)
        .tls_root_ca(ca.clone())
        .serve(&url)
        .unwrap();
    let pool = NetPool::remote("Net")
        .timeout(LONG)
        .tls_root_ca(ca.clone())
        .connect(&url)
        .unwrap();
    round_trip(&pool);
    // The certificate names `localhost` too: the name is checked, and matches.
    let by_name = NetPool::remote("Net")
        .timeout(LONG)
        .tls_root_ca(ca)
        .connect(&url.replace("127.0.0.1", "localhost"))
        .unwrap();
    assert_eq!(by_name.echo(3).wait().unwrap(), 3);
    drop(by_name);
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

/// Without the test's CA (the system's roots do not know it), or trusting another CA, the
/// TLS handshake fails at connect with an error about the certificate: no hang, no panic.
fn tls_without_the_root_ca_fails_at_connect() {
    let redis = RedisServer::builder().tls().start();
    let url = redis.url();
    let about_certificate = |text: &str| {
        let lower = text.to_lowercase();
        lower.contains("certificate") || lower.contains("unknownissuer")
    };
    let err = fails_quickly("caller, system roots", || {
        NetPool::remote("Net").connect(&url)
    });
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(about_certificate(&err.to_string()), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    let err = fails_quickly("host, system roots", || {
        NetPool::builder("Net", Net).workers(1).serve(&url)
    });
    assert!(
        matches!(err, ServeError::Remote(RemoteError::Unreachable { .. })),
        "{err:?}"
    );
    assert!(about_certificate(&err.to_string()), "{err}");
    // Another server's CA is not this one's: `tls_root_ca` replaces the roots, it is checked.
    let other = RedisServer::builder().tls().start();
    let err = fails_quickly("caller, another CA", || {
        NetPool::remote("Net")
            .tls_root_ca(other.ca_cert_pem())
            .connect(&url)
    });
    assert!(about_certificate(&err.to_string()), "{err}");
    // A root CA that is no PEM certificate is refused at once, as a setting.
    let err = fails_quickly("caller, not a certificate", || {
        NetPool::remote("Net")
            .tls_root_ca(b"not a certificate".to_vec())
            .connect(&url)
    });
    assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");
    assert!(err.to_string().contains("tls_root_ca"), "{err}");
    // And with the right one it works, after all that (nothing was left broken).
    let pool = NetPool::remote("Net")
        .timeout(Duration::from_millis(200))
        .tls_root_ca(redis.ca_cert_pem())
        .connect(&url)
        .unwrap();
    assert!(matches!(
        pool.echo(1).wait().unwrap_err(),
        CallError::Timeout { .. }
    ));
}

/// Plain RESP (`redis://`) to the TLS port fails within a few seconds, with and without a
/// password; a root CA with a `redis://` URL is refused as a setting.
fn plain_redis_to_the_tls_port_fails_quickly() {
    let redis = RedisServer::builder().tls().start();
    let plain = format!("redis://127.0.0.1:{}", redis.port());
    let err = fails_quickly("caller, plain to TLS", || {
        NetPool::remote("Net").connect(&plain)
    });
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&plain), "{err}");
    let with_password = format!("redis://:pw@127.0.0.1:{}", redis.port());
    let err = fails_quickly("caller, plain with a password to TLS", || {
        NetPool::remote("Net").connect(&with_password)
    });
    assert_hidden(&err, &err.to_string(), ":pw@");
    let err = fails_quickly("host, plain to TLS", || {
        NetPool::builder("Net", Net).workers(1).serve(&plain)
    });
    assert!(matches!(err, ServeError::Remote(_)), "{err:?}");
    let err = fails_quickly("caller, root CA with redis://", || {
        NetPool::remote("Net")
            .tls_root_ca(redis.ca_cert_pem())
            .connect(&plain)
    });
    assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// `rediss://` without `tls_root_ca` uses the system's roots, which `SSL_CERT_FILE` names
/// (as for OpenSSL): pointing it at the test's CA is enough for host and caller.
fn tls_with_ssl_cert_file_works_without_a_root_ca() {
    let redis = RedisServer::builder().tls().start();
    // SAFETY: no thread runs yet in this test process (one process per test).
    unsafe { std::env::set_var("SSL_CERT_FILE", redis.ca_cert_path()) };
    let host = NetPool::builder("Net", Net)
        .workers(1)
        .serve(&redis.url())
        .unwrap();
    let pool = NetPool::remote("Net")
        .timeout(LONG)
        .connect(&redis.url())
        .unwrap();
    round_trip(&pool);
    drop(pool);
    host.stop(Duration::from_secs(1));
    assert_streams_empty(&redis);
}

// --- A host in a network namespace ----------------------------------------------------------

/// The host role: serves "Net" at `FW_URL` until its stdin closes.
fn host_role() {
    let url = std::env::var("FW_URL").unwrap();
    let host = NetPool::builder("Net", Net)
        .workers(2)
        .timeout(Duration::from_secs(20))
        .serve(&url)
        .expect("serve");
    support::host_process::serve_until_stdin_closes(host);
}

/// A host in its own network namespace reaches Redis (bound to the root end of a veth pair)
/// across the pair; the caller here makes calls that run there: the worker sees the
/// namespace's interfaces and addresses, not this namespace's. Needs root.
fn a_host_in_its_own_network_namespace_runs_the_calls() {
    let ns = NetNs::new();
    let (root_if, ns_if) = (ns.interfaces().0.to_owned(), ns.interfaces().1.to_owned());
    let redis = RedisServer::builder().bind(ns.host_addr()).start();
    let url = format!("redis://{}:{}", ns.host_addr(), redis.port());
    assert_eq!(url, redis.url());
    let mut host = HostProcess::start(ns.command(std::env::current_exe().unwrap()), &url);
    let host_pid = host.pid();
    let pool = NetPool::remote("Net").timeout(LONG).connect(&url).unwrap();
    let before = rx_bytes(&root_if);
    round_trip(&pool);
    // The calls crossed the veth pair: its root end received the host's side of them.
    let received = rx_bytes(&root_if) - before;
    println!("{root_if} received {received} bytes for 201 calls");
    assert!(received > 201 * 50, "{received} bytes over {root_if}");
    // The calls ran inside the namespace: its interfaces are `lo` and its veth end only...
    let mut interfaces = pool.interfaces().wait().unwrap();
    interfaces.sort();
    let mut expected = vec!["lo".to_owned(), ns_if.clone()];
    expected.sort();
    assert_eq!(interfaces, expected, "the worker's interfaces");
    // ...and its addresses are the namespace's, which this namespace does not have.
    let theirs = pool.addresses().wait().unwrap();
    let ns_addr = ns.ns_addr().to_string();
    assert!(
        theirs.contains(&(ns_if.clone(), ns_addr.clone())),
        "the worker's addresses: {theirs:?}"
    );
    let ours = ipv4_addresses();
    assert!(
        ours.iter().all(|(_, a)| *a != ns_addr),
        "this namespace has {ns_addr}: {ours:?}"
    );
    assert!(
        ours.iter().any(|(i, _)| *i == root_if),
        "this namespace lacks {root_if}: {ours:?}"
    );
    assert!(
        theirs.iter().all(|(i, _)| *i != root_if),
        "the worker sees {root_if}: {theirs:?}"
    );
    // A worker of that host: a child of the host process, not of this one.
    let worker = pool.pid().wait().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_ne!(ppid, std::process::id());
    assert!(
        ppid == host_pid || is_descendant(ppid, host_pid),
        "worker {worker}'s parent {ppid} is not of host {host_pid}"
    );
    drop(pool);
    host.stop();
    assert_streams_empty(&redis);
}

/// Whether process `pid` descends from `ancestor`.
fn is_descendant(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        match stat
            .rsplit(')')
            .next()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// The bytes interface `name` of this namespace received.
fn rx_bytes(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_bytes"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::var("FW_ROLE").as_deref() == Ok("host") {
        host_role();
        return;
    }
    support::main(&[
        support::Test {
            name: "a_password_in_the_url_lets_host_and_caller_work",
            run: a_password_in_the_url_lets_host_and_caller_work,
        },
        support::Test {
            name: "a_wrong_or_missing_password_is_a_clear_error_that_hides_it",
            run: a_wrong_or_missing_password_is_a_clear_error_that_hides_it,
        },
        support::Test {
            name: "tls_with_the_root_ca_works_end_to_end",
            run: tls_with_the_root_ca_works_end_to_end,
        },
        support::Test {
            name: "tls_without_the_root_ca_fails_at_connect",
            run: tls_without_the_root_ca_fails_at_connect,
        },
        support::Test {
            name: "plain_redis_to_the_tls_port_fails_quickly",
            run: plain_redis_to_the_tls_port_fails_quickly,
        },
        support::Test {
            name: "tls_with_ssl_cert_file_works_without_a_root_ca",
            run: tls_with_ssl_cert_file_works_without_a_root_ca,
        },
        support::Test {
            name: "a_host_in_its_own_network_namespace_runs_the_calls",
            run: a_host_in_its_own_network_namespace_runs_the_calls,
        },
    ]);
}
