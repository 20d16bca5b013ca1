//! The parent's store: one segment per mediator, laid out as a header, the call journal, and
//! the payload area that [`crate::arena`] divides into blocks, where queued arguments wait and
//! returns wait to be delivered. Only the parent maps it: it is `MADV_DONTFORK`, so no process
//! forked from the parent (the fork server, a task) inherits it, and no worker ever sees it.
//! Each worker has an area of its own instead (see `area`), into which a call's arguments are
//! copied when it is posted and out of which its return is copied.
//!
//! A mediator's segment is a sealed memfd: anonymous (no name under /dev/shm for anyone to
//! open), allocated in full with `fallocate` before it is mapped (a machine short of memory
//! gives an error at `start`, never a SIGBUS at a later access), then sealed against shrinking
//! and growing (`F_SEAL_SHRINK | F_SEAL_GROW`), so that no process holding it, a worker
//! included, can truncate it under the parent. Its descriptor is closed once it is mapped:
//! workers inherit the mapping through `fork`, not a descriptor.
//!
//! A persistent mediator's store is a regular file, `<app>.<alias>.store` in the user's
//! private runtime directory (see `private_fs`: opened without following links, refused if
//! another user could have made or changed it), so that a restarted program finds it again
//! and recovers its calls (see `journal`). It is allocated in full (`fallocate`) and mapped
//! shared, by the parent alone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};

use crate::arena::{Block, Blocks, RegionId, Span};
use crate::error::PoolError;
use crate::journal::Entry;

/// Written at the start of every segment; a segment without it is not ours.
const MAGIC: u64 = u64::from_le_bytes(*b"fkworker");
/// The layout version; bumped whenever `Header`, `Channel`, `Entry` or
/// `channel::checksum` change.
const VERSION: u32 = 8;
/// The header occupies the first bytes of the segment, padded to this size.
const HEADER_SIZE: usize = 4096;
const PAGE: usize = 4096;

/// The first bytes of the segment.
#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slots: AtomicU32,
    arena_size: AtomicU64,
    entries: AtomicU64,
}

/// What a region's bytes are mapped from.
enum Backing {
    /// A sealed memfd, mapped at `Region::base` for `len` bytes; unmapped on drop.
    Memfd { name: String, len: usize },
    /// A persistent mediator's file, `name` in `dir`, mapped at `Region::base` for `len`
    /// bytes; unmapped on drop, and removed unless kept (see [`Region::keep`]).
    File {
        dir: crate::private_fs::PrivateDir,
        name: String,
        path: String,
        len: usize,
        keep: bool,
    },
}

/// The parent's mapping of the segment.
pub(crate) struct Region {
    backing: Backing,
    base: *mut u8,
    /// Unique among the regions of this process: the blocks of this region's arena carry it.
    id: RegionId,
    entries: usize,
    arena_size: usize,
}

// SAFETY: a `Region` owns its mapping (`backing`), and `base` points into it; neither is tied to
// the thread that made them: the mapping is the whole process's, and dropping it unmaps (and, for a named
// segment, unlinks) it with plain system calls. They are not `Send` by themselves only because they
// hold raw pointers. What the mapping holds is shared with other processes anyway, through
// atomics and the ownership rules of `Region::payload`, which no thread changes.
unsafe impl Send for Region {}

/// A segment found under a persistent name.
pub(crate) enum Found {
    /// None: a new one was created.
    Created(Region),
    /// One with the same layout: its journal can be read.
    Matching(Region),
    /// One with another layout (or not ours): it was removed and a new one created.
    Replaced(Region, Mismatch),
}

/// What made a segment found under a persistent name unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Mismatch {
    #[error("it is {0} bytes, too small to be ours")]
    TooSmall(usize),
    #[error("it is not a forkworker segment")]
    NotOurs,
    #[error("it has layout version {0}, this build reads {VERSION}")]
    Version(u32),
    #[error(
        "it was made for workers({old_slots}) and malloc({old_arena}), now workers({slots}) and malloc({arena})"
    )]
    Settings {
        old_slots: usize,
        old_arena: usize,
        slots: usize,
        arena: usize,
    },
    #[error("its size {size} is not the expected {expected}")]
    Size { size: usize, expected: usize },
}

/// Every segment name of this process starts with this; the rest is the alias and a counter.
pub(crate) fn segment_prefix() -> String {
    format!("fw.{}.", std::process::id())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}

/// The file name of a persistent mediator's store, in the runtime directory.
pub(crate) fn persistent_name(app: &str, alias: &str) -> String {
    format!("{}.{}.store", sanitize(app), sanitize(alias))
}

/// How many journal entries a payload area of `arena_size` bytes gets: one per 512 bytes
/// (a call takes at least 320: its arguments and a 256-byte return reservation, in 64-byte
/// blocks), at least 1,024. The journal adds a quarter to the segment's size.
pub(crate) fn entries_for(arena_size: usize) -> usize {
    (arena_size / 512).max(1024)
}

/// Where the journal and the payload area start.
fn layout(entries: usize) -> (usize, usize) {
    let journal = HEADER_SIZE;
    let arena = (journal + entries * std::mem::size_of::<Entry>()).div_ceil(PAGE) * PAGE;
    (journal, arena)
}

/// A new region id.
fn next_region_id() -> RegionId {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    RegionId::new(NEXT.fetch_add(1, Ordering::Relaxed)).unwrap_or(RegionId::MAX)
}

impl Region {
    /// Creates a sealed memfd segment for `slots` workers and `arena_size` payload bytes
    /// (see the module's documentation). Its name (`fw.<pid>.<alias>.<n>`) shows only in
    /// `/proc/<pid>/maps`.
    pub(crate) fn create(
        alias: &str,
        slots: usize,
        arena_size: usize,
    ) -> Result<Region, PoolError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{}.{n}", segment_prefix(), sanitize(alias));
        let entries = entries_for(arena_size);
        let total = layout(entries).1 + arena_size;
        let error = |source: std::io::Error| PoolError::CreateSegment {
            name: name.clone(),
            size: total,
            source: source.into(),
        };
        // The descriptor goes: only the parent maps the store.
        let (_fd, base) = sealed_memfd(&name, total).map_err(error)?;
        Ok(Region::init(
            Backing::Memfd { name, len: total },
            base,
            slots,
            entries,
            arena_size,
        ))
    }

    /// A new region over a mapping of zeroes: writes the header.
    fn init(
        backing: Backing,
        base: *mut u8,
        slots: usize,
        entries: usize,
        arena_size: usize,
    ) -> Region {
        let region = Region::adopt(backing, base, entries, arena_size);
        let h = region.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(slots as u32, Ordering::Relaxed);
        h.arena_size.store(arena_size as u64, Ordering::Relaxed);
        h.entries.store(entries as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        region
    }

    /// Opens the persistent store of `app` and `alias` if it exists and has this layout;
    /// otherwise makes a new one (over whatever was there, once it passed the checks).
    pub(crate) fn open_persistent(
        app: &str,
        alias: &str,
        slots: usize,
        arena_size: usize,
    ) -> Result<Found, PoolError> {
        use crate::private_fs::{Created, FsError, How, PrivateDir};
        let name = persistent_name(app, alias);
        let fs_error = |e: FsError| match e {
            FsError::Unsafe(u) => PoolError::UnsafeSegment(u),
            FsError::Io { path, source } => PoolError::OpenSegment {
                name: path.display().to_string(),
                source: source.into(),
            },
        };
        let dir = PrivateDir::runtime().map_err(fs_error)?;
        let path = dir.path().join(&name).display().to_string();
        let (file, created) = dir
            .open_file(OsStr::new(&name), How::private())
            .map_err(fs_error)?;
        let entries = entries_for(arena_size);
        let expected = layout(entries).1 + arena_size;
        let open_error = |source: std::io::Error| PoolError::OpenSegment {
            name: path.clone(),
            source: source.into(),
        };
        let found = file.metadata().map_err(open_error)?.len() as usize;
        let why = match created {
            Created::New => None,
            Created::Existing if found < HEADER_SIZE => Some(Mismatch::TooSmall(found)),
            Created::Existing => {
                let base = map_file(&file, found).map_err(open_error)?;
                // SAFETY: `found` >= HEADER_SIZE bytes are mapped; the header is atomics only.
                let h = unsafe { &*(base as *const Header) };
                let why = check_header(h, slots, arena_size, entries, found, expected);
                if why.is_none() {
                    let region = Region::adopt(
                        Backing::File {
                            dir,
                            name,
                            path,
                            len: found,
                            keep: false,
                        },
                        base,
                        entries,
                        arena_size,
                    );
                    return Ok(Found::Matching(region));
                }
                // SAFETY: our own mapping of `found` bytes, not used after this.
                unsafe { libc::munmap(base.cast(), found) };
                why
            }
        };
        // A new store: every byte allocated (a full disk is an error here, never a SIGBUS
        // later) and zeroed (a file found with another layout is emptied first).
        let create_error = |source: std::io::Error| PoolError::CreateSegment {
            name: path.clone(),
            size: expected,
            source: source.into(),
        };
        file.set_len(0).map_err(create_error)?;
        file.set_len(expected as u64).map_err(create_error)?;
        let size = libc::off_t::try_from(expected)
            .map_err(|_| create_error(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        // SAFETY: a plain system call on a descriptor we own.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size) } {
            0 => {}
            e => return Err(create_error(std::io::Error::from_raw_os_error(e))),
        }
        let base = map_file(&file, expected).map_err(create_error)?;
        let region = Region::init(
            Backing::File {
                dir,
                name,
                path,
                len: expected,
                keep: false,
            },
            base,
            slots,
            entries,
            arena_size,
        );
        Ok(match why {
            None => Found::Created(region),
            Some(why) => Found::Replaced(region, why),
        })
    }

    /// A region over a mapping of a store, whose header the caller checked or writes next.
    fn adopt(backing: Backing, base: *mut u8, entries: usize, arena_size: usize) -> Region {
        Region {
            backing,
            base,
            id: next_region_id(),
            entries,
            arena_size,
        }
    }

    /// The store's name: a persistent one's path, a memfd's name as in `/proc/<pid>/maps`
    /// (`/memfd:<name>`).
    pub(crate) fn name(&self) -> &str {
        match &self.backing {
            Backing::Memfd { name, .. } => name,
            Backing::File { path, .. } => path,
        }
    }

    /// Keeps a persistent store's file when this mapping is dropped (for recovery), or not.
    /// A memfd store goes with its mapping whatever this says.
    pub(crate) fn keep(&mut self, keep: bool) {
        if let Backing::File { keep: k, .. } = &mut self.backing {
            *k = keep;
        }
    }

    /// How many bytes are mapped.
    fn mapped_len(&self) -> usize {
        match &self.backing {
            Backing::Memfd { len, .. } | Backing::File { len, .. } => *len,
        }
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the header lies at the start of the mapping, which outlives `self`, and is
        // made only of atomics.
        unsafe { &*(self.base as *const Header) }
    }

    /// Journal entry `i`.
    #[inline]
    pub(crate) fn entry(&self, i: usize) -> &Entry {
        assert!(
            i < self.entries,
            "journal entry {i} out of {}",
            self.entries
        );
        let offset = layout(self.entries).0;
        // SAFETY: in bounds (checked), page-aligned start, atomics only.
        unsafe { &*(self.base.add(offset) as *const Entry).add(i) }
    }

    /// How many journal entries there are.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    pub(crate) fn arena_size(&self) -> usize {
        self.arena_size
    }

    fn arena_offset(&self) -> usize {
        layout(self.entries).1
    }

    /// The region's id, carried by the blocks of its payload area.
    pub(crate) fn id(&self) -> RegionId {
        self.id
    }

    /// Parent: copies the bytes `span` of `block`, which the parent holds, into `out`
    /// (replacing what it held); false, with `out` empty, if `span` is not within the block
    /// or the block is not of this region.
    ///
    /// The one door through which the parent reads payloads, and it copies: the parent never
    /// decodes or validates bytes in place. A [`Block`] is held by one owner at a time (the
    /// arena hands each range out once, and a block lent to a worker with a request is not in
    /// the parent's hands again until the worker answered: see `pool::Pool::post_call`), but
    /// a broken worker can still scribble anywhere it maps, at any time. Validating bytes and
    /// then reading them again would let such a worker change them in between (a `String`
    /// that is not UTF-8); a private copy is read once, and everything decoded from it is
    /// validated there.
    #[inline]
    pub(crate) fn copy_out(&self, block: &Block, span: Span, out: &mut Vec<u8>) -> bool {
        out.clear();
        if block.region() != self.id || !block.holds(span) {
            return false;
        }
        let Some(src) = self.payload_ptr(span.offset, span.len) else {
            return false;
        };
        // SAFETY: valid for `span.len` bytes of the mapping (checked); `out` is our heap.
        unsafe { copy_to_vec(src, span.len, out) };
        true
    }

    /// Parent: copies the bytes `span` of `block` into `dst`, which is `span.len` bytes long
    /// (see [`Region::copy_out`]); false, with `dst` untouched, if they are not the block's
    /// or the lengths differ.
    #[inline]
    pub(crate) fn read(&self, block: &Block, span: Span, dst: &mut [u8]) -> bool {
        if block.region() != self.id || !block.holds(span) || dst.len() != span.len {
            return false;
        }
        let Some(src) = self.payload_ptr(span.offset, span.len) else {
            return false;
        };
        // SAFETY: `src` is valid for `span.len` bytes of the mapping (checked), `dst` is as
        // long, and the two do not overlap (`dst` is this process's own memory). Copying
        // through raw pointers makes no reference to bytes another process may be writing.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), span.len) };
        true
    }

    /// Parent: [`Region::copy_out`] from whichever of a call's `blocks` holds `span`.
    #[inline]
    pub(crate) fn copy_out_in(&self, blocks: &Blocks, span: Span, out: &mut Vec<u8>) -> bool {
        match blocks.holding(span) {
            Some(block) => self.copy_out(block, span, out),
            None => {
                out.clear();
                false
            }
        }
    }

    /// Parent: the bytes `span` of `block`, writable, to fill (see [`Region::copy_out`]).
    #[inline]
    pub(crate) fn bytes_mut<'a>(
        &'a self,
        block: &'a mut Block,
        span: Span,
    ) -> Option<&'a mut [u8]> {
        if block.region() != self.id || !block.holds(span) {
            return None;
        }
        // SAFETY: the parent holds `block` (see `copy_out`), `span` is within it, and
        // `&mut Block` makes this the only slice of these bytes in this process.
        unsafe { self.payload_mut(span.offset, span.len) }
    }

    /// The address of payload bytes `offset..offset + len`, or `None` if out of the payload
    /// area.
    #[inline]
    fn payload_ptr(&self, offset: usize, len: usize) -> Option<*const u8> {
        let end = offset.checked_add(len)?;
        // SAFETY: in bounds (checked): the payload area lies within the mapping.
        (end <= self.arena_size)
            .then(|| unsafe { self.base.add(self.arena_offset() + offset) } as *const u8)
    }

    /// The payload bytes `offset..offset + len`, writable, or `None` if out of bounds.
    ///
    /// # Safety
    /// No other slice of these bytes may be alive. Only the parent maps the store, and a
    /// `&mut Block` (see `bytes_mut`) is the proof.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn payload_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        (end <= self.arena_size).then(|| {
            // SAFETY: in bounds (checked); exclusivity is the caller's promise.
            unsafe {
                std::slice::from_raw_parts_mut(self.base.add(self.arena_offset() + offset), len)
            }
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is the mapping this region made and owns; nothing
        // borrowed from it outlives the region.
        unsafe { libc::munmap(self.base.cast(), self.mapped_len()) };
        if let Backing::File {
            dir, name, keep, ..
        } = &self.backing
            && !keep
        {
            let _ = dir.remove(OsStr::new(name));
        }
    }
}

/// Maps `len` bytes of `file` for the parent (see [`MapFor::Parent`]).
fn map_file(file: &std::fs::File, len: usize) -> std::io::Result<*mut u8> {
    map_shared(file.as_fd(), len, MapFor::Parent)
}

/// Whose mapping [`map_shared`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapFor {
    /// The parent's (its store, every area, the spin page): pre-faulted, and kept out of every
    /// process forked from it (`MADV_DONTFORK`), so that no child ever inherits it.
    Parent,
    /// A worker's, of the area it was sent: its pages are touched as its calls use them.
    Worker,
}

/// Maps `len` bytes of `fd` shared, read-write, as `whose` says.
pub(crate) fn map_shared(
    fd: std::os::fd::BorrowedFd<'_>,
    len: usize,
    whose: MapFor,
) -> std::io::Result<*mut u8> {
    let populate = if whose == MapFor::Parent {
        libc::MAP_POPULATE
    } else {
        0
    };
    let flags = libc::MAP_SHARED | populate;
    // SAFETY: a fresh mapping of a descriptor the caller holds; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    if whose == MapFor::Parent {
        // SAFETY: advice on the mapping just made, page-aligned (mmap's address), of its length.
        unsafe { libc::madvise(base, len, libc::MADV_DONTFORK) };
    }
    Ok(base.cast())
}

/// Copies `len` bytes at `src` into `out`, replacing what it held.
///
/// # Safety
/// `src` must be valid for reads of `len` bytes, and not overlap `out`'s buffer (this
/// process's heap). It may be memory another process writes: the bytes are copied through raw
/// pointers, no reference to them is made, and whatever they were is then validated in `out`.
pub(crate) unsafe fn copy_to_vec(src: *const u8, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    // SAFETY: `src` as the caller promises; `out` has room for `len` bytes (reserved), which
    // the copy initialises before the length covers them.
    unsafe {
        std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len);
        out.set_len(len);
    }
}

/// What, if anything, makes a store found with header `h` and `found` bytes unreadable for
/// this layout.
fn check_header(
    h: &Header,
    slots: usize,
    arena_size: usize,
    entries: usize,
    found: usize,
    expected: usize,
) -> Option<Mismatch> {
    let (magic, version) = (
        h.magic.load(Ordering::Acquire),
        h.version.load(Ordering::Relaxed),
    );
    let (old_slots, old_arena) = (
        h.slots.load(Ordering::Relaxed) as usize,
        h.arena_size.load(Ordering::Relaxed) as usize,
    );
    if magic != MAGIC {
        Some(Mismatch::NotOurs)
    } else if version != VERSION {
        Some(Mismatch::Version(version))
    } else if old_slots != slots || old_arena != arena_size {
        Some(Mismatch::Settings {
            old_slots,
            old_arena,
            slots,
            arena: arena_size,
        })
    } else if found != expected || h.entries.load(Ordering::Relaxed) as usize != entries {
        Some(Mismatch::Size {
            size: found,
            expected,
        })
    } else {
        None
    }
}

/// Creates a memfd of `len` bytes named `name`, allocates all of it, seals its size, and maps
/// it for the parent ([`MapFor::Parent`]). Returns the descriptor and the mapping's address.
pub(crate) fn sealed_memfd(
    name: &str,
    len: usize,
) -> std::io::Result<(std::os::fd::OwnedFd, *mut u8)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let last = std::io::Error::last_os_error;
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string and flags.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: a descriptor just made, owned by nothing else; closed when `fd` drops.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain system calls on our own descriptor.
    unsafe {
        if libc::ftruncate(fd.as_raw_fd(), size) != 0 {
            return Err(last());
        }
        // Every page allocated now: short of memory, this fails with ENOSPC or ENOMEM, where
        // a touch of an unallocated page later would raise SIGBUS.
        let e = libc::posix_fallocate(fd.as_raw_fd(), 0, size);
        if e != 0 {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            return Err(last());
        }
    }
    let base = map_shared(fd.as_fd(), len, MapFor::Parent)?;
    Ok((fd, base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;

    #[test]
    fn payload_bytes_go_only_through_their_block() {
        let region = Region::create("shm-test", 1, 64 * 16).expect("a segment");
        let mut arena = Arena::new(region.arena_size(), region.id());
        let mut block = arena.alloc(100).unwrap();
        let span = Span::new(block.offset, 100);
        region.bytes_mut(&mut block, span).unwrap()[..3].copy_from_slice(b"abc");
        let mut out = vec![1, 2];
        assert!(region.copy_out(&block, span, &mut out));
        assert_eq!((&out[..3], out.len()), (&b"abc"[..], 100));
        // Not within the block, or a block of another region: no bytes.
        assert!(!region.copy_out(&block, Span::new(block.offset, 129), &mut out));
        assert!(out.is_empty());
        let mut other = Arena::new(region.arena_size(), region.id().saturating_add(1));
        let foreign = other.alloc(64).unwrap();
        assert!(!region.copy_out(&foreign, foreign.span(), &mut out));
    }
}
