//! `wait`: one call's result, and its short path. When the awaited call's worker has answered
//! and nothing else needs the parent, `wait` validates and decodes the answer and returns: the
//! delivered call's bookkeeping (statistics, freeing its entry and block, its worker's wear)
//! is left in a [`Delivered`] that [`Engine::settle`] completes after the next call is posted,
//! while that call's worker runs, or before anything else looks at the pool.

use std::time::{Duration, Instant};

use super::answer::{self, Outcome};
use super::history::Past;
use super::{Engine, Sink, record_times};
use crate::arena::{Block, Blocks, Span};
use crate::call::{CallId, CallRecord, CallStatus, Timings};
use crate::channel::{PostedAt, Ran};
use crate::clock::to_instant;
use crate::error::{CallError, ErrorKind};
use crate::worker::Worker;

/// The longest `wait` goes without a full collection while answers keep coming (see
/// `Engine::nothing_else_to_collect`).
const FULL_EVERY: Duration = Duration::from_millis(1);
/// A call `wait` delivered through its short path, with what its bookkeeping still needs:
/// its record to drop (the views of the engine already treat it as gone), its times for
/// the statistics, its journal entry and blocks to free, and its worker's wear to check. The
/// bookkeeping is done by [`Engine::settle`], after the next call is posted (its worker runs
/// meanwhile) or before anything else looks at the pool.
pub(super) struct Delivered {
    pub(super) id: u64,
    pub(super) slot: usize,
    pub(super) method: u32,
    /// When the worker ran it.
    pub(super) ran: Ran,
    /// Its journal entry and block, unless the next call took them over (see
    /// [`Engine::call_room`]).
    pub(super) held: Option<(usize, Block)>,
    pub(super) ret_block: Option<Block>,
}

/// Where a return value's bytes lie.
enum From<'a> {
    /// They came inside the answer, or lie in the parent's own memory: no copy is needed.
    Inline(&'a [u8]),
    /// In slot `.0`'s area, which its worker no longer writes (it answered).
    Area(usize, Span),
    /// In the store, in a finished call's blocks.
    Store(Option<&'a Blocks>, Span),
}

/// What `wait` reads before looking at its call again.
enum Round {
    /// Everything: `collect`.
    Full,
    /// The answer of the worker in this slot, which holds the awaited call.
    Answer(usize),
    /// Nothing.
    Nothing,
}

impl<W: Worker> Engine<W> {
    /// Blocks until call `id` finishes and its callbacks ran, or `timeout` passes, driving
    /// the pool (and its callbacks) meanwhile, and takes the typed result.
    ///
    /// A call is held while it is waited for (see [`Engine::hold`]). If it is unknown (its
    /// result was taken, or it was released after its callbacks with no handle holding it),
    /// this returns [`CallError::UnknownCall`].
    pub(crate) fn wait<R: 'static>(
        &mut self,
        id: CallId<R>,
        timeout: Duration,
        sink: &mut impl Sink<W>,
    ) -> Result<R, CallError> {
        let raw = id.raw();
        // At most one call's bookkeeping waits at a time (`take_returned` makes one).
        self.settle();
        // Times in CLOCK_MONOTONIC nanoseconds from the pool's clock; an `Instant` is made
        // only for a sleep or a full collection.
        let start = self.now_ns();
        let deadline = start.saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64);
        let was_held;
        let (status, posted) = match self.calls.get_mut(raw) {
            Some(record) => {
                was_held = record.held;
                record.held = true;
                (record.status, record.posted)
            }
            None => return Err(CallError::UnknownCall(raw)),
        };
        // One clock read per round, for the collection and the deadline.
        let mut now = start;
        // What to read before looking at the call: everything (a full collection), only the
        // answer of the worker that holds it (it has answered: the result then goes back at
        // once), or nothing (a call just handed to a worker, with nothing else to read: the
        // collection would only delay the spin that sees the answer come). Anything else that
        // wakes the sleep brings a full collection, as does a last one older than FULL_EVERY
        // (so that periodic checks, such as a worker's age, still run).
        let due = self
            .collected_at
            .is_none_or(|t| now >= t + FULL_EVERY.as_nanos() as u64);
        // The awaited call's own answer is not "something else": if it comes in between the
        // two looks, the spin that follows `Nothing` sees it at once.
        let mut round = match self.answered_slot(posted) {
            _ if due => Round::Full,
            Some(i) => Round::Answer(i),
            None if status == CallStatus::Called
                && self.nothing_else_to_collect(posted.map(|p| p.slot)) =>
            {
                Round::Nothing
            }
            None => Round::Full,
        };
        loop {
            let short = match std::mem::replace(&mut round, Round::Full) {
                Round::Answer(slot) => {
                    if let Some(result) = self.take_returned(slot, id, sink) {
                        return result;
                    }
                    self.collect_answer(slot, sink);
                    true
                }
                Round::Full => {
                    self.collect_at(sink, now);
                    false
                }
                Round::Nothing => false,
            };
            let Some(record) = self.calls.get(raw) else {
                return Err(CallError::UnknownCall(raw));
            };
            if record.status.is_final() {
                if !self.calls.awaits_callbacks(raw) {
                    return self.take_result(id);
                }
                // Its callbacks run first: the next round is a full collection.
                continue;
            }
            let posted = record.posted;
            if short {
                now = self.now_ns();
            }
            if now >= deadline {
                if let Some(record) = self.calls.get_mut(raw) {
                    record.held = was_held;
                }
                return Err(CallError::WaitTimeout {
                    id: raw,
                    waited: Duration::from_nanos(now - start),
                });
            }
            // Queued calls held for a short call (see `held_for_short_call`) go out then.
            let until = self.held_until.map_or(deadline, |h| h.min(deadline));
            self.pool.sleep_with(|| Some(to_instant(until)));
            if let Some(i) = self.answered_slot(posted) {
                round = Round::Answer(i);
            }
            // The short round needs no clock reading unless the call goes on.
            if !matches!(round, Round::Answer(_)) {
                now = self.now_ns();
            }
        }
    }

    /// Blocks until one of calls `ids` is final and its callbacks ran (or is unknown, which
    /// [`Engine::take_result`] then says), or `timeout` passes, driving the pool meanwhile.
    /// Returns the first such call's index in `ids`; `None` when the time is up.
    pub(crate) fn wait_any(
        &mut self,
        ids: &[u64],
        timeout: Duration,
        sink: &mut dyn Sink<W>,
    ) -> Option<usize> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            self.collect(sink);
            if let Some(k) = ids
                .iter()
                .position(|&id| self.progress(id) != super::Progress::Pending)
            {
                return Some(k);
            }
            if ids.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let held = self.held_until.map(to_instant);
            self.pool.sleep(deadline.into_iter().chain(held).min());
        }
    }

    /// Whether `wait` may skip its first collection: nothing is queued, finished or due for a
    /// refill, and no worker answered but the one in slot `mine` (the awaited call's, if it
    /// was posted).
    pub(super) fn nothing_else_to_collect(&self, mine: Option<usize>) -> bool {
        self.calls.nothing_queued()
            && self.calls.nothing_finished()
            && !self.base.health.refill_due()
            && !self.pool.any_answer_but(mine)
    }

    /// The slot of the worker that holds a call `posted` there, if it answered.
    pub(super) fn answered_slot(&self, posted: Option<PostedAt>) -> Option<usize> {
        let pool = &self.pool;
        posted
            .filter(|p| pool.answered(p.slot, p.seq))
            .map(|p| p.slot)
    }

    /// The shortest way from an answer to a result, taken by `wait` when slot `i`'s worker
    /// answered the awaited call `id`: if the call returned and no `on_return` handler wants
    /// it, the result is decoded and the call released at once, with the bookkeeping of
    /// [`Engine::read_answer`], [`Engine::finish`] and [`Engine::take_result`] that a
    /// delivered call needs and nothing else: one lookup instead of five, no "returned" state
    /// in the journal for a return that is delivered in the same breath, no trip through the
    /// callback queue. What can wait (statistics, freeing, the worker's wear) waits for
    /// [`Engine::settle`]. `None`: anything else; the caller takes the general path.
    pub(super) fn take_returned<R: 'static>(
        &mut self,
        i: usize,
        id: CallId<R>,
        sink: &impl Sink<W>,
    ) -> Option<Result<R, CallError>> {
        if sink.takes_returns() {
            return None;
        }
        // `wait` settled on entry; this keeps a second delivery from dropping the first's
        // bookkeeping should that ever change.
        if self.delivered.is_some() {
            self.settle();
        }
        let pool = &mut self.pool;
        let (busy, answer) = pool.answer(i).filter(|(b, _)| b.call == id.raw())?;
        let Outcome::Returned { value, inline } = answer::outcome(&answer, busy.ret) else {
            return None;
        };
        let len = value.len;
        let record = self.calls.get(id.raw())?;
        let (method, entry) = (record.method, record.entry);
        // Errors the worker reported count now: `errors` and `stats` read them.
        let reported = pool.take_worker_errors(i);
        self.count_errors(ErrorKind::Catchall, reported, Some(i));
        let blocks = self.slot_returned(i, method, len)?;
        // From the worker's area, which it writes no more until its next request (posted only
        // after this).
        let from = match &inline {
            Some(b) => From::Inline(&b[..len]),
            None => From::Area(i, value),
        };
        let result = self.decode_return::<R>(method, from);
        let Blocks { block, ret_block } = blocks;
        // The rest waits for the next post (see `settle`); the block stays allocated until
        // then (the worker is done with it), and the decoded value no longer needs it. A
        // persistent journal forgets the call now, so that a parent killed before that does
        // not run it again at recovery.
        if let Some(journal) = self.pool.journal(entry) {
            journal.clear();
        }
        self.delivered = Some(Delivered {
            id: id.raw(),
            slot: i,
            method,
            ran: answer.ran,
            held: Some((entry, block)),
            ret_block,
        });
        if !self.calls.nothing_queued() {
            self.settle();
            self.dispatch_queued();
        }
        Some(result)
    }

    /// The bookkeeping of the call `wait` delivered last, if it is still due: its times go to
    /// the statistics, its journal entry and blocks are freed, and its worker retires if that
    /// call wore it out. Runs after the next call is posted, so that its worker runs while
    /// the parent does this, and before anything that reads the pool's state (a collection,
    /// a dispatch from the queue, an allocation that finds no room, a shutdown).
    pub(super) fn settle(&mut self) {
        let Some(d) = self.delivered.take() else {
            return;
        };
        let ran = d.ran;
        if let Some((times, pid, timings)) = self.calls.remove_with(d.id, |r| {
            let times = delivered_times(&r.timings, &ran);
            (times, r.pid, returned_timings(&r.timings, times))
        }) {
            record_times(&mut self.base.timing, d.method, times);
            if let Some(o) = self.base.outcomes.get_mut(d.method as usize) {
                o.count(CallStatus::Returned);
            }
            let past = Past {
                status: CallStatus::Returned,
                pid,
                timings,
            };
            self.base.history.add(d.id, past);
        }
        if let Some((entry, block)) = d.held {
            self.free_call(entry, block, d.ret_block);
        }
        self.retire_if_worn(d.slot, None);
    }

    /// The timings of call `id` if `wait` delivered it and its bookkeeping is still due.
    pub(super) fn delivered_timings(&self, id: u64) -> Option<Timings> {
        let d = self.delivered.as_ref().filter(|d| d.id == id)?;
        let record = self.calls.get(id)?;
        let times = delivered_times(&record.timings, &d.ran);
        Some(returned_timings(&record.timings, times))
    }

    /// Whether call `id` was delivered and only its bookkeeping is due (see [`Delivered`]):
    /// the mediator's views treat it as gone.
    pub(super) fn is_delivered(&self, id: u64) -> bool {
        self.delivered.as_ref().is_some_and(|d| d.id == id)
    }

    /// The record of call `id`, unless it was delivered.
    pub(super) fn record(&self, id: u64) -> Option<&CallRecord> {
        self.calls.get(id).filter(|_| !self.is_delivered(id))
    }

    /// The short collection, after the answer of slot `i`'s worker woke us: that answer,
    /// then the queue and the callbacks.
    pub(super) fn collect_answer(&mut self, i: usize, sink: &mut dyn Sink<W>) {
        self.read_answer(i);
        // A worker that reached its call or error limit with this answer gets no other call.
        self.retire_if_worn(i, None);
        self.dispatch_queued();
        self.fire_callbacks(sink);
        // Callbacks may have retried calls.
        self.dispatch_queued();
    }

    /// Decodes a returned value of `method` as an `R`, from where it lies. The one place a
    /// return value is taken out of shared memory.
    ///
    /// The bytes are copied out first (see `Region::copy_out`): a worker may still write
    /// where they lie, and decoding validates what it reads.
    #[inline]
    fn decode_return<R: 'static>(&mut self, method: u32, from: From<'_>) -> Result<R, CallError> {
        let decoders = &self.base.decoders;
        let scratch = &mut self.scratch;
        let bytes = match from {
            From::Inline(bytes) => bytes,
            From::Area(i, span) => {
                self.pool.copy_from_area(i, span, scratch);
                &scratch[..]
            }
            From::Store(Some(blocks), span) => {
                self.pool.region().copy_out_in(blocks, span, scratch);
                &scratch[..]
            }
            From::Store(None, _) => &[],
        };
        let decoded = decoders.decode::<R>(method, bytes);
        decoded.map_err(|source| CallError::Wire {
            method: Self::method_name(method),
            source,
        })
    }

    /// Takes the result of a finished call whose callbacks ran out of the engine (a handle
    /// takes it); its status and timings stay in the history.
    pub(crate) fn take_result<R: 'static>(&mut self, id: CallId<R>) -> Result<R, CallError> {
        let raw = id.raw();
        self.take_finished(raw, |engine, record| {
            match (&record.ret_bytes, record.ret) {
                // In the parent's memory: decoded where it lies.
                (Some(bytes), _) => engine.decode_return::<R>(record.method, From::Inline(bytes)),
                (None, Some(value)) => engine
                    .decode_return::<R>(record.method, From::Store(record.blocks.as_ref(), value)),
                (None, None) => Err(CallError::UnknownCall(raw)),
            }
        })
    }

    /// Takes finished call `id` out of the table (its status and timings stay in the
    /// history): `returned` makes the result of a call that returned from its record; any
    /// other call gives its error. The call's shared memory is freed afterwards: until then
    /// the bytes `returned` reads stay where they are.
    pub(super) fn take_finished<T>(
        &mut self,
        id: u64,
        returned: impl FnOnce(&mut Self, &mut CallRecord) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let mut record = self.calls.remove(id).ok_or(CallError::UnknownCall(id))?;
        self.remember(&record);
        let result = match record.status {
            CallStatus::Returned => returned(self, &mut record),
            _ => Err(record
                .error
                .as_deref()
                .cloned()
                .unwrap_or(CallError::UnknownCall(id))),
        };
        self.free_record(record);
        result
    }
}

/// A delivered call's timings: its record's, with the times it started running and returned.
fn returned_timings(timings: &Timings, [_, running, returned]: [u64; 3]) -> Timings {
    let mut timings = timings.clone();
    timings.enter(CallStatus::Running, running);
    timings.enter(CallStatus::Returned, returned);
    timings
}

/// A delivered call's times from its record's and its answer's: created, started running,
/// answered (CLOCK_MONOTONIC nanoseconds).
pub(super) fn delivered_times(timings: &Timings, ran: &Ran) -> [u64; 3] {
    let uncalled = timings.entered_ns(CallStatus::Uncalled).unwrap_or(0);
    let called = timings.entered_ns(CallStatus::Called).unwrap_or(uncalled);
    let running = ran.running_ns(called);
    [uncalled, running, ran.finished_ns(running)]
}
