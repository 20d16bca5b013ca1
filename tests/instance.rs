//! The single-instance lock (`InstanceLock`), end to end with a real process holding it.
//! Each test runs alone in its own process (see `support`), which also checks that it left
//! no process and no shared-memory segment behind.

mod support;

use forkworker::instance::{InstanceError, InstanceLock};

fn a_forked_holder_blocks_the_lock_until_it_exits() {
    let path = std::env::temp_dir().join(format!("forkworker-it-{}.lock", std::process::id()));
    let mut ready = [0; 2];
    let mut go = [0; 2];
    // SAFETY: valid arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
    }
    // SAFETY: the test process is single-threaded; the child takes the lock, reports, waits
    // for the word, and leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        let code = match InstanceLock::acquire(&path) {
            Ok(lock) => {
                let mut byte = [1u8];
                // SAFETY: pipe fds inherited from the parent; valid buffers.
                unsafe {
                    libc::write(ready[1], byte.as_ptr().cast(), 1);
                    libc::read(go[0], byte.as_mut_ptr().cast(), 1);
                }
                std::mem::forget(lock);
                0
            }
            Err(_) => 1,
        };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut byte = [0u8];
    // SAFETY: valid pipe fds and buffers.
    unsafe {
        libc::close(ready[1]);
        libc::close(go[0]);
        assert_eq!(libc::read(ready[0], byte.as_mut_ptr().cast(), 1), 1);
    }
    let err = InstanceLock::acquire(&path).expect_err("the child holds it");
    match &err {
        InstanceError::Held { path: p, pid } => {
            assert_eq!(p, &path);
            assert_eq!(*pid, Some(child));
        }
        other => panic!("expected Held, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains(&format!("pid {child}")),
        "{text}"
    );
    let mut status = 0;
    // SAFETY: valid fds; waiting for our own child.
    unsafe {
        libc::write(go[1], byte.as_ptr().cast(), 1);
        assert_eq!(libc::waitpid(child, &mut status, 0), child);
        libc::close(go[1]);
        libc::close(ready[0]);
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let lock = InstanceLock::acquire(&path).expect("free once the holder exited");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
    drop(lock);
    std::fs::remove_file(&path).unwrap();
}

tests![a_forked_holder_blocks_the_lock_until_it_exits,];
