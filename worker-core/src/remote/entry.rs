//! What a call and a result look like in Redis: the fields of their stream entries, and how
//! a call's failure on a host travels back to its caller.
//!
//! A call (on `{prefix}:{alias}:calls`):
//!
//! | field | value |
//! |---|---|
//! | `v` | the protocol's version, `1` |
//! | `caller` | the caller's id (16 hex digits, random): with `seq`, unique across callers |
//! | `seq` | the call's number at its caller (its `CallId`) |
//! | `reply` | the caller's results stream |
//! | `fp` | [`crate::Worker::fingerprint`] of the caller's build, 16 hex digits |
//! | `m` | the method's index |
//! | `dl` | the deadline in Redis's clock (milliseconds since the epoch), `0` for none |
//! | `args` | the encoded arguments |
//!
//! A result (on the caller's stream): `seq`, `host` (the host's id), and either `ok` (the
//! encoded return value) or `err` (a [`Failure`], encoded).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::call::ExitCause;
use crate::error::{CallError, CancelReason, WireError};
use crate::limits::LimitMechanism;

/// The protocol's version: a host refuses a call of another.
pub(crate) const VERSION: &str = "1";

/// A call as it is read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallEntry {
    pub(crate) caller: String,
    pub(crate) seq: u64,
    pub(crate) reply: String,
    pub(crate) fingerprint: u64,
    pub(crate) method: u32,
    /// Redis milliseconds; `None`: no deadline.
    pub(crate) deadline: Option<u64>,
    pub(crate) args: Vec<u8>,
}

/// Why an entry of the calls stream is not a call this build can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Of another protocol version (its reply stream and number, if they could be read, so
    /// that the caller still gets an answer).
    Version {
        found: String,
        reply: Option<(String, u64)>,
    },
    /// A field is missing or malformed.
    Malformed(&'static str),
}

impl CallEntry {
    /// The entry's fields, for `XADD`: the arguments borrowed, not copied.
    pub(crate) fn fields(&self) -> Vec<(&'static str, Cow<'_, [u8]>)> {
        vec![
            ("v", Cow::Borrowed(VERSION.as_bytes())),
            ("caller", Cow::Borrowed(self.caller.as_bytes())),
            ("seq", Cow::Owned(self.seq.to_string().into_bytes())),
            ("reply", Cow::Borrowed(self.reply.as_bytes())),
            (
                "fp",
                Cow::Owned(format!("{:016x}", self.fingerprint).into_bytes()),
            ),
            ("m", Cow::Owned(self.method.to_string().into_bytes())),
            (
                "dl",
                Cow::Owned(self.deadline.unwrap_or(0).to_string().into_bytes()),
            ),
            ("args", Cow::Borrowed(&self.args)),
        ]
    }

    /// Reads an entry's fields back.
    pub(crate) fn parse(fields: &[(&str, &[u8])]) -> Result<CallEntry, Unreadable> {
        let get = |name: &'static str| {
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .ok_or(Unreadable::Malformed(name))
        };
        let text = |name: &'static str| {
            get(name).and_then(|v| std::str::from_utf8(v).map_err(|_| Unreadable::Malformed(name)))
        };
        let number = |name: &'static str| {
            text(name).and_then(|v| v.parse::<u64>().map_err(|_| Unreadable::Malformed(name)))
        };
        let version = text("v")?;
        if version != VERSION {
            let reply = text("reply").ok().zip(number("seq").ok());
            return Err(Unreadable::Version {
                found: version.to_owned(),
                reply: reply.map(|(r, s)| (r.to_owned(), s)),
            });
        }
        let fingerprint =
            u64::from_str_radix(text("fp")?, 16).map_err(|_| Unreadable::Malformed("fp"))?;
        let method = u32::try_from(number("m")?).map_err(|_| Unreadable::Malformed("m"))?;
        let deadline = number("dl")?;
        Ok(CallEntry {
            caller: text("caller")?.to_owned(),
            seq: number("seq")?,
            reply: text("reply")?.to_owned(),
            fingerprint,
            method,
            deadline: (deadline != 0).then_some(deadline),
            args: get("args")?.to_vec(),
        })
    }
}

/// A result as it is read back from a caller's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultEntry {
    pub(crate) seq: u64,
    pub(crate) host: String,
    pub(crate) outcome: Result<Vec<u8>, Failure>,
}

impl ResultEntry {
    /// The entry's fields, for `XADD`.
    #[cfg(test)]
    pub(crate) fn fields(&self) -> Vec<(&'static str, Cow<'_, [u8]>)> {
        result_fields(self.seq, &self.host, self.outcome.as_deref())
    }

    /// Reads an entry's fields back; `None` if they are not a result.
    pub(crate) fn parse(fields: &[(&str, &[u8])]) -> Option<ResultEntry> {
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let seq = std::str::from_utf8(get("seq")?).ok()?.parse().ok()?;
        let host = String::from_utf8_lossy(get("host").unwrap_or(b"?")).into_owned();
        let outcome = match (get("ok"), get("err")) {
            (Some(bytes), _) => Ok(bytes.to_vec()),
            (None, Some(err)) => {
                Err(
                    postcard::from_bytes(err).unwrap_or_else(|e| Failure::Other {
                        message: format!(
                            "an error the caller cannot decode ({e}): another version?"
                        ),
                    }),
                )
            }
            (None, None) => return None,
        };
        Some(ResultEntry { seq, host, outcome })
    }
}

/// The fields of a result entry (see [`ResultEntry`]), for `XADD`: the return value borrowed,
/// not copied.
pub(crate) fn result_fields<'a>(
    seq: u64,
    host: &'a str,
    outcome: Result<&'a [u8], &Failure>,
) -> Vec<(&'static str, Cow<'a, [u8]>)> {
    let last = match outcome {
        Ok(bytes) => ("ok", Cow::Borrowed(bytes)),
        // A failure is plain data: encoding it cannot fail.
        Err(failure) => (
            "err",
            Cow::Owned(postcard::to_allocvec(failure).unwrap_or_default()),
        ),
    };
    vec![
        ("seq", Cow::Owned(seq.to_string().into_bytes())),
        ("host", Cow::Borrowed(host.as_bytes())),
        last,
    ]
}

/// How a call failed on a host, as it travels to the caller: what a local [`CallError`]
/// says, without the method's name (the caller knows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    Panicked {
        pid: i32,
        message: String,
    },
    Crashed {
        pid: i32,
        cause: Cause,
        stderr: String,
    },
    MemoryLimit {
        pid: i32,
        limit: u64,
        /// 0: cgroup v2, 1: cgroup v1, 2: RLIMIT_DATA.
        mechanism: u8,
        cause: Cause,
        stderr: String,
    },
    CpuLimit {
        pid: i32,
        limit_ms: u64,
    },
    Timeout {
        pid: i32,
        timeout_ms: u64,
    },
    /// Cancelled on the host: by its caller (a cancel reached it), or by the host's shutdown.
    Cancelled {
        by_caller: bool,
    },
    TooLarge {
        needed: usize,
        allocation: usize,
    },
    ReturnTooLarge {
        needed: usize,
        available: usize,
        allocation: usize,
    },
    /// The host's build has another interface.
    Incompatible {
        theirs: u64,
    },
    /// The call's hosts died running it this many times.
    Poisoned {
        deliveries: u32,
    },
    /// A return larger than the payload limit.
    PayloadTooLarge {
        size: usize,
        limit: usize,
    },
    Wire {
        message: String,
    },
    Other {
        message: String,
    },
}

/// [`ExitCause`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Cause {
    Exited(i32),
    Signaled(i32),
    Sandbox(Option<i64>),
}

impl From<&ExitCause> for Cause {
    fn from(cause: &ExitCause) -> Cause {
        match *cause {
            ExitCause::Exited(code) => Cause::Exited(code),
            ExitCause::Signaled(sig) => Cause::Signaled(sig),
            ExitCause::Sandbox { syscall } => Cause::Sandbox(syscall),
        }
    }
}

impl From<Cause> for ExitCause {
    fn from(cause: Cause) -> ExitCause {
        match cause {
            Cause::Exited(code) => ExitCause::Exited(code),
            Cause::Signaled(sig) => ExitCause::Signaled(sig),
            Cause::Sandbox(syscall) => ExitCause::Sandbox {
                syscall: syscall.map(|s| s as libc::c_long),
            },
        }
    }
}

fn mechanism_code(m: LimitMechanism) -> u8 {
    match m {
        LimitMechanism::CgroupV2 => 0,
        LimitMechanism::CgroupV1 => 1,
        _ => 2,
    }
}

fn mechanism_of(code: u8) -> LimitMechanism {
    match code {
        0 => LimitMechanism::CgroupV2,
        1 => LimitMechanism::CgroupV1,
        _ => LimitMechanism::RlimitData,
    }
}

impl Failure {
    /// What a host's local pool said, for the caller.
    pub(crate) fn of(error: &CallError) -> Failure {
        match error {
            CallError::Panicked { pid, message, .. } => Failure::Panicked {
                pid: *pid,
                message: message.clone(),
            },
            CallError::Crashed {
                pid, cause, stderr, ..
            } => Failure::Crashed {
                pid: *pid,
                cause: cause.into(),
                stderr: stderr.clone(),
            },
            CallError::MemoryLimit {
                pid,
                limit,
                mechanism,
                cause,
                stderr,
                ..
            } => Failure::MemoryLimit {
                pid: *pid,
                limit: *limit,
                mechanism: mechanism_code(*mechanism),
                cause: cause.into(),
                stderr: stderr.clone(),
            },
            CallError::CpuLimit { pid, limit, .. } => Failure::CpuLimit {
                pid: *pid,
                limit_ms: limit.as_millis() as u64,
            },
            CallError::Timeout { pid, timeout, .. } => Failure::Timeout {
                pid: *pid,
                timeout_ms: timeout.as_millis() as u64,
            },
            CallError::Cancelled { reason, .. } => Failure::Cancelled {
                by_caller: *reason == CancelReason::ByCaller,
            },
            CallError::TooLarge {
                needed, allocation, ..
            } => Failure::TooLarge {
                needed: *needed,
                allocation: *allocation,
            },
            CallError::ReturnTooLarge {
                needed,
                available,
                allocation,
                ..
            } => Failure::ReturnTooLarge {
                needed: *needed,
                available: *available,
                allocation: *allocation,
            },
            CallError::Wire { source, .. } => Failure::Wire {
                message: source.to_string(),
            },
            other => Failure::Other {
                message: other.to_string(),
            },
        }
    }

    /// The caller's error for this failure of call `method` on host `host`.
    pub(crate) fn into_error(self, method: &'static str, host: String, ours: u64) -> CallError {
        let local = match self {
            Failure::Poisoned { deliveries } => {
                return CallError::Poisoned { method, deliveries };
            }
            Failure::Incompatible { theirs } => {
                return CallError::Incompatible {
                    method,
                    host,
                    ours,
                    theirs,
                };
            }
            Failure::PayloadTooLarge { size, limit } => {
                return CallError::PayloadTooLarge {
                    method,
                    size,
                    limit,
                };
            }
            Failure::Panicked { pid, message } => CallError::Panicked {
                method,
                pid,
                message,
            },
            Failure::Crashed { pid, cause, stderr } => CallError::Crashed {
                method,
                pid,
                cause: cause.into(),
                stderr,
            },
            Failure::MemoryLimit {
                pid,
                limit,
                mechanism,
                cause,
                stderr,
            } => CallError::MemoryLimit {
                method,
                pid,
                limit,
                mechanism: mechanism_of(mechanism),
                cause: cause.into(),
                stderr,
            },
            Failure::CpuLimit { pid, limit_ms } => CallError::CpuLimit {
                method,
                pid,
                limit: std::time::Duration::from_millis(limit_ms),
            },
            Failure::Timeout { pid, timeout_ms } => CallError::Timeout {
                method,
                pid,
                timeout: std::time::Duration::from_millis(timeout_ms),
            },
            Failure::Cancelled { by_caller } => CallError::Cancelled {
                method,
                reason: if by_caller {
                    CancelReason::ByCaller
                } else {
                    CancelReason::Shutdown
                },
            },
            Failure::TooLarge { needed, allocation } => CallError::TooLarge {
                method,
                needed,
                allocation,
            },
            Failure::ReturnTooLarge {
                needed,
                available,
                allocation,
            } => CallError::ReturnTooLarge {
                method,
                needed,
                available,
                allocation,
            },
            Failure::Wire { message } | Failure::Other { message } => CallError::Wire {
                method,
                source: WireError::Remote(message),
            },
        };
        CallError::OnHost {
            host,
            error: Box::new(local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallEntry {
        CallEntry {
            caller: "00ff00ff00ff00ff".into(),
            seq: 7,
            reply: "fw:P:results:00ff00ff00ff00ff".into(),
            fingerprint: 0xdead_beef_0000_0001,
            method: 2,
            deadline: Some(1_700_000_000_000),
            args: vec![1, 2, 3],
        }
    }

    fn as_read(fields: &[(&'static str, Cow<'_, [u8]>)]) -> Vec<(&'static str, Vec<u8>)> {
        fields.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn a_call_reads_back_as_written() {
        let fields = as_read(&call().fields());
        let view: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, &v[..])).collect();
        assert_eq!(CallEntry::parse(&view), Ok(call()));
    }

    #[test]
    fn a_call_of_another_version_still_names_its_reply() {
        let mut fields = as_read(&call().fields());
        fields[0].1 = b"9".to_vec();
        let view: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, &v[..])).collect();
        assert_eq!(
            CallEntry::parse(&view),
            Err(Unreadable::Version {
                found: "9".into(),
                reply: Some(("fw:P:results:00ff00ff00ff00ff".into(), 7)),
            })
        );
        let view: Vec<(&str, &[u8])> = view.into_iter().filter(|(k, _)| *k != "fp").collect();
        let mut fixed = view.clone();
        fixed[0].1 = b"1";
        assert_eq!(CallEntry::parse(&fixed), Err(Unreadable::Malformed("fp")));
    }

    #[test]
    fn failures_become_the_local_errors_on_a_named_host() {
        let crashed = CallError::Crashed {
            method: "parse",
            pid: 41,
            cause: ExitCause::Signaled(11),
            stderr: "boom".into(),
        };
        let result = ResultEntry {
            seq: 3,
            host: "h1".into(),
            outcome: Err(Failure::of(&crashed)),
        };
        let fields = result.fields();
        let view: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, &v[..])).collect();
        let back = ResultEntry::parse(&view).unwrap();
        assert_eq!(back, result);
        let error = back
            .outcome
            .unwrap_err()
            .into_error("parse", "h1".into(), 5);
        assert_eq!(
            error,
            CallError::OnHost {
                host: "h1".into(),
                error: Box::new(crashed)
            }
        );
        assert!(error.to_string().contains("h1"), "{error}");
        let poisoned = Failure::Poisoned { deliveries: 3 }.into_error("parse", "h2".into(), 5);
        assert_eq!(
            poisoned,
            CallError::Poisoned {
                method: "parse",
                deliveries: 3
            }
        );
    }
}
