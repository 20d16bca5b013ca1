//! Other local users against the daemon's files: a lock or pid file another user made first
//! (mode 0666), a symbolic link planted at the lock or pid path, a runtime directory made
//! first by another user or open to all. Each must be refused by forkworker itself, with an
//! error naming the path, its owner and its mode, and the planted file or the link's target
//! left exactly as it was. The kernel's `fs.protected_symlinks` is not relied on (it is 0 on
//! the CI machine, 1 on many others): the library's own `O_NOFOLLOW` and checks are.
//!
//! These tests act as another user (uid 65534, through `setpriv` or `chown`), so they need
//! root, which CI has. Not as root, each test fails and says why, unless
//! `FORKWORKER_SKIP_ROOT_TESTS=1` is set, when it prints that it was skipped and passes.
//!
//! Each test works in a directory of its own under the temp directory, removed by a guard
//! even when the test fails; each runs alone in its own process (see `support`), so setting
//! `XDG_RUNTIME_DIR` and `TMPDIR` there affects no other test.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use forkworker::daemon::{Application, Control, Daemon, DaemonError, Workers};
use forkworker::instance::{self, InstanceError, InstanceLock, PidFile, UnsafePath, Unsafety};

/// The other user.
const NOBODY: u32 = 65534;

/// True if the test can run (as root); a loud failure otherwise, unless skipping is asked for.
fn as_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("FORKWORKER_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED {test}: it needs root to act as another user (FORKWORKER_SKIP_ROOT_TESTS=1)"
        );
        return false;
    }
    panic!(
        "{test} needs root, to act as another user (uid {NOBODY}); CI runs as root. \
         Set FORKWORKER_SKIP_ROOT_TESTS=1 to skip it knowingly."
    );
}

/// A directory of the test's own, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory with `mode` (e.g. 0o1777, as /tmp) owned by root.
    fn new(name: &str, mode: u32) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "forkworker-other-users-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("scratch directory");
        let scratch = Scratch(path);
        chmod(&scratch.0, mode);
        scratch
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // remove_dir_all removes links, never what they point to.
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `script` with `sh` as uid/gid 65534 with no supplementary groups, `$1` = `arg`.
fn as_nobody(script: &str, arg: &Path) {
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(arg)
        .status()
        .expect("run setpriv (util-linux)");
    assert!(status.success(), "as uid {NOBODY}: {script}: {status}");
}

/// What a file is: its bytes and the metadata a write or truncation would change.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    bytes: Vec<u8>,
    len: u64,
    uid: u32,
    mode: u32,
    mtime: (i64, i64),
    ino: u64,
}

fn snapshot(path: &Path) -> Snapshot {
    let meta = std::fs::metadata(path).expect("the file is there");
    Snapshot {
        bytes: std::fs::read(path).expect("readable"),
        len: meta.len(),
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ino: meta.ino(),
    }
}

/// The refusal inside `err`, checked to name `path`, and its message to name the path,
/// the owner and the mode.
fn refusal(err: InstanceError, path: &Path) -> UnsafePath {
    let text = err.to_string();
    let InstanceError::Unsafe(u) = err else {
        panic!(
            "expected InstanceError::Unsafe for {}, got {err:?}",
            path.display()
        );
    };
    assert_eq!(u.path, path, "{text}");
    let (owner, mode) = (u.owner.expect("owner"), u.mode.expect("mode"));
    for part in [
        path.display().to_string(),
        format!("uid {owner}"),
        format!("mode {mode:04o}"),
    ] {
        assert!(text.contains(&part), "{text:?} names {part:?}");
    }
    u
}

struct App;

impl Application for App {
    fn execute(&mut self, _: &mut Workers<Self>, ctl: &mut Control) {
        ctl.stop();
    }
}

/// Runs a daemon that stops at once; its error, if it could not start.
fn run_daemon(name: &str, lock_dir: Option<&Path>, pid_file: Option<&Path>) -> Option<DaemonError> {
    let mut daemon = Daemon::new(name, App);
    daemon.recover_workers(false);
    if let Some(dir) = lock_dir {
        daemon.lock_dir(dir);
    }
    if let Some(p) = pid_file {
        daemon.pid_file(p);
    }
    daemon.run().err()
}

fn instance_error(e: Option<DaemonError>) -> InstanceError {
    match e {
        Some(DaemonError::Instance(e)) => e,
        other => panic!("expected DaemonError::Instance, got {other:?}"),
    }
}

fn another_users_lock_and_pid_files_are_refused_and_left_as_they_were() {
    if !as_root("another_users_lock_and_pid_files_are_refused_and_left_as_they_were") {
        return;
    }
    // A sticky directory everyone may write to, as /tmp.
    let dir = Scratch::new("planted", 0o1777);
    let lock = dir.join("App.lock");
    let pid = dir.join("App.pid");
    for path in [&lock, &pid] {
        as_nobody("umask 0; printf 'planted 1\\n' > \"$1\"", path);
    }
    let before = (snapshot(&lock), snapshot(&pid));
    assert_eq!((before.0.uid, before.0.mode), (NOBODY, 0o666));

    let u = refusal(InstanceLock::acquire(&lock).expect_err("theirs"), &lock);
    assert_eq!(
        (u.owner, u.mode, u.why),
        (Some(NOBODY), Some(0o666), Unsafety::OtherOwner { me: 0 })
    );
    let u = refusal(PidFile::create(&pid).map(drop).expect_err("theirs"), &pid);
    assert_eq!((u.owner, u.mode), (Some(NOBODY), Some(0o666)));
    // The daemon refuses to start on either.
    let u = refusal(instance_error(run_daemon("App", Some(&dir.0), None)), &lock);
    assert_eq!(u.owner, Some(NOBODY));
    let mine = Scratch::new("mine", 0o700);
    let u = refusal(
        instance_error(run_daemon("App", Some(&mine.0), Some(&pid))),
        &pid,
    );
    assert_eq!(u.owner, Some(NOBODY));
    assert_eq!(
        (snapshot(&lock), snapshot(&pid)),
        before,
        "not written, not truncated"
    );

    // This user's own file, left open to others (0666, or 0644 for a lock file), is refused
    // too: others could have written it.
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, "mine\n").unwrap();
    for mode in [0o666, 0o644, 0o620] {
        chmod(&lock, mode);
        let before = snapshot(&lock);
        let u = refusal(InstanceLock::acquire(&lock).expect_err("open"), &lock);
        assert_eq!(
            (u.owner, u.mode, u.why),
            (Some(0), Some(mode), Unsafety::TooOpen { allowed: 0o600 })
        );
        assert_eq!(snapshot(&lock), before);
    }
    // A pid file may be 0644, not 0664.
    std::fs::remove_file(&pid).unwrap();
    std::fs::write(&pid, "1\n").unwrap();
    chmod(&pid, 0o664);
    let u = refusal(PidFile::create(&pid).map(drop).expect_err("open"), &pid);
    assert_eq!(u.why, Unsafety::TooOpen { allowed: 0o644 });
    chmod(&pid, 0o644);
    let pid_file = PidFile::create(&pid).expect("0644 is fine for a pid file");
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        format!("{}\n", std::process::id())
    );
    drop(pid_file);
    assert!(!pid.exists(), "removed on drop");

    // A hard link of one of this user's files, planted under the lock's name, is refused:
    // locking would truncate the file linked to.
    let victim = mine.join("precious");
    std::fs::write(&victim, "precious\n").unwrap();
    chmod(&victim, 0o600);
    std::fs::remove_file(&lock).unwrap();
    std::fs::hard_link(&victim, &lock).unwrap();
    let u = refusal(InstanceLock::acquire(&lock).expect_err("linked"), &lock);
    assert_eq!(u.why, Unsafety::HardLinked { links: 2 });
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

fn a_symlink_at_the_lock_or_pid_path_is_refused_and_its_target_left_alone() {
    if !as_root("a_symlink_at_the_lock_or_pid_path_is_refused_and_its_target_left_alone") {
        return;
    }
    let victims = Scratch::new("victims", 0o700);
    let victim = victims.join("bashrc");
    std::fs::write(&victim, "precious\n").unwrap();
    chmod(&victim, 0o600);
    let before = snapshot(&victim);

    // Planted by root in a directory of root's (only O_NOFOLLOW can stop this one), and by
    // another user in a sticky directory everyone may write to.
    let own = Scratch::new("own-links", 0o755);
    let shared = Scratch::new("shared-links", 0o1777);
    for dir in [&own, &shared] {
        let lock = dir.join("App.lock");
        let pid = dir.join("App.pid");
        for link in [&lock, &pid] {
            if dir.0 == own.0 {
                std::os::unix::fs::symlink(&victim, link).unwrap();
            } else {
                as_nobody(&format!("ln -s '{}' \"$1\"", victim.display()), link);
            }
        }
        let owner = if dir.0 == own.0 { 0 } else { NOBODY };
        for err in [
            InstanceLock::acquire(&lock).expect_err("a link"),
            instance_error(run_daemon("App", Some(&dir.0), None)),
        ] {
            let u = refusal(err, &lock);
            assert_eq!((u.why, u.owner), (Unsafety::SymbolicLink, Some(owner)));
        }
        let pid_dir = Scratch::new("pid-lock", 0o700);
        for err in [
            PidFile::create(&pid).map(drop).expect_err("a link"),
            instance_error(run_daemon("App", Some(&pid_dir.0), Some(&pid))),
        ] {
            let u = refusal(err, &pid);
            assert_eq!((u.why, u.owner), (Unsafety::SymbolicLink, Some(owner)));
        }
        assert_eq!(snapshot(&victim), before, "the link's target is unchanged");
        assert!(lock.is_symlink() && pid.is_symlink(), "the links are left");
        drop(pid_dir);
    }

    // A directory others may write to without the sticky bit is refused as the lock's.
    let open = Scratch::new("open", 0o777);
    let u = refusal(
        InstanceLock::acquire(open.join("App.lock")).expect_err("open dir"),
        &open.0,
    );
    assert_eq!(u.why, Unsafety::WritableByOthers);
    assert_eq!(
        std::fs::read_dir(&open.0).unwrap().count(),
        0,
        "nothing made"
    );
    // ... and so is another user's directory.
    let theirs = Scratch::new("theirs", 0o755);
    std::os::unix::fs::chown(&theirs.0, Some(NOBODY), Some(NOBODY)).unwrap();
    let u = refusal(
        InstanceLock::acquire(theirs.join("App.lock")).expect_err("their dir"),
        &theirs.0,
    );
    assert_eq!(
        (u.owner, u.why),
        (Some(NOBODY), Unsafety::OtherOwner { me: 0 })
    );
}

fn a_runtime_dir_made_first_by_another_user_or_open_to_all_is_refused() {
    if !as_root("a_runtime_dir_made_first_by_another_user_or_open_to_all_is_refused") {
        return;
    }
    let xdg = Scratch::new("xdg", 0o700);
    let tmp = Scratch::new("tmp", 0o1777);
    // SAFETY: this test process is single-threaded (see `support`).
    unsafe {
        std::env::set_var("XDG_RUNTIME_DIR", &xdg.0);
        std::env::set_var("TMPDIR", &tmp.0);
    }
    let runtime = xdg.join("forkworker");

    // Missing: created 0700, and the daemon's lock goes there, 0600.
    assert_eq!(instance::default_dir().expect("created"), runtime);
    let meta = std::fs::symlink_metadata(&runtime).unwrap();
    assert!(meta.is_dir() && meta.mode() & 0o7777 == 0o700 && meta.uid() == 0);
    assert!(run_daemon("App", None, None).is_none(), "the daemon ran");
    let lock = std::fs::metadata(runtime.join("App.lock")).expect("the lock file");
    assert_eq!(lock.mode() & 0o7777, 0o600);
    std::fs::remove_dir_all(&runtime).unwrap();

    // Made first by another user (0700 theirs), open to all (0777 ours), or a link to a
    // directory of ours: refused, by `default_dir` and by a daemon with no `lock_dir`.
    let elsewhere = Scratch::new("elsewhere", 0o700);
    // What is planted, how, and the owner, mode and reason the refusal must give.
    type Case<'a> = (
        &'a str,
        Box<dyn Fn() + 'a>,
        Option<u32>,
        Option<u32>,
        Unsafety,
    );
    let cases: [Case<'_>; 3] = [
        (
            "theirs",
            Box::new(|| {
                std::fs::create_dir(&runtime).unwrap();
                chmod(&runtime, 0o700);
                std::os::unix::fs::chown(&runtime, Some(NOBODY), Some(NOBODY)).unwrap();
            }),
            Some(NOBODY),
            Some(0o700),
            Unsafety::OtherOwner { me: 0 },
        ),
        (
            "open to all",
            Box::new(|| {
                std::fs::create_dir(&runtime).unwrap();
                chmod(&runtime, 0o777);
            }),
            Some(0),
            Some(0o777),
            Unsafety::TooOpen { allowed: 0o700 },
        ),
        (
            "a link",
            Box::new(|| std::os::unix::fs::symlink(&elsewhere.0, &runtime).unwrap()),
            Some(0),
            Some(0o777),
            Unsafety::SymbolicLink,
        ),
    ];
    for (what, plant, owner, mode, why) in cases {
        plant();
        for err in [
            instance::default_dir().expect_err(what),
            instance_error(run_daemon("App", None, None)),
        ] {
            let u = refusal(err, &runtime);
            assert_eq!((u.owner, u.mode, u.why), (owner, mode, why), "{what}");
        }
        assert_eq!(
            std::fs::read_dir(&elsewhere.0).unwrap().count(),
            0,
            "{what}: nothing made where the link points"
        );
        if runtime.is_symlink() {
            std::fs::remove_file(&runtime).unwrap();
        } else {
            assert_eq!(
                std::fs::read_dir(&runtime).unwrap().count(),
                0,
                "{what}: nothing made in it"
            );
            std::fs::remove_dir(&runtime).unwrap();
        }
    }

    // XDG_RUNTIME_DIR open to others is not used: the temp directory's forkworker-<uid> is,
    // and one made there first by another user is refused.
    chmod(&xdg.0, 0o777);
    let fallback = tmp.join("forkworker-0");
    as_nobody("mkdir -m 0700 \"$1\"", &fallback);
    let u = refusal(instance::default_dir().expect_err("theirs"), &fallback);
    assert_eq!((u.owner, u.mode), (Some(NOBODY), Some(0o700)));
    std::fs::remove_dir(&fallback).unwrap();
    assert_eq!(instance::default_dir().expect("created"), fallback);
    assert_eq!(std::fs::metadata(&fallback).unwrap().mode() & 0o7777, 0o700);
}

tests![
    another_users_lock_and_pid_files_are_refused_and_left_as_they_were,
    a_symlink_at_the_lock_or_pid_path_is_refused_and_its_target_left_alone,
    a_runtime_dir_made_first_by_another_user_or_open_to_all_is_refused,
];
