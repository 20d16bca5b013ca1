//! A host of a pool across machines in a child process of the test binary: the binary run
//! again with `FW_ROLE=host` and `FW_URL` (the test's `main` dispatches on them), which
//! prints `serving` once it takes calls and stops cleanly when its stdin closes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The child's side: says it serves, waits until its stdin closes, then stops `host` with a
/// grace period of 5 s.
pub fn serve_until_stdin_closes(host: forkworker::Host) {
    println!("serving");
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    host.stop(Duration::from_secs(5));
}

/// A host process; killed (SIGKILL) and reaped on drop.
pub struct HostProcess {
    child: Option<Child>,
}

impl HostProcess {
    /// Starts `command` (this test binary, or a wrapper of it such as `ip netns exec`) as a
    /// host serving at `url`, and waits until it says it serves.
    pub fn start(mut command: Command, url: &str) -> HostProcess {
        let child = command
            .env("FW_ROLE", "host")
            .env("FW_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a host process");
        let mut host = HostProcess { child: Some(child) };
        let mut out = host.child.as_mut().unwrap().stdout.take().unwrap();
        let mut line = [0u8; 8];
        let mut got = 0;
        while got < line.len() {
            match std::io::Read::read(&mut out, &mut line[got..]) {
                Ok(0) | Err(_) => {
                    let status = host.child.as_mut().unwrap().wait();
                    host.child = None;
                    panic!("the host did not start: {status:?}")
                }
                Ok(n) => got += n,
            }
        }
        assert_eq!(&line, b"serving\n");
        host
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Closes its stdin: it stops with a grace period and exits; asserts it exited 0.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let status = child.wait().unwrap();
            assert!(status.success(), "host process: {status}");
        }
    }

    /// Reaps it if it died (by its own method); whether it did.
    pub fn died(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            None => true,
            _ => false,
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
