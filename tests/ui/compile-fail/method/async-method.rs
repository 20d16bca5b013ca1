pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub async fn sieve(&self, end: u64) -> Vec<u64> {
        vec![end]
    }
}

fn main() {}
