//! Payload blocks inside the shared-memory region.
//!
//! Only the parent allocates and frees, so the allocator's state lives in the parent's heap and
//! a worker killed at any moment cannot corrupt it. First fit over a free list ordered by
//! offset, with neighbours merged on free. Blocks are aligned to 64 bytes (a cache line).

use std::collections::BTreeMap;

/// Alignment and granularity of blocks.
pub(crate) const ALIGN: usize = 64;

/// A block of the payload area: `len` bytes at `offset` from the area's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

/// The parent's allocator over a payload area of a fixed size.
#[derive(Debug)]
pub(crate) struct Arena {
    size: usize,
    /// Free blocks: offset -> length. Never two adjacent entries.
    free: BTreeMap<usize, usize>,
    used: usize,
}

fn round_up(n: usize) -> usize {
    n.max(1).div_ceil(ALIGN) * ALIGN
}

impl Arena {
    pub(crate) fn new(size: usize) -> Self {
        let size = size / ALIGN * ALIGN;
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(0, size);
        }
        Arena {
            size,
            free,
            used: 0,
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
        let len = round_up(len);
        let (&offset, &free_len) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&offset);
        if free_len > len {
            self.free.insert(offset + len, free_len - len);
        }
        self.used += len;
        Some(Block { offset, len })
    }

    /// Takes exactly `len` bytes (rounded up) at `offset` out of the free list, for blocks
    /// recovered from a journal. False if any of it is not free (or `offset` is not aligned).
    pub(crate) fn reserve(&mut self, offset: usize, len: usize) -> Option<Block> {
        let len = round_up(len);
        if !offset.is_multiple_of(ALIGN) {
            return None;
        }
        let (&start, &free_len) = self.free.range(..=offset).next_back()?;
        let end = offset.checked_add(len)?;
        if end > start + free_len {
            return None;
        }
        self.free.remove(&start);
        if offset > start {
            self.free.insert(start, offset - start);
        }
        if start + free_len > end {
            self.free.insert(end, start + free_len - end);
        }
        self.used += len;
        Some(Block { offset, len })
    }

    /// Returns a block to the free list, merging it with free neighbours.
    pub(crate) fn free(&mut self, block: Block) {
        debug_assert!(block.offset + block.len <= self.size);
        self.used -= block.len;
        let mut offset = block.offset;
        let mut len = block.len;
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back()
            && prev + prev_len == offset
        {
            self.free.remove(&prev);
            offset = prev;
            len += prev_len;
        }
        if let Some(next_len) = self.free.remove(&(offset + len)) {
            len += next_len;
        }
        self.free.insert(offset, len);
    }

    /// Shrinks a block in place to at least `len` bytes, freeing its tail.
    pub(crate) fn shrink(&mut self, block: Block, len: usize) -> Block {
        let len = round_up(len);
        if len >= block.len {
            return block;
        }
        self.free(Block {
            offset: block.offset + len,
            len: block.len - len,
        });
        Block {
            offset: block.offset,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_merges_back_to_one_block() {
        let mut a = Arena::new(64 * 10);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x.len, y.len, z.len), (64, 128, 64));
        assert_eq!(a.available(), 64 * 6);
        a.free(y);
        assert_eq!(a.free.values().max(), Some(&(64 * 6)));
        a.free(x);
        a.free(z);
        assert_eq!(a.available(), a.size());
        assert_eq!(a.free.len(), 1);
    }

    #[test]
    fn reserve_takes_exact_blocks_and_refuses_overlaps() {
        let mut a = Arena::new(64 * 10);
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
        let mut a = Arena::new(256);
        assert!(a.alloc(257).is_none());
        let b = a.alloc(256).unwrap();
        assert!(a.alloc(1).is_none());
        let b = a.shrink(b, 10);
        assert_eq!(b.len, 64);
        assert_eq!(a.available(), 192);
        assert!(a.alloc(192).is_some());
    }
}
