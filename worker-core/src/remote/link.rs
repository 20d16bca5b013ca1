//! One connection to Redis that reconnects, and the Redis clock in which deadlines are
//! written.
//!
//! Every thread of a host or a connected pool owns one [`Redis`]: the synchronous client
//! blocks in `XREAD ... BLOCK`, so a connection is never shared between threads.

use std::time::{Duration, Instant};

use redis::{Client, Connection, Value};

use super::RemoteError;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command (not a blocking read) may wait for its reply before the connection
/// is taken for dead.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pool's Redis is and how to reach it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    client: Client,
    /// The URL with its password left out, for errors and logs.
    pub(crate) shown: String,
}

impl Endpoint {
    /// `url` as `redis://[:password@]host:port[/db]` or `rediss://...` (TLS); with
    /// `root_ca` (PEM), TLS trusts that certificate authority instead of the system's.
    pub(crate) fn new(url: &str, root_ca: Option<&[u8]>) -> Result<Endpoint, RemoteError> {
        let shown = redact(url);
        if url.starts_with("rediss://") || root_ca.is_some() {
            // The redis crate builds its TLS configuration with `ClientConfig::builder()`,
            // which panics when no crypto provider is installed and the build holds several
            // (a program whose other crates enable rustls's aws-lc-rs as well as our ring):
            // install ring unless the program installed one. A no-op after the first time.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if let Some(pem) = root_ca {
            // A text without any certificate would make an empty trust store, and every
            // handshake would fail as if the server's certificate were unknown.
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            if !CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok()) {
                return Err(RemoteError::Url {
                    url: shown,
                    reason: "tls_root_ca holds no PEM certificate \
                             (-----BEGIN CERTIFICATE-----)"
                        .to_owned(),
                });
            }
        }
        let client = match root_ca {
            None => Client::open(url),
            Some(pem) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        };
        let client = client.map_err(|e| RemoteError::Url {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        Ok(Endpoint { client, shown })
    }

    /// A connection, with its command timeout set.
    fn connect(&self) -> Result<Connection, RemoteError> {
        let unreachable = |e: redis::RedisError| RemoteError::Unreachable {
            url: self.shown.clone(),
            reason: e.to_string(),
        };
        let con = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(unreachable)?;
        con.set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(unreachable)?;
        con.set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(unreachable)?;
        Ok(con)
    }
}

/// The URL without its password: the `pass=` (or `password=`) of its query, where the
/// client takes it for `unix://` sockets, and then its user information (`scheme://user:pw@`,
/// up to the last `@`, so that a password with an `@` is hidden whole). When in doubt it
/// hides more than the password, never less.
fn redact(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key == "pass" || key == "password" => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or("");
            // A "user" that looks like a path or a query is not one: hide it as well.
            let user = if user.contains(['/', '?', '#', '=', '&']) {
                ""
            } else {
                user
            };
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url,
    }
}

/// A connection to Redis, made again after it broke.
pub(crate) struct Redis {
    endpoint: Endpoint,
    con: Option<Connection>,
    /// The read timeout the connection has now.
    read_timeout: Duration,
}

impl Redis {
    /// Connects now: an unreachable Redis is an error here, once.
    pub(crate) fn open(endpoint: Endpoint) -> Result<Redis, RemoteError> {
        let con = endpoint.connect()?;
        Ok(Redis {
            endpoint,
            con: Some(con),
            read_timeout: COMMAND_TIMEOUT,
        })
    }

    pub(crate) fn shown(&self) -> &str {
        &self.endpoint.shown
    }

    /// Runs `f` on the connection (connecting first if it broke). A failure that leaves the
    /// connection in doubt (I/O, a timeout, Redis going away) drops it, so that the next
    /// call connects again; an error reply of Redis keeps it.
    pub(crate) fn run<T>(
        &mut self,
        command: &'static str,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RemoteError> {
        self.run_blocking(command, Duration::ZERO, f)
    }

    /// [`Redis::run`] for a command that blocks on the server for up to `block`.
    pub(crate) fn run_blocking<T>(
        &mut self,
        command: &'static str,
        block: Duration,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RemoteError> {
        if self.con.is_none() {
            self.con = Some(self.endpoint.connect()?);
            self.read_timeout = COMMAND_TIMEOUT;
        }
        let con = self.con.as_mut().expect("connected just above");
        let wanted = COMMAND_TIMEOUT + block;
        if wanted != self.read_timeout {
            if let Err(e) = con.set_read_timeout(Some(wanted)) {
                self.con = None;
                return Err(RemoteError::Unreachable {
                    url: self.endpoint.shown.clone(),
                    reason: e.to_string(),
                });
            }
            self.read_timeout = wanted;
        }
        match f(con) {
            Ok(value) => Ok(value),
            Err(e) => {
                // A Redis that asks for a password the URL did not give answers the first
                // command NOAUTH: that refuses the connection, as a wrong password does.
                let unauthenticated = e.code() == Some("NOAUTH");
                let broken = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                    || unauthenticated;
                if broken {
                    self.con = None;
                    let mut reason = e.to_string();
                    if unauthenticated {
                        reason.push_str(
                            " (give the password in the URL: redis://:PASSWORD@host:port)",
                        );
                    }
                    Err(RemoteError::Unreachable {
                        url: self.endpoint.shown.clone(),
                        reason,
                    })
                } else {
                    Err(RemoteError::Command {
                        url: self.endpoint.shown.clone(),
                        command,
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// A command error that is about the reply's shape, not Redis.
    pub(crate) fn bad_reply(&self, command: &'static str, what: &str) -> RemoteError {
        RemoteError::Command {
            url: self.endpoint.shown.clone(),
            command,
            reason: format!("unexpected reply: {what}"),
        }
    }
}

/// Redis's clock, as read by `TIME` and carried forward by this process's monotonic clock:
/// deadlines are written in it, so machines whose clocks disagree still agree on them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisClock {
    /// Redis's time in milliseconds at `at`.
    ms: u64,
    at: Instant,
}

/// How often the clock is read again.
pub(crate) const CLOCK_REFRESH: Duration = Duration::from_secs(10);

impl RedisClock {
    /// Reads Redis's `TIME`, taking the middle of the round trip as the moment it answered.
    pub(crate) fn read(redis: &mut Redis) -> Result<RedisClock, RemoteError> {
        let before = Instant::now();
        let (secs, micros): (u64, u64) = redis.run("TIME", |con| redis::cmd("TIME").query(con))?;
        let after = Instant::now();
        Ok(RedisClock {
            ms: secs * 1000 + micros / 1000,
            at: before + (after - before) / 2,
        })
    }

    /// Redis's time now, in milliseconds since the epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms + self.at.elapsed().as_millis() as u64
    }

    /// Whether it was read longer ago than [`CLOCK_REFRESH`].
    pub(crate) fn stale(&self) -> bool {
        self.at.elapsed() > CLOCK_REFRESH
    }
}

/// The bytes of a bulk-string reply (or a simple string's).
pub(crate) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A reply's text.
pub(crate) fn text(value: &Value) -> Option<&str> {
    bytes(value).and_then(|b| std::str::from_utf8(b).ok())
}

/// An array reply's items (a nil is none).
pub(crate) fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// A stream entry: its id and its fields.
pub(crate) type Entry<'a> = (String, Vec<(&'a str, &'a [u8])>);

/// The entries of a stream as `XREAD`/`XREADGROUP`/`XAUTOCLAIM` give them: `[id, [field,
/// value, ...]]` each; a deleted entry (its fields nil) has none.
pub(crate) fn stream_entries(value: &Value) -> Option<Vec<Entry<'_>>> {
    let mut out = Vec::new();
    for entry in items(value)? {
        let parts = items(entry)?;
        let id = text(parts.first()?)?.to_owned();
        let mut fields = Vec::new();
        if let Some(list) = parts.get(1).and_then(items) {
            for pair in list.chunks(2) {
                if let [k, v] = pair {
                    fields.push((text(k)?, bytes(v)?));
                }
            }
        }
        out.push((id, fields));
    }
    Some(out)
}

/// The reply of `XREAD`/`XREADGROUP` over several streams: for each stream read, its name
/// and its entries. A timeout (nil) reads none.
pub(crate) fn streams_read(value: &Value) -> Option<Vec<(String, &Value)>> {
    let mut out = Vec::new();
    match value {
        Value::Nil => {}
        Value::Map(pairs) => {
            for (k, v) in pairs {
                out.push((text(k)?.to_owned(), v));
            }
        }
        _ => {
            for stream in items(value)? {
                let parts = items(stream)?;
                out.push((text(parts.first()?)?.to_owned(), parts.get(1)?));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            redact("redis://:secret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            redact("rediss://app:secret@host:6380"),
            "rediss://app:***@host:6380"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:p@ss@host:1"), "redis://:***@host:1");
        assert_eq!(
            redact("unix:///run/redis.sock?db=2&pass=secret"),
            "unix:///run/redis.sock?db=2&pass=***"
        );
        assert_eq!(
            redact("redis+unix:///s?user=app&password=secret"),
            "redis+unix:///s?user=app&password=***"
        );
        assert_eq!(redact("unix:///s?pass=x@secret"), "unix:///s?pass=***");
        assert_eq!(redact("redis://:pa?ss@host:1"), "redis://:***@host:1");
    }

    #[test]
    fn tls_installs_a_crypto_provider() {
        // Whatever else runs first in this process, after a rediss:// endpoint rustls has a
        // process-wide provider, so the redis crate's ClientConfig::builder() cannot panic.
        Endpoint::new("rediss://127.0.0.1:1", None).expect("a rediss:// endpoint");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn a_root_ca_without_a_certificate_is_refused() {
        let err = Endpoint::new("rediss://127.0.0.1:1", Some(b"no PEM here"))
            .err()
            .expect("refused");
        assert!(matches!(err, RemoteError::Url { .. }), "{err}");
        assert!(err.to_string().contains("tls_root_ca"), "{err}");
    }

    #[test]
    fn a_bad_url_is_a_clear_error() {
        let err = Endpoint::new("http://nowhere", None)
            .err()
            .expect("refused");
        assert!(matches!(err, RemoteError::Url { .. }), "{err}");
    }

    #[test]
    fn stream_replies_parse() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![
                Value::Array(vec![
                    Value::BulkString(b"1-0".to_vec()),
                    Value::Array(vec![
                        Value::BulkString(b"k".to_vec()),
                        Value::BulkString(b"v".to_vec()),
                    ]),
                ]),
                Value::Array(vec![Value::BulkString(b"2-0".to_vec()), Value::Nil]),
            ]),
        ])]);
        let streams = streams_read(&reply).unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].0, "s");
        let entries = stream_entries(streams[0].1).unwrap();
        assert_eq!(entries[0].0, "1-0");
        assert_eq!(entries[0].1, vec![("k", &b"v"[..])]);
        assert!(entries[1].1.is_empty());
        assert!(streams_read(&Value::Nil).unwrap().is_empty());
    }
}
