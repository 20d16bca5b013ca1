//! The harness of the Redis tests, tested on its own: a real `redis-server` per test
//! (`support::redis`), started, killed and restarted with persistence, with a password, with
//! TLS, and reached from another network namespace (`support::netns`), and nothing left behind.

mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::Commands;
use support::netns::NetNs;
use support::redis::RedisServer;

tests![
    start_use_and_drop,
    persistence_survives_sigkill,
    restart_waits_for_its_port,
    password_is_required,
    tls_with_the_test_ca,
    tls_with_ssl_cert_file,
    netns_reaches_redis_through_veth,
];

/// The entries of stream `key`: ids and their one field's value.
fn entries(con: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let reply: redis::streams::StreamRangeReply = con.xrange_all(key).expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let v: String = e.get("n").expect("field n");
            (e.id, v)
        })
        .collect()
}

/// Whether process `pid` exists, as anything but a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|t| t.split_whitespace().next())
            != Some("Z")
    })
}

fn start_use_and_drop() {
    let server = RedisServer::start();
    assert!(
        server.url().starts_with("redis://127.0.0.1:"),
        "{}",
        server.url()
    );
    let mut con = server.connection();
    let id: String = con.xadd("s", "*", &[("n", "1")]).expect("XADD");
    assert_eq!(entries(&mut con, "s"), vec![(id, "1".to_owned())]);
    // Not persistent: no append-only file.
    assert!(!server.dir().join("appendonlydir").exists());
    let (pid, dir): (u32, PathBuf) = (server.pid(), server.dir().to_owned());
    assert!(alive(pid) && dir.is_dir());
    drop(con);
    drop(server);
    assert!(!alive(pid), "redis-server {pid} still runs after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    // And reaped: the runner's check finds no child either.
    support::assert_no_children();
}

fn persistence_survives_sigkill() {
    let mut server = RedisServer::builder().persistence().start();
    let port = server.port();
    let mut con = server.connection();
    let mut ids = Vec::new();
    for i in 0..100 {
        let id: String = con.xadd("s", "*", &[("n", i.to_string())]).expect("XADD");
        ids.push((id, i.to_string()));
    }
    let old = server.pid();
    server.kill();
    assert!(!alive(old), "killed redis-server {old} still runs");
    assert!(
        con.xlen::<_, usize>("s").is_err(),
        "a connection to a killed server answered"
    );
    server.restart();
    assert_ne!(server.pid(), old);
    assert_eq!(server.port(), port, "restart keeps the port");
    let mut con = server.connection();
    assert_eq!(
        entries(&mut con, "s"),
        ids,
        "entries after SIGKILL and restart"
    );
    // stop() then restart() works as well (a clean shutdown).
    server.stop();
    server.restart();
    assert_eq!(entries(&mut server.connection(), "s"), ids);
}

/// A restart whose port another process holds for a moment retries until it is free again.
fn restart_waits_for_its_port() {
    let mut server = RedisServer::start();
    server.kill();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", server.port()))
        .expect("take the killed server's port");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(squatter);
    });
    let t0 = Instant::now();
    server.restart();
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    release.join().expect("release thread");
    let pong: String = redis::cmd("PING")
        .query(&mut server.connection())
        .expect("PING");
    assert_eq!(pong, "PONG");
    assert!(
        std::fs::read_to_string(server.dir().join("redis.log"))
            .expect("log")
            .contains("Address already in use"),
        "the first tries found the port taken"
    );
}

fn password_is_required() {
    let server = RedisServer::builder().password("p@ss word/1").start();
    let url = server.url();
    assert!(
        url.starts_with("redis://:p%40ss%20word%2F1@127.0.0.1:"),
        "{url}"
    );
    let plain = format!("redis://127.0.0.1:{}", server.port());
    let err = redis::Client::open(plain.as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .expect_err("PING without the password must be refused");
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    let wrong = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let err = redis::Client::open(wrong.as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .expect_err("a wrong password must be refused");
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
    let pong: String = redis::cmd("PING")
        .query(&mut server.connection())
        .expect("PING with the password");
    assert_eq!(pong, "PONG");
}

fn tls_with_the_test_ca() {
    let server = RedisServer::builder().tls().password("pw").start();
    let url = server.url();
    assert!(url.starts_with("rediss://:pw@127.0.0.1:"), "{url}");
    // Trusting the test's CA: redis::Client::build_with_tls with TlsCertificates::root_cert.
    let pong: String = redis::cmd("PING")
        .query(&mut server.connection())
        .expect("PING over TLS");
    assert_eq!(pong, "PONG");
    // `localhost` is in the certificate too.
    let by_name = redis::Client::build_with_tls(
        url.replace("127.0.0.1", "localhost"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(server.ca_cert_pem()),
        },
    )
    .expect("client");
    let mut con = by_name
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("TLS to localhost");
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
    // The system's roots do not know the test's CA: the handshake fails.
    let t0 = Instant::now();
    let err = redis::Client::open(url.as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .expect_err("an unknown CA must be refused");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Plain RESP to the TLS port fails (and does not hang).
    let plain = format!("redis://:pw@127.0.0.1:{}", server.port());
    let t0 = Instant::now();
    let result = redis::Client::open(plain.as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            redis::cmd("PING").query::<String>(&mut c)
        });
    assert!(
        result.is_err(),
        "plain redis:// to the TLS port: {result:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // `#insecure` (no verification) needs the crate's tls-rustls-insecure feature, not enabled.
    let insecure = redis::Client::open(format!("{url}/#insecure").as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5));
    assert!(insecure.is_err(), "#insecure connected without its feature");
}

/// `rediss://` with the system's roots works for a CA the system trusts: rustls-native-certs
/// reads `SSL_CERT_FILE` (as OpenSSL does), so pointing it at the test's CA suffices.
fn tls_with_ssl_cert_file() {
    let server = RedisServer::builder().tls().start();
    // SAFETY: this test process is single-threaded (the runner starts one per test).
    unsafe { std::env::set_var("SSL_CERT_FILE", server.ca_cert_path()) };
    let mut con = redis::Client::open(server.url().as_str())
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("rediss:// with SSL_CERT_FILE naming the CA");
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
}

fn netns_reaches_redis_through_veth() {
    let ns = NetNs::new();
    let name = ns.name().to_owned();
    let (host_if, ns_if) = (ns.interfaces().0.to_owned(), ns.interfaces().1.to_owned());
    assert!(netns_list().contains(&name));
    let server = RedisServer::builder().bind(ns.host_addr()).start();
    let local = RedisServer::start();
    let ping = |addr: IpAddr, port: u16| {
        let out = ns
            .command("redis-cli")
            .args(["-h", &addr.to_string(), "-p", &port.to_string()])
            .arg("ping")
            .output()
            .expect("run redis-cli (Debian's redis-tools) in the namespace");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + &String::from_utf8_lossy(&out.stderr)
    };
    assert_eq!(
        ping(ns.host_addr(), server.port()),
        "PONG",
        "across the veth pair"
    );
    // Inside, 127.0.0.1 is the namespace's own loopback: the server on ours is not there.
    assert_ne!(ping("127.0.0.1".parse().unwrap(), local.port()), "PONG");
    // And the namespace's end is a real, separate address.
    let out = ns
        .command("ip")
        .args(["-o", "-4", "addr", "show", "dev", &ns_if])
        .output()
        .expect("ip in the namespace");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/24", ns.ns_addr())),
        "{out:?}"
    );
    drop(server);
    drop(ns);
    assert!(!netns_list().contains(&name), "{name} left behind");
    let links = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link")
            .stdout,
    )
    .into_owned();
    assert!(!links.contains(&host_if), "{host_if} left behind: {links}");
}

/// The names `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
