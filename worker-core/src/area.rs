//! A worker's area: the only shared memory a worker maps besides the pool's spin page. It
//! holds the worker's channel, the parent's sleep flag for that worker, and the payload bytes
//! of the one call the worker holds: its arguments, copied in from the parent's store when the
//! call is posted, and the room for its answer after them.
//!
//! An area is a sealed memfd (see `shm::sealed_memfd`: allocated in full, sealed against
//! shrinking and growing), mapped by the parent with `MADV_DONTFORK`, so that no process
//! forked from the parent inherits it, and by its worker alone, from the descriptor the parent
//! sends with the spawn request (see `fork_server`). So a worker can neither read nor write
//! another worker's calls, the parent's store (queued arguments, returns not yet delivered,
//! the journal), nor another mediator's areas; what it writes in its own area can only spoil
//! its own call, and every word of it is validated by the parent.
//!
//! The spin page ([`SpinPage`]) is the one page the workers of a pool share: it holds the
//! spin places (`wake::SpinPlaces`), a hint of who may spin. A worker that scribbles on it
//! can make the others spin or sleep when they should not, which costs time, never a call
//! (no wake-up depends on it).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::arena::Span;
use crate::channel::Channel;
use crate::wake::{SleepFlag, SpinPlaces};

/// Where the parent's sleep flag lies in an area: a cache line of its own after the channel.
const FLAG_AT: usize = 256;
/// Where the payload bytes start in an area.
const PAYLOAD_AT: usize = 4096;
const PAGE: usize = 4096;

const _: () = assert!(std::mem::size_of::<Channel>() <= FLAG_AT && FLAG_AT + 64 <= PAYLOAD_AT);

/// One worker slot's area (see the module's documentation). Made by the parent, which keeps
/// it for the slot's successive workers; mapped by each of them from its descriptor.
pub(crate) struct Area {
    fd: OwnedFd,
    base: *mut u8,
    /// The mapping's length: the header page and the payload.
    len: usize,
}

// SAFETY: an `Area` owns its mapping and descriptor; the mapping is the whole process's and
// unmapping it is a plain system call. What it holds is shared with one worker through atomics
// (the channel, the flag) and through the lending rules of the payload (see `Area::lent`).
unsafe impl Send for Area {}

impl Area {
    /// Parent: a new area of `payload` payload bytes, named `name` (in `/proc/<pid>/maps`).
    pub(crate) fn create(name: &str, payload: usize) -> std::io::Result<Area> {
        let payload = payload
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        let len = PAYLOAD_AT
            .checked_add(payload)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        // Kept out of every child: a worker maps it from the descriptor it is sent.
        let (fd, base) = crate::shm::sealed_memfd(name, len)?;
        Ok(Area { fd, base, len })
    }

    /// Worker: maps the area whose descriptor the parent sent. The descriptor stays open with
    /// the mapping; sealed, it cannot change the area's size.
    pub(crate) fn map(fd: OwnedFd) -> std::io::Result<Area> {
        let len = map_len(&fd)?;
        if len <= PAYLOAD_AT {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // Not pre-faulted: a worker starts sooner, and touches only the pages its calls use
        // (they are allocated already; a first touch costs a page-table fault, once).
        let base = crate::shm::map_shared(fd.as_fd(), len, crate::shm::MapFor::Worker)?;
        Ok(Area { fd, base, len })
    }

    /// The area's descriptor, to send with a spawn request.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The worker's channel.
    #[inline]
    pub(crate) fn channel(&self) -> &Channel {
        // SAFETY: the channel lies at the start of the mapping (page-aligned, so aligned for
        // it), which outlives `self`, and is made of atomics only.
        unsafe { &*(self.base as *const Channel) }
    }

    /// Set by the parent while it sleeps in `poll`: the worker then rings the eventfd when it
    /// answers (see `wake`). One per worker, so that a worker that clears its own delays only
    /// its own answers.
    #[inline]
    pub(crate) fn parent_sleeping(&self) -> &SleepFlag {
        // SAFETY: in the header page (see FLAG_AT), aligned, an atomic.
        unsafe { &*(self.base.add(FLAG_AT) as *const SleepFlag) }
    }

    /// How many payload bytes the area has: the largest call (arguments and return) its worker
    /// can take.
    pub(crate) fn payload_size(&self) -> usize {
        self.len - PAYLOAD_AT
    }

    /// The address of payload bytes `span`, if within the payload.
    #[inline]
    fn payload_ptr(&self, span: Span) -> Option<*mut u8> {
        let end = span.offset.checked_add(span.len)?;
        // SAFETY: in bounds (checked): the payload lies within the mapping.
        (end <= self.payload_size()).then(|| unsafe { self.base.add(PAYLOAD_AT + span.offset) })
    }

    /// Parent: copies payload bytes `span` into `out` (replacing what it held); false, with
    /// `out` empty, if `span` is not within the payload. A copy, as everything the parent reads
    /// of a worker's (see `Region::copy_out`): the worker may still be writing there.
    pub(crate) fn copy_out(&self, span: Span, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(src) = self.payload_ptr(span) else {
            return false;
        };
        // SAFETY: valid for `span.len` bytes of the mapping (checked); `out` is our heap.
        unsafe { crate::shm::copy_to_vec(src, span.len, out) };
        true
    }

    /// Parent: copies payload bytes `span` into `dst`, which is as long; false if `span` is
    /// not within the payload or the lengths differ.
    pub(crate) fn read(&self, span: Span, dst: &mut [u8]) -> bool {
        match self.payload_ptr(span) {
            Some(src) if dst.len() == span.len => {
                // SAFETY: as in `copy_out`, into `dst`.
                unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), span.len) };
                true
            }
            _ => false,
        }
    }

    /// Parent: the first `len` payload bytes, to copy a call's arguments into before posting
    /// it; `None` if the payload is shorter.
    ///
    /// The pool calls this only for a worker that holds no request: a worker of ours reads its
    /// payload only between a request and its answer. A broken worker may write there at any
    /// time; that spoils only the call it is about to be given, whose every byte is validated
    /// by decoding.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn args_room(&self, len: usize) -> Option<&mut [u8]> {
        let p = self.payload_ptr(Span::new(0, len))?;
        // SAFETY: within the payload (checked); the parent makes no other slice of these bytes
        // while this one lives (it is used for one copy, before the post).
        Some(unsafe { std::slice::from_raw_parts_mut(p, len) })
    }

    /// Worker: the payload bytes a request lent it: its arguments, when they are in the payload
    /// (`args`), and the room for its answer (`ret`). `None` if either lies outside the
    /// payload, or if they overlap (a request no parent of ours posts).
    ///
    /// Safe because the parent lent these bytes with the request and touches them again only
    /// after the answer (it reads them then, and writes the next call's arguments only before
    /// the next request).
    #[allow(clippy::type_complexity, clippy::mut_from_ref)]
    pub(crate) fn lent(&self, args: Option<Span>, ret: Span) -> Option<(Option<&[u8]>, &mut [u8])> {
        let ret_end = ret.offset.checked_add(ret.len)?;
        if let Some(a) = args {
            let a_end = a.offset.checked_add(a.len)?;
            if a.len > 0 && ret.len > 0 && a.offset < ret_end && ret.offset < a_end {
                return None;
            }
        }
        let r = self.payload_ptr(ret)?;
        let a = match args {
            Some(a) => Some((self.payload_ptr(a)?, a.len)),
            None => None,
        };
        // SAFETY: lent with the request (see above), within the payload (checked); the two
        // ranges do not overlap, so the shared and the writable slice never alias.
        unsafe {
            Some((
                a.map(|(p, len)| std::slice::from_raw_parts(p as *const u8, len)),
                std::slice::from_raw_parts_mut(r, ret.len),
            ))
        }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is this area's mapping; nothing borrowed from it outlives
        // the area.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The page the workers of a pool share: the spin places (see the module's documentation).
pub(crate) struct SpinPage {
    fd: OwnedFd,
    base: *mut u8,
}

// SAFETY: as for `Area`: an owned mapping of atomics.
unsafe impl Send for SpinPage {}

impl SpinPage {
    /// Parent: a new page, named `name`.
    pub(crate) fn create(name: &str) -> std::io::Result<SpinPage> {
        let (fd, base) = crate::shm::sealed_memfd(name, PAGE)?;
        Ok(SpinPage { fd, base })
    }

    /// Worker: maps the page whose descriptor the parent sent.
    pub(crate) fn map(fd: OwnedFd) -> std::io::Result<SpinPage> {
        if map_len(&fd)? != PAGE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let base = crate::shm::map_shared(fd.as_fd(), PAGE, crate::shm::MapFor::Worker)?;
        Ok(SpinPage { fd, base })
    }

    /// The page's descriptor, to send with a spawn request.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The spin places.
    pub(crate) fn places(&self) -> &SpinPlaces {
        // SAFETY: at the start of the mapping (aligned), which outlives `self`; an atomic.
        unsafe { &*(self.base as *const SpinPlaces) }
    }
}

impl Drop for SpinPage {
    fn drop(&mut self) {
        // SAFETY: our own mapping of one page.
        unsafe { libc::munmap(self.base.cast(), PAGE) };
    }
}

/// The size of the memfd behind `fd`.
fn map_len(fd: &OwnedFd) -> std::io::Result<usize> {
    // SAFETY: fstat into a zeroed struct on our descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    usize::try_from(st.st_size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_sees_only_what_a_request_lent_it() {
        let area = Area::create("fw.area-test", 64 * 16).expect("an area");
        assert_eq!(area.payload_size(), 4096);
        area.args_room(3).unwrap().copy_from_slice(b"abc");
        // Mapped again from its descriptor, as a worker does: the same bytes.
        let fd = area.fd().try_clone_to_owned().unwrap();
        let worker = Area::map(fd).unwrap();
        // A request's arguments and answer room may not overlap, nor leave the payload.
        assert!(
            worker
                .lent(Some(Span::new(0, 128)), Span::new(64, 64))
                .is_none()
        );
        assert!(
            worker
                .lent(Some(Span::new(0, 64)), Span::new(1 << 20, 64))
                .is_none()
        );
        assert!(worker.lent(None, Span::new(usize::MAX, 2)).is_none());
        let (args, ret) = worker
            .lent(Some(Span::new(0, 64)), Span::new(64, 64))
            .unwrap();
        assert_eq!(&args.unwrap()[..3], b"abc");
        ret[..2].copy_from_slice(b"ok");
        let mut out = Vec::new();
        assert!(area.copy_out(Span::new(64, 2), &mut out));
        assert_eq!(out, b"ok");
        assert!(!area.copy_out(Span::new(4095, 2), &mut out) && out.is_empty());
        // Sealed: neither the parent's descriptor nor the worker's can change its size.
        // SAFETY: ftruncate on our own descriptors; failing is the point.
        unsafe {
            assert_ne!(libc::ftruncate(area.fd().as_raw_fd(), 0), 0);
            assert_ne!(libc::ftruncate(worker.fd.as_raw_fd(), 1 << 20), 0);
        }
    }
}
