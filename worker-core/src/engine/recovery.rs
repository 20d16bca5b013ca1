//! Recovery: at the start of a persistent mediator, the calls an earlier run left in the
//! segment's journal (see `journal`) are rebuilt, or purged when recovery is off.

use super::room::Room;
use super::table::CallTable;
use crate::arena::Blocks;
use crate::call::{CallRecord, CallStatus};
use crate::clock;
use crate::journal;
use crate::pool::Pool;

/// The largest call id recovery accepts from a journal: a run would take centuries of calls
/// to reach it.
const MAX_RECOVERED_ID: u64 = 1 << 48;

/// What recovery found besides the calls it rebuilt.
pub(crate) struct Found {
    /// Entries lost to corruption (logged, and to be counted as corruption errors).
    pub(crate) corrupted: usize,
}

/// Clears the journal an earlier run left in `pool`'s segment, when recovery is off.
pub(crate) fn purge(pool: &Pool, alias: &str) {
    let mut purged = 0;
    for i in 0..pool.region().entries() {
        let entry = pool.region().entry(i);
        if entry.read(i).is_some() {
            purged += 1;
        }
        entry.clear();
    }
    if purged > 0 {
        log::info!(target: alias,
            "removed {purged} calls an earlier run left in {} (start with recovery to complete them instead)",
            pool.region().name());
    }
}

/// Rebuilds the calls an earlier run left in `pool`'s journal into `calls`, taking their
/// blocks and entries from `room`: queued and running ones are queued again in call order
/// (running ones with one more retry), returned ones wait for their `on_return`. Entries that
/// fail validation, name a method past `methods` or overlap another are cleared and counted.
pub(crate) fn recover(
    pool: &Pool,
    room: &mut Room,
    calls: &mut CallTable,
    methods: usize,
    alias: &str,
) -> Found {
    let mut found = Vec::new();
    let mut corrupted = 0;
    for i in 0..pool.region().entries() {
        match pool.region().entry(i).read(i) {
            None => {}
            Some(Ok(r)) => found.push(r),
            Some(Err(e)) => {
                log::warn!(target: alias, "recovery: {e}; that call is lost");
                pool.region().entry(i).clear();
                corrupted += 1;
            }
        }
    }
    found.sort_by_key(|r| r.id);
    let (mut queued, mut rerun, mut returned) = (0, 0, 0);
    let now = clock::now_ns();
    for r in found {
        // An id no run reaches (a scribbled or planted entry) would bring the id counter to
        // its end.
        let method_ok = (r.method as usize) < methods && r.id < MAX_RECOVERED_ID;
        let journal::Progress { state, posted, ret } = r.progress.unwrap_or(journal::Progress {
            state: journal::PENDING,
            posted: None,
            ret: None,
        });
        // The return value right after the arguments: one block; elsewhere: two.
        // (Lengths come from shared memory: sums are checked.)
        let args = r.args;
        let (block, ret_block) = match ret {
            Some(ret)
                if state == journal::RETURNED
                    && args.offset.checked_add(args.len) == Some(ret.offset) =>
            {
                let len = args.len.checked_add(ret.len);
                (len.and_then(|len| room.reserve(args.offset, len)), None)
            }
            Some(ret) if state == journal::RETURNED => (
                room.reserve(args.offset, args.len),
                Some(room.reserve(ret.offset, ret.len)),
            ),
            _ => (room.reserve(args.offset, args.len), None),
        };
        let blocks = match (block, ret_block) {
            (Some(block), None) if method_ok => Blocks {
                block,
                ret_block: None,
            },
            (Some(block), Some(Some(ret))) if method_ok => Blocks {
                block,
                ret_block: Some(ret),
            },
            (block, ret_block) => {
                log::warn!(target: alias,
                    "recovery: call {} has an invalid or overlapping record; it is lost", r.id);
                for b in block.into_iter().chain(ret_block.flatten()) {
                    room.free(b);
                }
                pool.region().entry(r.index).clear();
                corrupted += 1;
                continue;
            }
        };
        room.claim_entry(r.index);
        // A call handed to a worker may have started: the worker's running mark was in its
        // area, which went with the earlier run. So it runs again with retries + 1.
        let started = r.progress.is_none() || posted.is_some();
        let mut record = CallRecord::new(r.id, r.method, Some(blocks), args.len, r.index);
        record.retries = r.retries;
        record.timings.enter(CallStatus::Uncalled, now);
        if state == journal::RETURNED {
            record.ret = ret;
            record.set_status(CallStatus::Returned, now);
            calls.push_finished(r.id);
            returned += 1;
        } else {
            if started {
                record.retries = record.retries.saturating_add(1);
                rerun += 1;
            } else {
                queued += 1;
            }
            pool.region()
                .entry(r.index)
                .write_call(r.id, r.method, record.retries, r.args);
            calls.enqueue(r.id);
        }
        calls.insert(record);
    }
    log::info!(target: alias,
        "recovered from {}: {queued} queued calls, {rerun} that were running (run again, retries + 1), {returned} returned and not yet delivered, {corrupted} lost to corruption",
        pool.region().name());
    Found { corrupted }
}
