//! [`Builder`]: the settings and callbacks of a shared pool, then [`Builder::start`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::{Handler, Inner, Life, SharedPool, State, driver};
use crate::call::{Call, Log};
use crate::callbacks::{Callbacks, On};
use crate::config::{ForkStrategy, Recycle};
use crate::engine::{Configured, Engine};
use crate::error::{OsError, PoolError, StartError};
use crate::remote::{Host, HostSettings, ServeError};
use crate::sandbox::Sandbox;
use crate::worker::Worker;

/// The settings of a shared pool before it starts (see `SharedPool::builder`). The
/// settings mean what they mean on the mediator (see `Mediator`'s setters of the same
/// names).
///
/// ```no_run
/// use std::time::Duration;
/// use forkworker_core::closure::FnPool;
///
/// let pool = FnPool::builder("Double", |n: u64| n * 2)
///     .workers(2)
///     .timeout(Duration::from_secs(2))
///     .on_return(|call, log| log.info(format_args!("call {} returned", call.id())))
///     .start()?;
/// assert_eq!(pool.call(21).wait()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `P` is the face [`Builder::start`] returns: the generated `XPool` for `XPool::builder`,
/// [`SharedPool`] itself for `SharedPool::builder`.
#[must_use = "a builder does nothing until start()"]
pub struct Builder<W: Worker + Send + 'static, P = SharedPool<W>> {
    base: Configured<W>,
    callbacks: Callbacks<Handler<W>>,
    fail_fast: bool,
    wrap: fn(SharedPool<W>) -> P,
    /// The settings of [`Builder::serve`].
    host: HostSettings,
}

/// A builder whose `start` returns `wrap(pool)`: how a generated `XPool::builder` makes one.
#[doc(hidden)]
pub fn builder<W: Worker + Send + 'static, P>(
    alias: impl Into<String>,
    value: W,
    wrap: fn(SharedPool<W>) -> P,
) -> Builder<W, P> {
    Builder {
        base: Configured::new(alias.into(), value),
        callbacks: Callbacks::default(),
        fail_fast: false,
        wrap,
        host: HostSettings {
            prefix: crate::remote::DEFAULT_PREFIX.to_owned(),
            visibility: crate::remote::DEFAULT_VISIBILITY,
            max_deliveries: crate::remote::DEFAULT_MAX_DELIVERIES,
            payload_limit: crate::remote::DEFAULT_PAYLOAD_LIMIT,
            result_ttl: crate::remote::DEFAULT_RESULT_TTL,
            root_ca: None,
        },
    }
}

impl<W: Worker + Send + 'static, P> Builder<W, P> {
    /// The number of worker processes (at least 1; default 1).
    pub fn workers(mut self, count: usize) -> Self {
        self.base.config.workers = count.max(1);
        self
    }

    /// The time a call may run before its worker is killed and the call ends
    /// [`crate::CallStatus::Timeout`]. The pool's own thread enforces it, whatever the
    /// program does meanwhile. No timeout by default; always set a plausible one.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.base.config.timeout = Some(timeout);
        self
    }

    /// How many finished calls' status and timings [`SharedPool::status`] still gives after
    /// their handles are gone (default 1,024).
    pub fn status_history(mut self, calls: usize) -> Self {
        self.base.status_history(calls);
        self
    }

    /// How long a worker may stay idle before it exits, while more than
    /// [`Builder::min_workers`] are left; it is forked again when calls come (see
    /// `Mediator::idle_timeout`). Off by default. The pool's thread wakes for it.
    pub fn idle_timeout(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.base.config.idle_timeout = idle.into();
        self
    }

    /// How many workers an idle timeout leaves running (default 0).
    pub fn min_workers(mut self, count: usize) -> Self {
        self.base.config.min_workers = count;
        self
    }

    /// The size in bytes of the store and of each worker's area (default 8 MiB); see
    /// `Mediator::malloc`.
    pub fn malloc(mut self, bytes: usize) -> Self {
        self.base.config.malloc = bytes;
        self
    }

    /// When workers are forked; see [`ForkStrategy`].
    pub fn strategy(mut self, strategy: ForkStrategy) -> Self {
        self.base.config.strategy = strategy;
        self
    }

    /// When workers retire and are replaced; see [`Recycle`].
    pub fn recycle(mut self, recycle: Recycle) -> Self {
        self.base.config.recycle = recycle;
        self
    }

    /// The memory each worker may use; see `Mediator::memory_limit`.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.base.config.memory_limit = Some(bytes);
        self
    }

    /// The CPU time one call may use; see `Mediator::cpu_limit`.
    pub fn cpu_limit(mut self, limit: Duration) -> Self {
        self.base.config.cpu_limit = Some(limit);
        self
    }

    /// Confines every worker after its `setup`; see `Mediator::sandbox`.
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.base.config.sandbox = Some(sandbox);
        self
    }

    /// Lets workers inherit descriptor `fd`; see `Mediator::inherit_fd`.
    pub fn inherit_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.base.config.inherit_fds.push(fd);
        self
    }

    /// How long running calls may go on when the pool stops because its last clone was
    /// dropped (default 5 s); [`SharedPool::shutdown`] takes its own.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.base.config.grace = grace;
        self
    }

    /// When shared memory or the call table is full: by default (`false`) a call waits for
    /// room (an awaited one without blocking its executor; the proxy never blocks); with
    /// `true` it fails at once with [`crate::CallError::OutOfMemory`] or
    /// [`crate::CallError::TooManyCalls`]. A call larger than the whole allocation fails at
    /// once either way ([`crate::CallError::TooLarge`]).
    pub fn fail_when_full(mut self, fail: bool) -> Self {
        self.fail_fast = fail;
        self
    }

    /// The callback for calls that returned. It runs on the pool's thread (see
    /// "Callbacks" on [`SharedPool`]); the call's handle still gets the result afterwards.
    pub fn on_return(
        mut self,
        handler: impl Fn(&Call<'_, W>, Log<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Return, Box::new(handler));
        self
    }

    /// The callback for calls that timed out (their worker was killed).
    pub fn on_timeout(
        mut self,
        handler: impl Fn(&Call<'_, W>, Log<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Timeout, Box::new(handler));
        self
    }

    /// The callback for calls that failed otherwise (crashed, panicked, failed, cancelled).
    pub fn on_error(
        mut self,
        handler: impl Fn(&Call<'_, W>, Log<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.set(On::Error, Box::new(handler));
        self
    }

    /// Starts the pool: runs `check_environment`, then, on a thread the pool owns (which
    /// drives it from then on), creates the shared memory and the fork server and, with
    /// [`ForkStrategy::Aggressive`], forks every worker.
    ///
    /// # Errors
    /// [`StartError::Environment`] with every problem `check_environment` reported, or
    /// [`StartError::Pool`] if the shared memory, an eventfd, the fork server or the pool's
    /// thread cannot be had. Nothing is left behind.
    pub fn start(self) -> Result<P, StartError> {
        let wrap = self.wrap;
        self.start_pool().map(wrap)
    }

    /// The prefix of the pool's stream names in Redis, for [`Builder::serve`] (default
    /// `forkworker`): a host takes the calls of `{prefix}:{alias}:calls`. Hosts and callers
    /// must agree on it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.host.prefix = prefix.into();
        self
    }

    /// For [`Builder::serve`]: how long a call may stay with a host that does not refresh its
    /// claim (it died, stalled, or lost Redis) before another host claims it and runs it
    /// (default 30 s, [`crate::remote::DEFAULT_VISIBILITY`]). A live host refreshes the claims
    /// of the calls it runs four times per visibility time, however long they run. Shorter
    /// recovers calls sooner; it must stay well above a host's longest pause (a slow Redis
    /// round trip, a stopped process) or live calls are run twice.
    pub fn visibility(mut self, visibility: Duration) -> Self {
        self.host.visibility = visibility.max(Duration::from_millis(100));
        self
    }

    /// For [`Builder::serve`]: after how many deliveries whose host died a call ends
    /// [`crate::CallError::Poisoned`] instead of being run again (default 3).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.host.max_deliveries = deliveries.max(1);
        self
    }

    /// For [`Builder::serve`]: the largest call arguments and return values a host takes and
    /// writes through Redis (default 16 MiB, [`crate::remote::DEFAULT_PAYLOAD_LIMIT`]); a
    /// larger return value ends its call [`crate::CallError::PayloadTooLarge`].
    pub fn payload_limit(mut self, bytes: usize) -> Self {
        self.host.payload_limit = bytes;
        self
    }

    /// For [`Builder::serve`]: how long results wait in Redis for a caller that stopped
    /// reading them before they expire (default 10 minutes).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.host.result_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// For [`Builder::serve`] with a `rediss://` URL: trust this certificate authority (PEM)
    /// instead of the system's.
    ///
    /// It replaces the system's roots (it does not add to them). Without it a `rediss://` URL
    /// trusts the system's roots, which `SSL_CERT_FILE` (a PEM file) or `SSL_CERT_DIR` can
    /// name, as for OpenSSL. With a `redis://` URL, or a `pem` that holds no certificate,
    /// [`Builder::serve`] fails with [`crate::remote::RemoteError::Url`].
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.host.root_ca = Some(pem.into());
        self
    }

    /// Starts the pool (as [`Builder::start`]) and serves it at `url` as a host of a pool
    /// across machines: its workers take the calls that callers make through
    /// `XPool::remote(alias).connect(url)`, the alias naming the pool in Redis.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use forkworker_core::closure::FnPool;
    ///
    /// let host = FnPool::builder("Double", |n: u64| n * 2)
    ///     .workers(4)
    ///     .timeout(Duration::from_secs(2))
    ///     .serve("redis://127.0.0.1:6379")?;
    /// // ... until the program ends:
    /// host.stop(Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// The URL is `redis://[[user]:password@]host:port[/db]`, or `rediss://...` for TLS, as
    /// for `XPool::remote(alias).connect(url)` (see there for the password and the
    /// certificates); errors show it with the password as `***`.
    ///
    /// Arguments and results travel through Redis as they are: in the clear on the network
    /// unless the URL is `rediss://`.
    ///
    /// # Errors
    /// [`ServeError::Start`] if the local pool cannot start, [`ServeError::Remote`] if Redis
    /// cannot be reached or refuses the connection (a wrong or missing password, a
    /// certificate it does not trust): the local pool is then stopped.
    pub fn serve(self, url: &str) -> Result<Host, ServeError> {
        let settings = self.host.clone();
        let grace = self.base.config.grace;
        let pool = self.start_pool()?;
        match Host::start(pool.clone(), url, settings, grace) {
            Ok(host) => Ok(host),
            Err(e) => {
                pool.shutdown(Duration::ZERO);
                Err(ServeError::Remote(e))
            }
        }
    }

    fn start_pool(self) -> Result<SharedPool<W>, StartError> {
        let Builder {
            base,
            callbacks,
            fail_fast,
            ..
        } = self;
        base.check()?;
        let mut base = base;
        base.own_thread = true;
        let nudge = crate::wake::eventfd().map_err(|e| StartError::Pool(PoolError::EventFd(e)))?;
        let alias = base.alias.clone();
        let inner = Arc::new(Inner {
            alias: alias.clone(),
            state: Mutex::new(State {
                engine: None,
                stopped: None,
                callbacks,
                wakers: Default::default(),
                orphans: Default::default(),
                life: Life::Open,
                asleep_until: None,
                nudged: false,
                fail_fast,
                backlog: Default::default(),
            }),
            nudge,
            driver: Mutex::new(None),
            driver_id: OnceLock::new(),
            posted: Default::default(),
        });
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let driven = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(thread_name(&alias))
            // The fork server is forked from this thread, and every worker from the server:
            // their main stack is this thread's, so as large as a program's usual one.
            .stack_size(DRIVER_STACK)
            .spawn(move || {
                let _ = driven.driver_id.set(std::thread::current().id());
                match Engine::start(base) {
                    Ok(mut engine) => {
                        engine.never_wait_for_room = true;
                        // The driver spins without the lock (see `driver::run`).
                        engine.no_parent_spin();
                        driven.lock().engine = Some(engine);
                        let _ = started_tx.send(Ok(()));
                        driver::run_guarded(driven);
                    }
                    Err(failed) => {
                        let (_, error) = *failed;
                        let _ = started_tx.send(Err(error));
                    }
                }
            });
        let handle = spawned.map_err(|e| StartError::Pool(PoolError::Thread(OsError::from(e))))?;
        match started_rx.recv() {
            Ok(Ok(())) => {
                *inner.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                Ok(SharedPool::from_inner(inner))
            }
            Ok(Err(error)) => {
                let _ = handle.join();
                Err(error)
            }
            Err(_) => {
                // The thread ended without a word: it panicked (in `Engine::start`).
                let _ = handle.join();
                Err(StartError::Pool(PoolError::Thread(OsError::from(
                    std::io::Error::other("the pool's thread panicked while starting it"),
                ))))
            }
        }
    }
}

/// The stack of the pool's thread, which the fork server and the workers inherit (address
/// space; pages are touched only as used).
const DRIVER_STACK: usize = 8 << 20;

/// The pool thread's name: `fw-` and the alias, cut to Linux's 15 bytes.
fn thread_name(alias: &str) -> String {
    let mut name = format!("fw-{alias}");
    while name.len() > 15 {
        name.pop();
    }
    name
}
