//! What a face that hands out handles to calls asks of the engine (the shared pool, see
//! `crate::shared`): whether a call is done, its result, holding it for a handle, cancelling
//! it.
//!
//! A handle holds its call (`Engine::hold`): the engine keeps a held call's result after its
//! callbacks ran, until the handle takes it ([`Engine::take_done_bytes`]) or lets it go
//! (`Engine::drop_handle`).

use super::Engine;
use crate::call::CallStatus;
use crate::clock;
use crate::error::{CallError, CancelReason};
use crate::worker::Worker;

/// Where a call is, as its handle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Queued or running, or finished with its callbacks still to run.
    Pending,
    /// Finished, its callbacks ran: its result can be taken.
    Done,
    /// Unknown to the engine (never made, or already taken).
    Gone,
}

impl<W: Worker> Engine<W> {
    /// Whether call `id` is done: final, and its callbacks ran.
    pub(crate) fn progress(&self, id: u64) -> Progress {
        match self.record(id) {
            None => Progress::Gone,
            Some(r) if r.status.is_final() && !self.calls.awaits_callbacks(id) => Progress::Done,
            Some(_) => Progress::Pending,
        }
    }

    /// Takes the result of call `id`, which must be done (see [`Engine::progress`]): the
    /// encoded return value, copied out of shared memory (the caller decodes it), or the
    /// call's error.
    pub(crate) fn take_done_bytes(&mut self, id: u64) -> Result<Vec<u8>, CallError> {
        self.take_finished(id, |engine, record| {
            // In the parent's memory already (see `keep`): handed over as it is.
            if let Some(bytes) = record.ret_bytes.take() {
                return Ok(bytes);
            }
            let mut bytes = Vec::new();
            if let (Some(span), Some(blocks)) = (record.ret, record.blocks.as_ref()) {
                engine.pool.region().copy_out_in(blocks, span, &mut bytes);
            }
            Ok(bytes)
        })
    }

    /// Cancels call `id` if it has not finished: a queued call leaves the queue, a running
    /// one's worker is killed (and replaced later). The call ends
    /// [`CallStatus::Cancelled`], its callbacks still to run (see [`Engine::fire`]). Returns
    /// whether it was cancelled; a finished call never is.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        self.settle();
        let Some(record) = self.calls.get(id) else {
            return false;
        };
        if record.status.is_final() {
            return false;
        }
        let now = clock::now_ns();
        match record.posted {
            None => {
                // Queued: out of the queue, order of the others kept.
                let queue = self.calls.take_queue();
                for other in queue {
                    if other != id {
                        self.calls.enqueue(other);
                    }
                }
                self.finish(id, CallStatus::Cancelled, now, |method| {
                    CallError::Cancelled {
                        method,
                        reason: CancelReason::ByCaller,
                    }
                });
            }
            Some(posted) => {
                // The worker may have answered already: its answer wins.
                self.read_answer(posted.slot);
                if self.calls.get(id).is_none_or(|r| r.status.is_final()) {
                    return false;
                }
                let (pid, busy) = self.kill_worker(posted.slot);
                self.base.health.refill_later();
                if busy.is_some_and(|b| b.call == id) {
                    log::info!(target: &self.base.alias, "call {id} cancelled: its worker {pid} was killed");
                }
                self.finish(id, CallStatus::Cancelled, now, |method| {
                    CallError::Cancelled {
                        method,
                        reason: CancelReason::ByCaller,
                    }
                });
            }
        }
        true
    }

    /// What to spin on, without the face's lock, for the answers of the calls now posted.
    pub(crate) fn watch(&self) -> crate::pool::Watch {
        self.pool.watch()
    }

    /// Sleeps without spinning first: the face spins without its lock instead.
    pub(crate) fn no_parent_spin(&mut self) {
        self.pool.no_parent_spin();
    }

    /// The calls that are done and held by a handle (their results wait for it).
    pub(crate) fn held_done(&self) -> Vec<u64> {
        self.calls
            .records()
            .filter(|r| r.held && r.status.is_final() && !self.calls.awaits_callbacks(r.id))
            .map(|r| r.id)
            .collect()
    }

    /// Calls not done yet or held by a handle: the pool is still in use while there are any.
    pub(crate) fn in_use(&self) -> usize {
        self.calls
            .records()
            .filter(|r| !self.is_delivered(r.id) && (r.held || !r.status.is_final()))
            .count()
    }
}
