//! The seed's PrimeNumbers worker, ported: four worker processes find primes while the parent
//! keeps calling, and results come back through `on_return` and through typed `wait`.
//!
//! Run it with `cargo run --release --example primes`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkworker::prelude::*;

/// Prime-number work, the seed's `Primes` class.
pub struct Primes {
    /// Calls this worker process has served (each worker has its own copy).
    served: u64,
}

#[forkworker::worker]
impl Primes {
    /// Every prime in `start..=end`, by a segmented sieve of Eratosthenes.
    pub fn sieve(&mut self, start: u64, end: u64) -> Vec<u64> {
        self.served += 1;
        if end < 2 || end < start {
            return Vec::new();
        }
        let start = start.max(2);
        let root = (end as f64).sqrt() as u64 + 1;
        let small: Vec<u64> = (2..=root).filter(|&n| is_prime(n)).collect();
        let mut composite = vec![false; (end - start + 1) as usize];
        for p in small {
            let first = (p * p).max(start.div_ceil(p) * p);
            let mut m = first;
            while m <= end {
                composite[(m - start) as usize] = true;
                m += p;
            }
        }
        (start..=end)
            .filter(|&n| !composite[(n - start) as usize])
            .collect()
    }

    /// Whether `n` is prime.
    pub fn is_prime(&mut self, n: u64) -> bool {
        self.served += 1;
        is_prime(n)
    }

    /// The primes among `numbers`.
    pub fn primes_among(&mut self, numbers: &[u64]) -> Vec<u64> {
        self.served += 1;
        numbers.iter().copied().filter(|&n| is_prime(n)).collect()
    }

    /// How many calls this worker process served.
    pub fn served(&self) -> u64 {
        self.served
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn main() -> Result<(), CallError> {
    // Log lines (ours and the library's warnings) go to stderr.
    log::set_logger(&StderrLog).ok();
    log::set_max_level(log::LevelFilter::Info);

    let mut primes = PrimesMediator::new("PrimeNumbers", Primes { served: 0 });
    primes
        .workers(4)
        .timeout(Duration::from_secs(60))
        .malloc(4 << 20);

    let returned = Rc::new(Cell::new(0u32));
    let counter = returned.clone();
    primes.on_return(move |call, log| {
        counter.set(counter.get() + 1);
        match (call.args(), call.return_value()) {
            (Ok(PrimesArgs::Sieve { start, end }), Some(Ok(PrimesReturn::Sieve(found))))
                if call.id().is_multiple_of(50) =>
            {
                log.info(format_args!(
                    "job {} sieve({start}, {end}) in worker {:?}: {} primes, from {:?} to {:?}",
                    call.id(),
                    call.pid(),
                    found.len(),
                    found.first(),
                    found.last()
                ));
            }
            (
                Ok(PrimesArgs::PrimesAmong { numbers }),
                Some(Ok(PrimesReturn::PrimesAmong(found))),
            ) => {
                log.info(format_args!(
                    "job {}: among {numbers:?} the primes are {found:?}",
                    call.id()
                ));
            }
            _ => {}
        }
    });

    let started = Instant::now();
    // A few hundred background calls, answered through on_return.
    let mut calls = 0u32;
    for i in 0..300u64 {
        primes.sieve(i * 10_000, i * 10_000 + 9_999)?;
        calls += 1;
        if i % 60 == 0 {
            primes.primes_among(&[i, i + 1, i + 2, i + 3, 97, 1_000_003])?;
            calls += 1;
        }
        primes.poll();
    }
    while returned.get() < calls {
        primes.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{} background calls returned in {:.1} ms",
        returned.get(),
        started.elapsed().as_secs_f64() * 1e3
    );

    // The same work, typed and blocking: wait returns the method's own return type.
    let id: CallId<Vec<u64>> = primes.sieve(1_000, 2_000)?;
    println!("status right after the call: {:?}", primes.status(id));
    let found: Vec<u64> = primes.wait(id, Duration::from_secs(5))?;
    println!(
        "sieve(1000, 2000) in a worker: {} primes, first {:?}, last {:?}",
        found.len(),
        found.first(),
        found.last()
    );
    let id = primes.is_prime(1_000_000_007)?;
    println!(
        "is_prime(1000000007) = {}",
        primes.wait(id, Duration::from_secs(5))?
    );

    // Inline: the same method, in this process, with no fork and no callbacks.
    let direct = primes.inline().sieve(1_000, 2_000);
    assert_eq!(direct, found);
    println!(
        "inline sieve agrees; the parent's own object served {} call",
        primes.inline().served()
    );

    println!("worker pids: {:?}", primes.pids());
    Ok(())
    // Dropping `primes` stops and reaps the workers and removes the shared memory.
}

/// A minimal logger for the example: level, target (the worker's alias) and message.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
    }
    fn flush(&self) {}
}
