//! The mediator's handle on one call: what a proxy method returns. Holding it keeps the
//! call's result until [`crate::Mediator::wait`] takes it; dropping it lets the call finish,
//! its callbacks fire, and its result go.

use std::cell::RefCell;
use std::fmt;
use std::rc::{Rc, Weak};

use crate::call::CallId;

/// The ids of the calls whose handles were dropped unwaited, for the mediator to release at
/// its next `poll`, `wait` or call. Shared between a mediator and its handles: the mediator
/// is not `Send`, and neither are they.
#[derive(Default)]
pub(crate) struct Dropped(RefCell<Vec<u64>>);

impl Dropped {
    /// A list for a new mediator.
    pub(crate) fn new() -> Rc<Dropped> {
        Rc::new(Dropped::default())
    }

    /// Hands each dropped call's id to `release`, emptying the list.
    #[inline]
    pub(crate) fn drain(&self, mut release: impl FnMut(u64)) {
        // Not held across `release`, which may run no user code but must not find it borrowed.
        if self.0.borrow().is_empty() {
            return;
        }
        let ids = std::mem::take(&mut *self.0.borrow_mut());
        for &id in &ids {
            release(id);
        }
        // Keep the buffer for the next drops, unless some came meanwhile.
        let mut list = self.0.borrow_mut();
        if list.is_empty() {
            let mut ids = ids;
            ids.clear();
            *list = ids;
        }
    }
}

/// A call made through a mediator's proxy method, whose method returns `R`.
///
/// Pass it to [`crate::Mediator::wait`] (or [`crate::Mediator::wait_timeout`],
/// [`crate::Mediator::wait_all`], [`crate::Mediator::wait_any`]) for the typed result;
/// [`Handle::id`] gives the call's copyable [`CallId`], which [`crate::Mediator::status`],
/// [`crate::Mediator::timings`] and [`crate::Mediator::worker_pid`] take.
///
/// While the handle lives, the call's result is kept for it, whatever the callbacks did:
/// callbacks observe a call, they do not consume it. Dropping the handle unwaited does not
/// cancel the call: it runs to its end, its callbacks fire, and then its result is released
/// (at the mediator's next `poll`, `wait` or call). So a call made only for its callbacks may
/// drop its handle at once:
///
/// ```
/// use forkworker_core::closure::FnMediator;
/// use std::time::Duration;
///
/// let mut double = FnMediator::new("Double", |n: u64| n * 2);
/// double.on_return(|call, log| log.info(format_args!("{:?}", call.return_value())));
/// double.call(1).ok(); // for the callback only
/// let handle = double.call(21)?;
/// let id = handle.id();
/// assert_eq!(double.wait(handle, Duration::from_secs(10))?, 42);
/// // The callback ran, and `status` still answers for the finished call.
/// assert_eq!(double.status(id), Some(forkworker_core::CallStatus::Returned));
/// # Ok::<(), forkworker_core::CallError>(())
/// ```
///
/// A handle is neither `Copy` nor `Clone` (one call, one result) and not `Send` (nor is its
/// mediator).
#[must_use = "dropping a handle lets its call finish and releases its result after the callbacks: pass it to wait(), or drop it explicitly (`.ok()`, `let _ =`) for the callbacks only"]
pub struct Handle<R> {
    id: CallId<R>,
    /// Where the handle says it was dropped unwaited; `None` once it was waited for.
    dropped: Option<Weak<Dropped>>,
}

impl<R> Handle<R> {
    /// A handle on call `id` of the mediator that owns `dropped`.
    pub(crate) fn new(id: CallId<R>, dropped: &Rc<Dropped>) -> Self {
        Handle {
            id,
            dropped: Some(Rc::downgrade(dropped)),
        }
    }

    /// The call's id: cheap to copy, for [`crate::Mediator::status`],
    /// [`crate::Mediator::timings`] and [`crate::Mediator::worker_pid`] (which keep answering
    /// for the most recent finished calls after the handle is gone), and log lines.
    pub fn id(&self) -> CallId<R> {
        self.id
    }

    /// Whether the handle is of the mediator whose list is `dropped`.
    #[inline]
    pub(crate) fn is_of(&self, dropped: &Rc<Dropped>) -> bool {
        self.dropped
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Rc::as_ptr(dropped)))
    }

    /// The handle was waited for: its drop says nothing.
    #[inline]
    pub(crate) fn disarm(mut self) -> CallId<R> {
        self.dropped = None;
        self.id
    }
}

impl<R> Drop for Handle<R> {
    fn drop(&mut self) {
        if let Some(list) = self.dropped.take().and_then(|w| w.upgrade()) {
            list.0.borrow_mut().push(self.id.raw());
        }
    }
}

/// Displays as its call's id (as in log lines).
impl<R> fmt::Display for Handle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.id, f)
    }
}

impl<R> fmt::Debug for Handle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Handle").field(&self.id.raw()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_handle_is_listed_once_and_a_waited_one_not_at_all() {
        let dropped = Dropped::new();
        let a = Handle::<u8>::new(CallId::new(1), &dropped);
        let b = Handle::<u8>::new(CallId::new(2), &dropped);
        assert_eq!(a.id().raw(), 1);
        drop(a);
        assert_eq!(b.disarm().raw(), 2);
        let mut seen = Vec::new();
        dropped.drain(|id| seen.push(id));
        assert_eq!(seen, [1]);
        dropped.drain(|id| seen.push(id));
        assert_eq!(seen, [1], "drained");
        // A handle that outlives its mediator's list drops quietly.
        let c = Handle::<u8>::new(CallId::new(3), &dropped);
        drop(dropped);
        drop(c);
    }
}
