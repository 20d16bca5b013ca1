//! forkworker's pools across machines on this machine: hosts serving the bench's worker
//! through the run's Redis server, and connected pools calling them.
//!
//! - [`Hosts`]: the run's Redis server and the hosts, started in the forking phase (each host
//!   is a shared pool, whose thread forks): one host of one worker (prefix `one`), and two
//!   hosts of one worker each (prefix `two`), so that the 1- and 2-host rows compare with
//!   Celery's 1- and 2-process workers.
//! - [`measure`]: rounds of an empty call's round trip (one call at a time, `wait()`) and of
//!   pipelined calls (all made at once, then waited for), through connected pools.
//! - [`rows`]: the table's rows, against Celery's figures of the same run when it has them.

use std::time::{Duration, Instant};

use forkworker::Host;

use super::celery::{self, Celery, RedisServer};
use super::{Bench, BenchPool, Row, figure, fmt_rate, fmt_time, median};

/// The run's Redis server and the hosts serving `BenchRemote` on it.
pub struct Hosts {
    // Dropped last: the hosts leave their consumers first.
    one: Option<Host>,
    two: Vec<Host>,
    pub redis: RedisServer,
}

const ALIAS: &str = "BenchRemote";

impl Hosts {
    /// Starts the Redis server and the three hosts (one worker each, every worker forked).
    pub fn start(stamp: usize) -> Result<Hosts, String> {
        let redis = RedisServer::start().map_err(|e| e.to_string())?;
        let host = |prefix: &str| {
            BenchPool::builder(ALIAS, Bench { stamp })
                .workers(1)
                .strategy(forkworker::ForkStrategy::Aggressive)
                .prefix(prefix)
                .serve(&redis.url())
                .map_err(|e| format!("serve: {e}"))
        };
        let one = host("one")?;
        let two = vec![host("two")?, host("two")?];
        Ok(Hosts {
            one: Some(one),
            two,
            redis,
        })
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in self.one.take().into_iter().chain(self.two.drain(..)) {
            host.stop(Duration::from_secs(1));
        }
    }
}

/// The rounds' figures: seconds per empty round trip, and pipelined calls per second through
/// one host and through two.
pub struct Figures {
    empty: Vec<f64>,
    one: Vec<f64>,
    two: Vec<f64>,
    pipelined: usize,
}

/// `rounds` rounds of `empty` round trips and of `pipelined` calls at once, on one host and
/// on two.
pub fn measure(
    hosts: &Hosts,
    rounds: usize,
    empty: usize,
    pipelined: usize,
    verbose: bool,
) -> Result<Figures, String> {
    let url = hosts.redis.url();
    let connect = |prefix: &str| {
        BenchPool::remote(ALIAS)
            .prefix(prefix)
            .timeout(Duration::from_secs(60))
            .connect(&url)
            .map_err(|e| format!("connect: {e}"))
    };
    let one = connect("one")?;
    let two = connect("two")?;
    let round_trip = |n: usize| -> Result<f64, String> {
        let t = Instant::now();
        for _ in 0..n {
            one.noop().wait().map_err(|e| e.to_string())?;
        }
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    let burst = |pool: &super::RemoteBench, n: usize| -> Result<f64, String> {
        let t = Instant::now();
        let calls: Vec<_> = (0..n).map(|_| pool.noop()).collect();
        for call in calls {
            call.wait().map_err(|e| e.to_string())?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    // Warm up: connections, the hosts' first reads.
    round_trip(empty / 10 + 1)?;
    burst(&one, pipelined / 10 + 1)?;
    burst(&two, pipelined / 10 + 1)?;
    let mut f = Figures {
        empty: vec![],
        one: vec![],
        two: vec![],
        pipelined,
    };
    for _ in 0..rounds {
        f.empty.push(round_trip(empty)?);
        f.one.push(burst(&one, pipelined)?);
        f.two.push(burst(&two, pipelined)?);
        if verbose {
            let l = |v: &[f64]| v[v.len() - 1];
            eprintln!(
                "remote round: empty {} pipelined {} / {}",
                fmt_time(l(&f.empty)),
                fmt_rate(l(&f.one)),
                fmt_rate(l(&f.two))
            );
        }
    }
    one.close();
    two.close();
    Ok(f)
}

/// The rows: against Celery's figures when the run has them, else forkworker's alone.
pub fn rows(f: &Figures, peer: Option<&Celery>) -> Vec<Row> {
    let empty = median(&f.empty);
    let (one, two) = (median(&f.one), median(&f.two));
    let n = f.pipelined;
    match peer {
        Some(c) => vec![
            celery::round_trip_row(
                "remote pool: empty call round trip through Redis, 1 host (Celery: 1 process)",
                empty,
                &c.one,
            ),
            celery::throughput_row(
                format!(
                    "remote pool: {n} pipelined calls/s, 1 host of 1 worker (Celery: 1 process)"
                ),
                one,
                &c.one,
            ),
            celery::throughput_row(
                format!(
                    "remote pool: {n} pipelined calls/s, 2 hosts of 1 worker (Celery: 2 processes)"
                ),
                two,
                &c.two,
            ),
        ],
        None => vec![
            figure(
                "remote pool: empty call round trip through Redis, 1 host",
                fmt_time(empty),
            ),
            figure(
                format!("remote pool: {n} pipelined calls/s, 1 host of 1 worker"),
                fmt_rate(one),
            ),
            figure(
                format!("remote pool: {n} pipelined calls/s, 2 hosts of 1 worker"),
                fmt_rate(two),
            ),
        ],
    }
}

/// `--only remote [--count N] [--rounds N]`: the remote rows (N pipelined calls per round, a
/// tenth of them, at least 50, round trips), and Celery's in the same run unless `--smoke`;
/// prints their table. Returns how many calls were timed.
pub fn only(count: Option<usize>, rounds: Option<usize>, smoke: bool) -> usize {
    let stamp = super::shared_page() as usize;
    let rounds = rounds.unwrap_or(if smoke { 2 } else { 5 });
    let pipelined = count.unwrap_or(if smoke { 200 } else { 5_000 });
    let round_trips = (pipelined / 10).max(50);
    let hosts = match Hosts::start(stamp) {
        Ok(hosts) => hosts,
        Err(e) => {
            println!("remote rows skipped: {e}");
            return 0;
        }
    };
    let figures = measure(&hosts, rounds, round_trips, pipelined, true);
    let peer = if smoke {
        None
    } else {
        let full = celery::Settings::full();
        let settings = celery::Settings {
            rounds,
            round_trips,
            pipelined: pipelined.min(full.pipelined),
        };
        match celery::measure(&hosts.redis, settings, true) {
            Ok(c) => Some(c),
            Err(e) => {
                println!("celery rows skipped: {e}");
                None
            }
        }
    };
    drop(hosts);
    let leftovers = super::cleanup_problems(std::process::id());
    println!();
    let calls = match figures {
        Ok(f) => {
            let mut table = peer.iter().flat_map(celery::rows).collect::<Vec<_>>();
            table.extend(rows(&f, peer.as_ref()));
            super::print_table(&table);
            rounds * 3 * (round_trips + pipelined)
        }
        Err(e) => {
            println!("remote rows failed: {e}");
            0
        }
    };
    super::exit_if_left_behind(&leftovers);
    calls
}
