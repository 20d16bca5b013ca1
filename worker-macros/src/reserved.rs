// The public methods of the two generated faces: of `{Type}Mediator`, its constructor, every
// public method of `Mediator` (reached through `Deref`) and the `Deref`/`DerefMut` methods
// themselves; of `{Type}Pool`, its `builder`, every public method of `SharedPool` (reached
// through `Deref`) and `clone`; and of a connected `{Type}Pool`, `remote` and every public
// method of `RemotePool`. A proxy method with one of these names would hide a face's
// own method, so the macro rejects it.
//
// `tests/reserved.rs` (root package) `include!`s this file and checks the list against
// `worker-core/src/mediator.rs` and `worker-core/src/shared/mod.rs`: keep this file a single
// constant.

/// Names a proxied method may not have.
pub const RESERVED: &[&str] = &[
    "new",
    "workers",
    "timeout",
    "idle_timeout",
    "min_workers",
    "malloc",
    "strategy",
    "recycle",
    "memory_limit",
    "cpu_limit",
    "inherit_fd",
    "persist",
    "recover",
    "suspend",
    "suspend_with",
    "grace",
    "sandbox",
    "on_return",
    "on_timeout",
    "on_error",
    "start",
    "is_idle",
    "status",
    "timings",
    "retry",
    "wait",
    "wait_timeout",
    "wait_all",
    "wait_any",
    "status_history",
    "poll",
    "poll_with",
    "inline",
    "alias",
    "pending",
    "pids",
    "worker_pid",
    "errors",
    "stats",
    "shutdown",
    "deref",
    "deref_mut",
    "builder",
    "clone",
    "close",
    "is_open",
    "remote",
    "caller_id",
];
