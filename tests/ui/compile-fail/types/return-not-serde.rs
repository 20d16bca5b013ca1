use std::time::Instant;

pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn found(&self) -> Instant {
        Instant::now()
    }
}

fn main() {}
