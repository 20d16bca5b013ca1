//! Ids the runtime hands out: one generic type, [`Id`], named by what it identifies.
//!
//! [`crate::CallId`], [`crate::TaskId`] and [`crate::WorkerKey`] are `Id`s of different
//! kinds: a number and a type, nothing else, so an id is as cheap to copy, compare, hash and
//! send as a `u64`, and an id of one kind cannot be passed where another is expected.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// An id of kind `K`: a number the runtime handed out, typed by what it identifies.
///
/// Use it through its aliases: [`crate::CallId`], [`crate::TaskId`], [`crate::WorkerKey`].
/// It is `Copy`, compares and hashes as its number, orders by it (ids increase in the order
/// they were handed out), and displays as it (`Debug` also names the kind: `CallId(7)`).
pub struct Id<K: Kind> {
    raw: u64,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Id<K> {
    pub(crate) const fn new(raw: u64) -> Self {
        Id {
            raw,
            _kind: PhantomData,
        }
    }

    /// The id as a number, as seen in log lines (and, for a call or a task, in
    /// [`crate::Call::id`] and [`crate::task::TaskDone::id`]).
    pub fn raw(&self) -> u64 {
        self.raw
    }
}

impl<K: Kind> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: Kind> Copy for Id<K> {}
impl<K: Kind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<K: Kind> Eq for Id<K> {}
impl<K: Kind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Kind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw.cmp(&other.raw)
    }
}
impl<K: Kind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state)
    }
}
impl<K: Kind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", K::NAME, self.raw)
    }
}
impl<K: Kind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raw)
    }
}

/// What an [`Id`] identifies. Sealed: the kinds are this module's.
pub trait Kind: sealed::Sealed {
    /// The name `Debug` shows.
    const NAME: &'static str;
}

mod sealed {
    pub trait Sealed {}
}

/// The kind of a [`crate::CallId`]: a call whose method returns `R`.
pub struct CallOf<R>(PhantomData<fn() -> R>);
/// The kind of a [`crate::TaskId`]: a task whose closure returns `R`.
pub struct TaskOf<R>(PhantomData<fn() -> R>);
/// The kind of a [`crate::WorkerKey`]: a pool of type `M` added to a daemon.
pub struct PoolOf<M>(PhantomData<fn() -> M>);

impl<R> sealed::Sealed for CallOf<R> {}
impl<R> Kind for CallOf<R> {
    const NAME: &'static str = "CallId";
}
impl<R> sealed::Sealed for TaskOf<R> {}
impl<R> Kind for TaskOf<R> {
    const NAME: &'static str = "TaskId";
}
impl<M> sealed::Sealed for PoolOf<M> {}
impl<M> Kind for PoolOf<M> {
    const NAME: &'static str = "WorkerKey";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn an_id_is_its_number_with_a_kind() {
        let a = Id::<CallOf<String>>::new(7);
        let b = a;
        assert_eq!(a, b);
        assert!(Id::<CallOf<String>>::new(3) < a);
        assert_eq!(a.raw(), 7);
        assert_eq!(format!("{a} {a:?}"), "7 CallId(7)");
        assert_eq!(format!("{:?}", Id::<TaskOf<u8>>::new(2)), "TaskId(2)");
        assert_eq!(format!("{:?}", Id::<PoolOf<()>>::new(0)), "WorkerKey(0)");
        let set: HashSet<_> = [a, b, Id::new(8)].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(size_of::<Id<CallOf<Vec<u8>>>>(), size_of::<u64>());
    }
}
