//! Signals for a daemon's loop: handlers only set flags; all the work happens in the loop.
//!
//! [`Signals::install`] registers handlers (through `signal-hook`) for the signals a daemon
//! answers, as in the seed:
//!
//! | signal | event |
//! |---|---|
//! | SIGINT, SIGTERM | [`SignalEvents::shutdown`] |
//! | SIGHUP | [`SignalEvents::restart`] |
//! | SIGUSR1 | [`SignalEvents::stats`] (dump runtime statistics) |
//! | SIGCONT | [`SignalEvents::wake`] (resumed after a stop: check the clock) |
//!
//! Each handler sets its flag and makes an eventfd readable, so a loop sleeping in `poll(2)`
//! on [`Signals::wake_fd`] (next to the mediators' and tasks' fds) wakes at once.
//! [`Signals::take`] reads and clears the flags.
//!
//! ```
//! use forkworker_core::signals::Signals;
//!
//! let signals = Signals::install()?;
//! signal_hook::low_level::raise(libc::SIGUSR1)?;
//! let events = signals.take();
//! assert!(events.stats && !events.shutdown);
//! assert!(!signals.take().any(), "taken once");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Forked children
//! A process forked while the handlers are installed inherits them, and the eventfd: a signal
//! sent to such a child sets the child's own flags and wakes the parent's loop for nothing.
//! Task processes ([`crate::task`]) restore the default dispositions after the fork.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::SigId;

/// The signals [`Signals::install`] handles.
pub const HANDLED: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGCONT,
];

const SHUTDOWN: usize = 0;
const RESTART: usize = 1;
const STATS: usize = 2;
const WAKE: usize = 3;

/// Which flag a handled signal sets.
fn flag_of(signal: i32) -> usize {
    match signal {
        libc::SIGHUP => RESTART,
        libc::SIGUSR1 => STATS,
        libc::SIGCONT => WAKE,
        _ => SHUTDOWN,
    }
}

/// What arrived since the last [`Signals::take`]. Several deliveries of one signal count once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalEvents {
    /// SIGINT or SIGTERM: stop (finish or cancel the work, then exit).
    pub shutdown: bool,
    /// SIGHUP: restart (re-read the configuration, replace the workers).
    pub restart: bool,
    /// SIGUSR1: write the runtime statistics to the log.
    pub stats: bool,
    /// SIGCONT: the process was resumed after a stop; deadlines may have passed.
    pub wake: bool,
}

impl SignalEvents {
    /// Whether any signal arrived.
    pub fn any(&self) -> bool {
        self.shutdown || self.restart || self.stats || self.wake
    }
}

/// The daemon's signal handlers: flags, and an eventfd that wakes a sleeping loop.
///
/// Dropping it unregisters its handlers. `signal-hook` leaves its own handler installed
/// when the last action for a signal goes, so after the drop these signals are *ignored*,
/// not given their default action (SIGTERM no longer terminates): drop it as part of the
/// shutdown, not to pause signal handling. Several `Signals` may be installed at once; each
/// sees every signal.
#[derive(Debug)]
pub struct Signals {
    flags: Arc<[AtomicBool; 4]>,
    ids: Vec<SigId>,
    eventfd: OwnedFd,
}

impl Signals {
    /// Registers the handlers of the signals in [`HANDLED`].
    ///
    /// # Errors
    /// The eventfd cannot be created, or `signal-hook` refuses a registration (nothing stays
    /// registered then).
    pub fn install() -> io::Result<Signals> {
        // SAFETY: eventfd has no memory arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut signals = Signals {
            flags: Arc::new(Default::default()),
            ids: Vec::with_capacity(HANDLED.len()),
            eventfd,
        };
        for signal in HANDLED {
            let flags = Arc::clone(&signals.flags);
            let index = flag_of(signal);
            let raw = signals.eventfd.as_raw_fd();
            // SAFETY: the action is async-signal-safe: an atomic store and a write(2) (the
            // registry saves and restores errno around it). The eventfd outlives the action:
            // `Drop` unregisters every action, which waits for running handlers, before the
            // fd is closed.
            let id = unsafe {
                signal_hook::low_level::register(signal, move || {
                    flags[index].store(true, Ordering::SeqCst);
                    let one: u64 = 1;
                    libc::write(raw, (&one as *const u64).cast(), 8);
                })
            }?;
            // On an error above, dropping `signals` unregisters the ones already made.
            signals.ids.push(id);
        }
        Ok(signals)
    }

    /// An fd that is readable once any handled signal arrived and until [`Signals::take`].
    /// Sleep on it in `poll(2)` next to the loop's other fds.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }

    /// Reads and clears the flags, and drains the wake fd.
    pub fn take(&self) -> SignalEvents {
        // Drain first: a signal arriving after the drain leaves its flag set *and* the fd
        // readable, so the loop's next sleep wakes for it; the other order could lose it.
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a u64 from a non-blocking eventfd we own.
        unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                8,
            )
        };
        let take = |i: usize| self.flags[i].swap(false, Ordering::SeqCst);
        SignalEvents {
            shutdown: take(SHUTDOWN),
            restart: take(RESTART),
            stats: take(STATS),
            wake: take(WAKE),
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// In a freshly forked child: gives the handled signals their default action again (SIGINT
/// ignored, as in workers: a Ctrl-C reaches the whole process group and the parent decides).
pub(crate) fn reset_in_child() {
    for signal in HANDLED {
        let action = if signal == libc::SIGINT {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: setting a standard disposition for a valid signal.
        unsafe { libc::signal(signal, action) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_sets_its_flag() {
        assert_eq!(flag_of(libc::SIGINT), SHUTDOWN);
        assert_eq!(flag_of(libc::SIGTERM), SHUTDOWN);
        assert_eq!(flag_of(libc::SIGHUP), RESTART);
        assert_eq!(flag_of(libc::SIGUSR1), STATS);
        assert_eq!(flag_of(libc::SIGCONT), WAKE);
        assert!(!SignalEvents::default().any());
        assert!(
            SignalEvents {
                wake: true,
                ..Default::default()
            }
            .any()
        );
    }
}
