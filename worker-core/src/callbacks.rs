//! The callbacks of a pool: one per way a call can end (`on_return`, `on_timeout`,
//! `on_error`), whatever their signature. The mediator keeps plain closures; the daemon host
//! keeps closures that also get the application and the other pools.
//!
//! A callback that panics does not take the pool down: [`guarded`] catches the panic and logs
//! it, and the call counts as delivered (see `Engine::fire_callbacks`, which hands every
//! finished call to its face through it).

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::call::CallStatus;
use crate::panics::panic_message;

/// Which of the three callbacks a finished call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    /// The method returned.
    Return,
    /// The call ran past its timeout.
    Timeout,
    /// Any other failure: crashed, panicked, failed, cancelled.
    Error,
}

impl On {
    /// The callback's name, for log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            On::Return => "on_return",
            On::Timeout => "on_timeout",
            On::Error => "on_error",
        }
    }

    /// The callback for a call that ended with `status`.
    pub(crate) fn of(status: CallStatus) -> On {
        match status {
            CallStatus::Returned => On::Return,
            CallStatus::Timeout => On::Timeout,
            _ => On::Error,
        }
    }
}

/// Runs `callback`, the `on` callback of call `id`, and returns what it returned; if it
/// panics, catches the panic, logs its message at error level under `alias` (with the call's
/// id and the callback's name) and returns `None`: the caller carries on as if the callback
/// had returned.
///
/// The one place where a callback's panic is caught, whatever face runs the callbacks. The
/// panic hook has run before (by default it prints the panic to stderr); a program built with
/// `panic = "abort"` aborts there, as it would anywhere. Whatever state the callback shares
/// with others (captured by reference, behind a `RefCell`) is as the panic left it.
pub(crate) fn guarded<T>(alias: &str, id: u64, on: On, callback: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(callback)) {
        Ok(value) => Some(value),
        Err(payload) => {
            log::error!(target: alias,
                "call {id}: its {} callback panicked: {}; the call counts as delivered and the pool goes on",
                on.name(), panic_message(payload.as_ref()));
            None
        }
    }
}

/// One handler of type `H` (or none) per way a call can end.
pub(crate) struct Callbacks<H> {
    on_return: Option<H>,
    on_timeout: Option<H>,
    on_error: Option<H>,
}

impl<H> Default for Callbacks<H> {
    fn default() -> Self {
        Callbacks {
            on_return: None,
            on_timeout: None,
            on_error: None,
        }
    }
}

impl<H> Callbacks<H> {
    /// Sets the handler for `on`, replacing any.
    pub(crate) fn set(&mut self, on: On, handler: H) {
        *self.slot(on) = Some(handler);
    }

    /// Whether a handler is set for `on`.
    #[inline]
    pub(crate) fn has(&self, on: On) -> bool {
        match on {
            On::Return => self.on_return.is_some(),
            On::Timeout => self.on_timeout.is_some(),
            On::Error => self.on_error.is_some(),
        }
    }

    /// The handler for `on`, if one is set.
    pub(crate) fn get(&self, on: On) -> Option<&H> {
        match on {
            On::Return => self.on_return.as_ref(),
            On::Timeout => self.on_timeout.as_ref(),
            On::Error => self.on_error.as_ref(),
        }
    }

    /// The handler for a call that ended with `status`, if one is set.
    pub(crate) fn for_status(&mut self, status: CallStatus) -> Option<&mut H> {
        self.slot(On::of(status)).as_mut()
    }

    fn slot(&mut self, on: On) -> &mut Option<H> {
        match on {
            On::Return => &mut self.on_return,
            On::Timeout => &mut self.on_timeout,
            On::Error => &mut self.on_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_final_status_has_its_callback() {
        let mut c = Callbacks::default();
        assert!(c.for_status(CallStatus::Returned).is_none());
        c.set(On::Return, "return");
        c.set(On::Error, "error");
        assert!(c.has(On::Return) && !c.has(On::Timeout));
        assert_eq!(c.for_status(CallStatus::Returned), Some(&mut "return"));
        assert_eq!(c.for_status(CallStatus::Timeout), None);
        for status in [
            CallStatus::Cancelled,
            CallStatus::Crashed,
            CallStatus::Panicked,
            CallStatus::Failed,
        ] {
            assert_eq!(c.for_status(status), Some(&mut "error"));
        }
        c.set(On::Timeout, "timeout");
        assert_eq!(c.for_status(CallStatus::Timeout), Some(&mut "timeout"));
    }

    #[test]
    fn a_panicking_callback_is_caught_and_the_caller_goes_on() {
        assert_eq!(guarded("test", 1, On::Return, || 7), Some(7));
        let mut ran = 0;
        let caught: Option<()> = guarded("test", 2, On::Error, || {
            ran += 1;
            panic!("callback bug")
        });
        assert_eq!((caught, ran), (None, 1));
        assert_eq!(On::Timeout.name(), "on_timeout");
    }
}
