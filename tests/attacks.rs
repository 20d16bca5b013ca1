//! Attacks from inside a worker: a method that does the hostile thing for real (truncates the
//! segment, scribbles over it, races the parent's decoding, stops or dies at the worst
//! moment), and a parent that must survive with the documented error while the pool goes on.
//! Each test runs alone in its own process (see `support`), which also checks what it left
//! behind.

mod support;

use std::time::{Duration, Instant};

use forkworker::prelude::*;
use support::eventually;

const LONG: Duration = Duration::from_secs(30);

/// The layout of the segment (see worker-core/src/shm.rs and channel.rs): channels start at
/// 4096 and are 192 bytes each; in a channel, the response half starts at +64 and its
/// `errors` word is at +4.
const CHANNELS: usize = 4096;
const CHANNEL_SIZE: usize = 192;
const RESP_ERRORS: usize = 64 + 4;
/// The response half's `kind` word, and its value for "I need more room".
const RESP_KIND: usize = 64 + 12;
const NEED_SPACE: u32 = 2;
/// The response half's `seq` word; the request half's `kind` word, its value for "here is
/// room", and its `ret_off` word.
const RESP_SEQ: usize = 64 + 8;
const REQ_KIND: usize = 4;
const SPACE: u32 = 2;
const REQ_RET_OFF: usize = 16;
/// The payload area of the race's mediator.
const RACE_ARENA: usize = 32 << 20;

pub struct Hostile;

/// This worker's mapping of its mediator's segment: (start, length).
fn own_segment(alias: &str) -> (*mut u8, usize) {
    let (start, len) = support::memfd_mappings(alias)
        .into_iter()
        .max_by_key(|&(_, len)| len)
        .expect("the worker maps its mediator's segment");
    (start as *mut u8, len)
}

/// Starts a thread that waits for the parent to grant channel `slot`'s worker room for a
/// return of `n` bytes, then for the worker's answer, and from then on keeps flipping bytes
/// of that room to 0xFF and back for `time`, while the parent decodes them. `arena` is the
/// payload area's size: the area is the last bytes of the segment.
fn flip_returned(alias: &str, slot: usize, arena: usize, n: usize, time: Duration) {
    let (base, len) = own_segment(alias);
    let channel = base as usize + CHANNELS + slot * CHANNEL_SIZE;
    let payload = base as usize + len - arena;
    std::thread::spawn(move || {
        let read = |at: usize| {
            // SAFETY: reading the worker's own channel in its mapping.
            unsafe { std::ptr::read_volatile((channel + at) as *const u32) }
        };
        while read(REQ_KIND) != SPACE {
            std::hint::spin_loop();
        }
        let seq = read(0);
        // SAFETY: as above.
        let ret_off = unsafe { std::ptr::read_volatile((channel + REQ_RET_OFF) as *const u64) };
        while read(RESP_SEQ) != seq {
            std::hint::spin_loop();
        }
        let start = payload + ret_off as usize;
        let end = Instant::now() + time;
        let mut x = 1usize;
        while Instant::now() < end {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let p = (start + 8 + (x >> 33) % (n - 8)) as *mut u8;
            // SAFETY: within the room the worker was lent, in its own mapping; racing the
            // parent is the attack.
            unsafe {
                std::ptr::write_volatile(p, 0xFF);
                for _ in 0..50 {
                    std::hint::spin_loop();
                }
                std::ptr::write_volatile(p, b'a');
            }
        }
    });
}

/// Starts a thread that watches channel `slot`'s answer and runs `then` as soon as the
/// worker has asked for more room for its return value.
fn on_need_space(alias: &str, slot: usize, then: fn()) {
    let (base, _) = own_segment(alias);
    let kind = base as usize + CHANNELS + slot * CHANNEL_SIZE + RESP_KIND;
    std::thread::spawn(move || {
        // SAFETY: reading the worker's own channel in its mapping.
        while unsafe { std::ptr::read_volatile(kind as *const u32) } & 0xFFFF != NEED_SPACE {
            std::hint::spin_loop();
        }
        then();
    });
}

#[forkworker::worker]
impl Hostile {
    pub fn echo(&self, n: u64) -> u64 {
        n
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Truncates (and grows) the segment through every way a worker has to it: the
    /// descriptors it inherited and /proc/self/map_files. Returns what each attempt gave:
    /// (how many were tried, how many succeeded).
    pub fn truncate(&self, alias: String) -> (u32, u32) {
        let (base, len) = own_segment(&alias);
        let mut tried = 0;
        let mut done = 0;
        let mut attempt = |fd: i32| {
            for size in [0, len as libc::off_t * 2] {
                tried += 1;
                // SAFETY: the attack; the descriptor is ours.
                if unsafe { libc::ftruncate(fd, size) } == 0 {
                    done += 1;
                }
            }
        };
        let range = format!(
            "/proc/self/map_files/{:x}-{:x}",
            base as usize,
            base as usize + len
        );
        if let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&range)
        {
            use std::os::fd::AsRawFd;
            attempt(file.as_raw_fd());
        }
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            if target.to_string_lossy().contains("memfd:fw.")
                && let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>()
            {
                attempt(fd);
            }
        }
        (tried, done)
    }

    /// Starts a thread that writes random words over the whole segment, as fast as it can,
    /// for `ms` milliseconds (half of them into its first 8 KiB: the header and channels).
    pub fn scribble(&self, alias: String, ms: u64) -> u32 {
        let (base, len) = own_segment(&alias);
        let base = base as usize;
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_millis(ms);
            let mut x = std::process::id() as u64 | 1;
            while Instant::now() < end {
                for _ in 0..4096 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half of the words hit the header and the channels.
                    let span = if x & 1 == 0 { len } else { 8192 };
                    let at = base + (x as usize % (span / 8)) * 8;
                    // SAFETY: within the worker's own mapping; scribbling is the attack.
                    unsafe { std::ptr::write_volatile(at as *mut u64, x) };
                }
            }
        });
        std::process::id()
    }

    /// Writes `seq` into the sequence word of channel `slot`'s answer line (the worker's
    /// own), then hangs.
    pub fn scribble_answer_seq(&self, alias: String, slot: usize, seq: u32) -> u32 {
        let (base, _) = own_segment(&alias);
        // SAFETY: the worker's own mapping; scribbling is the attack.
        unsafe {
            let word = base.add(CHANNELS + slot * CHANNEL_SIZE + RESP_SEQ) as *mut u32;
            std::ptr::write_volatile(word, seq);
        }
        std::thread::sleep(Duration::from_secs(60));
        seq
    }

    /// Writes `value` into the `errors` word of channel `slot` (the worker's own).
    pub fn set_errors_word(&self, alias: String, slot: usize, value: u32) -> u32 {
        let (base, _) = own_segment(&alias);
        // SAFETY: the worker's own mapping; scribbling is the attack.
        unsafe {
            let word = base.add(CHANNELS + slot * CHANNEL_SIZE + RESP_ERRORS) as *mut u32;
            std::ptr::write_volatile(word, value);
        }
        value
    }

    /// Returns `n` bytes of `a` while a thread keeps flipping them to invalid UTF-8 and back
    /// in the segment, so that the parent decodes them while they change.
    pub fn racy_text(&self, alias: String, n: usize) -> String {
        flip_returned(&alias, 0, RACE_ARENA, n, Duration::from_millis(20));
        "a".repeat(n)
    }

    /// Returns a value too large for its reservation (the parent must grant room), and stops
    /// this process (SIGSTOP) as soon as it asked for room, so the request for room is never
    /// answered.
    pub fn big_then_stop(&self, alias: String, n: usize) -> Vec<u8> {
        // SAFETY: stopping ourselves is the point.
        on_need_space(&alias, 0, || unsafe {
            libc::raise(libc::SIGSTOP);
        });
        vec![7; n]
    }

    /// As [`Hostile::big_then_stop`], but the process exits instead.
    pub fn big_then_exit(&self, alias: String, n: usize) -> Vec<u8> {
        // SAFETY: leaving at once is the point.
        on_need_space(&alias, 0, || unsafe { libc::_exit(3) });
        vec![7; n]
    }
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    // SAFETY: a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn a_worker_cannot_truncate_the_segment() {
    let mut m = HostileMediator::new("Truncate", Hostile);
    m.workers(1);
    let id = m.truncate("Truncate".into()).unwrap();
    let (tried, done) = m.wait(id, LONG).unwrap();
    assert!(tried > 0, "the worker found a way to its segment to try");
    assert_eq!(
        done, 0,
        "the segment is sealed against truncating and growing"
    );
    // The parent touches the whole segment again and goes on.
    for n in 0..100 {
        let id = m.echo(n).unwrap();
        assert_eq!(m.wait(id, LONG).unwrap(), n);
    }
}

fn a_huge_errors_word_neither_hangs_nor_floods_the_parent() {
    let mut m = HostileMediator::new("ErrorsWord", Hostile);
    m.workers(1);
    let t = Instant::now();
    let id = m.set_errors_word("ErrorsWord".into(), 0, u32::MAX).unwrap();
    // Whatever the call gives, the parent is back at once.
    let _ = m.wait(id, LONG);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{:?} for one call",
        t.elapsed()
    );
    // The worker that scribbled is replaced, and the pool goes on.
    for n in 0..20 {
        let id = m.echo(n).unwrap();
        assert_eq!(m.wait(id, LONG).unwrap(), n);
    }
}

fn a_return_changed_while_the_parent_decodes_it_is_never_invalid() {
    let mut m = HostileMediator::new("Utf8Race", Hostile);
    m.workers(1).malloc(RACE_ARENA);
    let (mut returned, mut wire) = (0, 0);
    for _ in 0..20 {
        let id = m.racy_text("Utf8Race".into(), 4 << 20).unwrap();
        match m.wait(id, LONG) {
            Ok(text) => {
                // A `String` holding invalid UTF-8 would be undefined behaviour; checking its
                // bytes is how such a value shows.
                assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                returned += 1;
            }
            Err(CallError::Wire { .. }) => wire += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    eprintln!("{returned} returned, {wire} failed to decode");
    assert!(returned > 0, "some calls returned");
}

fn a_worker_scribbling_over_the_whole_segment_neither_hangs_nor_kills_the_parent() {
    let mut m = HostileMediator::new("Scribble", Hostile);
    m.workers(2).timeout(Duration::from_secs(2));
    let id = m.scribble("Scribble".into(), 1_000).unwrap();
    let scribbler = m.wait(id, LONG);
    let end = Instant::now() + Duration::from_millis(1_500);
    let (mut right, mut failed) = (0, 0);
    while Instant::now() < end {
        let t = Instant::now();
        match m.echo(7).map(|id| m.wait(id, Duration::from_secs(10))) {
            Ok(Ok(7)) => right += 1,
            // A wrong value of the right type, or a typed error: the contained outcomes while
            // the segment is shared (each worker's own area will make them the scribbler's
            // calls alone).
            Ok(_) | Err(_) => failed += 1,
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a call took {:?}",
            t.elapsed()
        );
    }
    eprintln!("scribbler {scribbler:?}: {right} right, {failed} failed while it scribbled");
    // Once the scribbler is replaced (its thread ended), every call is right again.
    std::thread::sleep(Duration::from_millis(200));
    let settled = eventually(LONG, || {
        (0..50).all(|n| m.echo(n).map(|id| m.wait(id, LONG)) == Ok(Ok(n)))
    });
    assert!(settled, "the pool recovered from the scribbling");
}

fn a_full_dev_shm_fails_start_with_an_error_not_sigbus() {
    // In a child with a private mount namespace whose /dev/shm is a 1 MiB tmpfs: a persistent
    // mediator's named segment does not fit; a plain mediator's memfd needs no /dev/shm.
    let (child, lines) = support::fork_reporting(|mut out| {
        use std::io::Write;
        let private = std::ffi::CString::new("/").unwrap();
        let shm = std::ffi::CString::new("/dev/shm").unwrap();
        let tmpfs = std::ffi::CString::new("tmpfs").unwrap();
        let size = std::ffi::CString::new("size=1m").unwrap();
        // SAFETY: plain system calls with valid strings, in this child only.
        let mounted = unsafe {
            libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    private.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    tmpfs.as_ptr(),
                    shm.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    size.as_ptr().cast(),
                ) == 0
        };
        if !mounted {
            writeln!(out, "cannot mount: {}", std::io::Error::last_os_error()).unwrap();
            return;
        }
        let mut m = HostileMediator::new("FullShm", Hostile);
        m.persist(support::app_name(std::process::id()))
            .malloc(8 << 20);
        match m.start() {
            Err(e) => writeln!(out, "persistent: {e}").unwrap(),
            Ok(()) => writeln!(out, "persistent: started").unwrap(),
        }
        drop(m);
        let mut m = HostileMediator::new("FullShmMemfd", Hostile);
        m.malloc(8 << 20);
        let echoed = m.echo(3).map(|id| m.wait(id, LONG));
        writeln!(out, "memfd: {echoed:?}").unwrap();
    });
    let lines: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status),
        "the child died of signal {} (SIGBUS is 7); it said {lines:?}",
        libc::WTERMSIG(status)
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("persistent: ") && lines[0].contains("No space left on device"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "memfd: Ok(Ok(3))");
}

fn a_scribbled_answer_line_is_counted_as_corruption_not_a_timeout() {
    let mut m = HostileMediator::new("AnswerSeq", Hostile);
    m.workers(1).timeout(Duration::from_secs(1));
    let id = m
        .scribble_answer_seq("AnswerSeq".into(), 0, 0xdead_beef)
        .unwrap();
    match m.wait(id, LONG) {
        Err(CallError::Wire {
            source: WireError::Corrupted(detail),
            ..
        }) => assert!(detail.contains("sequence number"), "{detail}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(m.errors().corruption, 1);
    let id = m.echo(4).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 4);
}

/// The return of the room games: large, so that copying it into the granted room takes the
/// worker long enough for its watching thread to act first.
const BIG: usize = 32 << 20;

fn a_worker_stopped_after_asking_for_room_ends_by_its_timeout_without_spinning() {
    let mut m = HostileMediator::new("StopRoom", Hostile);
    m.workers(1).timeout(Duration::from_secs(2)).malloc(4 * BIG);
    // The worker's watching thread may lose the race with its own answer; then try again.
    for _ in 0..5 {
        let id = m.big_then_stop("StopRoom".into(), BIG).unwrap();
        let (t, cpu) = (Instant::now(), cpu_time());
        match m.wait(id, Duration::from_secs(20)) {
            Err(CallError::Timeout { .. }) => {}
            Ok(_) => continue,
            Err(e) => panic!("expected a timeout, got {e:?}"),
        }
        let (waited, spun) = (t.elapsed(), cpu_time() - cpu);
        assert!(waited < Duration::from_secs(4), "waited {waited:?}");
        assert!(spun < Duration::from_millis(500), "spun {spun:?} of CPU");
        let id = m.echo(5).unwrap();
        assert_eq!(m.wait(id, LONG).unwrap(), 5);
        return;
    }
    panic!("the worker never stopped before answering");
}

fn a_worker_dead_after_asking_for_room_is_reported_at_once() {
    let mut m = HostileMediator::new("DieRoom", Hostile);
    m.workers(1)
        .timeout(Duration::from_secs(20))
        .malloc(4 * BIG);
    for _ in 0..5 {
        let id = m.big_then_exit("DieRoom".into(), BIG).unwrap();
        let t = Instant::now();
        match m.wait(id, Duration::from_secs(30)) {
            Err(CallError::Crashed { .. }) => {}
            Ok(_) => continue,
            Err(e) => panic!("expected a crash, got {e:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let id = m.echo(5).unwrap();
        assert_eq!(m.wait(id, LONG).unwrap(), 5);
        assert!(eventually(LONG, || m.pids().len() == 1));
        return;
    }
    panic!("the worker never died before answering");
}

tests![
    a_worker_cannot_truncate_the_segment,
    a_huge_errors_word_neither_hangs_nor_floods_the_parent,
    a_return_changed_while_the_parent_decodes_it_is_never_invalid,
    a_worker_scribbling_over_the_whole_segment_neither_hangs_nor_kills_the_parent,
    a_full_dev_shm_fails_start_with_an_error_not_sigbus,
    a_scribbled_answer_line_is_counted_as_corruption_not_a_timeout,
    a_worker_stopped_after_asking_for_room_ends_by_its_timeout_without_spinning,
    a_worker_dead_after_asking_for_room_is_reported_at_once,
];
