//! Pools across machines: the same typed pool over Redis Streams.
//!
//! A **host** (`XPool::builder(..).serve(url)`, see [`Host`]) runs calls in a local shared
//! pool of its own; a **connected pool** (`XPool::remote(alias).connect(url)`, see
//! [`RemotePool`]) has the same proxies and handles as a local one and no worker of its own.
//!
//! A call's way:
//!
//! | step | where |
//! |---|---|
//! | the caller's proxy encodes the arguments and queues the call for the caller's sender thread | `caller` |
//! | the sender appends it to the stream `{prefix}:{alias}:calls` (`XADD`) | `caller`, `entry` |
//! | a host with a free worker reads it through the consumer group `hosts` (`XREADGROUP`), or claims it from a host that died (`XAUTOCLAIM`), and runs it in its local pool | `host` |
//! | the host writes the result to the caller's stream `{prefix}:{alias}:results:{caller}`, and acknowledges and deletes the call, in one transaction | `host`, `entry` |
//! | the caller's receiver reads the result (`XREAD`), deletes it, and hands it to the call's handle once | `caller` |
//!
//! What Redis holds and why: `entry` (the fields of calls and results), `link` (a
//! connection that reconnects, the Redis clock in which deadlines are written).

mod caller;
mod entry;
mod host;
mod link;

use std::time::Duration;

#[doc(hidden)]
pub use self::caller::remote_builder;
pub use self::caller::{RemoteBuilder, RemotePool};
pub use self::caller::{RemoteCall, RemoteMethodStats, RemoteStats};
pub use self::host::Host;
pub(crate) use self::host::HostSettings;

/// Why [`crate::Builder::serve`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The local pool could not start.
    #[error(transparent)]
    Start(#[from] crate::error::StartError),
    /// Redis could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// The consumer group of the hosts of a pool, on its calls stream and on each host's control
/// stream.
const GROUP: &str = "hosts";

/// The default prefix of stream names.
pub(crate) const DEFAULT_PREFIX: &str = "forkworker";

/// The default largest encoded arguments (or return value) a call may carry through Redis.
pub const DEFAULT_PAYLOAD_LIMIT: usize = 16 << 20;

/// The default visibility time: how long a call may sit unacknowledged, its host silent,
/// before another host claims it. A host refreshes its claims four times as often.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// The default number of deliveries after which a call whose hosts keep dying running it
/// ends [`crate::CallError::Poisoned`] instead of being run again (the seed's `retries > 3`).
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;

/// The default time results wait in Redis for a caller that stopped reading them.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(600);

/// The default time a connected pool keeps trying to reach Redis before its calls fail with
/// [`crate::CallError::Remote`].
pub const DEFAULT_REDIS_RETRY: Duration = Duration::from_secs(10);

/// The names of one pool's keys in Redis.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    base: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, alias: &str) -> Keys {
        Keys {
            base: format!("{prefix}:{alias}"),
        }
    }

    /// The stream of calls, read by the hosts' group.
    pub(crate) fn calls(&self) -> String {
        format!("{}:calls", self.base)
    }

    /// A host's control stream (cancels of the calls it runs).
    pub(crate) fn control(&self, host: &str) -> String {
        format!("{}:host:{host}", self.base)
    }

    /// A caller's results stream.
    pub(crate) fn results(&self, caller: &str) -> String {
        format!("{}:results:{caller}", self.base)
    }
}

/// Why a pool across machines could not start, or a call could not reach Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The URL is not one the Redis client understands, or the TLS settings do not fit it
    /// (a root CA that holds no certificate, or one given with a `redis://` URL).
    #[error("invalid Redis URL {url}: {reason}")]
    Url {
        /// The URL, its password left out.
        url: String,
        /// The client's explanation.
        reason: String,
    },
    /// Redis could not be reached or refused the connection (authentication, TLS).
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The URL, its password left out.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Redis answered a command with an error, or with a reply this build does not
    /// understand.
    #[error("Redis at {url} failed {command}: {reason}")]
    Command {
        /// The URL, its password left out.
        url: String,
        /// The command.
        command: &'static str,
        /// Redis's error, or what was wrong with its reply.
        reason: String,
    },
    /// Redis stayed unreachable for longer than the pool's retry time.
    #[error("Redis at {url} was unreachable for {waited:?}: {reason}")]
    Gone {
        /// The URL, its password left out.
        url: String,
        /// How long the call waited for it.
        waited: Duration,
        /// The last failure.
        reason: String,
    },
    /// The pool's local part (a host's forked pool, a thread) could not start.
    #[error("the pool could not start: {0}")]
    Start(String),
}

/// Starts a thread of a host or a connected pool.
pub(crate) fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, RemoteError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| RemoteError::Start(format!("cannot start thread {name}: {e}")))
}

/// 16 random hex digits (from the kernel's random source): call ids and host names made
/// of them are unique across machines.
pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No random source: the clock and the process id still tell processes apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (t ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's name, for host ids.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_prefix_and_alias() {
        let keys = Keys::new("app", "Parser");
        assert_eq!(keys.calls(), "app:Parser:calls");
        assert_eq!(keys.control("h1"), "app:Parser:host:h1");
        assert_eq!(keys.results("c1"), "app:Parser:results:c1");
    }

    #[test]
    fn random_ids_differ() {
        let a = random_hex();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex());
    }
}
