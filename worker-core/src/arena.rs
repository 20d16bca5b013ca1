//! Payload blocks inside the shared-memory region.
//!
//! Only the parent allocates and frees, so the allocator's state lives in the parent's heap and
//! a worker killed at any moment cannot corrupt it. First fit over a free list ordered by
//! offset, with neighbours merged on free. Blocks are aligned to 64 bytes (a cache line).
//!
//! The free list is a sorted vector rather than a tree: it holds one entry per gap between
//! live blocks, so it stays short, and the common operations (taking the head of a free block,
//! giving back a block next to a free one) change an entry in place instead of removing and
//! inserting nodes. That takes about a tenth of the instructions per call of a `BTreeMap`.

/// Alignment and granularity of blocks.
pub(crate) const ALIGN: usize = 64;

/// A block of the payload area: `len` bytes at `offset` from the area's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Block {
    fn end(&self) -> usize {
        self.offset + self.len
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

    /// The first `len` bytes of this span, or all of it if it is shorter.
    pub(crate) fn prefix(self, len: usize) -> Span {
        Span::new(self.offset, len.min(self.len))
    }
}

/// The parent's allocator over a payload area of a fixed size.
#[derive(Debug)]
pub(crate) struct Arena {
    size: usize,
    /// Free blocks, ordered by offset. Never two adjacent ones.
    free: Vec<Block>,
    used: usize,
}

fn round_up(n: usize) -> usize {
    n.max(1).div_ceil(ALIGN) * ALIGN
}

impl Arena {
    pub(crate) fn new(size: usize) -> Self {
        let size = size / ALIGN * ALIGN;
        let mut free = Vec::new();
        if size > 0 {
            free.push(Block {
                offset: 0,
                len: size,
            });
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
        Some(Block { offset, len })
    }

    /// Takes exactly `len` bytes (rounded up) at `offset` out of the free list, for blocks
    /// recovered from a journal. False if any of it is not free (or `offset` is not aligned).
    pub(crate) fn reserve(&mut self, offset: usize, len: usize) -> Option<Block> {
        let len = round_up(len);
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
        let before = Block {
            offset: f.offset,
            len: offset - f.offset,
        };
        let after = Block {
            offset: end,
            len: f.end() - end,
        };
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
        Some(Block { offset, len })
    }

    /// Returns a block to the free list, merging it with free neighbours.
    pub(crate) fn free(&mut self, block: Block) {
        debug_assert!(block.end() <= self.size);
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
        assert_eq!(a.free.iter().map(|f| f.len).max(), Some(64 * 6));
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

    #[test]
    fn free_list_stays_sorted_and_merged() {
        // Allocations and frees in a scrambled order, checked against the list's invariants.
        let mut a = Arena::new(64 * 64);
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
        assert_eq!(
            a.free,
            vec![Block {
                offset: 0,
                len: a.size()
            }]
        );
    }
}
