//! Tasks: closures run once each in a forked process of their own (the seed's Task API, its
//! ad-hoc background processes).
//!
//! [`Tasks::spawn`] forks a process that runs the closure and exits; the closure's return
//! value comes back, encoded with postcard, through a pipe. The parent is told of the end
//! through the task's pidfd, so a crash is noticed at once; a task that panics, crashes or
//! exits without a value ends with a [`TaskError`] naming how its process ended. A task may
//! have a timeout, after which it is killed. Dropping [`Tasks`] kills and reaps the tasks
//! still running.
//!
//! Results are delivered once each, as with worker calls: to the task's own callback
//! ([`Tasks::spawn_then`]) or to [`Tasks::on_done`], when the supervisor is driven
//! ([`Tasks::poll`], [`Tasks::wait`]); a task with no callback keeps its result until
//! [`Tasks::wait`] takes it.
//!
//! ```
//! use forkworker_core::task::{TaskError, Tasks};
//! use std::time::Duration;
//!
//! let mut tasks = Tasks::new("Tasks");
//! tasks.timeout(Duration::from_secs(10));
//! let numbers: Vec<u64> = (1..=100).collect();
//! // The closure may borrow: it runs in the child, on the child's copy of `numbers`.
//! let id = tasks.spawn(|| numbers.iter().sum::<u64>())?;
//! assert_eq!(tasks.wait(id, Duration::from_secs(10))?, 5050);
//!
//! let id = tasks.spawn(|| -> u8 { panic!("no luck") })?;
//! match tasks.wait(id, Duration::from_secs(10)) {
//!     // "no luck (at src/main.rs:7:33)": the message, and where the closure panicked.
//!     Err(TaskError::Panicked { message, .. }) => assert!(message.starts_with("no luck (at ")),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), TaskError>(())
//! ```
//!
//! # Output limit
//! A task's value is read into the parent's memory, so the parent bounds it: a task whose
//! message (its encoded value, or its panic text, plus a 9-byte header) would pass
//! [`Tasks::output_limit`] (default [`DEFAULT_OUTPUT_LIMIT`], 16 MiB) is killed as soon as
//! the parent sees it, from the length the message announces or from the bytes that came,
//! and ends with [`TaskError::OutputLimit`]. What it wrote is dropped. It is killed rather
//! than drained: its value could not be delivered anyway, and a task that kept writing
//! would otherwise keep the parent reading, or sit blocked on a full pipe until its
//! timeout. The parent holds at most the limit per running task.
//!
//! # In an event loop
//! A daemon's loop sleeps in `poll(2)` on [`Tasks::wake_fds`] (readable when a task ended or
//! wrote part of its value), until [`Tasks::next_deadline`] at the latest, then calls
//! [`Tasks::poll`], which reads, reaps, enforces timeouts and runs the callbacks.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::{ExitCause, Log};
use crate::error::{SpawnError, WireError};
use crate::id::{Id, TaskOf};
use crate::process::{self, Child};
use crate::wire;

/// The first byte of a task's message: what follows.
const TAG_VALUE: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_WIRE: u8 = 2;
/// A message is a tag, a little-endian u64 length, and that many bytes.
const HEADER: usize = 9;

/// Exit code of a task whose closure panicked.
const EXIT_PANIC: i32 = 101;
/// Exit code of a task whose return value could not be encoded.
const EXIT_WIRE: i32 = 102;
/// Exit code of a task that could not write its value to the parent.
const EXIT_PIPE: i32 = 103;

/// The default of [`Tasks::output_limit`]: 16 MiB, the most a task's message (its encoded
/// value and a 9-byte header) may take in the parent.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;

/// The id of a task whose closure returns `R`. Returned by [`Tasks::spawn`]; pass it to
/// [`Tasks::wait`] for the typed result.
///
/// Ids are unique within one [`Tasks`] for its lifetime, and increase in spawn order. An
/// [`Id`]: a number with a kind, cheap to copy.
pub type TaskId<R> = Id<TaskOf<R>>;

/// Why a task gave no value.
///
/// Variants may be added: a `match` needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task's process could not be forked.
    #[error("the task could not start: {0}")]
    Spawn(#[source] SpawnError),
    /// The closure panicked.
    #[error("task {id} panicked in process {pid}: {message}")]
    Panicked {
        /// The task id.
        id: u64,
        /// The task's process id.
        pid: i32,
        /// The panic message, with where it panicked: `no luck (at src/main.rs:7:33)`.
        message: String,
    },
    /// The process ended without writing a whole value: it crashed (a signal), called
    /// `exit`, or was killed by someone else.
    #[error("task {id} (process {pid}) ended without a value: {cause}")]
    Died {
        /// The task id.
        id: u64,
        /// The task's process id.
        pid: i32,
        /// How the process ended.
        cause: ExitCause,
    },
    /// The task ran longer than its timeout; its process was killed.
    #[error("task {id} ran longer than its timeout of {timeout:?}; process {pid} was killed")]
    Timeout {
        /// The task id.
        id: u64,
        /// The task's process id.
        pid: i32,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The task's message (its encoded value or panic text) would pass the output limit
    /// ([`Tasks::output_limit`]): its process was killed and what it wrote dropped.
    #[error(
        "task {id} (process {pid}) wrote more than its output limit of {limit} bytes; it was killed and its output dropped"
    )]
    OutputLimit {
        /// The task id.
        id: u64,
        /// The task's process id.
        pid: i32,
        /// The limit in force, in bytes.
        limit: usize,
    },
    /// The task was killed by [`Tasks::kill`].
    #[error("task {id} (process {pid}) was killed before it returned")]
    Killed {
        /// The task id.
        id: u64,
        /// The task's process id.
        pid: i32,
    },
    /// The value could not be encoded in the task, or decoded in the parent.
    #[error("task {id}: {source}")]
    Wire {
        /// The task id.
        id: u64,
        /// What went wrong.
        #[source]
        source: WireError,
    },
    /// [`Tasks::wait`] gave up before the task ended. The task goes on.
    #[error("task {id} has not finished after waiting {waited:?}")]
    WaitTimeout {
        /// The task id.
        id: u64,
        /// How long `wait` waited.
        waited: Duration,
    },
    /// No task with this id is known: it never existed, or its result was already delivered.
    #[error("no pending result for task {0}: unknown id, or its result was already delivered")]
    Unknown(u64),
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Its process is running.
    Running,
    /// It returned a value, not yet delivered.
    Returned,
    /// It ended without a value, not yet delivered.
    Failed,
}

/// A finished task, as handed to the callbacks.
#[derive(Debug)]
pub struct TaskDone<'a> {
    id: u64,
    pid: i32,
    elapsed: Duration,
    result: &'a Result<Vec<u8>, TaskError>,
}

impl TaskDone<'_> {
    /// The task id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this is task `id`.
    pub fn is<R>(&self, id: TaskId<R>) -> bool {
        self.id == id.raw()
    }

    /// The process id the task ran in.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How long the task took, from the fork to the moment its end was noticed.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Why the task gave no value, if it gave none.
    pub fn error(&self) -> Option<&TaskError> {
        self.result.as_ref().err()
    }

    /// The encoded return value (postcard), if the task returned.
    pub fn bytes(&self) -> Option<&[u8]> {
        self.result.as_deref().ok()
    }

    /// The return value decoded as `R`, or why there is none.
    pub fn value<R: DeserializeOwned>(&self) -> Result<R, TaskError> {
        decode(self.id, self.result)
    }
}

fn decode<R: DeserializeOwned>(
    id: u64,
    result: &Result<Vec<u8>, TaskError>,
) -> Result<R, TaskError> {
    match result {
        Ok(bytes) => wire::decode(bytes).map_err(|source| TaskError::Wire { id, source }),
        Err(e) => Err(e.clone()),
    }
}

type DoneHandler = Box<dyn FnMut(&TaskDone<'_>, Log<'_>)>;
type Then = Box<dyn FnOnce(&TaskDone<'_>, Log<'_>)>;

struct Running {
    child: Child,
    /// The read end of the task's pipe, until it reaches end of file.
    pipe: Option<OwnedFd>,
    /// What the task wrote so far, never more than `limit` bytes.
    buf: Vec<u8>,
    /// The output limit in force for this task.
    limit: usize,
    /// Set once the task wrote, or announced, more than `limit`: it is to be killed.
    over_limit: bool,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

enum State {
    Running(Running),
    Finished {
        result: Result<Vec<u8>, TaskError>,
        ended: Instant,
    },
}

struct Task {
    pid: i32,
    started: Instant,
    state: State,
    /// `wait` is waiting for this task: keep its result after the callbacks.
    awaited: bool,
    then: Option<Then>,
}

/// A supervisor of tasks: closures run once each in a forked process that exits when done.
///
/// See the [module documentation](self). A `Tasks` is not `Send`: its processes are killed
/// when the thread that forked them exits (Linux's parent-death signal follows the forking
/// thread).
pub struct Tasks {
    alias: String,
    timeout: Option<Duration>,
    output_limit: usize,
    on_done: Option<DoneHandler>,
    tasks: BTreeMap<u64, Task>,
    /// Tasks that finished and whose callbacks have not run yet, in order.
    finished: Vec<u64>,
    next_id: u64,
    /// Whether the warning about forking from a threaded process was logged.
    warned_threads: bool,
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks")
            .field("alias", &self.alias)
            .field("timeout", &self.timeout)
            .field("output_limit", &self.output_limit)
            .field("running", &self.running())
            .field("held", &(self.tasks.len() - self.running()))
            .finish()
    }
}

/// Creates a pipe: (read end, non-blocking; write end, blocking).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh fds that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok((read, write))
}

/// Writes all of `bytes` to `fd`, retrying short and interrupted writes.
fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// What the task process runs: the closure, then one message to the parent, then `_exit`.
fn task_main<R: Serialize>(f: impl FnOnce() -> R, fd: RawFd) -> std::convert::Infallible {
    crate::process::in_child();
    crate::panics::record_locations();
    let outcome = catch_unwind(AssertUnwindSafe(|| wire::encode_to_vec(&f())));
    let (tag, body, code) = match outcome {
        Ok(Ok(bytes)) => (TAG_VALUE, bytes, 0),
        Ok(Err(e)) => (TAG_WIRE, e.to_string().into_bytes(), EXIT_WIRE),
        Err(payload) => (
            TAG_PANIC,
            crate::panics::with_location(
                crate::panics::panic_message(payload.as_ref()),
                crate::panics::take_location(),
            )
            .into_bytes(),
            EXIT_PANIC,
        ),
    };
    let mut message = Vec::with_capacity(HEADER + body.len());
    message.push(tag);
    message.extend_from_slice(&(body.len() as u64).to_le_bytes());
    message.extend_from_slice(&body);
    let code = if write_all(fd, &message) {
        code
    } else {
        EXIT_PIPE
    };
    // SAFETY: leaving the forked process without running any destructor of the parent's
    // objects, as workers do.
    unsafe { libc::_exit(code) }
}

/// Reads what the task wrote so far, without blocking, keeping at most `run.limit` bytes:
/// past it (or once the header announces more), sets `over_limit`, drops what came and
/// stops reading.
fn drain(run: &mut Running) {
    let Some(fd) = &run.pipe else { return };
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // SAFETY: reading into a valid buffer from a non-blocking fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            let had = run.buf.len();
            let n = n as usize;
            if n > run.limit.saturating_sub(had) {
                give_up(run);
                return;
            }
            run.buf.extend_from_slice(&chunk[..n]);
            if had < HEADER && run.buf.len() >= HEADER {
                // The length the message announces: refuse it at once if it is too long,
                // else make room for it in one allocation (no doubling past the limit).
                let announced = u64::from_le_bytes(run.buf[1..HEADER].try_into().expect("8"));
                match usize::try_from(announced)
                    .ok()
                    .and_then(|a| a.checked_add(HEADER))
                    .filter(|&total| total <= run.limit)
                {
                    Some(total) => run.buf.reserve_exact(total.saturating_sub(run.buf.len())),
                    None => {
                        give_up(run);
                        return;
                    }
                }
            }
            continue;
        }
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                _ => {}
            }
        }
        // End of file (or a broken fd): nothing more will come.
        run.pipe = None;
        return;
    }
}

/// The task passed its output limit: drop what it wrote and stop reading.
fn give_up(run: &mut Running) {
    run.over_limit = true;
    run.buf = Vec::new();
    run.pipe = None;
}

/// The result of a task whose process ended with `cause`, having written `buf`.
fn outcome(id: u64, pid: i32, mut buf: Vec<u8>, cause: ExitCause) -> Result<Vec<u8>, TaskError> {
    let whole = buf.len() >= HEADER
        && u64::from_le_bytes(buf[1..HEADER].try_into().expect("8 bytes"))
            == (buf.len() - HEADER) as u64;
    if !whole {
        return Err(TaskError::Died { id, pid, cause });
    }
    let tag = buf[0];
    let body = buf.split_off(HEADER);
    match tag {
        TAG_VALUE => Ok(body),
        TAG_PANIC => Err(TaskError::Panicked {
            id,
            pid,
            message: String::from_utf8_lossy(&body).into_owned(),
        }),
        TAG_WIRE => Err(TaskError::Wire {
            id,
            source: WireError::Remote(String::from_utf8_lossy(&body).into_owned()),
        }),
        _ => Err(TaskError::Died { id, pid, cause }),
    }
}

impl Tasks {
    /// A supervisor named `alias` (the target of its log lines), with no timeout.
    pub fn new(alias: impl Into<String>) -> Self {
        Tasks {
            alias: alias.into(),
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            on_done: None,
            tasks: BTreeMap::new(),
            finished: Vec::new(),
            next_id: 1,
            warned_threads: false,
        }
    }

    /// The alias given to [`Tasks::new`].
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Sets the time a task spawned from now on may run before its process is killed
    /// (SIGKILL) and it ends with [`TaskError::Timeout`]; `None` for no limit (the default).
    /// Enforced whenever the supervisor is driven ([`Tasks::poll`], [`Tasks::wait`]).
    pub fn timeout(&mut self, timeout: impl Into<Option<Duration>>) -> &mut Self {
        self.timeout = timeout.into();
        self
    }

    /// Sets the most bytes a task spawned from now on may write to the parent: its encoded
    /// value (or panic text) plus a 9-byte header. Default [`DEFAULT_OUTPUT_LIMIT`]
    /// (16 MiB). A task that passes it is killed at once and ends with
    /// [`TaskError::OutputLimit`]; see the [module documentation](self#output-limit).
    ///
    /// ```
    /// use forkworker_core::task::{TaskError, Tasks};
    /// use std::time::Duration;
    ///
    /// let mut tasks = Tasks::new("Tasks");
    /// tasks.output_limit(1 << 10);
    /// let id = tasks.spawn(|| "x".repeat(4 << 10))?;
    /// match tasks.wait(id, Duration::from_secs(10)) {
    ///     Err(TaskError::OutputLimit { limit, .. }) => assert_eq!(limit, 1 << 10),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), TaskError>(())
    /// ```
    pub fn output_limit(&mut self, bytes: usize) -> &mut Self {
        self.output_limit = bytes;
        self
    }

    /// Sets the callback for every task that ends and has no callback of its own. It runs in
    /// the parent when the supervisor is driven; [`TaskDone::value`] decodes the value.
    pub fn on_done(&mut self, handler: impl FnMut(&TaskDone<'_>, Log<'_>) + 'static) -> &mut Self {
        self.on_done = Some(Box::new(handler));
        self
    }

    /// Forks a process that runs `f` once and exits, and returns the task's id at once.
    ///
    /// `f` runs in the child on the child's copy of everything it captures or borrows; its
    /// return value comes back encoded with postcard. The child restores the default actions
    /// of the signals [`crate::signals::Signals`] handles (SIGINT ignored), dies with the
    /// parent, and leaves with `_exit`: no destructor of the parent's objects runs in it.
    ///
    /// # Errors
    /// [`TaskError::Spawn`] if the process cannot be forked.
    pub fn spawn<R, F>(&mut self, f: F) -> Result<TaskId<R>, TaskError>
    where
        F: FnOnce() -> R,
        R: Serialize + DeserializeOwned,
    {
        let id = self.fork(f)?;
        Ok(TaskId::new(id))
    }

    /// As [`Tasks::spawn`], with a callback of its own that gets the task's typed result
    /// (instead of [`Tasks::on_done`]) when the supervisor is driven.
    ///
    /// ```
    /// use forkworker_core::task::Tasks;
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    ///
    /// let mut tasks = Tasks::new("Tasks");
    /// let got = Rc::new(Cell::new(0));
    /// let sink = got.clone();
    /// tasks.spawn_then(|| 6 * 7, move |result: Result<u32, _>, _log| sink.set(result.unwrap()))?;
    /// while got.get() == 0 {
    ///     tasks.poll();
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(got.get(), 42);
    /// # Ok::<(), forkworker_core::task::TaskError>(())
    /// ```
    ///
    /// # Errors
    /// [`TaskError::Spawn`] if the process cannot be forked.
    pub fn spawn_then<R, F, C>(&mut self, f: F, then: C) -> Result<TaskId<R>, TaskError>
    where
        F: FnOnce() -> R,
        R: Serialize + DeserializeOwned + 'static,
        C: FnOnce(Result<R, TaskError>, Log<'_>) + 'static,
    {
        let id = self.spawn(f)?;
        if let Some(task) = self.tasks.get_mut(&id.raw()) {
            task.then = Some(Box::new(move |done: &TaskDone<'_>, log| {
                then(done.value::<R>(), log)
            }));
        }
        Ok(id)
    }

    fn fork<R: Serialize>(&mut self, f: impl FnOnce() -> R) -> Result<u64, TaskError> {
        if !self.warned_threads
            && let Some(threads) = process::thread_count().filter(|&n| n > 1)
        {
            self.warned_threads = true;
            log::warn!(target: &self.alias,
                "forking a task from a process with {threads} threads: it can inherit a lock another thread held at the fork");
        }
        let (read, write) = pipe().map_err(|e| TaskError::Spawn(SpawnError::Channel(e.into())))?;
        let fd = write.as_raw_fd();
        let child = process::spawn(move || task_main(f, fd)).map_err(TaskError::Spawn)?;
        drop(write);
        let id = self.next_id;
        self.next_id += 1;
        let started = Instant::now();
        self.tasks.insert(
            id,
            Task {
                pid: child.pid(),
                started,
                state: State::Running(Running {
                    child,
                    pipe: Some(read),
                    buf: Vec::new(),
                    limit: self.output_limit,
                    over_limit: false,
                    deadline: self.timeout.map(|t| started + t),
                    timeout: self.timeout,
                }),
                awaited: false,
                then: None,
            },
        );
        Ok(id)
    }

    /// Reads what tasks wrote, reaps the ones that ended, kills the ones past their timeout,
    /// and runs the callbacks, without blocking. Returns how many tasks ended (or were
    /// killed by [`Tasks::kill`]) since the last poll.
    pub fn poll(&mut self) -> usize {
        let now = Instant::now();
        for (&id, task) in self.tasks.iter_mut() {
            let State::Running(run) = &mut task.state else {
                continue;
            };
            drain(run);
            let result = if run.over_limit {
                run.child.kill();
                log::warn!(target: &self.alias,
                    "task {id} wrote more than its output limit of {} bytes; process {} was killed", run.limit, task.pid);
                Err(TaskError::OutputLimit {
                    id,
                    pid: task.pid,
                    limit: run.limit,
                })
            } else if let Some(cause) = run.child.try_reap() {
                // Everything the task wrote before it exited is in the pipe now.
                drain(run);
                if run.over_limit {
                    Err(TaskError::OutputLimit {
                        id,
                        pid: task.pid,
                        limit: run.limit,
                    })
                } else {
                    outcome(id, task.pid, std::mem::take(&mut run.buf), cause)
                }
            } else if let (Some(deadline), Some(timeout)) = (run.deadline, run.timeout)
                && now >= deadline
            {
                run.child.kill();
                log::warn!(target: &self.alias,
                    "task {id} ran longer than its timeout of {timeout:?}; process {} was killed", task.pid);
                Err(TaskError::Timeout {
                    id,
                    pid: task.pid,
                    timeout,
                })
            } else {
                continue;
            };
            task.state = State::Finished {
                result,
                ended: Instant::now(),
            };
            self.finished.push(id);
        }
        self.fire_callbacks()
    }

    /// Runs the callbacks of finished tasks, in order; releases the delivered ones. Returns
    /// how many finished tasks it saw.
    fn fire_callbacks(&mut self) -> usize {
        let finished = std::mem::take(&mut self.finished);
        let count = finished.len();
        for id in finished {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let State::Finished { result, ended } = &task.state else {
                continue;
            };
            let done = TaskDone {
                id,
                pid: task.pid,
                elapsed: ended.saturating_duration_since(task.started),
                result,
            };
            let log = Log::new(&self.alias);
            if let Some(then) = task.then.take() {
                then(&done, log);
            } else if let Some(handler) = self.on_done.as_mut() {
                handler(&done, log);
            } else {
                continue;
            }
            if !task.awaited {
                self.tasks.remove(&id);
            }
        }
        count
    }

    /// Blocks until task `id` ends or `timeout` passes, driving the other tasks (and the
    /// callbacks) meanwhile, and returns the typed result.
    ///
    /// # Errors
    /// Why the task gave no value; [`TaskError::WaitTimeout`] if it is still running (it
    /// goes on); [`TaskError::Unknown`] if its result was already delivered to a callback
    /// before this wait began, or taken by an earlier wait.
    pub fn wait<R: DeserializeOwned>(
        &mut self,
        id: TaskId<R>,
        timeout: Duration,
    ) -> Result<R, TaskError> {
        let raw = id.raw();
        let start = Instant::now();
        let deadline = start + timeout;
        match self.tasks.get_mut(&raw) {
            Some(task) => task.awaited = true,
            None => return Err(TaskError::Unknown(raw)),
        }
        loop {
            self.poll();
            let Some(task) = self.tasks.get_mut(&raw) else {
                return Err(TaskError::Unknown(raw));
            };
            if let State::Finished { result, .. } = &task.state {
                let value = decode(raw, result);
                self.tasks.remove(&raw);
                return value;
            }
            let now = Instant::now();
            if now >= deadline {
                task.awaited = false;
                return Err(TaskError::WaitTimeout {
                    id: raw,
                    waited: now - start,
                });
            }
            let until = self.next_deadline().map_or(deadline, |d| d.min(deadline));
            let ms = until
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32;
            process::poll_readable(&self.wake_fds(), ms);
        }
    }

    /// Kills a running task (SIGKILL) and reaps it; it ends with [`TaskError::Killed`],
    /// delivered when the supervisor is next driven. Returns whether the task was running.
    pub fn kill<R>(&mut self, id: TaskId<R>) -> bool {
        let Some(task) = self.tasks.get_mut(&id.raw()) else {
            return false;
        };
        let State::Running(run) = &mut task.state else {
            return false;
        };
        run.child.kill();
        task.state = State::Finished {
            result: Err(TaskError::Killed {
                id: id.raw(),
                pid: task.pid,
            }),
            ended: Instant::now(),
        };
        self.finished.push(id.raw());
        true
    }

    /// Where task `id` is, or `None` if it is unknown or its result was delivered.
    pub fn status<R>(&self, id: TaskId<R>) -> Option<TaskStatus> {
        Some(match &self.tasks.get(&id.raw())?.state {
            State::Running(_) => TaskStatus::Running,
            State::Finished { result: Ok(_), .. } => TaskStatus::Returned,
            State::Finished { result: Err(_), .. } => TaskStatus::Failed,
        })
    }

    /// The process id of task `id`, while the supervisor knows the task.
    pub fn pid<R>(&self, id: TaskId<R>) -> Option<i32> {
        self.tasks.get(&id.raw()).map(|t| t.pid)
    }

    /// The process ids of the running tasks.
    pub fn pids(&self) -> Vec<i32> {
        self.running_tasks().map(|(t, _)| t.pid).collect()
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.running_tasks().count()
    }

    /// True when no task is running.
    pub fn is_idle(&self) -> bool {
        self.running() == 0
    }

    fn running_tasks(&self) -> impl Iterator<Item = (&Task, &Running)> {
        self.tasks.values().filter_map(|t| match &t.state {
            State::Running(run) => Some((t, run)),
            State::Finished { .. } => None,
        })
    }

    /// The fds to sleep on in `poll(2)` for `POLLIN`: each running task's pidfd (readable
    /// once it ended) and pipe (readable when it wrote). Call [`Tasks::poll`] when one is
    /// readable: a task blocks writing a large value until the parent reads it.
    pub fn wake_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        for (_, run) in self.running_tasks() {
            fds.push(run.child.pidfd());
            if let Some(pipe) = &run.pipe {
                fds.push(pipe.as_fd());
            }
        }
        fds
    }

    /// The nearest task timeout, when [`Tasks::poll`] must run at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running_tasks().filter_map(|(_, r)| r.deadline).min()
    }
}

impl Drop for Tasks {
    /// Kills and reaps the tasks still running; results not delivered are dropped.
    fn drop(&mut self) {
        for task in self.tasks.values_mut() {
            if let State::Running(run) = &mut task.state {
                run.child.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u64).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_whole_message_is_a_value_a_panic_or_a_wire_error() {
        let ok = ExitCause::Exited(0);
        assert_eq!(
            outcome(1, 9, message(TAG_VALUE, b"ab"), ok),
            Ok(b"ab".to_vec())
        );
        assert_eq!(outcome(1, 9, message(TAG_VALUE, b""), ok), Ok(Vec::new()));
        assert_eq!(
            outcome(
                1,
                9,
                message(TAG_PANIC, b"boom"),
                ExitCause::Exited(EXIT_PANIC)
            ),
            Err(TaskError::Panicked {
                id: 1,
                pid: 9,
                message: "boom".into()
            })
        );
        assert!(matches!(
            outcome(1, 9, message(TAG_WIRE, b"bad"), ok),
            Err(TaskError::Wire {
                source: WireError::Remote(_),
                ..
            })
        ));
    }

    #[test]
    fn nothing_or_a_cut_message_is_a_death_with_its_cause() {
        let segv = ExitCause::Signaled(libc::SIGSEGV);
        let error = TaskError::Died {
            id: 2,
            pid: 7,
            cause: segv,
        };
        let died = Err(error.clone());
        assert_eq!(outcome(2, 7, Vec::new(), segv), died);
        let mut cut = message(TAG_VALUE, b"abcdef");
        cut.truncate(cut.len() - 1);
        assert_eq!(outcome(2, 7, cut, segv), died);
        assert_eq!(outcome(2, 7, vec![TAG_VALUE; 4], segv), died);
        assert_eq!(outcome(2, 7, message(9, b""), segv), died);
        let text = error.to_string();
        assert!(
            text.contains("SIGSEGV") && text.contains("without a value"),
            "{text}"
        );
    }

    #[test]
    fn done_decodes_typed_values_and_passes_errors_on() {
        let ok = Ok(wire::encode_to_vec(&vec![1u64, 2]).unwrap());
        let done = TaskDone {
            id: 3,
            pid: 1,
            elapsed: Duration::ZERO,
            result: &ok,
        };
        assert_eq!(done.value::<Vec<u64>>(), Ok(vec![1, 2]));
        assert!(matches!(
            done.value::<(u64, u64, u64, u64)>(),
            Err(TaskError::Wire { id: 3, .. })
        ));
        assert!(done.error().is_none() && done.bytes().is_some());
        let err = Err(TaskError::Killed { id: 3, pid: 1 });
        let done = TaskDone {
            result: &err,
            ..done
        };
        assert_eq!(done.value::<u8>(), Err(TaskError::Killed { id: 3, pid: 1 }));
        assert!(done.is(TaskId::<u8>::new(3)));
    }

    #[test]
    fn an_unknown_id_is_reported_without_blocking() {
        let mut tasks = Tasks::new("T");
        let id = TaskId::<u8>::new(5);
        assert_eq!(
            tasks.wait(id, Duration::from_secs(60)),
            Err(TaskError::Unknown(5))
        );
        assert!(!tasks.kill(id));
        assert!(tasks.is_idle() && tasks.wake_fds().is_empty() && tasks.next_deadline().is_none());
        assert_eq!(tasks.poll(), 0);
    }
}
