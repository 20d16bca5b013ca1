#[forkworker::worker]
pub struct Primes;

fn main() {}
