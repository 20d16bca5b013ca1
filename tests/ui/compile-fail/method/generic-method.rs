pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn sieve<T: Into<u64>>(&self, end: T) -> Vec<u64> {
        vec![end.into()]
    }
}

fn main() {}
