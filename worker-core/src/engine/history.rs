//! The history of released calls: the status, worker and timings of the most recent calls
//! that finished and left the call table (taken by their handle, or released after their
//! callbacks), so that `status`, `timings` and `worker_pid` keep answering for them. No
//! payload is kept. Bounded: the oldest entry goes when a new one comes past the capacity
//! (`Mediator::status_history`).

use crate::call::{CallRecord, CallStatus, Timings};

/// How many released calls the history remembers unless told otherwise.
pub(crate) const DEFAULT_HISTORY: usize = 1024;

/// What the history remembers of a released call.
#[derive(Clone)]
pub(crate) struct Past {
    pub(crate) status: CallStatus,
    pub(crate) pid: Option<i32>,
    pub(crate) timings: Timings,
}

impl Past {
    /// What to remember of a call leaving the table.
    #[inline]
    pub(crate) fn of(record: &CallRecord) -> Past {
        Past {
            status: record.status,
            pid: record.pid,
            timings: record.timings.clone(),
        }
    }
}

/// A ring of the last `capacity` released calls. Adding is a write into the ring (it runs
/// once per call, on the hot path); a look-up scans the ids, newest first (they are kept
/// apart from the entries so that the scan reads 8 bytes per call).
pub(crate) struct History {
    ids: Vec<u64>,
    past: Vec<Past>,
    /// Where the next entry goes once the ring is full.
    next: usize,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(DEFAULT_HISTORY)
    }
}

impl History {
    /// An empty history of `capacity` calls (0 remembers none).
    pub(crate) fn new(capacity: usize) -> History {
        History {
            ids: Vec::new(),
            past: Vec::new(),
            next: 0,
            capacity,
        }
    }

    /// Remembers `capacity` calls from now on; lowering it forgets the oldest.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        if capacity < self.ids.len() {
            // Oldest first, then keep the newest `capacity`.
            let (mut ids, mut past) = self.oldest_first();
            let drop = ids.len() - capacity;
            ids.drain(..drop);
            past.drain(..drop);
            self.ids = ids;
            self.past = past;
            self.next = 0;
        } else if self.next != 0 {
            let (ids, past) = self.oldest_first();
            self.ids = ids;
            self.past = past;
            self.next = 0;
        }
        self.capacity = capacity;
    }

    fn oldest_first(&mut self) -> (Vec<u64>, Vec<Past>) {
        let mut ids = std::mem::take(&mut self.ids);
        let mut past = std::mem::take(&mut self.past);
        ids.rotate_left(self.next);
        past.rotate_left(self.next);
        (ids, past)
    }

    /// Remembers released call `id`.
    #[inline]
    pub(crate) fn add(&mut self, id: u64, entry: Past) {
        if self.ids.len() < self.capacity {
            self.ids.push(id);
            self.past.push(entry);
        } else if self.capacity > 0 {
            self.ids[self.next] = id;
            self.past[self.next] = entry;
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// What is remembered of call `id`, if it is among the most recent released.
    pub(crate) fn get(&self, id: u64) -> Option<&Past> {
        // Newest first: the part before `next`, backwards, then the rest, backwards.
        let (older, newer) = self.ids.split_at(self.next);
        newer
            .iter()
            .rposition(|&i| i == id)
            .map(|k| self.next + k)
            .or_else(|| older.iter().rposition(|&i| i == id))
            .map(|k| &self.past[k])
    }

    /// How many calls are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(status: CallStatus) -> Past {
        Past {
            status,
            pid: Some(7),
            timings: Timings::default(),
        }
    }

    #[test]
    fn the_history_keeps_the_newest_calls_up_to_its_capacity() {
        let mut h = History::new(3);
        for id in 1..=5 {
            let status = if id % 2 == 0 {
                CallStatus::Timeout
            } else {
                CallStatus::Returned
            };
            h.add(id, past(status));
        }
        assert_eq!(h.len(), 3);
        assert!(h.get(1).is_none() && h.get(2).is_none());
        assert_eq!(h.get(4).map(|p| p.status), Some(CallStatus::Timeout));
        assert_eq!(h.get(5).map(|p| p.status), Some(CallStatus::Returned));
        // Lowering keeps the newest; raising keeps all and grows.
        h.set_capacity(2);
        assert!(h.get(3).is_none() && h.get(4).is_some() && h.get(5).is_some());
        h.set_capacity(4);
        for id in 6..=8 {
            h.add(id, past(CallStatus::Failed));
        }
        assert_eq!(h.len(), 4);
        assert!(h.get(4).is_none());
        assert!((5..=8).all(|id| h.get(id).is_some()));
        // None remembers nothing.
        h.set_capacity(0);
        h.add(9, past(CallStatus::Returned));
        assert_eq!(h.len(), 0);
        assert!(h.get(9).is_none() && h.get(8).is_none());
    }
}
