//! Payload blocks inside the shared-memory region.
//!
//! Only the parent allocates and frees, so the allocator's state lives in the parent's heap and
//! a worker killed at any moment cannot corrupt it. First fit over a free list ordered by
//! offset, with neighbours merged on free. Blocks are aligned to 64 bytes (a cache line).
//!
//! The free list is a sorted vector rather than a tree: it holds one entry per gap between
//! live blocks, so it stays short, and the common operations (taking the head of a free block,
//! giving back a block next to a free one) change an entry in place instead of removing and
//! inserting nodes: far fewer instructions per call than a `BTreeMap` (figures in
//! benches/README.md).

/// Which region a block belongs to (see `shm::Region::id`). Never zero, so that an
/// `Option<Block>` takes no more room than a block.
pub(crate) type RegionId = std::num::NonZeroU32;

/// Alignment and granularity of blocks.
pub(crate) const ALIGN: usize = 64;

/// A block of the payload area: `len` bytes at `offset` from the area's start.
///
/// Holding a `Block` is holding those bytes: the arena hands each range out once, and a block
/// is neither `Clone` nor `Copy`, so whoever has the value (the parent's record of a call, or
/// a worker's lease while the call is posted, see `pool::Lease`) is the only one that may use
/// the bytes. That is what makes `Region::bytes` safe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    /// The region whose arena made it (see `shm::Region::id`): private, so that only the
    /// arena can make a block.
    region: RegionId,
}

impl Block {
    fn end(&self) -> usize {
        self.offset + self.len
    }

    /// The bytes of the block, as a span.
    #[inline]
    pub(crate) fn span(&self) -> Span {
        Span::new(self.offset, self.len)
    }

    /// Whether `span` lies within the block.
    #[inline]
    pub(crate) fn holds(&self, span: Span) -> bool {
        span.offset >= self.offset
            && span
                .offset
                .checked_add(span.len)
                .is_some_and(|end| end <= self.end())
    }

    /// The region whose payload area the block is part of.
    #[inline]
    pub(crate) fn region(&self) -> RegionId {
        self.region
    }
}

/// A call's blocks: its arguments and return reservation, and a larger block for the return
/// value if the reservation was too small. Held by the parent's record of the call, or lent to
/// the worker that holds the call (see `pool::Pool::post_call`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub(crate) block: Block,
    pub(crate) ret_block: Option<Block>,
}

impl Blocks {
    /// The block that holds `span`, if one does.
    #[inline]
    pub(crate) fn holding(&self, span: Span) -> Option<&Block> {
        std::iter::once(&self.block)
            .chain(&self.ret_block)
            .find(|b| b.holds(span))
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.block.len + self.ret_block.as_ref().map_or(0, |b| b.len)
    }
}

/// A range of the payload area: `len` bytes at `offset`. Unlike a [`Block`] it is not an
/// allocation of its own but a part of one: a call's arguments, its return reservation, its
/// return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Span {
    pub(crate) fn new(offset: usize, len: usize) -> Span {
        Span { offset, len }
    }

    fn end(&self) -> usize {
        self.offset + self.len
    }

    /// The first `len` bytes of this span, or all of it if it is shorter.
    pub(crate) fn prefix(self, len: usize) -> Span {
        Span::new(self.offset, len.min(self.len))
    }
}

/// The parent's allocator over a payload area of a fixed size.
#[derive(Debug)]
pub(crate) struct Arena {
    size: usize,
    /// Free spans, ordered by offset. Never two adjacent ones.
    free: Vec<Span>,
    used: usize,
    /// The region the arena divides (see `shm::Region::id`), stamped on every block.
    region: RegionId,
}

/// `n` rounded up to the alignment (at least one unit), or `None` past `usize::MAX`: lengths
/// may come from shared memory.
fn round_up(n: usize) -> Option<usize> {
    n.max(1).checked_next_multiple_of(ALIGN)
}

impl Arena {
    /// An arena over the `size`-byte payload area of region `region`.
    pub(crate) fn new(size: usize, region: RegionId) -> Self {
        let size = size / ALIGN * ALIGN;
        let mut free = Vec::new();
        if size > 0 {
            free.push(Span::new(0, size));
        }
        Arena {
            size,
            free,
            used: 0,
            region,
        }
    }

    fn block(&self, offset: usize, len: usize) -> Block {
        Block {
            offset,
            len,
            region: self.region,
        }
    }

    /// The whole payload area.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Bytes not allocated.
    pub(crate) fn available(&self) -> usize {
        self.size - self.used
    }

    /// Allocates at least `len` bytes, or `None` if no free block is large enough.
    pub(crate) fn alloc(&mut self, len: usize) -> Option<Block> {
        let len = round_up(len)?;
        let i = self.free.iter().position(|f| f.len >= len)?;
        let f = &mut self.free[i];
        let offset = f.offset;
        if f.len > len {
            f.offset += len;
            f.len -= len;
        } else {
            self.free.remove(i);
        }
        self.used += len;
        Some(self.block(offset, len))
    }

    /// Takes exactly `len` bytes (rounded up) at `offset` out of the free list, for blocks
    /// recovered from a journal. False if any of it is not free (or `offset` is not aligned).
    pub(crate) fn reserve(&mut self, offset: usize, len: usize) -> Option<Block> {
        let len = round_up(len)?;
        if !offset.is_multiple_of(ALIGN) {
            return None;
        }
        // The free block starting at or before `offset`.
        let i = self
            .free
            .partition_point(|f| f.offset <= offset)
            .checked_sub(1)?;
        let f = self.free[i];
        let end = offset.checked_add(len)?;
        if end > f.end() {
            return None;
        }
        let before = Span::new(f.offset, offset - f.offset);
        let after = Span::new(end, f.end() - end);
        match (before.len > 0, after.len > 0) {
            (true, true) => {
                self.free[i] = before;
                self.free.insert(i + 1, after);
            }
            (true, false) => self.free[i] = before,
            (false, true) => self.free[i] = after,
            (false, false) => {
                self.free.remove(i);
            }
        }
        self.used += len;
        Some(self.block(offset, len))
    }

    /// Returns a block to the free list, merging it with free neighbours.
    pub(crate) fn free(&mut self, block: Block) {
        debug_assert!(block.end() <= self.size && block.region == self.region);
        self.free_span(block.span());
    }

    fn free_span(&mut self, block: Span) {
        self.used -= block.len;
        // The first free block after this one.
        let i = self.free.partition_point(|f| f.offset < block.offset);
        let joins_prev = i > 0 && self.free[i - 1].end() == block.offset;
        let joins_next = i < self.free.len() && self.free[i].offset == block.end();
        match (joins_prev, joins_next) {
            (true, true) => {
                self.free[i - 1].len += block.len + self.free[i].len;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].len += block.len,
            (false, true) => {
                let next = &mut self.free[i];
                next.offset = block.offset;
                next.len += block.len;
            }
            (false, false) => self.free.insert(i, block),
        }
    }

    /// Shrinks a block in place to at least `len` bytes, freeing its tail.
    pub(crate) fn shrink(&mut self, block: Block, len: usize) -> Block {
        let len = round_up(len).unwrap_or(usize::MAX);
        if len >= block.len {
            return block;
        }
        self.free_span(Span::new(block.offset + len, block.len - len));
        self.block(block.offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> RegionId {
        RegionId::new(n).unwrap()
    }

    #[test]
    fn a_block_or_none_takes_the_room_of_a_block() {
        assert_eq!(
            std::mem::size_of::<Option<Block>>(),
            std::mem::size_of::<Block>()
        );
    }

    #[test]
    fn alloc_free_merges_back_to_one_block() {
        let mut a = Arena::new(64 * 10, id(1));
        let x = a.alloc(1).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x.len, y.len, z.len), (64, 128, 64));
        assert_eq!(a.available(), 64 * 6);
        a.free(y);
        assert_eq!(a.free.iter().map(|f| f.len).max(), Some(64 * 6));
        a.free(x);
        a.free(z);
        assert_eq!(a.available(), a.size());
        assert_eq!(a.free.len(), 1);
    }

    #[test]
    fn reserve_takes_exact_blocks_and_refuses_overlaps() {
        let mut a = Arena::new(64 * 10, id(1));
        let b = a.reserve(128, 100).unwrap();
        assert_eq!((b.offset, b.len), (128, 128));
        assert!(a.reserve(192, 1).is_none(), "overlaps the first");
        assert!(a.reserve(1, 1).is_none(), "not aligned");
        assert!(a.reserve(64 * 9, 128).is_none(), "past the end");
        assert_eq!(a.reserve(0, 64).unwrap().offset, 0);
        assert_eq!(a.available(), 64 * 7);
        assert_eq!(a.alloc(64).unwrap().offset, 64);
        a.free(b);
        assert_eq!(a.alloc(128).unwrap().offset, 128);
    }

    #[test]
    fn exhaustion_is_none_not_a_panic() {
        let mut a = Arena::new(256, id(1));
        assert!(a.alloc(257).is_none());
        assert!(a.alloc(usize::MAX).is_none() && a.reserve(0, usize::MAX - 1).is_none());
        let b = a.alloc(256).unwrap();
        assert!(a.alloc(1).is_none());
        let b = a.shrink(b, 10);
        assert_eq!(b.len, 64);
        assert_eq!(a.available(), 192);
        assert!(a.alloc(192).is_some());
    }

    #[test]
    fn free_list_stays_sorted_and_merged() {
        // Allocations and frees in a scrambled order, checked against the list's invariants.
        let mut a = Arena::new(64 * 64, id(1));
        let mut live = Vec::new();
        let mut x: usize = 12345;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if live.is_empty() || !(x >> 33).is_multiple_of(3) {
                if let Some(b) = a.alloc((x >> 40) % 300) {
                    live.push(b);
                }
            } else {
                let b = live.swap_remove((x >> 20) % live.len());
                a.free(b);
            }
            let free: usize = a.free.iter().map(|f| f.len).sum();
            assert_eq!(free, a.available());
            assert!(a.free.windows(2).all(|w| w[0].end() < w[1].offset));
        }
        for b in live {
            a.free(b);
        }
        assert_eq!(a.free, vec![Span::new(0, a.size())]);
    }

    #[test]
    fn a_block_knows_its_region_and_what_it_holds() {
        let mut a = Arena::new(64 * 4, id(7));
        let b = a.alloc(100).unwrap();
        assert_eq!(b.region(), id(7));
        assert!(b.holds(Span::new(b.offset, 128)) && b.holds(Span::new(b.offset + 100, 28)));
        assert!(!b.holds(Span::new(b.offset, 129)));
        assert!(!b.holds(Span::new(usize::MAX, 2)), "no overflow");
        let r = a.alloc(64).unwrap();
        let blocks = Blocks {
            block: b,
            ret_block: Some(r),
        };
        assert_eq!(
            blocks.holding(Span::new(128, 10)).map(|b| b.offset),
            Some(128)
        );
        assert_eq!(blocks.holding(Span::new(0, 10)).map(|b| b.offset), Some(0));
        assert!(
            blocks.holding(Span::new(100, 40)).is_none(),
            "across two blocks"
        );
        assert_eq!(blocks.len(), 192);
    }
}
