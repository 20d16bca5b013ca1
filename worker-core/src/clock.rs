//! Time on the hot path.
//!
//! Reading CLOCK_MONOTONIC through the vDSO is slow on a VM (a paravirtual clock behind a
//! serializing counter read: as much as a cache line's crossing), and an empty call read it
//! several times. The hot path therefore counts *ticks*: the CPU's time-stamp counter (a
//! fraction of that to read) where the kernel itself keeps
//! time with it, which guarantees that it runs at a constant rate and agrees between CPUs;
//! CLOCK_MONOTONIC nanoseconds elsewhere, so that everything below still holds, only slower.
//!
//! Ticks become nanoseconds in two ways: a short span is multiplied by the rate, calibrated
//! once per process against CLOCK_MONOTONIC ([`span_ns`]); a point in time goes through a
//! [`Clock`], which re-anchors on CLOCK_MONOTONIC every few milliseconds and so never drifts
//! from it by more than about a microsecond.
//!
//! What the clock reads cost and what the counter saved are in benches/README.md ("Figures
//! behind the code's decisions").

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds: comparable between the parent and its workers.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `Instant` of a CLOCK_MONOTONIC reading in nanoseconds (as [`now_ns`] gives).
///
/// `Instant` is CLOCK_MONOTONIC on Linux too, so the two differ by a constant: one pair of
/// readings taken together, once per process (a forked worker inherits it), fixes it, and a
/// conversion is then an addition instead of two clock reads.
pub(crate) fn to_instant(ns: u64) -> Instant {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(at, at_ns) = ANCHOR.get_or_init(|| (Instant::now(), now_ns()));
    if ns >= at_ns {
        at + Duration::from_nanos(ns - at_ns)
    } else {
        at.checked_sub(Duration::from_nanos(at_ns - ns))
            .unwrap_or(at)
    }
}

/// The time left until `wake`, for a poll; `None` (no limit) for none.
pub(crate) fn time_left(wake: Option<Instant>) -> Option<Duration> {
    wake.map(|w| w.saturating_duration_since(Instant::now()))
}

/// How ticks are counted in this process.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// Whether ticks are the time-stamp counter (else CLOCK_MONOTONIC nanoseconds).
    tsc: bool,
    /// Nanoseconds per tick.
    rate: f64,
    /// `rate` in fixed point (see [`per_tick`]).
    mult: u64,
}

/// A rate in nanoseconds per tick as a 32.32 fixed-point multiplier: converting ticks to
/// nanoseconds is then one integer multiplication (with floating point, the conversions
/// from and to `u64` cost about twenty instructions each way, on every clock reading).
fn per_tick(rate: f64) -> u64 {
    (rate * (1u64 << 32) as f64) as u64
}

/// `ticks` at `mult` nanoseconds per tick (32.32 fixed point), saturating.
#[inline]
fn scale(ticks: u64, mult: u64) -> u64 {
    u64::try_from((ticks as u128 * mult as u128) >> 32).unwrap_or(u64::MAX)
}

/// The process's tick source, decided and calibrated at the first use. A forked worker
/// inherits it; [`calibrate`] is called before forking so that workers never calibrate.
fn source() -> Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    *SOURCE.get_or_init(|| match tsc_keeps_time().then(measure_rate).flatten() {
        Some(rate) => Source {
            tsc: true,
            rate,
            mult: per_tick(rate),
        },
        None => Source {
            tsc: false,
            rate: 1.0,
            mult: per_tick(1.0),
        },
    })
}

/// Decides and calibrates the tick source now (about 200 us the first time in a process).
pub(crate) fn calibrate() {
    source();
}

/// Whether the kernel keeps time with the time-stamp counter: it then checked that the
/// counter is invariant and synchronized between CPUs, and would have switched away from it
/// otherwise.
#[cfg(target_arch = "x86_64")]
fn tsc_keeps_time() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_keeps_time() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn read_tsc() -> u64 {
    now_ns()
}

/// A reading of CLOCK_MONOTONIC and of the counter taken together: the counter between two
/// clock reads, from the tries whose two reads were closest (preemption in between would
/// make the pair disagree by as long as it lasted). Returns the pair and that closeness.
fn pair() -> (u64, u64, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..100 {
        let a = now_ns();
        let t = read_tsc();
        let b = now_ns();
        if b - a < best.2 {
            best = (a + (b - a) / 2, t, b - a);
        }
        if b - a < 1_000 {
            break;
        }
    }
    best
}

/// Nanoseconds per counter tick, over about 200 us between two close pairs (good to a few
/// parts in ten thousand, all a short span needs; [`Clock`] refines its own copy as it goes),
/// or `None` if no believable rate came out (a counter slower than 50 MHz or faster than
/// 20 GHz, or pairs that never came close), in which case the clock is used instead.
fn measure_rate() -> Option<f64> {
    let (ns0, t0, gap0) = pair();
    while now_ns() - ns0 < 200_000 {
        std::hint::spin_loop();
    }
    let (ns1, t1, gap1) = pair();
    if gap0.max(gap1) > 5_000 || t1 <= t0 {
        return None;
    }
    let rate = (ns1 - ns0) as f64 / (t1 - t0) as f64;
    (0.05..20.0).contains(&rate).then_some(rate)
}

/// The current tick count.
#[inline]
pub(crate) fn ticks() -> u64 {
    if source().tsc { read_tsc() } else { now_ns() }
}

/// The ticks in `ns` nanoseconds.
pub(crate) fn ticks_in(ns: u64) -> u64 {
    (ns as f64 / source().rate) as u64
}

/// The nanoseconds of a span of `ticks`, for spans short enough that the calibrated rate is
/// exact to within a few nanoseconds (up to a millisecond or so).
pub(crate) fn span_ns(ticks: u64) -> u64 {
    scale(ticks, source().mult)
}

/// A process's view of CLOCK_MONOTONIC through the counter: readings cost a counter read, and
/// a real clock read every few milliseconds keeps them within about a microsecond of it.
#[derive(Debug)]
pub(crate) struct Clock {
    /// Whether ticks are the counter (else every reading is a real clock read).
    tsc: bool,
    base_ticks: u64,
    base_ns: u64,
    /// Nanoseconds per tick, refined at each re-anchoring over the span since the last.
    rate: f64,
    /// `rate` in fixed point (see [`per_tick`]).
    mult: u64,
    /// Ticks after `base_ticks` at which to re-anchor.
    span: u64,
}

/// How long a [`Clock`] trusts its rate before it reads the real clock again: at first 1 ms
/// (the calibrated rate is good to about 5e-4: 0.5 us of drift), then twice as long after each
/// refinement, up to [`REANCHOR_NS`].
const FIRST_REANCHOR_NS: u64 = 1_000_000;
/// The longest a [`Clock`] goes without reading the real clock (a rate refined over the
/// previous span is good to about 1e-5 by then: 0.1 us of drift).
const REANCHOR_NS: u64 = 10_000_000;

impl Clock {
    pub(crate) fn new() -> Clock {
        Self::with(source())
    }

    fn with(s: Source) -> Clock {
        let (ns, t, _) = if s.tsc { pair() } else { (now_ns(), 0, 0) };
        Clock {
            tsc: s.tsc,
            base_ticks: t,
            base_ns: ns,
            rate: s.rate,
            mult: s.mult,
            span: (FIRST_REANCHOR_NS as f64 / s.rate) as u64,
        }
    }

    /// CLOCK_MONOTONIC nanoseconds, now.
    pub(crate) fn now_ns(&mut self) -> u64 {
        if !self.tsc {
            return now_ns();
        }
        let t = read_tsc();
        let since = t.wrapping_sub(self.base_ticks);
        if since >= self.span {
            let (ns, t, gap) = pair();
            // Refined only from a close pair (the span is then long enough to make it exact
            // to about 1e-5), and only within a tenth of the calibrated rate.
            let rate =
                (ns.saturating_sub(self.base_ns)) as f64 / t.wrapping_sub(self.base_ticks) as f64;
            if gap < 2_000 && (rate - self.rate).abs() < self.rate / 10.0 {
                self.rate = rate;
                self.mult = per_tick(rate);
                self.span = (self.span * 2).min(ticks_in(REANCHOR_NS));
            }
            self.base_ticks = t;
            self.base_ns = ns;
            return ns;
        }
        self.base_ns + scale(since, self.mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_stays_within_microseconds_of_clock_monotonic() {
        let mut clock = Clock::new();
        let start = now_ns();
        let (mut worst, mut checked) = (0, 0);
        // Across several re-anchorings.
        while now_ns() - start < 50_000_000 {
            let a = now_ns();
            let c = clock.now_ns();
            let b = now_ns();
            if b - a > 5_000 {
                continue; // preempted in between: says nothing
            }
            checked += 1;
            // How far outside the two real reads around it.
            worst = worst.max(a.saturating_sub(c)).max(c.saturating_sub(b));
        }
        assert!(checked > 1_000, "{checked} undisturbed readings");
        println!("{checked} readings, worst {worst} ns outside CLOCK_MONOTONIC");
        assert!(worst < 5_000, "drifted {worst} ns from CLOCK_MONOTONIC");
    }

    #[test]
    fn without_the_counter_the_clock_is_clock_monotonic() {
        let mut clock = Clock::with(Source {
            tsc: false,
            rate: 1.0,
            mult: per_tick(1.0),
        });
        let mut last = 0;
        for _ in 0..1_000 {
            let a = now_ns();
            let c = clock.now_ns();
            let b = now_ns();
            assert!(a <= c && c <= b && c >= last);
            last = c;
        }
    }

    #[test]
    fn fixed_point_conversion_matches_floating_point() {
        for rate in [0.05, 0.333_333_3, 0.408_163_265, 1.0, 19.9] {
            let mult = per_tick(rate);
            for ticks in [0u64, 1, 999, 123_456_789, 10_000_000_000] {
                let exact = ticks as f64 * rate;
                let fixed = scale(ticks, mult) as f64;
                // Truncation, plus the multiplier's own rounding (2^-32 ns per tick).
                assert!(
                    (exact - fixed).abs() <= 1.0 + ticks as f64 / 4e9,
                    "{rate} {ticks}"
                );
            }
        }
        assert_eq!(scale(u64::MAX, per_tick(19.9)), u64::MAX, "saturates");
    }

    #[test]
    fn spans_convert_both_ways() {
        let t = ticks();
        let spin_until = now_ns() + 1_000_000;
        while now_ns() < spin_until {}
        let span = span_ns(ticks() - t);
        assert!((900_000..50_000_000).contains(&span), "{span} ns");
        let ticks = ticks_in(1_000_000);
        assert!((span_ns(ticks) as i64 - 1_000_000).abs() < 1_000);
    }
}
