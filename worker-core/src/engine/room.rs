//! The payload room of a mediator: the blocks of the payload area (see `arena`), the journal
//! entries (one per call held), and how much room each method's calls get for their return
//! value.
//!
//! A call takes an entry and one block: its encoded arguments, then a return reservation the
//! size of the method's last return value (at least [`MIN_RET`]). When the allocation is full
//! the engine waits for running calls to free some (see `Engine::alloc_call_block`); the
//! room only says whether there is any.

use crate::arena::{Arena, Block, RegionId};

/// The smallest return reservation made with each call.
pub(crate) const MIN_RET: usize = 256;

/// Why a block could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// The call needs more than the whole allocation: it can never fit.
    Never { needed: usize, allocation: usize },
    /// Not now: other calls hold the room.
    Full { needed: usize },
}

/// Blocks, entries and return-size hints.
#[derive(Debug)]
pub(crate) struct Room {
    arena: Arena,
    /// Journal entries no call holds.
    free_entries: Vec<usize>,
    entries: usize,
    /// Per method: the size of its last return value, used to size the next reservation.
    ret_hints: Vec<usize>,
    /// Per method: whether the "large payload" warning was logged.
    warned_large: Vec<bool>,
}

impl Room {
    /// The room of a mediator of `methods` methods, before its pool starts: none.
    pub(crate) fn new(methods: usize) -> Room {
        Room {
            arena: Arena::new(0, RegionId::MAX),
            free_entries: Vec::new(),
            entries: 0,
            ret_hints: vec![MIN_RET; methods],
            warned_large: vec![false; methods],
        }
    }

    /// A started pool's room: the payload area of `arena_size` bytes of region `region`, all
    /// free, and `entries` journal entries. The return-size hints are kept from an earlier
    /// start.
    pub(crate) fn start(&mut self, arena_size: usize, entries: usize, region: RegionId) {
        self.arena = Arena::new(arena_size, region);
        self.free_entries = (0..entries).rev().collect();
        self.entries = entries;
    }

    /// The whole payload area.
    pub(crate) fn size(&self) -> usize {
        self.arena.size()
    }

    /// Bytes not allocated.
    pub(crate) fn available(&self) -> usize {
        self.arena.available()
    }

    /// How many journal entries there are: how many calls can be held at once.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    // Entries.

    #[inline]
    pub(crate) fn has_free_entry(&self) -> bool {
        !self.free_entries.is_empty()
    }

    #[inline]
    pub(crate) fn take_entry(&mut self) -> Option<usize> {
        self.free_entries.pop()
    }

    #[inline]
    pub(crate) fn give_entry(&mut self, entry: usize) {
        self.free_entries.push(entry);
    }

    /// Takes entry `entry` out of the free ones, for a call recovered from it.
    pub(crate) fn claim_entry(&mut self, entry: usize) {
        self.free_entries.retain(|&e| e != entry);
    }

    // Blocks.

    /// The return reservation for `method`'s next call.
    #[inline]
    fn reservation(&self, method: u32) -> usize {
        self.ret_hints
            .get(method as usize)
            .copied()
            .unwrap_or(MIN_RET)
            .max(MIN_RET)
    }

    /// How many bytes a call of `method` with `args_len` argument bytes wants.
    #[inline]
    pub(crate) fn wanted(&self, method: u32, args_len: usize) -> usize {
        args_len.saturating_add(self.reservation(method))
    }

    /// A block for a call of `method` with `args_len` argument bytes: its arguments and the
    /// method's usual return reservation if there is room for it, else the smallest.
    pub(crate) fn alloc_call(&mut self, method: u32, args_len: usize) -> Result<Block, NoRoom> {
        let needed = args_len.saturating_add(MIN_RET);
        let allocation = self.arena.size();
        if needed > allocation {
            return Err(NoRoom::Never { needed, allocation });
        }
        self.arena
            .alloc(self.wanted(method, args_len))
            .or_else(|| self.arena.alloc(needed))
            .ok_or(NoRoom::Full { needed })
    }

    /// A block of at least `len` bytes (a return value that did not fit its reservation).
    pub(crate) fn alloc(&mut self, len: usize) -> Option<Block> {
        self.arena.alloc(len)
    }

    /// Exactly `len` bytes at `offset`, for a block recovered from the journal.
    pub(crate) fn reserve(&mut self, offset: usize, len: usize) -> Option<Block> {
        self.arena.reserve(offset, len)
    }

    /// Gives back the tail of `block` past its first `len` bytes.
    pub(crate) fn shrink(&mut self, block: Block, len: usize) -> Block {
        self.arena.shrink(block, len)
    }

    pub(crate) fn free(&mut self, block: Block) {
        self.arena.free(block);
    }

    /// Frees a call's entry and blocks.
    pub(crate) fn free_call(&mut self, entry: usize, block: Block, ret_block: Option<Block>) {
        self.free_entries.push(entry);
        self.arena.free(block);
        if let Some(b) = ret_block {
            self.arena.free(b);
        }
    }

    // Sizes.

    /// A `len`-byte return value of `method` came back: its next call's reservation follows it.
    #[inline]
    pub(crate) fn returned(&mut self, method: u32, len: usize) {
        if let Some(hint) = self.ret_hints.get_mut(method as usize) {
            *hint = len.max(MIN_RET);
        }
    }

    /// Whether a `len`-byte payload of `method` is to be warned about: larger than 1/50 of the
    /// allocation, the first time for that method. Returns the suggested `malloc` in MiB.
    #[inline]
    pub(crate) fn large(&mut self, method: u32, len: usize) -> Option<usize> {
        let allocation = self.arena.size();
        if len.saturating_mul(50) > allocation {
            self.first_large(method, len)
        } else {
            None
        }
    }

    #[cold]
    fn first_large(&mut self, method: u32, len: usize) -> Option<usize> {
        let warned = self.warned_large.get_mut(method as usize)?;
        if std::mem::replace(warned, true) {
            return None;
        }
        Some(len.saturating_mul(50).div_ceil(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_its_reservation_or_the_smallest_or_an_error() {
        let mut room = Room::new(2);
        // Not started: nothing fits.
        assert!(matches!(room.alloc_call(0, 0), Err(NoRoom::Never { .. })));
        room.start(4096, 8, RegionId::MIN);
        assert_eq!(
            (room.size(), room.available(), room.entries()),
            (4096, 4096, 8)
        );
        room.returned(0, 1000);
        assert_eq!(room.wanted(0, 24), 1024);
        let a = room.alloc_call(0, 24).unwrap();
        assert_eq!(a.len, 1024);
        // Method 1's hint is the smallest.
        assert_eq!(room.alloc_call(1, 10).unwrap().len, 320);
        // No room for the hint: the smallest reservation instead; then none.
        let b = room.alloc_call(0, 2000).unwrap();
        assert_eq!(b.len, 2304);
        assert_eq!(
            room.alloc_call(0, 500),
            Err(NoRoom::Full {
                needed: 500 + MIN_RET
            })
        );
        assert_eq!(
            room.alloc_call(0, 4000),
            Err(NoRoom::Never {
                needed: 4000 + MIN_RET,
                allocation: 4096
            })
        );
        // Lengths chosen by anyone overflow nothing.
        assert!(room.alloc_call(0, usize::MAX).is_err());
        assert_eq!(room.wanted(0, usize::MAX), usize::MAX);
        room.free(a);
        room.free(b);
        assert_eq!(room.available(), 4096 - 320);
    }

    #[test]
    fn entries_are_taken_and_given_back() {
        let mut room = Room::new(1);
        room.start(4096, 3, RegionId::MIN);
        assert_eq!(room.take_entry(), Some(0));
        room.claim_entry(2);
        assert_eq!(room.take_entry(), Some(1));
        assert!(!room.has_free_entry() && room.take_entry().is_none());
        let block = room.alloc(64).unwrap();
        room.free_call(1, block, None);
        assert_eq!(room.take_entry(), Some(1));
        assert_eq!(room.available(), 4096);
    }

    #[test]
    fn a_large_payload_is_warned_about_once_per_method() {
        let mut room = Room::new(2);
        room.start(50 << 20, 1, RegionId::MIN);
        assert_eq!(room.large(0, 1 << 20), None);
        assert_eq!(room.large(0, (1 << 20) + 1), Some(51));
        assert_eq!(room.large(0, 5 << 20), None);
        assert_eq!(room.large(1, 5 << 20), Some(250));
        // An index past the methods (a corrupted record) is no panic.
        assert_eq!(room.large(7, 5 << 20), None);
    }
}
