pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn sieve(&self, (start, end): (u64, u64)) -> Vec<u64> {
        (start..end).collect()
    }
}

fn main() {}
