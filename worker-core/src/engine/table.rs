//! The call table: the parent's record of every call it holds, the queue of calls waiting
//! for a worker, the calls finished and not yet handed to their callbacks, and the moves of a
//! call between statuses. It knows no process and no shared memory: what a move means for a
//! worker or a block is the engine's business (see `engine`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::arena::Blocks;
use crate::call::{CallRecord, CallStatus, Timings};
use crate::error::CallError;

/// The calls of one mediator.
pub(crate) struct CallTable {
    records: CallMap,
    /// Calls waiting for a worker, oldest first (a requeued unstarted call goes first).
    queue: VecDeque<u64>,
    /// Calls that reached a final status and whose callbacks have not run yet, in order.
    finished: Vec<u64>,
    next_id: u64,
}

impl Default for CallTable {
    fn default() -> Self {
        CallTable {
            records: CallMap::default(),
            queue: VecDeque::new(),
            finished: Vec::new(),
            next_id: 1,
        }
    }
}

impl CallTable {
    /// The id for the next call: unique for the mediator's lifetime, increasing.
    #[inline]
    pub(crate) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a call; its id must not be in the table. A recovered call's id moves the next
    /// new one past it.
    #[inline]
    pub(crate) fn insert(&mut self, record: CallRecord) {
        self.next_id = self.next_id.max(record.id.saturating_add(1));
        self.records.insert(record.id, record);
    }

    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&CallRecord> {
        self.records.get(&id)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut CallRecord> {
        self.records.get_mut(&id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<CallRecord> {
        self.records.remove(&id)
    }

    /// Removes a call, handing it to `f` where it lies (see [`CallMap::remove_with`]).
    #[inline]
    pub(crate) fn remove_with<T>(
        &mut self,
        id: u64,
        f: impl FnOnce(&CallRecord) -> T,
    ) -> Option<T> {
        self.records.remove_with(&id, f)
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &CallRecord> {
        self.records.values()
    }

    /// Bytes of shared memory held by finished calls not yet taken.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.records()
            .filter(|r| r.status.is_final())
            .filter_map(|r| r.blocks.as_ref().map(Blocks::len))
            .sum()
    }

    /// Forgets every call (their shared memory went with the pool).
    pub(crate) fn clear(&mut self) {
        self.records.clear();
        self.queue.clear();
        self.finished.clear();
    }

    // The queue.

    #[inline]
    pub(crate) fn nothing_queued(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Puts a call at the back of the queue.
    #[inline]
    pub(crate) fn enqueue(&mut self, id: u64) {
        self.queue.push_back(id);
    }

    /// The oldest queued call, if any.
    #[inline]
    pub(crate) fn first_queued(&self) -> Option<u64> {
        self.queue.front().copied()
    }

    /// Takes the oldest queued call out of the queue.
    #[inline]
    pub(crate) fn dequeue(&mut self) -> Option<u64> {
        self.queue.pop_front()
    }

    /// Empties the queue, oldest first.
    pub(crate) fn take_queue(&mut self) -> VecDeque<u64> {
        std::mem::take(&mut self.queue)
    }

    // Finished calls, waiting for their callbacks.

    #[inline]
    pub(crate) fn nothing_finished(&self) -> bool {
        self.finished.is_empty()
    }

    /// Whether call `id` finished and its callbacks have not run yet.
    pub(crate) fn awaits_callbacks(&self, id: u64) -> bool {
        self.finished.contains(&id)
    }

    /// Takes the finished calls, in the order they finished; hand the buffer back with
    /// [`CallTable::return_finished`].
    pub(crate) fn take_finished(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.finished)
    }

    /// Gives back the buffer [`CallTable::take_finished`] took, emptied, unless calls
    /// finished meanwhile (so that the next call to finish does not allocate a new one).
    pub(crate) fn return_finished(&mut self, mut buffer: Vec<u64>) {
        if self.finished.is_empty() {
            buffer.clear();
            self.finished = buffer;
        }
    }

    // Moves between statuses.

    /// Call `id` reached a final `status` at `at_ns` (never before its last status): a
    /// failure gets the error made by `error` from the method's index; it waits for its
    /// callbacks. Returns the record, or `None` if the call is unknown.
    pub(crate) fn finish(
        &mut self,
        id: u64,
        status: CallStatus,
        at_ns: u64,
        error: impl FnOnce(u32) -> CallError,
    ) -> Option<&CallRecord> {
        let record = self.records.get_mut(&id)?;
        let floor = record.timings.latest_ns().unwrap_or(at_ns);
        record.set_status(status, at_ns.max(floor));
        if status != CallStatus::Returned {
            record.error = Some(Box::new(error(record.method)));
        }
        self.finished.push(id);
        Some(record)
    }

    /// A finished call runs again: one more retry, its status, error, result, worker and
    /// timings cleared, at the back of the queue. Returns the record (its return block, if it
    /// had one, is still in it: the caller frees it).
    pub(crate) fn rerun(&mut self, id: u64, now_ns: u64) -> Option<&mut CallRecord> {
        let record = self.records.get_mut(&id)?;
        record.retries += 1;
        record.status = CallStatus::Uncalled;
        record.error = None;
        record.ret = None;
        record.ret_bytes = None;
        record.pid = None;
        record.posted = None;
        record.timings = Timings::default();
        record.timings.enter(CallStatus::Uncalled, now_ns);
        self.queue.push_back(id);
        Some(record)
    }

    /// A call whose worker died before starting it goes back to the front of the queue, with
    /// one more retry. Returns the record.
    pub(crate) fn requeue_unstarted(&mut self, id: u64, now_ns: u64) -> Option<&CallRecord> {
        let record = self.records.get_mut(&id)?;
        record.retries += 1;
        record.status = CallStatus::Uncalled;
        record.posted = None;
        record.pid = None;
        record.timings.enter(CallStatus::Uncalled, now_ns);
        self.queue.push_front(id);
        Some(record)
    }

    /// A recovered call that had returned: it waits for its callbacks.
    pub(crate) fn push_finished(&mut self, id: u64) {
        self.finished.push(id);
    }
}

/// The parent's calls by id.
///
/// Ids are numbers the mediator hands out in sequence, and most calls end before many later
/// ones begin: a call lives in a small ring at `id % RING` (a lookup is an index and a
/// compare), and only when that place is still taken by a call `RING` ids older does it go to
/// a hash map. A pipelined burst of thousands of calls therefore costs what a map costs, and
/// the common case (a few calls in flight) a fraction of it: the map's insert, lookups and
/// removal were a large share of the parent's work per empty call (figures in
/// benches/README.md).
pub(crate) struct CallMap {
    ring: Vec<Option<CallRecord>>,
    overflow: HashMap<u64, CallRecord, BuildHasherDefault<IdHasher>>,
}

/// Places in the ring: enough for every worker of a typical pool and a few queued calls
/// each, small enough (about 12 KiB) to stay in the first-level cache.
const RING: usize = 64;

impl Default for CallMap {
    fn default() -> Self {
        CallMap {
            ring: (0..RING).map(|_| None).collect(),
            overflow: HashMap::default(),
        }
    }
}

impl CallMap {
    fn place(id: u64) -> usize {
        (id % RING as u64) as usize
    }

    #[inline]
    pub(crate) fn get(&self, id: &u64) -> Option<&CallRecord> {
        match &self.ring[Self::place(*id)] {
            Some(r) if r.id == *id => Some(r),
            _ => self.overflow.get(id),
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut CallRecord> {
        match &mut self.ring[Self::place(*id)] {
            Some(r) if r.id == *id => Some(r),
            _ => self.overflow.get_mut(id),
        }
    }

    /// Adds a call; `id` must be `record.id` and not present yet.
    #[inline]
    pub(crate) fn insert(&mut self, id: u64, record: CallRecord) {
        debug_assert_eq!(id, record.id);
        match &mut self.ring[Self::place(id)] {
            place @ None => *place = Some(record),
            Some(_) => {
                self.overflow.insert(id, record);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<CallRecord> {
        let place = &mut self.ring[Self::place(*id)];
        match place {
            Some(r) if r.id == *id => place.take(),
            _ => self.overflow.remove(id),
        }
    }

    /// Removes a call, handing it to `f` where it lies rather than moving it out (a record is
    /// some 200 bytes, and this runs once per call on the hot path).
    #[inline]
    pub(crate) fn remove_with<T>(
        &mut self,
        id: &u64,
        f: impl FnOnce(&CallRecord) -> T,
    ) -> Option<T> {
        let place = &mut self.ring[Self::place(*id)];
        match place {
            Some(r) if r.id == *id => {
                let out = f(r);
                *place = None;
                Some(out)
            }
            _ => self.overflow.remove(id).map(|r| f(&r)),
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &CallRecord> {
        self.ring.iter().flatten().chain(self.overflow.values())
    }

    pub(crate) fn clear(&mut self) {
        self.ring.iter_mut().for_each(|p| *p = None);
        self.overflow.clear();
    }
}

/// The hasher of [`CallMap`]'s overflow: a multiplication by an odd constant maps sequential
/// ids to distinct low bits (hashbrown's bucket index) and mixes them into the high bits (its
/// control byte); SipHash's protection against chosen keys buys nothing for the mediator's own
/// sequence, at the cost of a hash per lookup larger than the rest of the lookup.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys; kept correct for any other use.
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> CallRecord {
        CallRecord::new(id, 0, None, 0, 0)
    }

    #[test]
    fn calls_move_between_statuses_and_through_the_queue() {
        let mut table = CallTable::default();
        let (a, b) = (table.new_id(), table.new_id());
        assert_eq!((a, b), (1, 2));
        for id in [a, b] {
            table.insert(record(id));
            table.enqueue(id);
        }
        assert_eq!(table.dequeue(), Some(a));
        // A failure keeps its error and waits for callbacks; its time never goes back.
        table
            .get_mut(a)
            .unwrap()
            .timings
            .enter(CallStatus::Called, 500);
        let r = table
            .finish(a, CallStatus::Crashed, 100, |m| {
                CallError::UnknownCall(m as u64)
            })
            .unwrap();
        assert_eq!(r.timings.entered_ns(CallStatus::Crashed), Some(500));
        assert_eq!(r.error.as_deref(), Some(&CallError::UnknownCall(0)));
        assert!(table.awaits_callbacks(a) && !table.nothing_finished());
        let finished = table.take_finished();
        assert_eq!(finished, [a]);
        table.return_finished(finished);
        // Run again: behind the call already queued, cleared, one more retry.
        let r = table.rerun(a, 900).unwrap();
        assert_eq!(
            (r.retries, r.status, r.error.is_none()),
            (1, CallStatus::Uncalled, true)
        );
        assert_eq!((table.dequeue(), table.dequeue()), (Some(b), Some(a)));
        // An unstarted call whose worker died goes first.
        table.enqueue(b);
        table.requeue_unstarted(a, 950);
        assert_eq!(table.take_queue(), [a, b]);
        // A recovered id moves the next one past it.
        table.insert(record(40));
        assert_eq!(table.new_id(), 41);
        table.clear();
        assert!(table.get(40).is_none() && table.nothing_queued());
    }

    #[test]
    fn the_call_map_finds_every_live_call_in_the_ring_or_beyond() {
        let mut map = CallMap::default();
        // One long-lived call, then many short ones that keep landing on its place.
        map.insert(1, record(1));
        for id in 2..1_000u64 {
            map.insert(id, record(id));
            if id % 3 != 0 {
                assert_eq!(map.remove(&id).map(|r| r.id), Some(id));
            }
        }
        assert_eq!(map.get(&1).map(|r| r.id), Some(1));
        let mut live: Vec<u64> = map.values().map(|r| r.id).collect();
        live.sort();
        let expected: Vec<u64> = std::iter::once(1).chain((3..1_000).step_by(3)).collect();
        assert_eq!(live, expected);
        for &id in &expected {
            map.get_mut(&id).unwrap().retries = 7;
            assert_eq!(map.get(&id).unwrap().retries, 7);
        }
        assert!(map.get(&2).is_none() && map.remove(&2).is_none());
        for &id in expected.iter().rev() {
            let removed = if id % 2 == 0 {
                map.remove(&id).map(|r| r.id)
            } else {
                map.remove_with(&id, |r| r.id)
            };
            assert_eq!(removed, Some(id));
            assert!(map.get(&id).is_none());
        }
        assert_eq!(map.values().count(), 0);
        map.insert(5, record(5));
        map.clear();
        assert!(map.get(&5).is_none());
    }
}
