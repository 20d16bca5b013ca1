//! The call journal: one entry in shared memory per call a persistent mediator holds, so that
//! a program restarted after a crash (even SIGKILL) finds every call that was queued, running,
//! or returned but not yet delivered, and completes it. A mediator that is not persistent is
//! never recovered and writes no entries (see `Pool::journal`).
//!
//! Only the parent writes entries. Each entry has two parts with a checksum each: the call
//! itself (id, method, where its arguments are, retries), written when the call is made or
//! requeued, and its progress (which worker and request it was posted with, where its return
//! value is), written as it moves. A part whose checksum fails (a parent killed in the middle
//! of writing it, or a stray write) is never trusted: a bad call part drops the entry (it is
//! counted as corruption and logged), a bad progress part makes the call count as started.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arena::Span;
use crate::channel::PostedAt;
use crate::checksum::checksum;

/// The entry is unused.
pub(crate) const FREE: u32 = 0;
/// The call is queued or a worker holds it.
pub(crate) const PENDING: u32 = 1;
/// The call returned; its return value is in the payload area, not yet delivered.
pub(crate) const RETURNED: u32 = 2;

/// `slot` when the call was not posted to a worker.
const NOT_POSTED: u32 = u32::MAX;

/// The checksums of the two progress parts every call writes whatever it is (pending and not
/// posted, when made; free, when released), computed at compile time.
const FREE_CHECK: u64 = checksum(&[FREE as u64, NOT_POSTED as u64, 0, 0, 0]);
const UNPOSTED_CHECK: u64 = checksum(&[PENDING as u64, NOT_POSTED as u64, 0, 0, 0]);

/// One journal entry.
#[repr(C, align(64))]
pub(crate) struct Entry {
    // The call.
    id: AtomicU64,
    method: AtomicU32,
    retries: AtomicU32,
    args_off: AtomicU64,
    args_len: AtomicU64,
    call_check: AtomicU64,
    // Its progress.
    state: AtomicU32,
    slot: AtomicU32,
    seq: AtomicU32,
    ret_off: AtomicU64,
    ret_len: AtomicU64,
    progress_check: AtomicU64,
}

/// A journal entry whose call part fails its checksum: the call it held cannot be trusted,
/// and is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("journal entry {index} fails its checksum")]
pub(crate) struct CorruptEntry {
    /// The entry's index in the journal.
    pub(crate) index: usize,
}

/// An entry as read back at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub(crate) index: usize,
    pub(crate) id: u64,
    pub(crate) method: u32,
    pub(crate) retries: u32,
    pub(crate) args: Span,
    /// The progress part, if its checksum held.
    pub(crate) progress: Option<Progress>,
}

/// Where a recovered call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// [`PENDING`] or [`RETURNED`].
    pub(crate) state: u32,
    /// The worker slot and request sequence number it was posted with.
    pub(crate) posted: Option<PostedAt>,
    /// Where its return value is, if it returned.
    pub(crate) ret: Option<Span>,
}

impl Entry {
    /// Records a new (or requeued) call as pending and not posted.
    pub(crate) fn write_call(&self, id: u64, method: u32, retries: u32, args: Span) {
        self.write_call_words(id, method, retries, args);
        self.write_progress(PENDING, None, None);
    }

    /// Records a new call as pending and already `posted` to a worker (`write_call` then
    /// `write_progress`, without the intermediate "not posted").
    pub(crate) fn write_posted_call(&self, id: u64, method: u32, args: Span, posted: PostedAt) {
        self.write_call_words(id, method, 0, args);
        self.write_progress(PENDING, Some(posted), None);
    }

    fn write_call_words(&self, id: u64, method: u32, retries: u32, args: Span) {
        self.id.store(id, Ordering::Relaxed);
        self.method.store(method, Ordering::Relaxed);
        self.retries.store(retries, Ordering::Relaxed);
        self.args_off.store(args.offset as u64, Ordering::Relaxed);
        self.args_len.store(args.len as u64, Ordering::Relaxed);
        self.call_check.store(
            checksum(&[
                id,
                method as u64,
                retries as u64,
                args.offset as u64,
                args.len as u64,
            ]),
            Ordering::Release,
        );
    }

    /// Records where the call is: pending (posted or not) or returned.
    pub(crate) fn write_progress(&self, state: u32, posted: Option<PostedAt>, ret: Option<Span>) {
        let (slot, seq) = posted.map_or((NOT_POSTED, 0), |p| (p.slot as u32, p.seq));
        let (ret_off, ret_len) = ret.map_or((0, 0), |r| (r.offset as u64, r.len as u64));
        let check = match (state, posted, ret) {
            (FREE, None, None) => FREE_CHECK,
            (PENDING, None, None) => UNPOSTED_CHECK,
            _ => checksum(&[state as u64, slot as u64, seq as u64, ret_off, ret_len]),
        };
        self.state.store(state, Ordering::Relaxed);
        self.slot.store(slot, Ordering::Relaxed);
        self.seq.store(seq, Ordering::Relaxed);
        self.ret_off.store(ret_off, Ordering::Relaxed);
        self.ret_len.store(ret_len, Ordering::Relaxed);
        self.progress_check.store(check, Ordering::Release);
    }

    /// Frees the entry.
    pub(crate) fn clear(&self) {
        self.write_progress(FREE, None, None);
    }

    /// Reads the entry back; `None` if it is free, `Err` if its call part fails its checksum.
    pub(crate) fn read(&self, index: usize) -> Option<Result<Recovered, CorruptEntry>> {
        let state = self.state.load(Ordering::Acquire);
        let (slot, seq) = (
            self.slot.load(Ordering::Relaxed),
            self.seq.load(Ordering::Relaxed),
        );
        let (ret_off, ret_len) = (
            self.ret_off.load(Ordering::Relaxed),
            self.ret_len.load(Ordering::Relaxed),
        );
        let check = self.progress_check.load(Ordering::Relaxed);
        let progress_ok =
            check == checksum(&[state as u64, slot as u64, seq as u64, ret_off, ret_len]);
        // Free, or never written (a new segment is all zeros).
        if state == FREE && (progress_ok || check == 0) {
            return None;
        }
        let (id, method, retries) = (
            self.id.load(Ordering::Relaxed),
            self.method.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        );
        let (args_off, args_len) = (
            self.args_off.load(Ordering::Relaxed),
            self.args_len.load(Ordering::Relaxed),
        );
        let call_ok = self.call_check.load(Ordering::Relaxed)
            == checksum(&[id, method as u64, retries as u64, args_off, args_len]);
        if !call_ok {
            // A free entry whose progress part was torn, or a scribbled one: either way its
            // call part cannot be trusted. An entry never written has all zeros, which is a
            // free, valid progress part, so this is not reached for it.
            return (state != FREE || !progress_ok).then_some(Err(CorruptEntry { index }));
        }
        Some(Ok(Recovered {
            index,
            id,
            method,
            retries,
            args: Span::new(args_off as usize, args_len as usize),
            progress: progress_ok.then_some(Progress {
                state,
                posted: (slot != NOT_POSTED).then_some(PostedAt {
                    slot: slot as usize,
                    seq,
                }),
                ret: (state == RETURNED).then_some(Span::new(ret_off as usize, ret_len as usize)),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(slot: usize, seq: u32) -> PostedAt {
        PostedAt { slot, seq }
    }

    fn entry() -> Box<Entry> {
        // SAFETY: all-zero bytes are a valid Entry (atomics only).
        Box::new(unsafe { std::mem::zeroed() })
    }

    #[test]
    fn a_zeroed_entry_is_free_and_entries_read_back() {
        let e = entry();
        assert_eq!(e.read(0), None);
        e.write_call(7, 2, 1, Span::new(128, 40));
        let r = e.read(3).unwrap().unwrap();
        assert_eq!(
            (r.index, r.id, r.method, r.retries, r.args),
            (3, 7, 2, 1, Span::new(128, 40))
        );
        assert_eq!(
            r.progress,
            Some(Progress {
                state: PENDING,
                posted: None,
                ret: None
            })
        );
        e.write_progress(PENDING, Some(at(1, 9)), None);
        let progress = e.read(3).unwrap().unwrap().progress.unwrap();
        assert_eq!((progress.state, progress.posted), (PENDING, Some(at(1, 9))));
        e.write_progress(RETURNED, Some(at(1, 9)), Some(Span::new(168, 12)));
        let progress = e.read(3).unwrap().unwrap().progress.unwrap();
        assert_eq!(progress.ret, Some(Span::new(168, 12)));
        assert_eq!(progress.state, RETURNED);
        e.clear();
        assert_eq!(e.read(3), None);
        e.write_posted_call(8, 1, Span::new(256, 3), at(0, 4));
        let r = e.read(3).unwrap().unwrap();
        assert_eq!(
            (r.id, r.method, r.retries, r.args),
            (8, 1, 0, Span::new(256, 3))
        );
        let progress = r.progress.unwrap();
        assert_eq!((progress.state, progress.posted), (PENDING, Some(at(0, 4))));
    }

    #[test]
    fn torn_parts_are_not_trusted() {
        let e = entry();
        e.write_call(7, 2, 0, Span::new(128, 40));
        e.seq.store(99, Ordering::Relaxed); // a progress write cut short
        let r = e.read(0).unwrap().unwrap();
        assert_eq!(r.progress, None);
        e.args_len.store(1 << 40, Ordering::Relaxed); // a scribbled call part
        assert!(e.read(0).unwrap().is_err());
    }
}
