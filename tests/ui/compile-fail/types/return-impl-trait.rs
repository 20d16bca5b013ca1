pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn sieve(&self, end: u64) -> impl Iterator<Item = u64> {
        0..end
    }
}

fn main() {}
