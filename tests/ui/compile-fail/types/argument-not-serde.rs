pub struct Primes;

pub struct Range {
    pub start: u64,
    pub end: u64,
}

#[forkworker::worker]
impl Primes {
    pub fn sieve(&self, range: Range) -> Vec<u64> {
        (range.start..range.end).collect()
    }
}

fn main() {}
