//! Runtime statistics: how long calls wait and run, per method, and error counts, as the
//! seed's SIGUSR1 table shows them.

use std::fmt;
use std::time::Duration;

use crate::call::CallStatus;
use crate::error::ErrorCounts;

/// How many recent samples a recorder keeps for percentiles.
const WINDOW: usize = 4096;

/// Durations of one kind for one method: a count and sum over all calls, and a window of the
/// most recent ones for percentiles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder {
    count: u64,
    /// Saturates after 584 years of summed time.
    sum_ns: u64,
    recent: Vec<u64>,
    next: usize,
}

impl Recorder {
    /// Records a duration of `ns` nanoseconds (once per call and kind, on the hot path).
    pub(crate) fn record_ns(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        if self.recent.len() < WINDOW {
            self.recent.push(ns);
        } else {
            self.recent[self.next % WINDOW] = ns;
            self.next = (self.next + 1) % WINDOW;
        }
    }

    /// The mean in nanoseconds, once at least `samples` durations were recorded.
    #[inline]
    pub(crate) fn mean_ns_after(&self, samples: u64) -> Option<u64> {
        (self.count >= samples.max(1)).then(|| self.sum_ns / self.count)
    }

    pub(crate) fn summary(&self) -> Summary {
        let mut sorted = self.recent.clone();
        sorted.sort_unstable();
        let pct = |p: f64| {
            if sorted.is_empty() {
                Duration::ZERO
            } else {
                let i = ((sorted.len() - 1) as f64 * p).round() as usize;
                Duration::from_nanos(sorted[i])
            }
        };
        Summary {
            count: self.count,
            mean: Duration::from_nanos(self.sum_ns.checked_div(self.count).unwrap_or(0)),
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
        }
    }
}

/// A summary of durations: count and mean over all calls; percentiles over the most recent
/// 4,096.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// How many durations were recorded.
    pub count: u64,
    /// Their mean.
    pub mean: Duration,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

/// How the calls of one method ended, by final status: a call that was retried counts once
/// for each time it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcomes {
    /// Calls that returned ([`CallStatus::Returned`]).
    pub returned: u64,
    /// Calls that ran past their timeout ([`CallStatus::Timeout`]).
    pub timeout: u64,
    /// Calls whose worker died while it held them ([`CallStatus::Crashed`]).
    pub crashed: u64,
    /// Calls whose method panicked ([`CallStatus::Panicked`]).
    pub panicked: u64,
    /// Calls that failed otherwise: encoding, decoding, room ([`CallStatus::Failed`]).
    pub failed: u64,
    /// Calls that were cancelled ([`CallStatus::Cancelled`]).
    pub cancelled: u64,
}

impl Outcomes {
    /// Counts a call that ended with `status` (a status that is not final is not counted).
    #[inline]
    pub(crate) fn count(&mut self, status: CallStatus) {
        let n = match status {
            CallStatus::Returned => &mut self.returned,
            CallStatus::Timeout => &mut self.timeout,
            CallStatus::Crashed => &mut self.crashed,
            CallStatus::Panicked => &mut self.panicked,
            CallStatus::Failed => &mut self.failed,
            CallStatus::Cancelled => &mut self.cancelled,
            CallStatus::Uncalled | CallStatus::Called | CallStatus::Running => return,
        };
        *n += 1;
    }

    /// Every call counted.
    pub fn total(&self) -> u64 {
        self.returned + self.timeout + self.crashed + self.panicked + self.failed + self.cancelled
    }
}

/// The figures of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodStats {
    /// The method's name.
    pub method: &'static str,
    /// Time from the call until a worker started it (the seed's "Called" duration).
    pub called: Summary,
    /// Time the worker ran it (the seed's "Running" duration), for calls that returned.
    pub running: Summary,
    /// How its calls ended: returned, timed out, crashed, panicked, failed, cancelled.
    pub outcomes: Outcomes,
}

/// A snapshot of a mediator's statistics: [`crate::Mediator::stats`].
///
/// Its `Display` is the seed's "Worker Runtime Statistics" table, with percentiles, error
/// counts, process counts and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The mediator's alias.
    pub alias: String,
    /// Time since the pool started.
    pub uptime: Duration,
    /// Worker processes alive now.
    pub workers: usize,
    /// Worker processes configured.
    pub configured_workers: usize,
    /// Calls waiting for a worker.
    pub queued: usize,
    /// Calls a worker holds.
    pub running: usize,
    /// Per method, in declaration order.
    pub methods: Vec<MethodStats>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Resident memory of the parent, in KiB (from /proc).
    pub parent_rss_kib: u64,
    /// Resident memory of each worker: (pid, KiB).
    pub worker_rss_kib: Vec<(i32, u64)>,
    /// Bytes of shared memory for payloads, and how many are in use.
    pub shared_memory: (usize, usize),
    /// How the workers' memory limit ([`crate::Mediator::memory_limit`]) is enforced: `None`
    /// without a limit, or while the pool is not running (the mechanism is chosen when it
    /// starts).
    pub memory_limit: Option<crate::LimitMechanism>,
}

/// Resident memory of a process in KiB, from /proc/PID/status (0 if unknown).
pub(crate) fn rss_kib(pid: i32) -> u64 {
    let path = if pid == 0 {
        "/proc/self/status".to_owned()
    } else {
        format!("/proc/{pid}/status")
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident anonymous memory of process `pid` in bytes: resident pages minus file and
/// shared-memory pages, from /proc/PID/statm (one read).
pub(crate) fn anon_rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut fields = statm.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    resident
        .saturating_sub(shared)
        .checked_mul(u64::try_from(page).ok()?)
}

fn secs(d: Duration) -> String {
    format!("{:.5}", d.as_secs_f64())
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = "-".repeat(99);
        writeln!(f, "{rule}")?;
        writeln!(f, "Worker Runtime Statistics: {}", self.alias)?;
        writeln!(f, "{rule}")?;
        writeln!(
            f,
            "   {:<20} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Method", "Status", "Mean", "Median", "P90", "P99", "Count"
        )?;
        writeln!(f, "   {}", "=".repeat(84))?;
        for m in &self.methods {
            for (status, s) in [("Called", &m.called), ("Running", &m.running)] {
                writeln!(
                    f,
                    "   {:<20} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    m.method,
                    status,
                    secs(s.mean),
                    secs(s.p50),
                    secs(s.p90),
                    secs(s.p99),
                    s.count
                )?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "   {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "Method", "Returned", "Timeout", "Crashed", "Panicked", "Failed", "Cancelled"
        )?;
        writeln!(f, "   {}", "=".repeat(80))?;
        for m in &self.methods {
            let o = &m.outcomes;
            writeln!(
                f,
                "   {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                m.method, o.returned, o.timeout, o.crashed, o.panicked, o.failed, o.cancelled
            )?;
        }
        writeln!(f)?;
        writeln!(f, "   {:<15} {:>5}", "Error Type", "Count")?;
        writeln!(f, "   {}", "=".repeat(21))?;
        writeln!(
            f,
            "   {:<15} {:>5}",
            "Communication", self.errors.communication
        )?;
        writeln!(f, "   {:<15} {:>5}", "Corruption", self.errors.corruption)?;
        writeln!(f, "   {:<15} {:>5}", "Catchall", self.errors.catchall)?;
        writeln!(f)?;
        writeln!(
            f,
            "   Uptime {:.1}s; workers {} of {}; calls queued {}, running {}",
            self.uptime.as_secs_f64(),
            self.workers,
            self.configured_workers,
            self.queued,
            self.running
        )?;
        let workers: Vec<String> = self
            .worker_rss_kib
            .iter()
            .map(|(pid, kib)| format!("{pid}: {kib} KiB"))
            .collect();
        writeln!(
            f,
            "   Memory: parent {} KiB; workers [{}]; shared memory {} of {} bytes in use",
            self.parent_rss_kib,
            workers.join(", "),
            self.shared_memory.1,
            self.shared_memory.0
        )?;
        if let Some(m) = self.memory_limit {
            writeln!(f, "   Memory limit per worker: {m}")?;
        }
        write!(f, "{rule}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_mean() {
        let mut r = Recorder::default();
        for ms in 1..=100 {
            r.record_ns(ms * 1_000_000);
        }
        let s = r.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(Recorder::default().summary(), Summary::default());
    }

    #[test]
    fn anonymous_memory_counts_touched_heap() {
        let pid = std::process::id() as i32;
        let before = anon_rss_bytes(pid).expect("statm of this process");
        let mut v = vec![0u8; 32 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        let after = anon_rss_bytes(pid).expect("statm of this process");
        std::hint::black_box(&v);
        assert!(after >= before + (30 << 20), "{before} -> {after}");
        assert_eq!(anon_rss_bytes(-1), None);
    }

    #[test]
    fn outcomes_count_final_statuses_only() {
        let mut o = Outcomes::default();
        for status in CallStatus::ALL {
            o.count(status);
        }
        o.count(CallStatus::Timeout);
        assert_eq!(
            (
                o.returned,
                o.timeout,
                o.crashed,
                o.panicked,
                o.failed,
                o.cancelled
            ),
            (1, 2, 1, 1, 1, 1)
        );
        assert_eq!(o.total(), 7);
    }

    #[test]
    fn the_window_keeps_the_most_recent() {
        let mut r = Recorder::default();
        for _ in 0..WINDOW {
            r.record_ns(1_000_000_000);
        }
        for _ in 0..WINDOW {
            r.record_ns(1_000_000);
        }
        let s = r.summary();
        assert_eq!(s.count, 2 * WINDOW as u64);
        assert_eq!(s.p99, Duration::from_millis(1));
    }
}
