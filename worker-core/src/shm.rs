//! The shared-memory region: one segment per mediator, laid out as a header, one channel per
//! worker slot, and the payload area that [`crate::arena`] divides into blocks.
//!
//! The segment is created by the parent (`shared_memory`, `shm_open` + `mmap`), pre-faulted so
//! that the first copy into it runs at memcpy speed, and inherited by workers through `fork`.
//! Workers never drop the handle (they leave with `_exit`), so only the parent unlinks it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shared_memory::{Shmem, ShmemConf};

use crate::channel::Channel;

/// Written at the start of every segment; a segment without it is not ours.
const MAGIC: u64 = u64::from_le_bytes(*b"fkworker");
/// The layout version; bumped whenever `Header` or `Channel` change.
const VERSION: u32 = 2;
/// The header occupies the first bytes of the segment, padded to this size.
const HEADER_SIZE: usize = 4096;

/// The first bytes of the segment.
#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slots: AtomicU32,
    arena_size: AtomicU64,
    /// Set by the parent while it sleeps in `poll`; a worker that sees it writes the eventfd.
    pub(crate) parent_sleeping: AtomicU32,
}

/// The parent's mapping of the segment.
pub(crate) struct Region {
    shmem: Shmem,
    base: *mut u8,
    slots: usize,
    arena_size: usize,
}

/// Every segment name of this process starts with this; the rest is the alias and a counter.
pub(crate) fn segment_prefix() -> String {
    format!("fw.{}.", std::process::id())
}

fn sanitize(alias: &str) -> String {
    alias
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}

impl Region {
    /// Creates and pre-faults a segment for `slots` workers and `arena_size` payload bytes.
    pub(crate) fn create(alias: &str, slots: usize, arena_size: usize) -> Result<Region, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("/{}{}.{n}", segment_prefix(), sanitize(alias));
        let total = Self::arena_offset(slots) + arena_size;
        let shmem = ShmemConf::new()
            .size(total)
            .os_id(&name)
            .create()
            .map_err(|e| {
                format!("cannot create shared memory segment {name} of {total} bytes: {e}")
            })?;
        let base = shmem.as_ptr();
        // SAFETY: the mapping is `total` bytes long and nobody else uses it yet. Writing every
        // byte pre-faults the pages so later copies do not stall on page faults.
        unsafe { std::ptr::write_bytes(base, 0, total) };
        let region = Region {
            shmem,
            base,
            slots,
            arena_size,
        };
        let h = region.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(slots as u32, Ordering::Relaxed);
        h.arena_size.store(arena_size as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    fn arena_offset(slots: usize) -> usize {
        let end = HEADER_SIZE + slots * std::mem::size_of::<Channel>();
        end.div_ceil(4096) * 4096
    }

    /// The segment's name, as under /dev/shm.
    pub(crate) fn name(&self) -> &str {
        self.shmem.get_os_id()
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the header lies at the start of the mapping, which outlives `self`, and is
        // made only of atomics.
        unsafe { &*(self.base as *const Header) }
    }

    /// The channel of worker slot `slot`.
    pub(crate) fn channel(&self, slot: usize) -> &Channel {
        assert!(slot < self.slots, "slot {slot} out of {}", self.slots);
        // SAFETY: in bounds (checked), aligned (HEADER_SIZE is a multiple of 64), atomics only.
        unsafe { &*(self.base.add(HEADER_SIZE) as *const Channel).add(slot) }
    }

    pub(crate) fn arena_size(&self) -> usize {
        self.arena_size
    }

    /// The payload bytes `offset..offset + len`, or `None` if out of the payload area.
    ///
    /// # Safety
    /// No other process may write these bytes while the slice lives. The protocol guarantees
    /// it: a block belongs to one side at a time, handed over by the channel's sequence words.
    pub(crate) unsafe fn payload(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        (end <= self.arena_size).then(|| {
            // SAFETY: in bounds (checked); exclusivity is the caller's promise.
            unsafe {
                std::slice::from_raw_parts(
                    self.base.add(Self::arena_offset(self.slots) + offset),
                    len,
                )
            }
        })
    }

    /// The payload bytes `offset..offset + len`, writable, or `None` if out of bounds.
    ///
    /// # Safety
    /// As for [`Region::payload`], and no other slice of these bytes may be alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn payload_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        (end <= self.arena_size).then(|| {
            // SAFETY: in bounds (checked); exclusivity is the caller's promise.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.base.add(Self::arena_offset(self.slots) + offset),
                    len,
                )
            }
        })
    }
}
