//! The seed's PrimeNumbers daemon, ported: a `PrimeNumbers` pool of four workers (the `Primes`
//! object: sieve, is_prime, primes_among) and a `GetFactors` pool made from a closure. Jobs
//! are triggered by a timer (every few iterations) and by a signal (SIGCONT). When GetFactors
//! returns, its callback hands the factors to PrimeNumbers — one pool's callback acting on
//! another pool — and a GetFactors call that times out is retried up to three times. SIGUSR1
//! writes the runtime statistics table to the log.
//!
//! ```sh
//! cargo run --release --example primes                      # 40 iterations of 100 ms, drains, stops
//! cargo run --release --example primes -- --forever         # until SIGINT / SIGTERM
//! cargo run --release --example primes -- --recover-workers # complete what a killed run left
//! ```
//!
//! While it runs: `kill -USR1 <pid>` (statistics), `kill -CONT <pid>` (a job),
//! `kill -HUP <pid>` (graceful restart with recovery), `kill -TERM <pid>` (graceful stop).

use std::time::Duration;

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
            let mut m = (p * p).max(start.div_ceil(p) * p);
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
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The factors of `n`; the seed's GetFactors closure. One number in seven is made to hang
/// past the pool's timeout, to show timeouts and retries.
fn factors(n: u64) -> Vec<u64> {
    if n.is_multiple_of(7) {
        std::thread::sleep(Duration::from_secs(5));
    }
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

type Factors = FnMediator<fn(u64) -> Vec<u64>, u64, Vec<u64>>;

/// The application: what the seed's daemon class held.
struct PrimeNumbers {
    primes: Option<WorkerKey<PrimesMediator>>,
    factors: Option<WorkerKey<Factors>>,
    /// Stop after this many iterations (0: run until a signal).
    iterations: u64,
    jobs: u64,
    seed: u64,
}

impl PrimeNumbers {
    fn next_number(&mut self) -> u64 {
        // A small xorshift: numbers between 1,000 and 10,000, as in the seed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        1_000 + self.seed % 9_000
    }
}

impl Application for PrimeNumbers {
    fn setup(
        &mut self,
        workers: &mut Workers<Self>,
        _ctl: &mut Control,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let primes = workers.get(self.primes.expect("added in main"));
        let id = primes.sieve(1_000, 2_000)?;
        log::info!(target: "PrimeNumbers", "setup: queued sieve(1000, 2000) as call {id}");
        Ok(())
    }

    fn execute(&mut self, workers: &mut Workers<Self>, ctl: &mut Control) {
        let (primes, factors) = (self.primes.unwrap(), self.factors.unwrap());
        // A bounded run stops queuing at its last iteration, then stops once every call was
        // delivered, so that nothing is left for a next run.
        if self.iterations > 0 && ctl.iteration() >= self.iterations {
            if workers.get(primes).pending() + workers.get(factors).pending() == 0 {
                log::info!(target: "PrimeNumbers", "{} jobs done; stopping", self.jobs);
                ctl.stop();
            }
            return;
        }
        // Timer-triggered jobs.
        if ctl.iteration().is_multiple_of(4) {
            let n = self.next_number();
            match workers.get(factors).call(n) {
                Ok(id) => log::info!(target: "PrimeNumbers", "GetFactors({n}) queued as call {id}"),
                Err(e) => log::warn!(target: "PrimeNumbers", "GetFactors({n}) refused: {e}"),
            }
            self.jobs += 1;
        }
        if ctl.iteration().is_multiple_of(10) {
            let start = ctl.iteration() * 10_000;
            workers.get(primes).sieve(start, start + 9_999).ok();
            self.jobs += 1;
        }
        // A steady stream of small jobs: a few hundred over a bounded run.
        for _ in 0..6 {
            let n = self.next_number() * 1_000_003;
            workers.get(primes).is_prime(n).ok();
            self.jobs += 1;
        }
        // Signal-triggered job: SIGCONT.
        if ctl.signals().wake {
            log::info!(target: "PrimeNumbers", "SIGCONT: checking whether 1000000007 is prime");
            workers.get(primes).is_prime(1_000_000_007).ok();
        }
        // Show the statistics once in a bounded run, as SIGUSR1 would.
        if self.iterations > 0 && ctl.iteration() == self.iterations / 2 {
            // SAFETY: raising a signal at ourselves; the daemon turns it into a flag.
            unsafe { libc::raise(libc::SIGUSR1) };
        }
    }
}

fn main() {
    log::set_logger(&StderrLog).ok();
    log::set_max_level(log::LevelFilter::Info);
    let forever = std::env::args().any(|a| a == "--forever");

    let mut daemon = Daemon::new(
        "PrimeNumbers",
        PrimeNumbers {
            primes: None,
            factors: None,
            iterations: if forever { 0 } else { 40 },
            jobs: 0,
            seed: 0x2545_f491_4f6c_dd1d,
        },
    );
    daemon.loop_interval(Duration::from_millis(100));

    let mut primes = PrimesMediator::new("PrimeNumbers", Primes { served: 0 });
    primes
        .workers(4)
        .timeout(Duration::from_secs(60))
        .malloc(4 << 20);
    let primes = daemon.add(primes);

    let mut factors: Factors = FnMediator::new("GetFactors", factors as fn(u64) -> Vec<u64>);
    factors.workers(2).timeout(Duration::from_secs(1));
    let factors = daemon.add(factors);

    daemon.app().primes = Some(primes);
    daemon.app().factors = Some(factors);

    daemon.on_return(primes, |_app, _workers, call, log| {
        match (call.args(), call.return_value()) {
            (Ok(PrimesArgs::Sieve { start, end }), Some(Ok(PrimesReturn::Sieve(found)))) => {
                log.info(format_args!(
                    "job {} sieve({start}, {end}): {} primes, from {:?} to {:?}",
                    call.id(),
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
                    "job {}: among {} factors the primes are {found:?}",
                    call.id(),
                    numbers.len()
                ));
            }
            (Ok(PrimesArgs::IsPrime { n }), Some(Ok(PrimesReturn::IsPrime(p))))
                if call.id().is_multiple_of(50) || n == 1_000_000_007 =>
            {
                log.info(format_args!("job {}: is_prime({n}) = {p}", call.id()));
            }
            _ => {}
        }
    });
    // One pool's callback acting on another pool: the factors go to PrimeNumbers.
    daemon.on_return(factors, move |_app, workers, call, log| {
        if let Some(Ok(found)) = call.return_value() {
            log.info(format_args!(
                "job {}: {} factors of {:?}",
                call.id(),
                found.len(),
                call.args().ok()
            ));
            if let Err(e) = workers.get(primes).primes_among(&found) {
                log.warn(format_args!("primes_among refused: {e}"));
            }
        }
    });
    daemon.on_timeout(factors, |_app, _workers, call, log| {
        if call.retries() < 3 {
            log.warn(format_args!(
                "job {} GetFactors({:?}) timed out; retry {}",
                call.id(),
                call.args().ok(),
                call.retries() + 1
            ));
            call.retry();
        } else {
            log.error(format_args!(
                "job {} timed out 4 times; giving up",
                call.id()
            ));
        }
    });

    match daemon.run() {
        Ok(stop) => println!("PrimeNumbers stopped: {stop:?}"),
        Err(forkworker::DaemonError::Instance(forkworker::instance::InstanceError::Held {
            pid: Some(pid),
            ..
        })) => {
            eprintln!("PrimeNumbers is already running as pid {pid}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("PrimeNumbers: {e}");
            std::process::exit(1);
        }
    }
}

/// A minimal logger for the example: level, target (the pool's alias) and message.
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
