//! Attacks from inside a worker: a method that does the hostile thing for real (truncates its
//! area, scribbles over it, races the parent's decoding, stops at the worst moment, looks for
//! other workers' memory), and a parent that must survive with the documented error while the
//! pool and the other workers' calls go on.
//! Each test runs alone in its own process (see `support`), which also checks what it left
//! behind.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkworker::prelude::*;
use support::eventually;

const LONG: Duration = Duration::from_secs(30);

/// The layout of a worker's area (see worker-core/src/area.rs and channel.rs): the channel
/// starts it; in the channel, the response half starts at +64, its `errors` word is at +4, its
/// `seq` at +8; the request half's `seq` is at +0 and its `ret_off` at +16. The payload starts
/// at 4096.
const RESP_ERRORS: usize = 64 + 4;
const RESP_SEQ: usize = 64 + 8;
const REQ_RET_OFF: usize = 16;
const PAYLOAD: usize = 4096;
/// The payload of each worker's area in the race's mediator.
const RACE_AREA: usize = 32 << 20;

pub struct Hostile;

/// What `keep_secret` keeps and `read_sibling` looks for.
static SECRET: AtomicU64 = AtomicU64::new(0);

/// This worker's mapping of its own area, the one area it maps: (start, length).
fn own_area(alias: &str) -> (*mut u8, usize) {
    let (start, len) = (0..64)
        .find_map(|slot| support::area_of(alias, slot))
        .expect("the worker maps its area");
    (start as *mut u8, len)
}

/// Every mapping of this process whose path names forkworker's shared memory (a memfd of
/// ours or a /dev/shm segment), as its /proc/self/maps path.
fn shared_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/memfd:fw.") || l.contains("/dev/shm/fw."))
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_owned))
        .collect()
}

/// Starts a thread that waits for the worker's answer to the request it holds (in its own
/// area), and from then on keeps flipping bytes of the `n`-byte answer to 0xFF and back for
/// `time`, while the parent decodes them.
fn flip_returned(alias: &str, n: usize, time: Duration) {
    let (base, _) = own_area(alias);
    let base = base as usize;
    std::thread::spawn(move || {
        let read = |at: usize| {
            // SAFETY: reading the worker's own channel in its area.
            unsafe { std::ptr::read_volatile((base + at) as *const u32) }
        };
        let seq = read(0);
        // SAFETY: as above.
        let ret_off = unsafe { std::ptr::read_volatile((base + REQ_RET_OFF) as *const u64) };
        while read(RESP_SEQ) != seq {
            std::hint::spin_loop();
        }
        let start = base + PAYLOAD + ret_off as usize;
        let end = Instant::now() + time;
        let mut x = 1usize;
        while Instant::now() < end {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let p = (start + 8 + (x >> 33) % (n - 8)) as *mut u8;
            // SAFETY: within the room the worker was lent, in its own area; racing the parent
            // is the attack.
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
        let (base, len) = own_area(&alias);
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

    /// Starts a thread that, 50 ms later, writes random words over its whole area as fast as
    /// it can, for `ms` milliseconds (half of them into its first page: its channel).
    pub fn scribble(&self, alias: String, ms: u64) -> u32 {
        let (base, len) = own_area(&alias);
        let base = base as usize;
        std::thread::spawn(move || {
            // After this call's answer, so that the caller learns which worker scribbles.
            std::thread::sleep(Duration::from_millis(50));
            let end = Instant::now() + Duration::from_millis(ms);
            let mut x = std::process::id() as u64 | 1;
            while Instant::now() < end {
                for _ in 0..4096 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half of the words hit the first page: the channel and the flag.
                    let span = if x & 1 == 0 { len } else { 4096 };
                    let at = base + (x as usize % (span / 8)) * 8;
                    // SAFETY: within the worker's own mapping; scribbling is the attack.
                    unsafe { std::ptr::write_volatile(at as *mut u64, x) };
                }
            }
        });
        std::process::id()
    }

    /// Writes `seq` into the sequence word of its channel's answer line, then hangs.
    pub fn scribble_answer_seq(&self, alias: String, seq: u32) -> u32 {
        let (base, _) = own_area(&alias);
        // SAFETY: the worker's own mapping; scribbling is the attack.
        unsafe {
            let word = base.add(RESP_SEQ) as *mut u32;
            std::ptr::write_volatile(word, seq);
        }
        std::thread::sleep(Duration::from_secs(60));
        seq
    }

    /// Writes `value` into its channel's `errors` word.
    pub fn set_errors_word(&self, alias: String, value: u32) -> u32 {
        let (base, _) = own_area(&alias);
        // SAFETY: the worker's own mapping; scribbling is the attack.
        unsafe {
            let word = base.add(RESP_ERRORS) as *mut u32;
            std::ptr::write_volatile(word, value);
        }
        value
    }

    /// Returns `n` bytes of `a` while a thread keeps flipping them to invalid UTF-8 and back
    /// in the segment, so that the parent decodes them while they change.
    pub fn racy_text(&self, alias: String, n: usize) -> String {
        flip_returned(&alias, n, Duration::from_millis(20));
        "a".repeat(n)
    }

    /// Stops this process (SIGSTOP) in the middle of its call: it never answers.
    pub fn stop_self(&self) -> u8 {
        // SAFETY: stopping ourselves is the point.
        unsafe { libc::raise(libc::SIGSTOP) };
        0
    }

    /// Returns `n` bytes, which may be more than its area holds.
    pub fn bytes(&self, n: usize) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(vec![7; n])
    }

    /// What this worker maps of forkworker's shared memory, and which descriptors of it it
    /// holds: every other worker's area, the parent's store and other mediators' areas
    /// must be out of its reach.
    pub fn reach(&self) -> (Vec<String>, Vec<String>) {
        let fds = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .filter(|t| t.contains("memfd:fw.") || t.contains("/dev/shm/fw."))
            .collect();
        (shared_mappings(), fds)
    }

    /// Keeps `secret` in this worker's memory (at the same address in every worker: they are
    /// forks of one process), holds the call for `ms` so that a sibling takes the next one,
    /// and says which worker this is.
    pub fn keep_secret(&self, secret: u64, ms: u64) -> u32 {
        SECRET.store(secret, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }

    /// Reads the secret of the one of `pids` that is not this worker, the two ways a process
    /// of the same user has: `process_vm_readv`, and reading `/proc/<pid>/mem`. Each gives
    /// the value read or the errno.
    pub fn read_sibling(&self, pids: (u32, u32)) -> (Result<u64, i32>, Result<u64, i32>) {
        let me = std::process::id();
        let other = if pids.0 == me { pids.1 } else { pids.0 };
        let at = SECRET.as_ptr() as usize;
        let mut value = 0u64;
        let local = libc::iovec {
            iov_base: (&mut value as *mut u64).cast(),
            iov_len: 8,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: 8,
        };
        // SAFETY: one 8-byte local buffer we own; the remote side is checked by the kernel.
        let n = unsafe { libc::process_vm_readv(other as i32, &local, 1, &remote, 1, 0) };
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let vm = if n == 8 { Ok(value) } else { Err(errno()) };
        let mem = std::fs::File::open(format!("/proc/{other}/mem"))
            .and_then(|f| {
                use std::os::unix::fs::FileExt;
                let mut buf = [0u8; 8];
                f.read_exact_at(&mut buf, at as u64)?;
                Ok(u64::from_ne_bytes(buf))
            })
            .map_err(|e| e.raw_os_error().unwrap_or(0));
        (vm, mem)
    }

    /// `prctl(PR_GET_DUMPABLE)` in this worker.
    pub fn dumpable(&self) -> i32 {
        // SAFETY: prctl with valid arguments.
        unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }
    }

    /// Dies of SIGSEGV.
    pub fn crash(&self) -> u8 {
        // SAFETY: not safe at all; crashing the worker is the point.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
        0
    }

    /// Runs `echo` and says which worker ran it.
    pub fn echo_pid(&self, n: u64) -> (u64, u32) {
        (n, std::process::id())
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

fn a_worker_cannot_truncate_its_area() {
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
    let id = m.set_errors_word("ErrorsWord".into(), u32::MAX).unwrap();
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
    m.workers(1).malloc(RACE_AREA);
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
    // A return that failed to decode is one whose bytes changed while the parent copied them:
    // the attack landed; no `String` the parent handed out holds what it could not validate.
    assert!(
        wire > 0,
        "the flipping thread never hit a decode: the attack did not run"
    );
}

fn a_worker_scribbling_over_its_whole_area_neither_hangs_nor_kills_the_parent() {
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
            // A wrong value of the right type, or a typed error, for the scribbler's own calls
            // (see the next test for the other worker's).
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

fn a_full_disk_fails_start_with_an_error_not_sigbus() {
    // In a child with a private mount namespace whose /dev/shm and temp directory are 1 MiB
    // tmpfs: a persistent mediator's store (in the runtime directory, under the temp
    // directory here) does not fit; a plain mediator's memfds need neither.
    let tmp = std::env::temp_dir().join(format!("fw-full-{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = RemoveDir(tmp.clone());
    let (child, lines) = support::fork_reporting(|mut out| {
        use std::io::Write;
        use std::os::unix::ffi::OsStrExt;
        let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
        let (root, tmpfs, size) = (c(b"/"), c(b"tmpfs"), c(b"size=1m"));
        let (shm, dir) = (c(b"/dev/shm"), c(tmp.as_os_str().as_bytes()));
        // SAFETY: plain system calls with valid strings, in this child only.
        let mount = |at: &std::ffi::CString| unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                at.as_ptr(),
                tmpfs.as_ptr(),
                0,
                size.as_ptr().cast(),
            ) == 0
        };
        // SAFETY: as above.
        let private = unsafe {
            libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0
        };
        if !(private && mount(&shm) && mount(&dir)) {
            writeln!(out, "cannot mount: {}", std::io::Error::last_os_error()).unwrap();
            return;
        }
        // SAFETY: the child is single-threaded.
        unsafe {
            std::env::set_var("TMPDIR", &tmp);
            std::env::remove_var("XDG_RUNTIME_DIR");
        }
        let mut m = HostileMediator::new("FullDisk", Hostile);
        m.persist(support::app_name(std::process::id()))
            .malloc(8 << 20);
        match m.start() {
            Err(e) => writeln!(out, "persistent: {e}").unwrap(),
            Ok(()) => writeln!(out, "persistent: started").unwrap(),
        }
        drop(m);
        let mut m = HostileMediator::new("FullDiskMemfd", Hostile);
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
        .scribble_answer_seq("AnswerSeq".into(), 0xdead_beef)
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

/// Removes a file when dropped, also when a test fails.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn another_users_persistent_store_is_refused_untouched() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Another user (uid 65534) made the store a persistent mediator would use, open to all,
    // with calls of its own in it.
    let app = support::app_name(std::process::id());
    let dir = support::runtime_dir();
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let path = dir.join(format!("{app}.Planted.store"));
    let _guard = Remove(path.clone());
    std::fs::write(&path, vec![0x5a; 1 << 16]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown (CI runs as root)");
    let mut m = HostileMediator::new("Planted", Hostile);
    m.persist(app).recover(true);
    match m.start() {
        Err(StartError::Pool(forkworker::PoolError::UnsafeSegment(e))) => {
            assert_eq!((e.owner, e.mode), (Some(65534), Some(0o666)), "{e}");
            assert!(e.to_string().contains("another user"), "{e}");
        }
        other => panic!("expected the segment to be refused, got {other:?}"),
    }
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.len()), (65534, 1 << 16), "left as it was");
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x5a));
    // Ours, but open to others: refused too.
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    let mut m = HostileMediator::new("Planted", Hostile);
    m.persist(support::app_name(std::process::id()));
    assert!(matches!(
        m.start(),
        Err(StartError::Pool(forkworker::PoolError::UnsafeSegment(_)))
    ));
}

fn few_descriptors_left_fail_calls_with_a_clear_error_not_a_long_wait() {
    let mut m = HostileMediator::new("NoFds", Hostile);
    m.workers(1).timeout(Duration::from_secs(5));
    let worker = m.pid().map(|id| m.wait(id, LONG)).unwrap().unwrap();
    // The worker dies, and the pool takes note (its pidfd is closed); then the program runs
    // out of descriptors, so that the replacement's pidfd has nowhere to go.
    support::kill_and_reap_foreign(worker as i32);
    assert!(eventually(LONG, || {
        m.poll();
        m.pids().is_empty()
    }));
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    let t = Instant::now();
    let outcome = m.echo(1).map(|id| m.wait(id, Duration::from_secs(30)));
    let took = t.elapsed();
    let text = format!("{outcome:?}");
    assert!(
        matches!(outcome, Err(_) | Ok(Err(_))),
        "no descriptor, yet the call returned: {text}"
    );
    assert!(
        text.contains("descriptor") || text.contains("EMFILE") || text.contains("open files"),
        "the error says descriptors ran out: {text}"
    );
    assert!(took < Duration::from_secs(15), "the call waited {took:?}");
    drop(held);
    // With descriptors back, the pool goes on.
    assert!(eventually(LONG, || m.echo(2).map(|id| m.wait(id, LONG)) == Ok(Ok(2))));
}

fn a_worker_stopped_mid_call_ends_by_its_timeout_without_spinning() {
    let mut m = HostileMediator::new("Stopped", Hostile);
    m.workers(1).timeout(Duration::from_secs(2));
    let id = m.stop_self().unwrap();
    let (t, cpu) = (Instant::now(), cpu_time());
    match m.wait(id, Duration::from_secs(20)) {
        Err(CallError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let (waited, spun) = (t.elapsed(), cpu_time() - cpu);
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    assert!(spun < Duration::from_millis(500), "spun {spun:?} of CPU");
    let id = m.echo(5).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 5);
}

fn a_return_larger_than_the_area_fails_at_once_and_the_worker_stays() {
    let mut m = HostileMediator::new("TooBig", Hostile);
    m.workers(1).malloc(1 << 20);
    let pid = m.pid().map(|id| m.wait(id, LONG)).unwrap().unwrap();
    let id = m.bytes(2 << 20).unwrap();
    match m.wait(id, LONG) {
        Err(CallError::ReturnTooLarge {
            needed, allocation, ..
        }) => assert!(
            needed > 2 << 20 && allocation == 1 << 20,
            "{needed} {allocation}"
        ),
        other => panic!("expected ReturnTooLarge, got {:?}", other.map(|b| b.len())),
    }
    let id = m.bytes(1000).unwrap();
    assert_eq!(m.wait(id, LONG).unwrap().len(), 1000);
    assert_eq!(m.pid().map(|id| m.wait(id, LONG)).unwrap().unwrap(), pid);
}

fn a_worker_maps_only_its_own_area() {
    // Two mediators: neither's worker may reach the other's memory, nor its siblings', nor
    // the parent's store.
    let mut other = HostileMediator::new("Neighbour", Hostile);
    other.workers(2);
    let id = other.echo(1).unwrap();
    other.wait(id, LONG).unwrap();
    let mut m = HostileMediator::new("Reach", Hostile);
    m.workers(3);
    let ids: Vec<_> = (0..3).map(|_| m.reach().unwrap()).collect();
    for id in ids {
        let (maps, fds) = m.wait(id, LONG).unwrap();
        assert_eq!(maps.len(), 2, "its area and the spin page only: {maps:?}");
        assert!(
            maps.iter().all(|p| p.contains(".Reach.")),
            "nothing of another mediator: {maps:?}"
        );
        assert_eq!(
            maps.iter().filter(|p| p.contains(".area")).count(),
            1,
            "one area: {maps:?}"
        );
        assert!(maps.iter().any(|p| p.contains(".spin")), "{maps:?}");
        assert!(
            fds.len() <= 2,
            "descriptors of its area and page at most: {fds:?}"
        );
    }
}

fn a_worker_scribbling_its_area_cannot_touch_another_workers_calls() {
    let mut m = HostileMediator::new("Forge", Hostile);
    m.workers(2).timeout(Duration::from_secs(5));
    // Both workers up; then one scribbles over all it maps for 1.5 s.
    let ids: Vec<_> = (0..2).map(|_| m.pid().unwrap()).collect();
    let pids: Vec<u32> = ids
        .into_iter()
        .map(|id| m.wait(id, LONG).unwrap())
        .collect();
    let id = m.scribble("Forge".into(), 1_500).unwrap();
    let scribbler = m.wait(id, LONG).unwrap();
    let other = *pids.iter().find(|&&p| p != scribbler).expect("two workers");
    let (end, mut checked) = (Instant::now() + Duration::from_millis(1_500), 0);
    let mut n = 0u64;
    while Instant::now() < end {
        // Four at a time, so that both workers get some.
        let ids: Vec<_> = (0..4)
            .map(|k| (n + k, m.echo_pid(n + k).unwrap()))
            .collect();
        n += 4;
        for (sent, id) in ids {
            if let Ok((got, pid)) = m.wait(id, LONG)
                && pid == other
            {
                assert_eq!(got, sent, "a call the other worker ran came back wrong");
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "some calls ran on the other worker");
}

fn a_worker_cannot_read_another_workers_memory() {
    // As root (CAP_SYS_PTRACE) anything may read anything: the attack is a same-user one.
    if support::rerun_as(65534) {
        return;
    }
    let mut m = HostileMediator::new("Sibling", Hostile);
    m.workers(2).timeout(LONG);
    // Two calls held at once: each worker keeps its own secret.
    let a = m.keep_secret(0x5EC_1111, 300).unwrap();
    let b = m.keep_secret(0x5EC_2222, 300).unwrap();
    let pids = (m.wait(a, LONG).unwrap(), m.wait(b, LONG).unwrap());
    assert_ne!(pids.0, pids.1, "two workers held the two calls");
    let id = m.read_sibling(pids).unwrap();
    let (vm, mem) = m.wait(id, LONG).unwrap();
    assert_eq!(vm, Err(libc::EPERM), "process_vm_readv of a sibling");
    assert_eq!(mem, Err(libc::EACCES), "/proc/<sibling>/mem");
}

/// A directory of the test's own, removed with what is in it when dropped (also on failure).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn a_crashing_worker_writes_no_core_file() {
    // Core files are written in the crashing process's directory when `core_pattern` is a
    // plain name (as here: "core"); a pipe or a path elsewhere is out of this test's sight,
    // but the flag that stops every kind is checked in the worker either way.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let local = !pattern.starts_with('|') && !pattern.contains('/');
    let dir = Scratch(std::env::temp_dir().join(format!("fw-core-{}", std::process::id())));
    std::fs::create_dir(&dir.0).unwrap();
    std::env::set_current_dir(&dir.0).unwrap();
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit; the fork server and the workers inherit it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &unlimited) }, 0);
    let mut m = HostileMediator::new("Core", Hostile);
    m.workers(1).timeout(LONG);
    let id = m.dumpable().unwrap();
    assert_eq!(m.wait(id, LONG).unwrap(), 0, "workers are not dumpable");
    let id = m.crash().unwrap();
    let r = m.wait(id, LONG);
    assert!(matches!(r, Err(CallError::Crashed { .. })), "{r:?}");
    drop(m);
    if local {
        let left: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "the crash left {left:?}");
    }
    std::env::set_current_dir("/").unwrap();
}

tests![
    a_worker_cannot_read_another_workers_memory,
    a_crashing_worker_writes_no_core_file,
    a_worker_cannot_truncate_its_area,
    a_huge_errors_word_neither_hangs_nor_floods_the_parent,
    a_return_changed_while_the_parent_decodes_it_is_never_invalid,
    a_worker_scribbling_over_its_whole_area_neither_hangs_nor_kills_the_parent,
    a_full_disk_fails_start_with_an_error_not_sigbus,
    a_scribbled_answer_line_is_counted_as_corruption_not_a_timeout,
    another_users_persistent_store_is_refused_untouched,
    few_descriptors_left_fail_calls_with_a_clear_error_not_a_long_wait,
    a_worker_stopped_mid_call_ends_by_its_timeout_without_spinning,
    a_return_larger_than_the_area_fails_at_once_and_the_worker_stays,
    a_worker_maps_only_its_own_area,
    a_worker_scribbling_its_area_cannot_touch_another_workers_calls,
];
